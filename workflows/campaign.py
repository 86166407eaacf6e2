"""CampaignWorkflow, id `campaign:{campaignId}`: wait until `scheduledAt`, then send to the
segment page by page.

- Waiting: a durable timer until the scheduled time; the `reschedule` signal (sent by
  PATCH/PUT and POST /send through signal-with-start) moves it. On waking, the
  `begin_campaign` activity checks the row (the truth): due -> SENDING, moved later ->
  wait again, unscheduled or cancelled -> stop. So a lost signal delays nothing it
  should not, and DELETE cancels both by status and by cancelling this workflow.
- Sending: `plan_campaign_pages` cuts the next PAGES_PER_RUN pages of the audience
  (PAGE_SIZE members each, user-id order) into id ranges; `send_campaign_page` sends
  one range with bounded concurrency inside the activity, PARALLEL_PAGES ranges at a
  time (so several workers share a big campaign); continue-as-new after each plan
  carries the cursor, so a million recipients keep a short history.
- Closing: `finish_campaign` sets SENT, or FAILED when a page gives up (retries of a
  provider outage run out after a day), or CANCELLED on cancellation.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError
from temporalio.workflow import ActivityCancellationType

from workflows.options import DB, ActivityPreset

with workflow.unsafe.imports_passed_through():
    from activities.campaigns import (
        BeginInput,
        CampaignActivities,
        CampaignRef,
        FinishInput,
        PageInput,
        PageResult,
        PlanInput,
    )

PAGE_SIZE = 500
PAGES_PER_RUN = 20
CONCURRENCY = 16  # sends in flight per page
PARALLEL_PAGES = 4  # pages in flight per campaign (on any workers)

# Planning: one scan of the next PAGES_PER_RUN pages of the audience.
PLAN = ActivityPreset(
    start_to_close_timeout=timedelta(minutes=5),
    retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                             maximum_interval=timedelta(seconds=30),
                             non_retryable_error_types=["CampaignUnsendable"]),
)

# One page: many sends, heartbeating per recipient; provider outages ride out a day.
PAGE = ActivityPreset(
    start_to_close_timeout=timedelta(minutes=15),
    schedule_to_close_timeout=timedelta(hours=24),
    # Heartbeats come per recipient: a dead worker's page is retried after this.
    heartbeat_timeout=timedelta(seconds=20),
    retry_policy=RetryPolicy(initial_interval=timedelta(seconds=2), backoff_coefficient=2.0,
                             maximum_interval=timedelta(minutes=5),
                             non_retryable_error_types=["CampaignUnsendable"]),
    # On cancellation, wait for the page to stop so no send is left half-way.
    extra={"cancellation_type": ActivityCancellationType.WAIT_CANCELLATION_COMPLETED},
)


@dataclass
class CampaignInput:
    project_id: str
    campaign_id: str
    scheduled_at: str | None = None  # ISO 8601; a hint, the row decides
    cursor: str | None = None  # last user id sent (carried by continue-as-new)
    started: bool = False
    pages: int = 0
    page_size: int = PAGE_SIZE
    pages_per_run: int = PAGES_PER_RUN
    concurrency: int = CONCURRENCY
    parallel_pages: int = PARALLEL_PAGES


@dataclass
class RescheduleInput:
    scheduled_at: str | None  # ISO 8601; None: unscheduled (back to DRAFT)


@dataclass
class CampaignResult:
    status: str
    pages: int = 0


@workflow.defn
class CampaignWorkflow:
    def __init__(self) -> None:
        self._scheduled_at: str | None = None
        self._signalled = False
        self._changed = False

    @workflow.signal
    def reschedule(self, input: RescheduleInput) -> None:
        self._scheduled_at = input.scheduled_at
        self._signalled = self._changed = True

    @workflow.run
    async def run(self, input: CampaignInput) -> CampaignResult:
        ref = CampaignRef(input.project_id, input.campaign_id)
        try:
            if not input.started:
                status = await self._wait_until_due(input, ref)
                if status is not None:
                    return CampaignResult(status)
            return await self._send(input, ref)
        except asyncio.CancelledError:
            await workflow.execute_activity_method(
                CampaignActivities.finish,
                FinishInput(input.project_id, input.campaign_id, "CANCELLED"), **DB.kwargs())
            raise

    async def _wait_until_due(self, input: CampaignInput, ref: CampaignRef) -> str | None:
        """None when it is time to send; else the status the campaign stopped in."""
        if not self._signalled:
            self._scheduled_at = input.scheduled_at
        while True:
            if self._scheduled_at is None:
                # Unscheduled: let the row confirm (a send-now may have raced the signal).
                self._changed = False
            else:
                delay = datetime.fromisoformat(self._scheduled_at) - workflow.now()
                self._changed = False
                if delay > timedelta(0):
                    try:
                        await workflow.wait_condition(lambda: self._changed, timeout=delay)
                    except TimeoutError:
                        pass
                    if self._changed:
                        continue
            begin = await workflow.execute_activity_method(
                CampaignActivities.begin,
                BeginInput(ref.project_id, ref.campaign_id, workflow.now().isoformat()),
                **DB.kwargs())
            if begin.action == "send":
                return None
            if begin.action == "stop":
                return begin.status
            if self._changed:  # a signal arrived while the row was being read
                continue
            self._scheduled_at = begin.scheduled_at

    async def _send(self, input: CampaignInput, ref: CampaignRef) -> CampaignResult:
        cursor, pages = input.cursor, input.pages
        parallel = max(1, input.parallel_pages)
        try:
            plan = await workflow.execute_activity_method(
                CampaignActivities.plan,
                PlanInput(input.project_id, input.campaign_id, after=cursor,
                          page_size=input.page_size, max_pages=input.pages_per_run,
                          parallel_pages=parallel),
                **PLAN.kwargs())
            if plan.stopped:
                return CampaignResult("CANCELLED", pages)
            for i in range(0, len(plan.ranges), parallel):
                wave = plan.ranges[i:i + parallel]
                results = await asyncio.gather(*(
                    workflow.execute_activity_method(
                        CampaignActivities.send_page,
                        PageInput(input.project_id, input.campaign_id, after=r.after,
                                  upto=r.upto, concurrency=input.concurrency,
                                  rate_share=len(wave)),
                        **PAGE.kwargs())
                    for r in wave), return_exceptions=True)
                for outcome in results:
                    if isinstance(outcome, BaseException):
                        raise outcome
                if any(r.stopped for r in results if isinstance(r, PageResult)):
                    return CampaignResult("CANCELLED", pages)
                pages += len(wave)
                cursor = wave[-1].upto
        except ActivityError as err:
            reason = f"sending gave up: {err.cause or err}"
            status = await workflow.execute_activity_method(
                CampaignActivities.finish,
                FinishInput(input.project_id, input.campaign_id, "FAILED", reason[:1000]),
                **DB.kwargs())
            return CampaignResult(status, pages)
        if len(plan.ranges) == input.pages_per_run:  # more may follow: a fresh run
            workflow.continue_as_new(CampaignInput(
                input.project_id, input.campaign_id, cursor=cursor, started=True,
                pages=pages, page_size=input.page_size, pages_per_run=input.pages_per_run,
                concurrency=input.concurrency, parallel_pages=input.parallel_pages))
        status = await workflow.execute_activity_method(
            CampaignActivities.finish, FinishInput(input.project_id, input.campaign_id, "SENT"),
            **DB.kwargs())
        return CampaignResult(status, pages)
