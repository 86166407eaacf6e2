"""The outbox dispatcher: turns rows that ingestion wrote (in the event's own transaction)
into Temporal calls, so `POST /events` never waits on Temporal and no trigger is lost.

Runs in every worker process. Rows are claimed with FOR UPDATE SKIP LOCKED (many
dispatchers share the work), sent in concurrent batches, and deleted once Temporal has
them; a failure backs the row off and keeps it. Calls are idempotent (deterministic
workflow ids, events deduplicated by id inside the workflow), so a redelivery is
harmless. LISTEN/NOTIFY wakes the loop at once; a short poll covers missed notifications.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDReusePolicy,
)
from temporalio.service import RPCError, RPCStatusCode

from core import temporal as ids
from core.db import libpq_url, session_scope
from core.models import Automation, Enrollment, OutboxEntry
from core.segments import evaluate_properties
from core.settings import Settings
from workflows.enrollment import (
    AutomationEnrollmentWorkflow,
    CancelSignal,
    EnrollmentInput,
    EventSignal,
)

log = logging.getLogger("retenshun.outbox")
CHANNEL = "retenshun_outbox"
BATCH = 200
CONCURRENCY = 32
SA_PROJECT = SearchAttributeKey.for_keyword("projectId")
SA_AUTOMATION = SearchAttributeKey.for_keyword("automationId")
SA_USER = SearchAttributeKey.for_keyword("userId")


@dataclass(frozen=True)
class Call:
    """One Temporal call derived from an outbox row."""

    kind: str  # start | signal | cancel
    workflow_id: str
    args: Any = None
    memo: dict[str, Any] | None = None
    search: dict[str, str] | None = None


class OutboxDispatcher:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], client: Client,
                 settings: Settings):
        self._sessions = sessions
        self._client = client
        self._settings = settings
        self._gate = asyncio.Semaphore(CONCURRENCY)

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch until `stop` is set."""
        listener = await self._listen()
        try:
            while not stop.is_set():
                try:
                    handled = await self.dispatch_once()
                except Exception:
                    log.exception("outbox pass failed; retrying")
                    handled = 0
                if handled < BATCH:
                    await self._wait(listener, stop)
        finally:
            if listener is not None:
                await listener.close()

    async def _listen(self) -> psycopg.AsyncConnection[Any] | None:
        try:
            conn = await psycopg.AsyncConnection.connect(
                libpq_url(self._settings.database_url), autocommit=True)
            await conn.execute(f"LISTEN {CHANNEL}")
            return conn
        except psycopg.Error as exc:
            log.warning("LISTEN unavailable (%s); polling the outbox instead", exc)
            return None

    async def _wait(self, listener: psycopg.AsyncConnection[Any] | None,
                    stop: asyncio.Event) -> None:
        if listener is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
            return
        with contextlib.suppress(TimeoutError, psycopg.Error):
            async for _ in listener.notifies(timeout=1.0, stop_after=1):
                break

    async def dispatch_once(self) -> int:
        """Claim a batch, make its calls, delete what Temporal accepted. Returns the count."""
        async with session_scope(self._sessions) as db:
            rows = list(await db.scalars(
                select(OutboxEntry)
                .where(OutboxEntry.available_at <= datetime.now(UTC))
                .order_by(OutboxEntry.id).limit(BATCH)
                .with_for_update(skip_locked=True)))
            if not rows:
                return 0
            plans = await self._plan(db, rows)
            results = await asyncio.gather(*(self._run_calls(calls) for calls in plans.values()))
            done = [row_id for row_id, error in zip(plans, results, strict=True) if error is None]
            failed = {row_id: error for row_id, error in zip(plans, results, strict=True)
                      if error is not None}
            if done:
                await db.execute(delete(OutboxEntry).where(OutboxEntry.id.in_(done)))
            for row in rows:
                if row.id in failed:
                    row.attempts += 1
                    row.last_error = failed[row.id][:1000]
                    row.available_at = datetime.now(UTC) + timedelta(
                        seconds=min(60, 2 ** min(row.attempts, 6)))
                    log.warning("outbox row %s failed (attempt %s): %s", row.id, row.attempts,
                                failed[row.id])
            return len(rows)

    async def _plan(self, db: AsyncSession, rows: list[OutboxEntry]) -> dict[int, list[Call]]:
        projects = {row.project_id for row in rows}
        automations = list(await db.scalars(
            select(Automation).where(Automation.project_id.in_(projects))))
        by_project: dict[str, list[Automation]] = defaultdict(list)
        for automation in automations:
            by_project[automation.project_id].append(automation)
        plans: dict[int, list[Call]] = {}
        for row in rows:
            if row.kind == "event":
                plans[row.id] = await self._plan_event(db, row, by_project[row.project_id])
            elif row.kind == "segment_entry":
                plans[row.id] = self._plan_segment_entry(row, by_project[row.project_id])
            elif row.kind == "cancel":
                plans[row.id] = [Call("cancel", wid, row.payload.get("reason", "cancelled"))
                                 for wid in row.payload.get("workflowIds", [])]
            else:
                log.error("outbox row %s has unknown kind %r: dropped", row.id, row.kind)
                plans[row.id] = []
        return plans

    async def _plan_event(self, db: AsyncSession, row: OutboxEntry,
                          automations: list[Automation]) -> list[Call]:
        p = row.payload
        signal = EventSignal(event_id=p["eventId"], event_name=p["eventName"],
                             properties=p.get("properties") or {}, timestamp=p.get("timestamp"))
        calls: dict[str, Call] = {}
        for automation in automations:
            if not (automation.active and automation.trigger_type == "EVENT"
                    and automation.trigger_event == signal.event_name):
                continue
            if automation.trigger_filter and not evaluate_properties(
                    automation.trigger_filter, signal.properties):
                continue
            call = self._start_call(automation, p["userId"], signal)
            calls[call.workflow_id] = call
        # Running enrollments that watch this event (exit events, WAIT_FOR_EVENT).
        watching = [a.id for a in automations if signal.event_name in (a.watch_events or [])]
        if watching:
            running = await db.scalars(select(Enrollment.workflow_id).where(
                Enrollment.project_id == row.project_id, Enrollment.user_id == p["userId"],
                Enrollment.status == "running", Enrollment.automation_id.in_(watching)))
            for workflow_id in running:
                calls.setdefault(workflow_id, Call("signal", workflow_id, signal))
        return list(calls.values())

    def _plan_segment_entry(self, row: OutboxEntry, automations: list[Automation]) -> list[Call]:
        user_id = row.payload["userId"]
        return [
            self._start_call(a, user_id, None) for a in automations
            if a.active and a.trigger_type == "SEGMENT_ENTRY"
            and a.segment_id == row.payload.get("segmentId")
        ]

    def _start_call(self, automation: Automation, user_id: str, signal: Any) -> Call:
        start_signal = signal or EventSignal(
            event_id=f"segment-entry:{automation.segment_id}", event_name="$segment_entry")
        return Call(
            "start", ids.enrollment_workflow_id(automation.id, user_id),
            (EnrollmentInput(
                project_id=automation.project_id, automation_id=automation.id,
                user_id=user_id, version=automation.version, steps=automation.steps,
                exit_event=automation.exit_event, trigger=signal), start_signal),
            memo={"automation": automation.name, "automationId": automation.id,
                  "userId": user_id, "version": automation.version},
            search={"projectId": automation.project_id, "automationId": automation.id,
                    "userId": user_id},
        )

    async def _run_calls(self, calls: list[Call]) -> str | None:
        """None when every call succeeded, else the first error."""
        for call in calls:
            try:
                async with self._gate:
                    await self._call(call)
            except Exception as exc:
                return f"{call.kind} {call.workflow_id}: {exc}"
        return None

    async def _call(self, call: Call) -> None:
        if call.kind == "start":
            enrollment_input, start_signal = call.args
            search = None
            if self._settings.temporal_search_attributes and call.search:
                search = TypedSearchAttributes([
                    SearchAttributePair(SA_PROJECT, call.search["projectId"]),
                    SearchAttributePair(SA_AUTOMATION, call.search["automationId"]),
                    SearchAttributePair(SA_USER, call.search["userId"]),
                ])
            await self._client.start_workflow(
                AutomationEnrollmentWorkflow.run, enrollment_input, id=call.workflow_id,
                task_queue=self._settings.temporal_task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                start_signal="event", start_signal_args=[start_signal],
                memo=call.memo, search_attributes=search,
            )
            return
        handle = self._client.get_workflow_handle(call.workflow_id)
        try:
            if call.kind == "signal":
                await handle.signal(AutomationEnrollmentWorkflow.event, call.args)
            else:
                await handle.signal(AutomationEnrollmentWorkflow.cancel, CancelSignal(call.args))
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:  # the run ended meanwhile: fine
                raise

