"""Segment membership upkeep, in the worker (never on the ingestion path).

`refresh` is a long-poll activity run back to back by SegmentRefreshWorkflow: for up
to `run_seconds` it builds the members of new or edited segments, then follows
`users.updated_at` (which ingestion, identify and profile edits bump) with a keyset
cursor and re-evaluates the changed users in batches; when nothing changed it sleeps
`poll_seconds`. Its cursor is heartbeated, so a retry after a crash resumes there.

A transaction that computed its `updated_at` before an earlier one committed can
become visible behind the cursor: every `SWEEP_SECONDS` the last `LAG_SECONDS` behind
the cursor are read again and any user not processed at that `updated_at` is.
Evaluation is idempotent (it writes differences only), so a user seen twice costs a
query, nothing more.

`recompute` is what the Temporal Schedule runs: rebuild segments whose rules move with
time alone (within_last_days, withinDays) and any not rebuilt for an hour.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity

from core.db import session_scope
from core.models import Segment
from core.services import segments as segment_service

log = logging.getLogger("retenshun.activities.segments")

LAG_SECONDS = 10.0
SWEEP_SECONDS = 5.0
STALE_AFTER = timedelta(hours=1)


@dataclass
class RefreshInput:
    # Keyset cursor (updated_at ISO, project_id, user_id); None: start from now - LAG.
    cursor: list[str] | None = None
    run_seconds: float = 60.0
    batch_size: int = 500
    poll_seconds: float = 0.5


@dataclass
class RefreshResult:
    cursor: list[str]
    users: int = 0
    entered: int = 0
    left: int = 0
    rebuilt: int = 0


@dataclass
class RecomputeInput:
    stale_after_seconds: float = STALE_AFTER.total_seconds()


@dataclass
class RecomputeResult:
    segments: int = 0
    entered: int = 0
    left: int = 0


@dataclass
class _Progress:
    cursor: segment_service.Cursor
    result: RefreshResult
    # (project, user) -> updated_at already evaluated, for the late-commit sweep.
    seen: dict[tuple[str, str], datetime] = field(default_factory=dict)


@contextlib.asynccontextmanager
async def _heartbeating(*details: object, every: float = 5.0) -> AsyncIterator[None]:
    """Heartbeat while one long statement runs (a rebuild of a million-member segment),
    so the activity is not taken for dead meanwhile."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(every)
            activity.heartbeat(*details)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _encode(cursor: segment_service.Cursor) -> list[str]:
    return [cursor[0].isoformat(), cursor[1], cursor[2]]


def _decode(raw: list[str]) -> segment_service.Cursor:
    return datetime.fromisoformat(raw[0]), raw[1], raw[2]


