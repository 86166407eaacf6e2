"""Starting workflows from the API. Ids are deterministic and built in core.temporal, so a
repeated start of the same thing is the same run (conflict policy USE_EXISTING)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.exceptions import TimeoutError as TemporalTimeout
from temporalio.service import RPCError, RPCStatusCode

from core import temporal as ids
from core.errors import RetenshunError, ServiceUnavailable
from workflows.ai import (
    INTERACTIVE_BUDGET,
    GenerateContentInput,
    GenerateContentWorkflow,
    GeneratedContent,
)
from workflows.campaign import CampaignInput, CampaignWorkflow, RescheduleInput
from workflows.receipt import ProcessReceiptWorkflow, ReceiptInput
from workflows.reports import ROLLUP_EVERY, ReportsRollupWorkflow, RollupInput, RollupResult
from workflows.segment_refresh import (
    SegmentRecomputeInput,
    SegmentRecomputeWorkflow,
    SegmentRefreshInput,
    SegmentRefreshWorkflow,
)
from workflows.send_message import SendMessageInput, SendMessageResult, SendMessageWorkflow


async def start_send_message(
    client: Client, task_queue: str, *, project_id: str, message_id: str,
) -> WorkflowHandle[SendMessageWorkflow, SendMessageResult]:
    # No memo: the id is the message id, which names project, user and channel in GET
    # /messages/{id}, and the worker pays for every memo payload it decodes (~6% of its
    # CPU per send).
    return await client.start_workflow(
        SendMessageWorkflow.run,
        SendMessageInput(project_id=project_id, message_id=message_id),
        id=ids.send_message_workflow_id(message_id),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )


async def start_process_receipt(
    client: Client, task_queue: str, *, project_id: str, receipt_id: str, event: str,
) -> None:
    await client.start_workflow(
        ProcessReceiptWorkflow.run,
        ReceiptInput(project_id=project_id, receipt_id=receipt_id),
        id=ids.receipt_workflow_id(project_id, receipt_id),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        memo={"projectId": project_id, "event": event},
    )



# --- AI content (POST /ai/generate) ---


async def generate_content(
    client: Client, task_queue: str, *, project_id: str, channel: str, context: str,
    tone: str | None,
) -> GeneratedContent:
    """Run one GenerateContentWorkflow and wait for it; failures become core.errors with
    the status the API answers (503 not configured, 502 unusable or refused, 504 late)."""
    try:
        handle = await client.start_workflow(
            GenerateContentWorkflow.run,
            GenerateContentInput(project_id=project_id, channel=channel, context=context,
                                 tone=tone),
            id=ids.ai_generate_workflow_id(project_id, uuid.uuid4().hex),
            task_queue=task_queue,
            execution_timeout=INTERACTIVE_BUDGET + timedelta(seconds=20),
            memo={"projectId": project_id, "channel": channel},
        )
    except Exception as exc:
        raise ServiceUnavailable(
            "The workflow engine (Temporal) is unavailable; no content was generated"
        ) from exc
    wait = INTERACTIVE_BUDGET.total_seconds() + 5
    try:
        return await asyncio.wait_for(handle.result(), wait)
    except TimeoutError as exc:
        raise _late() from exc
    except WorkflowFailureError as exc:
        raise _generation_error(exc) from None


def _late() -> RetenshunError:
    return RetenshunError(
        f"The AI server did not produce a usable answer within "
        f"{INTERACTIVE_BUDGET.total_seconds():.0f} s (retries included); try again later",
        status=504)


def _generation_error(exc: WorkflowFailureError) -> RetenshunError:
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ApplicationError | TemporalTimeout):
        cause = getattr(cause, "cause", None) or cause.__cause__
    if isinstance(cause, TemporalTimeout):  # the activity's schedule-to-close budget
        return _late()
    if isinstance(cause, ApplicationError):
        if cause.non_retryable and cause.details and isinstance(cause.details[0], int):
            return RetenshunError(cause.message, status=cause.details[0])
        return RetenshunError(
            f"The AI server kept failing, so generation gave up after retries: "
            f"{cause.message}", status=502)
    return RetenshunError(f"AI generation failed: {exc}", status=502)


# --- report rollups ---


async def start_reports_rollup(client: Client, task_queue: str, *, project_id: str,
                               ) -> WorkflowHandle[ReportsRollupWorkflow, RollupResult]:
    """Roll up one project's due days now (one run at a time per project)."""
    return await client.start_workflow(
        ReportsRollupWorkflow.run,
        RollupInput(project_id=project_id),
        id=ids.reports_rollup_workflow_id(project_id),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        memo={"projectId": project_id},
    )


