"""WorkerPingWorkflow: one activity round trip through the task queue and PostgreSQL.

`retenshun dev` runs it after start-up to prove that a worker serves the task queue;
operators can run it against any deployment for the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from temporalio import workflow

from workflows.options import DB

with workflow.unsafe.imports_passed_through():
    from activities.health import HealthActivities, PingDatabaseInput


@dataclass
class WorkerPingInput:
    reason: str = "worker ping"


def ping_workflow_id(nonce: str) -> str:
    """Ids of ping runs: one per check, so concurrent checks never collide."""
    return f"worker-ping:{nonce}"


@workflow.defn
class WorkerPingWorkflow:
    @workflow.run
    async def run(self, input: WorkerPingInput) -> str:
        """Returns the PostgreSQL version string that the worker's activity read."""
        return await workflow.execute_activity_method(
            HealthActivities.ping_database, PingDatabaseInput(reason=input.reason), **DB.kwargs()
        )
