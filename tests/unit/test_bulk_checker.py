"""A big NDJSON import is checked in the helper process a few chunks ahead, in order."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest

from deploy.seed.feeds import generate_feeds
from registry_api.feeds import bulk_validation
from registry_api.feeds.bulk import CHUNK, LOOKAHEAD_CHUNKS, ChunkChecker


@pytest.fixture
def helper() -> Iterator[None]:
    yield
    bulk_validation.stop_helper()


async def test_the_helper_checks_a_few_chunks_ahead_and_answers_each_in_place(
    helper: None,
) -> None:
    """Checked chunks wait in the API process until they are written: the helper may work
    ahead of the writes by LOOKAHEAD_CHUNKS chunks, never the whole import."""
    features = generate_feeds(cameras=CHUNK * 2, sensors=0, seed=11).features
    lines = [orjson.dumps(feature) for feature in features]
    lines = lines + [b'{"type": "Feature"'] * (CHUNK * 5 + 123)  # not JSON: rejected
    checker = ChunkChecker(lines)
    try:
        assert len(checker.pending) == LOOKAHEAD_CHUNKS
        for begin in range(0, len(lines), CHUNK):
            end = min(begin + CHUNK, len(lines))
            assert len(checker.pending) <= LOOKAHEAD_CHUNKS
            checked = await checker.check(begin, end)
            indexes = sorted([index for index, _ in checked.good] + [i for i, _, _ in checked.bad])
            assert indexes == list(range(begin, end))
            if end <= CHUNK * 2:
                assert not checked.bad
                assert [values["code"] for _, values in checked.good] == [
                    feature["properties"]["code"] for feature in features[begin:end]
                ]
            else:
                assert not checked.good
        assert not checker.pending
    finally:
        checker.close()
