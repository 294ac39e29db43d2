"""Topic prefixes of a test session: each test (or module of tests) gets its own, and the
session deletes the topics under them when it ends (``conftest.pytest_sessionfinish``)."""

from __future__ import annotations

import uuid

HANDED_OUT: list[str] = []


def new_topic_prefix() -> str:
    prefix = f"t{uuid.uuid4().hex[:10]}."
    HANDED_OUT.append(prefix)
    return prefix