class SegmentActivities:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]):
        self._sessions = sessions

    # --- the long-poll refresher

    @activity.defn(name="refresh_segment_memberships")
    async def refresh(self, input: RefreshInput) -> RefreshResult:
        raw = input.cursor
        details = activity.info().heartbeat_details
        if details and isinstance(details[0], list) and len(details[0]) == 3:
            raw = [str(x) for x in details[0]]  # a retry resumes where the last attempt was
        if raw is None:
            async with session_scope(self._sessions) as db:
                now = await db.scalar(select(func.now()))
            assert now is not None
            cursor = (now - timedelta(seconds=LAG_SECONDS), "", "")
        else:
            cursor = _decode(raw)
        progress = _Progress(cursor, RefreshResult(cursor=_encode(cursor)))
        deadline = time.monotonic() + input.run_seconds
        next_sweep = time.monotonic() + SWEEP_SECONDS
        while time.monotonic() < deadline and not activity.is_worker_shutdown():
            worked = await self._rebuild_pending(progress)
            if not await self._skip_without_segments(progress):
                worked |= await self._follow(progress, input.batch_size)
                if time.monotonic() >= next_sweep:
                    await self._sweep(progress, input.batch_size)
                    next_sweep = time.monotonic() + SWEEP_SECONDS
            progress.result.cursor = _encode(progress.cursor)
            activity.heartbeat(progress.result.cursor)
            if not worked:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(activity.wait_for_worker_shutdown(),
                                           input.poll_seconds)
        return progress.result

    async def _rebuild_pending(self, progress: _Progress) -> bool:
        result = progress.result
        async with session_scope(self._sessions) as db:
            pending = await segment_service.pending_segments(db)
        for segment_id in pending:
            async with _heartbeating(_encode(progress.cursor)), \
                    session_scope(self._sessions) as db:
                change = await segment_service.rebuild_membership(db, segment_id)
            if change is not None:
                result.rebuilt += 1
                result.entered += change.entered
                result.left += change.left
        return bool(pending)

    async def _skip_without_segments(self, progress: _Progress) -> bool:
        """With no built segment anywhere there is no membership to keep: move the cursor
        up to `LAG_SECONDS` ago instead of reading every changed user (reading them cost
        the worker 12-26% of its CPU while ingesting). A segment built later starts from
        its own full rebuild, which sees every change committed before it."""
        async with session_scope(self._sessions) as db:
            now, any_built = (await db.execute(select(
                func.now(), select(Segment.id).where(Segment.counted_at.is_not(None))
                .exists()))).one()
        if any_built:
            return False
        floor: segment_service.Cursor = (now - timedelta(seconds=LAG_SECONDS), "", "")
        progress.cursor = max(progress.cursor, floor)
        progress.seen.clear()
        return True

    async def _follow(self, progress: _Progress, batch_size: int) -> bool:
        """Evaluate everyone past the cursor, page by page; True if anyone was."""
        worked = False
        while True:
            async with session_scope(self._sessions) as db:
                rows = await segment_service.changed_users(db, progress.cursor, batch_size)
            if not rows:
                return worked
            worked = True
            await self._evaluate(rows, progress)
            last = rows[-1]
            progress.cursor = (last.updated_at, last.project_id, last.user_id)
            activity.heartbeat(_encode(progress.cursor))
            if len(rows) < batch_size:
                return worked

    async def _sweep(self, progress: _Progress, batch_size: int) -> None:
        """Users that became visible behind the cursor (late commits), evaluated now."""
        until = progress.cursor[0]
        after: segment_service.Cursor = (until - timedelta(seconds=LAG_SECONDS), "", "")
        while True:
            async with session_scope(self._sessions) as db:
                rows = await segment_service.changed_users(db, after, batch_size, until)
            late = [r for r in rows
                    if progress.seen.get((r.project_id, r.user_id)) != r.updated_at]
            if late:
                log.info("segment refresh: %d late user change(s) picked up", len(late))
                await self._evaluate(late, progress)
            if len(rows) < batch_size:
                break
            after = (rows[-1].updated_at, rows[-1].project_id, rows[-1].user_id)
        horizon = until - timedelta(seconds=LAG_SECONDS)
        progress.seen = {k: v for k, v in progress.seen.items() if v > horizon}

    async def _evaluate(self, rows: list[segment_service.ChangedUser],
                        progress: _Progress) -> None:
        by_project: dict[str, list[str]] = defaultdict(list)
        for row in rows:
            by_project[row.project_id].append(row.user_id)
        for project_id, user_ids in by_project.items():
            async with session_scope(self._sessions) as db:
                change = await segment_service.refresh_users(db, project_id, user_ids)
            progress.result.entered += change.entered
            progress.result.left += change.left
        progress.result.users += len(rows)
        for row in rows:
            progress.seen[(row.project_id, row.user_id)] = row.updated_at

    # --- the scheduled recompute

    @activity.defn(name="recompute_segments")
    async def recompute(self, input: RecomputeInput) -> RecomputeResult:
        stale_before = datetime.now(UTC) - timedelta(seconds=input.stale_after_seconds)
        async with session_scope(self._sessions) as db:
            segment_ids = await segment_service.segments_to_recompute(db, stale_before)
        result = RecomputeResult()
        for i, segment_id in enumerate(segment_ids):
            async with _heartbeating(i), session_scope(self._sessions) as db:
                change = await segment_service.rebuild_membership(db, segment_id)
            if change is not None:
                result.segments += 1
                result.entered += change.entered
                result.left += change.left
            activity.heartbeat(i)
        return result
