"""Segment membership, kept fresh by two workflows (both started by the worker at start-up,
see workflows/starts.ensure_segment_jobs):

- SegmentRefreshWorkflow, id `segment-refresh:{taskQueue}`: runs the long-poll
  `refresh_segment_memberships` activity back to back (a minute each), which
  re-evaluates the users flagged `membership_stale`; continue-as-new every
  `rounds_per_run` rounds keeps the history short. A user's membership follows a
  profile change or event within about a second.
- SegmentRecomputeWorkflow, started every 5 minutes by the Temporal Schedule
  `segment-recompute:{taskQueue}`: rebuilds the segments whose rules move with time
  alone (within_last_days, withinDays) and any not rebuilt for an hour.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

from workflows.options import ActivityPreset

with workflow.unsafe.imports_passed_through():
    from activities.segments import (
        RecomputeInput,
        RecomputeResult,
        RefreshInput,
        SegmentActivities,
    )

# The long-poll activity: a minute of work per call (plus any rebuild under way),
# heartbeating its progress.
REFRESH = ActivityPreset(
    start_to_close_timeout=timedelta(hours=1),
    heartbeat_timeout=timedelta(seconds=30),
    retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                             maximum_interval=timedelta(seconds=30)),
)
# A full rebuild of every time-relative segment: long, heartbeating per segment.
RECOMPUTE = ActivityPreset(
    start_to_close_timeout=timedelta(hours=1),
    heartbeat_timeout=timedelta(minutes=5),
    retry_policy=RetryPolicy(initial_interval=timedelta(seconds=5), backoff_coefficient=2.0,
                             maximum_interval=timedelta(minutes=2), maximum_attempts=5),
)


@dataclass
class SegmentRefreshInput:
    run_seconds: float = 60.0
    rounds_per_run: int = 30
    poll_seconds: float = 0.5


@dataclass
class SegmentRecomputeInput:
    stale_after_seconds: float = 3600.0


@workflow.defn
class SegmentRefreshWorkflow:
    @workflow.run
    async def run(self, input: SegmentRefreshInput) -> None:
        # Histories of older runs carry a `cursor` in these payloads: unknown fields are
        # ignored when decoding, and the commands are the same, so they replay.
        for _ in range(input.rounds_per_run):
            await workflow.execute_activity_method(
                SegmentActivities.refresh,
                RefreshInput(run_seconds=input.run_seconds, poll_seconds=input.poll_seconds),
                **REFRESH.kwargs(),
            )
        workflow.continue_as_new(SegmentRefreshInput(
            run_seconds=input.run_seconds,
            rounds_per_run=input.rounds_per_run, poll_seconds=input.poll_seconds))


@workflow.defn
class SegmentRecomputeWorkflow:
    @workflow.run
    async def run(self, input: SegmentRecomputeInput) -> RecomputeResult:
        return await workflow.execute_activity_method(
            SegmentActivities.recompute,
            RecomputeInput(stale_after_seconds=input.stale_after_seconds),
            **RECOMPUTE.kwargs(),
        )
