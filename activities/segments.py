"""Segment membership upkeep, in the worker (never on the ingestion path).

`refresh` is a long-poll activity run back to back by SegmentRefreshWorkflow: for up
to `run_seconds` it builds the members of new or edited segments, then re-evaluates, in
batches, the users flagged `membership_stale` (ingestion, identify and profile edits set
the flag) in every project that has a built segment, and clears their flags; when
there was nothing to do it sleeps `poll_seconds`.

A flag is only seen once the change that set it has committed, and it is cleared only
if the user's `updated_at` has not moved since it was read (core.services.segments
.mark_evaluated), so no change is missed, whatever the order of commits. Evaluation is
idempotent (it writes differences only): a user evaluated twice costs a query, nothing
more. A project without a built segment keeps its flags set (setting a set flag costs
ingestion nothing); when its first segment is built, the rebuild covers everyone and
the refresher then goes once through the flagged users.

`recompute` is what the Temporal Schedule runs: rebuild segments whose rules move with
time alone (within_last_days, withinDays) and any not rebuilt for an hour.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity

from core.db import session_scope
from core.services import segments as segment_service

log = logging.getLogger("retenshun.activities.segments")

STALE_AFTER = timedelta(hours=1)


@dataclass
class RefreshInput:
    run_seconds: float = 60.0
    batch_size: int = 500
    poll_seconds: float = 0.5


@dataclass
class RefreshResult:
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


class SegmentActivities:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]):
        self._sessions = sessions

    # --- the long-poll refresher

    @activity.defn(name="refresh_segment_memberships")
    async def refresh(self, input: RefreshInput) -> RefreshResult:
        result = RefreshResult()
        deadline = time.monotonic() + input.run_seconds
        while time.monotonic() < deadline and not activity.is_worker_shutdown():
            worked = await self._rebuild_pending(result)
            worked |= await self._evaluate_stale(result, input.batch_size)
            activity.heartbeat(result.users)
            if not worked:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(activity.wait_for_worker_shutdown(),
                                           input.poll_seconds)
        return result

    async def _rebuild_pending(self, result: RefreshResult) -> bool:
        async with session_scope(self._sessions) as db:
            pending = await segment_service.pending_segments(db)
        for segment_id in pending:
            async with _heartbeating(result.users), session_scope(self._sessions) as db:
                change = await segment_service.rebuild_membership(db, segment_id)
            if change is not None:
                result.rebuilt += 1
                result.entered += change.entered
                result.left += change.left
        return bool(pending)

    async def _evaluate_stale(self, result: RefreshResult, batch_size: int) -> bool:
        """One pass over the flagged users of every project with a built segment; True if
        any flag was cleared (a user changing faster than we evaluate stays flagged and
        is not counted, so a pass that only meets such users lets the loop sleep)."""
        async with session_scope(self._sessions) as db:
            projects = await segment_service.projects_with_built_segments(db)
        cleared = 0
        for project_id in projects:
            after = ""
            while True:
                async with session_scope(self._sessions) as db:
                    users = await segment_service.stale_users(db, project_id, after, batch_size)
                if not users:
                    break
                async with session_scope(self._sessions) as db:
                    change = await segment_service.refresh_users(
                        db, project_id, [u.user_id for u in users])
                    cleared += await segment_service.mark_evaluated(db, project_id, users)
                result.users += len(users)
                result.entered += change.entered
                result.left += change.left
                activity.heartbeat(result.users)
                if len(users) < batch_size:
                    break
                after = users[-1].user_id
        return cleared > 0

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
