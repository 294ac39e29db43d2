from __future__ import annotations

import pytest

from registry_api.identity.principal import Principal
from registry_api.ratelimit import RateLimiter, TooManyRequests, enforce


def test_bucket_allows_the_burst_then_asks_to_wait() -> None:
    limiter = RateLimiter(rate_per_second=2, burst=3)
    assert [limiter.retry_after("a", now=100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.retry_after("a", now=100.0) == pytest.approx(0.5)


def test_bucket_refills_with_time_and_keys_are_independent() -> None:
    limiter = RateLimiter(rate_per_second=1, burst=1)
    assert limiter.retry_after("a", now=0.0) == 0.0
    assert limiter.retry_after("a", now=0.2) > 0
    assert limiter.retry_after("b", now=0.2) == 0.0
    assert limiter.retry_after("a", now=1.5) == 0.0


def test_exceeding_the_limit_raises_429_with_retry_after() -> None:
    limiter = RateLimiter(rate_per_second=0.5, burst=1)
    caller = Principal(subject="key:1:alice", department="lz-jtj")
    enforce(limiter, caller, "requests")
    with pytest.raises(TooManyRequests) as raised:
        enforce(limiter, caller, "requests")
    assert raised.value.status_code == 429
    assert raised.value.headers == {"Retry-After": "2"}
