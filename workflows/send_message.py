"""SendMessageWorkflow: one message from POST /messages. Its id is the message id, so a
repeated start is the same run, and the Temporal UI shows it under the message's id.

`deliver` runs as a *local* activity: one workflow task does the whole send (the
activity's claim/record protocol keeps it exactly-once, and Temporal still retries it with
the SEND preset for up to a day), instead of workflow task + activity task + workflow
task. Runs started before this change scheduled a regular activity; `workflow.patched`
keeps their replay on that path.

Not sandboxed: the run is two activity calls and no other code (no clock, randomness or
I/O of its own), so the sandbox's only effect was its cost, a fresh module instance per
run (~20% of the worker's CPU per send).
"""

from __future__ import annotations

from dataclasses import dataclass

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.exceptions import TimeoutError as TemporalTimeoutError

from workflows.options import DB, SEND

with workflow.unsafe.imports_passed_through():
    from activities.messaging import (
        DeliverInput,
        MarkFailedInput,
        MessagingActivities,
    )

# Runs that reached `deliver` before it became a local activity replay the old commands.
LOCAL_DELIVER_PATCH = "send-deliver-local-activity"


@dataclass
class SendMessageInput:
    project_id: str
    message_id: str


@dataclass
class SendMessageResult:
    status: str
    error: str | None = None


@workflow.defn(sandboxed=False)
class SendMessageWorkflow:
    @workflow.run
    async def run(self, input: SendMessageInput) -> SendMessageResult:
        local = workflow.patched(LOCAL_DELIVER_PATCH)
        deliver = DeliverInput(project_id=input.project_id, message_id=input.message_id)
        try:
            if local:
                result = await workflow.execute_local_activity_method(
                    MessagingActivities.deliver, deliver, **SEND.kwargs())
            else:
                result = await workflow.execute_activity_method(
                    MessagingActivities.deliver, deliver, **SEND.kwargs())
        # A regular activity's failure arrives as ActivityError (cause: the error); a local
        # activity's as the error itself (ApplicationError, or a timeout).
        except (ActivityError, ApplicationError, TemporalTimeoutError) as err:
            # Retries ran out (a provider down for a day) or the message is gone: say so
            # on the message.
            reason = f"delivery gave up after retries: {err.cause or err}"
            failed = MarkFailedInput(input.project_id, input.message_id, reason)
            if local:
                await workflow.execute_local_activity_method(
                    MessagingActivities.mark_failed, failed, **DB.kwargs())
            else:
                await workflow.execute_activity_method(
                    MessagingActivities.mark_failed, failed, **DB.kwargs())
            return SendMessageResult("failed", reason)
        return SendMessageResult(result.status, result.error)