async def ensure_reports_schedule(client: Client, task_queue: str) -> bool:
    """Create the `reports-rollup` Schedule (every project, every ROLLUP_EVERY) unless it
    exists; True when this call created it."""
    try:
        await client.create_schedule(
            ids.REPORTS_ROLLUP_SCHEDULE_ID,
            Schedule(
                action=ScheduleActionStartWorkflow(
                    ReportsRollupWorkflow.run, RollupInput(),
                    id=ids.reports_rollup_workflow_id(None), task_queue=task_queue,
                ),
                spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=ROLLUP_EVERY)]),
                policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
            ),
        )
    except ScheduleAlreadyRunningError:
        return False
    return True


# --- segments: membership refresher and the recompute schedule ---

SEGMENT_RECOMPUTE_EVERY = timedelta(minutes=5)


async def ensure_segment_jobs(client: Client, task_queue: str, *,
                              every: timedelta = SEGMENT_RECOMPUTE_EVERY) -> None:
    """Start the membership refresher (`segment-refresh:{queue}`) unless it runs, and create
    the `segment-recompute:{queue}` Schedule unless it exists. Called by every worker at
    start-up; idempotent. A refresher whose workers are all gone times out after its run
    timeout (2 h) and is started again by the next worker."""
    await client.start_workflow(
        SegmentRefreshWorkflow.run, SegmentRefreshInput(),
        id=ids.segment_refresh_workflow_id(task_queue), task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        run_timeout=timedelta(hours=2),
    )
    try:
        await client.create_schedule(
            ids.segment_recompute_schedule_id(task_queue),
            Schedule(
                action=ScheduleActionStartWorkflow(
                    SegmentRecomputeWorkflow.run, SegmentRecomputeInput(),
                    id=ids.segment_recompute_workflow_id(task_queue), task_queue=task_queue,
                    execution_timeout=timedelta(hours=1),
                ),
                spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
                policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
            ),
        )
    except ScheduleAlreadyRunningError:
        pass


# --- campaigns ---


async def schedule_campaign(client: Client, task_queue: str, *, project_id: str,
                            campaign_id: str, scheduled_at: datetime) -> None:
    """Signal-with-start `campaign:{id}`: a sleeping run wakes with the new time, and a
    campaign without a running workflow gets one."""
    when = scheduled_at.isoformat()
    await client.start_workflow(
        CampaignWorkflow.run,
        CampaignInput(project_id=project_id, campaign_id=campaign_id, scheduled_at=when),
        id=ids.campaign_workflow_id(campaign_id), task_queue=task_queue,
        start_signal="reschedule", start_signal_args=[RescheduleInput(when)],
        memo={"projectId": project_id, "campaignId": campaign_id},
    )


async def _quietly(call: object) -> None:
    try:
        await call  # type: ignore[misc]
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise


async def unschedule_campaign(client: Client, campaign_id: str) -> None:
    """Tell a sleeping run the campaign is a DRAFT again (nothing to do if none runs)."""
    handle = client.get_workflow_handle(ids.campaign_workflow_id(campaign_id))
    await _quietly(handle.signal(CampaignWorkflow.reschedule, RescheduleInput(None)))


async def cancel_campaign(client: Client, campaign_id: str) -> None:
    """Cancel the campaign's run (sleeping or sending); nothing to do if none runs."""
    await _quietly(client.get_workflow_handle(ids.campaign_workflow_id(campaign_id)).cancel())
