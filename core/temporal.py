"""Temporal client access, task queue and workflow-id builders: the one place they are made."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

from temporalio.client import Client

from core.settings import Settings


class TemporalConnector:
    """Connects lazily and reconnects after failure, so the API starts (and ingests) without
    Temporal, and /healthz tells the truth about it."""

    def __init__(self, settings: Settings):
        self.address = settings.temporal_address
        self.namespace = settings.temporal_namespace
        self._client: Client | None = None
        self._lock = asyncio.Lock()

    async def client(self, timeout: float = 5.0) -> Client:
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                self._client = await asyncio.wait_for(
                    Client.connect(self.address, namespace=self.namespace), timeout
                )
        return self._client

    async def healthy(self, timeout: float = 2.0) -> bool:
        try:
            client = await self.client(timeout)
            return await asyncio.wait_for(client.service_client.check_health(), timeout)
        except Exception:
            return False


async def connect(settings: Settings) -> Client:
    return await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)


# --- workflow ids: deterministic, readable in the Temporal UI, built only here ---


def send_message_workflow_id(message_id: str) -> str:
    """A message's send run is named by the message id itself."""
    return message_id


def receipt_workflow_id(project_id: str, receipt_id: str) -> str:
    return f"receipt:{project_id}:{receipt_id}"


def enrollment_workflow_id(automation_id: str, user_id: str) -> str:
    """One id per (automation, user): Temporal itself keeps one running enrollment."""
    return f"enroll:{automation_id}:{user_id}"


def workflow_ui_url(ui_base: str, namespace: str, workflow_id: str, run_id: str | None = None,
                    ) -> str:
    """A link into the Temporal UI for operators."""
    url = (f"{ui_base.rstrip('/')}/namespaces/{quote(namespace)}/workflows/"
           f"{quote(workflow_id, safe='')}")
    return f"{url}/{run_id}/history" if run_id else url


def ai_generate_workflow_id(project_id: str, nonce: str) -> str:
    """One run per POST /ai/generate (the nonce is made by the API)."""
    return f"ai-generate:{project_id}:{nonce}"


REPORTS_ROLLUP_SCHEDULE_ID = "reports-rollup"


def reports_rollup_workflow_id(project_id: str | None) -> str:
    """The on-demand rollup of one project's report days; None: every project (the
    schedule's runs get their own ids from Temporal)."""
    return f"reports-rollup:{project_id}" if project_id else "reports-rollup:all"


# --- segments and campaigns ---


def segment_refresh_workflow_id(task_queue: str) -> str:
    """The membership refresher: one per task queue (started by each worker, idempotent)."""
    return f"segment-refresh:{task_queue}"


def segment_recompute_schedule_id(task_queue: str) -> str:
    """The Temporal Schedule that re-evaluates time-relative segments."""
    return f"segment-recompute:{task_queue}"


def segment_recompute_workflow_id(task_queue: str) -> str:
    return f"segment-recompute:{task_queue}"


def campaign_workflow_id(campaign_id: str) -> str:
    return f"campaign:{campaign_id}"
