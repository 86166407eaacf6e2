"""Per-project rate limits on the `limits` library: in memory, or Redis for many API processes."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, RateLimitItemPerSecond, parse
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

log = logging.getLogger("retenshun.ratelimit")


@dataclass(frozen=True, slots=True)
class RateLimitState:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int


def with_burst(rate: str, burst: int | None) -> RateLimitItem:
    """`1000/second` with burst 2000 becomes 2000 per 2 seconds: same mean, room for a spike."""
    item = parse(rate)
    if not burst or burst <= item.amount:
        return item
    window = item.get_expiry() * burst / item.amount
    return RateLimitItemPerSecond(burst, max(1, math.ceil(window)))


class RateLimiter:
    def __init__(self, ingest: RateLimitItem, api: RateLimitItem, redis_url: str | None = None):
        self.items = {"ingest": ingest, "api": api}
        storage: Storage
        if redis_url:
            scheme = redis_url.split("://", 1)[0]
            storage = storage_from_string(
                f"async+{scheme}://{redis_url.split('://', 1)[1]}", implementation="redispy",
                socket_timeout=1.0, socket_connect_timeout=1.0,
            )
        else:
            storage = MemoryStorage()
        self.storage = storage
        # A moving window is exact: N per window means N in *any* window-long span, and
        # Retry-After is when the oldest counted request leaves it. (The sliding-window
        # counter approximates with the previous window's count rounded down, so a burst
        # across a window boundary got one request or more over the limit.)
        self._strategy = MovingWindowRateLimiter(storage)
        self._last_failure_log = 0.0

    async def hit(self, kind: str, key: str) -> RateLimitState:
        item = self.items[kind]
        try:
            allowed = await self._strategy.hit(item, kind, key)
            stats = await self._strategy.get_window_stats(item, kind, key)
        except Exception:
            # The shared store (Redis) is down or slow: serve unlimited rather than fail
            # every request, ingestion included. Logged, at most every 10 s.
            now = time.monotonic()
            if now - self._last_failure_log > 10:
                self._last_failure_log = now
                log.exception("rate-limit store unavailable; requests are not limited")
            return RateLimitState(True, item.amount, item.amount, item.get_expiry())
        reset = max(0, math.ceil(stats.reset_time - time.time()))
        return RateLimitState(allowed, item.amount, max(0, stats.remaining), reset)
