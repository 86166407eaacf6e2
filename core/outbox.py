"""Waking the worker's outbox dispatcher after events were queued for it.

Ingestion writes outbox rows in the event's own transaction; the dispatcher (in the
worker) LISTENs on CHANNEL and also polls. We do not NOTIFY inside that transaction:
PostgreSQL takes a database-wide lock for NOTIFY at commit and holds it through the WAL
flush, which made every triggered event's commit wait for the previous one. Instead
each API process sends at most one NOTIFY per `interval`, after the commit, on its own
connection. A lost wake-up costs the dispatcher one poll interval, nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from psycopg_pool import AsyncConnectionPool

CHANNEL = "retenshun_outbox"
log = logging.getLogger("retenshun.outbox")


class OutboxWaker:
    def __init__(self, pool: AsyncConnectionPool, interval: float = 0.1):
        self._pool = pool
        self.interval = interval
        self._dirty = False
        self._last = 0.0
        self._task: asyncio.Task[None] | None = None

    def poke(self) -> None:
        """Outbox rows were committed: make sure a NOTIFY follows (soon, not per call)."""
        self._dirty = True
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        # Pokes that arrive while a NOTIFY is on its way set _dirty again: one more follows.
        while self._dirty:
            wait = self._last + self.interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._dirty = False
            self._last = time.monotonic()
            try:
                async with self._pool.connection() as conn:
                    await conn.execute("SELECT pg_notify(%s, '')", (CHANNEL,))
            except Exception as exc:  # the dispatcher's poll covers it
                log.warning("could not wake the outbox dispatcher: %s", exc)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
