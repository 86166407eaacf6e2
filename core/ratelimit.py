"""Per-project rate limits: an exact moving window, in process memory or, for many API
processes, in Redis through the `limits` library.

In memory we keep our own window (a deque of hit times per key) instead of `limits`'
async MemoryStorage: that one hands an expiry sweep to a thread (`asyncio.to_thread`)
after every hit, which cost ~18% of the ingestion path's CPU; the deque is the same exact
moving window in O(1) amortised per hit, on the event loop.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass

from limits import RateLimitItem, RateLimitItemPerSecond, parse
from limits.aio.storage import Storage
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
        # A moving window is exact: N per window means N in *any* window-long span, and
        # Retry-After is when the oldest counted request leaves it. (The sliding-window
        # counter approximates with the previous window's count rounded down, so a burst
        # across a window boundary got one request or more over the limit.)
        self._local: LocalMovingWindow | None = None
        self._strategy: MovingWindowRateLimiter | None = None
        if redis_url:
            scheme = redis_url.split("://", 1)[0]
            storage: Storage = storage_from_string(
                f"async+{scheme}://{redis_url.split('://', 1)[1]}", implementation="redispy",
                socket_timeout=1.0, socket_connect_timeout=1.0,
            )
            self._strategy = MovingWindowRateLimiter(storage)
        else:
            self._local = LocalMovingWindow()
        self._last_failure_log = 0.0

    async def hit(self, kind: str, key: str) -> RateLimitState:
        item = self.items[kind]
        if self._local is not None:
            return self._local.hit(f"{kind}/{key}", item.amount, item.get_expiry())
        assert self._strategy is not None
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


class LocalMovingWindow:
    """An exact moving window per key in this process: the times of the hits still inside
    the window, oldest first. Keys idle for a window are dropped every minute."""

    SWEEP_SECONDS = 60.0

    def __init__(self) -> None:
        self._hits: dict[str, deque[float]] = {}
        self._next_sweep = time.monotonic() + self.SWEEP_SECONDS
        self._longest_window = 0.0

    def hit(self, key: str, limit: int, window: float) -> RateLimitState:
        now = time.monotonic()
        self._longest_window = max(self._longest_window, window)
        if now >= self._next_sweep:
            self._sweep(now)
        hits = self._hits.get(key)
        if hits is None:
            hits = self._hits[key] = deque()
        cutoff = now - window
        while hits and hits[0] <= cutoff:
            hits.popleft()
        allowed = len(hits) < limit
        if allowed:
            hits.append(now)
        reset = hits[0] + window - now if hits else 0.0
        return RateLimitState(allowed, limit, limit - len(hits), max(0, math.ceil(reset)))

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + self.SWEEP_SECONDS
        cutoff = now - self._longest_window
        for key in [k for k, hits in self._hits.items() if not hits or hits[-1] <= cutoff]:
            del self._hits[key]
