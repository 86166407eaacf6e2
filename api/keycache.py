"""Valid API keys by hash, kept for a few seconds in each API process.

Looking the key up costs a pool checkout and a round trip on every request, ~12% of the
ingestion path's CPU. Revocation must still be immediate, so:

- revoking a key NOTIFYs CHANNEL in the revoking transaction, and every API process
  LISTENs and empties its cache when a notification arrives (and the revoking process
  empties its own before it answers);
- an entry is only stored if no notification arrived while it was being looked up (a
  generation counter), so a lookup racing a revocation cannot resurrect the key;
- while the listening connection is down (or not yet up) the cache is not used at all;
- entries expire after TTL seconds whatever happens, bounding any failure we did not
  foresee (a silently dead connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Generic, TypeVar

import psycopg

from core.services.api_keys import KEY_CACHE_CHANNEL as CHANNEL

log = logging.getLogger("retenshun.keycache")

V = TypeVar("V")


class KeyCache(Generic[V]):
    def __init__(self, conninfo: str, ttl: float = 10.0, max_entries: int = 10_000):
        self._conninfo = conninfo
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, V]] = {}
        self._generation = 0
        self._live = False
        self._task: asyncio.Task[None] | None = None

    @property
    def generation(self) -> int:
        return self._generation

    def get(self, key_hash: str) -> V | None:
        if not self._live:
            return None
        entry = self._entries.get(key_hash)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, key_hash: str, value: V, generation: int) -> None:
        """Store what a lookup that started at `generation` found."""
        if not self._live or generation != self._generation:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[key_hash] = (time.monotonic() + self.ttl, value)

    def invalidate(self) -> None:
        self._generation += 1
        self._entries.clear()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen_forever())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _listen_forever(self) -> None:
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.invalidate()  # revocations while we were not listening
                    self._live = True
                    async for _ in conn.notifies():
                        self.invalidate()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("API key cache off (listening failed: %s); retrying", exc)
            finally:
                self._live = False
                self.invalidate()
            await asyncio.sleep(1.0)

