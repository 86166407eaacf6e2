"""The outbox dispatcher: turns rows that ingestion wrote (in the event's own transaction)
into Temporal calls, so `POST /events` never waits on Temporal and no trigger is lost.

Runs in every worker process, as a pipeline:

- **claim**: `UPDATE outbox SET available_at = now() + LEASE … WHERE id IN (SELECT …
  FOR UPDATE SKIP LOCKED) RETURNING …`, committed at once. A claimed row is invisible to
  every dispatcher (this one included) until its lease runs out, so many dispatchers
  share the work, and the rows of a dispatcher that crashed come back after the lease.
  Rows still being worked on have their lease extended.
- **plan** (same short transaction as the claim): the automations of the batch's projects,
  and ONE enrollments query for the rows whose event running enrollments may await
  (exit events, WAIT_FOR_EVENT) and that no signal-with-start already reaches.
- **call**: up to CONCURRENCY Temporal calls in flight at all times; claiming goes on
  while calls run (up to MAX_OUTSTANDING rows claimed and not settled), unless the
  workers are behind: no more than MAX_BACKLOG workflow tasks wait in the task queue.
- **settle**: rows whose calls all succeeded are deleted in small groups; a failed row is
  kept and backed off (2 s … 60 s).

Calls are idempotent (deterministic workflow ids `enroll:{automation}:{user}`, events
deduplicated by id inside the workflow), so a row handled twice (lease expired under a
slow call, crash between call and delete) is harmless. LISTEN/NOTIFY wakes the loop at
once; a short idle poll (IDLE_POLL) covers missed or absent notifications.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
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
BATCH = 200  # rows per claim at most
CONCURRENCY = 32  # Temporal calls in flight
MAX_OUTSTANDING = 128  # rows claimed and not settled yet; claim again below half of it
LEASE = timedelta(seconds=30)  # a claimed row comes back after this unless settled/extended
IDLE_POLL = 0.15  # seconds between polls of an empty outbox (NOTIFY wakes it sooner)
SETTLE_EVERY = 0.05  # seconds between deletes of finished rows
RPC_TIMEOUT = timedelta(seconds=10)  # one Temporal call; well inside the lease
# Backpressure: claim no more while the task queue holds this many workflow tasks that
# no worker has picked up yet (new runs' first tasks, mostly). Starting runs faster than
# the workers begin them only moves the queue from PostgreSQL into Temporal, where a
# backlog costs the server more (tasks spill from memory to its database) and delays the
# tasks of runs already under way. Read every BACKLOG_EVERY seconds while claiming.
MAX_BACKLOG = 100
BACKLOG_EVERY = 0.2
STOP_GRACE = 5.0  # on stop: seconds for calls in flight to finish before rows are released
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


@dataclass
class Row:
    """A claimed outbox row (plain values: no ORM object outlives the claim)."""

    id: int
    project_id: str
    kind: str
    payload: dict[str, Any]
    attempts: int


def _backoff(attempts: int) -> float:
    return float(min(60, 2 ** min(attempts, 6)))


class OutboxDispatcher:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], client: Client,
                 settings: Settings):
        self._sessions = sessions
        self._client = client
        self._settings = settings
        self._gate = asyncio.Semaphore(CONCURRENCY)
        self._inflight: dict[int, asyncio.Task[None]] = {}  # row id -> its calls
        self._done: list[int] = []
        self._failed: list[tuple[Row, str]] = []
        self._room = asyncio.Event()
        self._settle_now = asyncio.Event()
        self._backlog = 0  # workflow tasks waiting in the task queue (last reading)
        self._backlog_at = 0.0  # time.monotonic() of that reading
        self._backlog_off_until = 0.0  # not readable (old server): retry after this

    # --- the pipeline ---

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch until `stop` is set."""
        listener = await self._listen()
        settler = asyncio.create_task(self._settle_loop(stop), name="outbox-settle")
        busy = False  # the last claim found rows
        try:
            while not stop.is_set():
                room = MAX_OUTSTANDING - len(self._inflight)
                if room < MAX_OUTSTANDING // 2:
                    self._room.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._room.wait(), IDLE_POLL)
                    continue
                limit = min(BATCH, room)
                if busy:  # only read while there is work: an idle poll costs no RPC
                    limit = min(limit, MAX_BACKLOG - await self._task_backlog())
                if limit <= 0:  # the workers are behind: let them catch up first
                    await self._pause(stop, BACKLOG_EVERY)
                    continue
                try:
                    claimed = await self._claim_and_launch(limit)
                    self._backlog += claimed  # about one new task each, until re-read
                    busy = claimed > 0
                except Exception:
                    log.exception("outbox pass failed; retrying")
                    await self._pause(stop, 1.0)
                    continue
                if claimed < limit:
                    await self._wait(listener, stop)
        finally:
            await self._drain(settler)
            if listener is not None:
                await listener.close()

    async def dispatch_once(self) -> int:
        """Claim one batch, make its calls, settle its rows; returns the rows claimed.
        (The loop in `run` overlaps these steps; this is the same work, one batch.)"""
        claimed = await self._claim_and_launch(BATCH)
        if self._inflight:
            await asyncio.gather(*self._inflight.values(), return_exceptions=True)
        await self._settle()
        return claimed

    async def _claim_and_launch(self, limit: int) -> int:
        async with session_scope(self._sessions) as db:
            rows = await self._claim(db, limit)
            if not rows:
                return 0
            plans = await self._plan(db, rows)
        for row in rows:
            task = asyncio.create_task(self._process(row, plans.get(row.id, [])))
            self._inflight[row.id] = task
        return len(rows)

    async def _claim(self, db: AsyncSession, limit: int) -> list[Row]:
        due = (select(OutboxEntry.id).where(OutboxEntry.available_at <= func.now())
               .order_by(OutboxEntry.id).limit(limit).with_for_update(skip_locked=True))
        result = await db.execute(
            update(OutboxEntry).where(OutboxEntry.id.in_(due))
            .values(available_at=func.now() + LEASE)
            .returning(OutboxEntry.id, OutboxEntry.project_id, OutboxEntry.kind,
                       OutboxEntry.payload, OutboxEntry.attempts)
            .execution_options(synchronize_session=False))
        rows = [Row(*r) for r in result]
        rows.sort(key=lambda r: r.id)
        return rows

    async def _process(self, row: Row, calls: list[Call]) -> None:
        try:
            error = await self._run_calls(calls)
        except Exception as exc:  # defensive: a planning bug must not lose the row
            error = f"{type(exc).__name__}: {exc}"
        if error is None:
            self._done.append(row.id)
        else:
            self._failed.append((row, error))
        if len(self._done) >= CONCURRENCY or error is not None:
            self._settle_now.set()

    async def _settle_loop(self, stop: asyncio.Event) -> None:
        last_extend = time.monotonic()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settle_now.wait(), SETTLE_EVERY)
            self._settle_now.clear()
            try:
                await self._settle()
                if time.monotonic() - last_extend > LEASE.total_seconds() / 3:
                    last_extend = time.monotonic()
                    await self._extend_leases()
            except Exception:
                log.exception("settling outbox rows failed; retrying")
                await self._pause(stop, 1.0)

    async def _settle(self) -> None:
        """Delete the rows whose calls succeeded, back off the failed ones."""
        for task_id in [i for i, t in self._inflight.items() if t.done()]:
            del self._inflight[task_id]
        if len(self._inflight) < MAX_OUTSTANDING // 2:
            self._room.set()
        done, self._done = self._done, []
        failed, self._failed = self._failed, []
        if not done and not failed:
            return
        try:
            async with session_scope(self._sessions) as db:
                if done:
                    await db.execute(delete(OutboxEntry).where(OutboxEntry.id.in_(done)))
                for row, error in failed:
                    attempts = row.attempts + 1
                    await db.execute(
                        update(OutboxEntry).where(OutboxEntry.id == row.id).values(
                            attempts=attempts, last_error=error[:1000],
                            available_at=func.now() + timedelta(seconds=_backoff(attempts)))
                        .execution_options(synchronize_session=False))
                    log.warning("outbox row %s failed (attempt %s): %s", row.id, attempts,
                                error)
        except BaseException:
            self._done.extend(done)  # try again next time; the leases cover the meantime
            self._failed.extend(failed)
            raise

    async def _extend_leases(self) -> None:
        """Rows still being worked on keep their lease (a long multi-call cancel row)."""
        pending = [i for i, t in self._inflight.items() if not t.done()]
        if pending:
            async with session_scope(self._sessions) as db:
                await db.execute(update(OutboxEntry).where(OutboxEntry.id.in_(pending))
                                 .values(available_at=func.now() + LEASE)
                                 .execution_options(synchronize_session=False))

    async def _drain(self, settler: asyncio.Task[None]) -> None:
        """On stop: let calls in flight finish briefly, settle, release the rest."""
        pending = [t for t in self._inflight.values() if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=STOP_GRACE)
        unfinished = [i for i, t in self._inflight.items() if not t.done()]
        for task in self._inflight.values():
            task.cancel()
        settler.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await settler
        with contextlib.suppress(Exception):
            await self._settle()
            if unfinished:  # available again at once, to any dispatcher
                async with session_scope(self._sessions) as db:
                    await db.execute(update(OutboxEntry).where(OutboxEntry.id.in_(unfinished))
                                     .values(available_at=func.now())
                                     .execution_options(synchronize_session=False))
        self._inflight.clear()

    async def _task_backlog(self) -> int:
        """Workflow tasks of our task queue that no worker has started (approximate, from
        Temporal's DescribeTaskQueue stats; 0 when the server does not report them)."""
        now = time.monotonic()
        if now - self._backlog_at < BACKLOG_EVERY or now < self._backlog_off_until:
            return self._backlog if now >= self._backlog_off_until else 0
        self._backlog_at = now
        try:
            answer = await self._client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace=self._client.namespace,
                    task_queue=TaskQueue(name=self._settings.temporal_task_queue),
                    task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
                    report_stats=True),
                timeout=timedelta(seconds=2))
            self._backlog = int(answer.stats.approximate_backlog_count)
        except Exception as exc:  # backpressure is an optimisation: never block on it
            log.info("task queue backlog unavailable (%s); dispatching without it for 60 s",
                     exc)
            self._backlog, self._backlog_off_until = 0, now + 60
        return self._backlog

    @staticmethod
    async def _pause(stop: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)

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
            await self._pause(stop, IDLE_POLL)
            return
        with contextlib.suppress(TimeoutError, psycopg.Error):
            async for _ in listener.notifies(timeout=IDLE_POLL, stop_after=1):
                break

    # --- planning: outbox rows -> Temporal calls ---

    async def _plan(self, db: AsyncSession, rows: list[Row]) -> dict[int, list[Call]]:
        projects = {row.project_id for row in rows}
        automations = list(await db.scalars(
            select(Automation).where(Automation.project_id.in_(projects))))
        by_project: dict[str, list[Automation]] = defaultdict(list)
        for automation in automations:
            by_project[automation.project_id].append(automation)
        plans: dict[int, list[Call]] = {}
        # (row id) -> automations whose running enrollments of that row's user must be
        # looked up: they watch the event and no signal-with-start reaches their run.
        lookups: dict[int, list[str]] = {}
        for row in rows:
            if row.kind == "event":
                plans[row.id], lookup = self._plan_event(row, by_project[row.project_id])
                if lookup:
                    lookups[row.id] = lookup
            elif row.kind == "segment_entry":
                plans[row.id] = self._plan_segment_entry(row, by_project[row.project_id])
            elif row.kind == "cancel":
                plans[row.id] = [Call("cancel", wid, row.payload.get("reason", "cancelled"))
                                 for wid in row.payload.get("workflowIds", [])]
            else:
                log.error("outbox row %s has unknown kind %r: dropped", row.id, row.kind)
                plans[row.id] = []
        if lookups:
            await self._route_to_running(db, rows, plans, lookups)
        return plans

    async def _route_to_running(self, db: AsyncSession, rows: list[Row],
                                plans: dict[int, list[Call]],
                                lookups: dict[int, list[str]]) -> None:
        """One query for the whole batch: the running enrollments of the rows' users in the
        automations that watch their events; each gets the event as a signal."""
        by_id = {row.id: row for row in rows}
        users = sorted({by_id[rid].payload["userId"] for rid in lookups})
        autos = sorted({a for wanted in lookups.values() for a in wanted})
        running: dict[tuple[str, str, str], list[str]] = defaultdict(list)
        result = await db.execute(
            select(Enrollment.project_id, Enrollment.user_id, Enrollment.automation_id,
                   Enrollment.workflow_id)
            .where(Enrollment.status == "running",
                   Enrollment.user_id.in_(users), Enrollment.automation_id.in_(autos)))
        for project_id, user_id, automation_id, workflow_id in result:
            running[(project_id, user_id, automation_id)].append(workflow_id)
        for rid, wanted in lookups.items():
            row = by_id[rid]
            signal = _event_signal(row.payload)
            calls = {c.workflow_id for c in plans[rid]}
            for automation_id in wanted:
                for workflow_id in running.get(
                        (row.project_id, row.payload["userId"], automation_id), []):
                    if workflow_id not in calls:
                        calls.add(workflow_id)
                        plans[rid].append(Call("signal", workflow_id, signal))

    def _plan_event(self, row: Row, automations: list[Automation],
                    ) -> tuple[list[Call], list[str]]:
        """The row's signal-with-start calls, and the automations whose running
        enrollments need a lookup (they watch this event, as an exit event or a
        WAIT_FOR_EVENT of some version, and this event starts nothing there: a
        signal-with-start already delivers the event to a running run)."""
        p = row.payload
        signal = _event_signal(p)
        calls: dict[str, Call] = {}
        started: set[str] = set()
        for automation in automations:
            if not (automation.active and automation.trigger_type == "EVENT"
                    and automation.trigger_event == signal.event_name):
                continue
            if automation.trigger_filter and not evaluate_properties(
                    automation.trigger_filter, signal.properties):
                continue
            call = self._start_call(automation, p["userId"], signal)
            calls[call.workflow_id] = call
            started.add(automation.id)
        lookup = [a.id for a in automations
                  if a.id not in started and signal.event_name in (a.watch_events or [])]
        return list(calls.values()), lookup

    def _plan_segment_entry(self, row: Row, automations: list[Automation]) -> list[Call]:
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

    # --- Temporal calls ---

    async def _run_calls(self, calls: list[Call]) -> str | None:
        """None when every call succeeded, else the first error."""
        if len(calls) == 1:
            return await self._one(calls[0])
        errors = await asyncio.gather(*(self._one(call) for call in calls))
        return next((e for e in errors if e is not None), None)

    async def _one(self, call: Call) -> str | None:
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
                memo=call.memo, search_attributes=search, rpc_timeout=RPC_TIMEOUT,
            )
            return
        handle = self._client.get_workflow_handle(call.workflow_id)
        try:
            if call.kind == "signal":
                await handle.signal(AutomationEnrollmentWorkflow.event, call.args,
                                    rpc_timeout=RPC_TIMEOUT)
            else:
                await handle.signal(AutomationEnrollmentWorkflow.cancel, CancelSignal(call.args),
                                    rpc_timeout=RPC_TIMEOUT)
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:  # the run ended meanwhile: fine
                raise


def _event_signal(p: dict[str, Any]) -> EventSignal:
    return EventSignal(event_id=p["eventId"], event_name=p["eventName"],
                       properties=p.get("properties") or {}, timestamp=p.get("timestamp"))
