"""Starting workflows from the API. Ids are deterministic and built in core.temporal, so a
repeated start of the same thing is the same run (conflict policy USE_EXISTING)."""

from __future__ import annotations

from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy

from core import temporal as ids
from workflows.receipt import ProcessReceiptWorkflow, ReceiptInput
from workflows.send_message import SendMessageInput, SendMessageResult, SendMessageWorkflow


async def start_send_message(
    client: Client, task_queue: str, *, project_id: str, message_id: str, user_id: str,
    channel: str,
) -> WorkflowHandle[SendMessageWorkflow, SendMessageResult]:
    return await client.start_workflow(
        SendMessageWorkflow.run,
        SendMessageInput(project_id=project_id, message_id=message_id),
        id=ids.send_message_workflow_id(message_id),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        memo={"projectId": project_id, "userId": user_id, "channel": channel},
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
