"""`feedgrid migrate`: brings the registry database to the newest schema (idempotent)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url)
    return config


def upgrade_registry(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)
