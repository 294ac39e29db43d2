"""Imports every SQLAlchemy model so the metadata is complete (for Alembic and tests)."""

from __future__ import annotations


def import_all_models() -> None:
    import importlib

    for module in (
        "registry_api.identity.models",
        "registry_api.outbox.models",
        "registry_api.feeds.models",
        "registry_api.access.models",
        "registry_api.audit.models",
        "registry_api.subscriptions.models",
        "registry_api.enforcement.models",
        "registry_api.catalog.models",
    ):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name != module:
                raise
