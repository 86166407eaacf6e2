"""ProcessReceiptWorkflow: one verified delivery receipt, id `receipt:{project}:{id}`."""

from __future__ import annotations

from dataclasses import dataclass

from temporalio import workflow

from workflows.options import DB

with workflow.unsafe.imports_passed_through():
    from activities.receipts import ProcessReceiptInput, ReceiptActivities


@dataclass
class ReceiptInput:
    project_id: str
    receipt_id: str


@workflow.defn
class ProcessReceiptWorkflow:
    @workflow.run
    async def run(self, input: ReceiptInput) -> str:
        result = await workflow.execute_activity_method(
            ReceiptActivities.process,
            ProcessReceiptInput(input.project_id, input.receipt_id),
            **DB.kwargs(),
        )
        return result.outcome
