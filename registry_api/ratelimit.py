"""Per-identity rate limits: a token bucket per (caller, limit name), answered with 429.

Limits live in the process (each API replica enforces its own share); that bounds one
caller's burst without a shared store on the hot path of the hooks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from registry_api.dependencies import PrincipalDep
from registry_api.errors import ApiError
from registry_api.identity.principal import Principal
from schemas.settings import Settings


class TooManyRequests(ApiError):
    status_code = 429
    code = "rate_limited"


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, rate_per_second: float, burst: int) -> None:
        self.rate = rate_per_second
        self.burst = burst
        self._buckets: dict[str, _Bucket] = {}

    def retry_after(self, key: str, now: float | None = None) -> float:
        """Takes one token for ``key``; returns 0 when allowed, else seconds to wait."""
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) > 100_000:
                self._buckets.clear()
            bucket = self._buckets[key] = _Bucket(tokens=float(self.burst), updated=now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.rate


def enforce(limiter: RateLimiter, principal: Principal, name: str) -> None:
    wait = limiter.retry_after(f"{name}:{principal.subject}")
    if wait > 0:
        seconds = max(1, math.ceil(wait))
        raise TooManyRequests(
            f"too many {name} requests from this identity; retry in {seconds}s",
            details={"limit_per_second": limiter.rate, "burst": limiter.burst},
            headers={"Retry-After": str(seconds)},
        )


def limit(name: str) -> Callable[..., Coroutine[Any, Any, None]]:
    """A route dependency: ``dependencies=[Depends(limit("requests"))]``.

    Uses the limiter named ``name`` in ``app.state.rate_limiters`` (built from the settings).
    """

    async def _check(request: Request, principal: PrincipalDep) -> None:
        limiter = request.app.state.rate_limiters.get(name)
        if limiter is not None:
            enforce(limiter, principal, name)

    return _check


def build_rate_limiters(settings: Settings) -> dict[str, RateLimiter]:
    return {
        "requests": RateLimiter(
            settings.rate_limit_requests_per_second, settings.rate_limit_requests_burst
        ),
        "hooks": RateLimiter(settings.rate_limit_hooks_per_second, settings.rate_limit_hooks_burst),
    }
