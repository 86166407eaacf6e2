"""SendMessageWorkflow: one message from POST /messages. Its id is the message id, so a
repeated start is the same run, and the Temporal UI shows it under the message's id."""

from __future__ import annotations

from dataclasses import dataclass

from temporalio import workflow
from temporalio.exceptions import ActivityError

from workflows.options import DB, SEND

with workflow.unsafe.imports_passed_through():
    from activities.messaging import (
        DeliverInput,
        MarkFailedInput,
        MessagingActivities,
    )


@dataclass
class SendMessageInput:
    project_id: str
    message_id: str


@dataclass
class SendMessageResult:
    status: str
    error: str | None = None


@workflow.defn
class SendMessageWorkflow:
    @workflow.run
    async def run(self, input: SendMessageInput) -> SendMessageResult:
        try:
            result = await workflow.execute_activity_method(
                MessagingActivities.deliver,
                DeliverInput(project_id=input.project_id, message_id=input.message_id),
                **SEND.kwargs(),
            )
        except ActivityError as err:
            # Retries ran out (a provider down for a day): say so on the message.
            reason = f"delivery gave up after retries: {err.cause or err}"
            await workflow.execute_activity_method(
                MessagingActivities.mark_failed,
                MarkFailedInput(input.project_id, input.message_id, reason),
                **DB.kwargs(),
            )
            return SendMessageResult("failed", reason)
        return SendMessageResult(result.status, result.error)
