"""Fixtures of the fault tests (the shared ones are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas.settings import Settings
from tests.integration.streams_support import close_analytics, make_settings


@pytest.fixture
def worker_settings(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str, sqlite_template: Path
) -> Iterator[Settings]:
    """Settings of a stream worker: the shared broker, SQLite registry, chdb in tmp_path."""
    settings = make_settings(tmp_path, kafka_bootstrap, topic_prefix, sqlite_template)
    yield settings
    close_analytics(settings)
