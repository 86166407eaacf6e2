"""The Temporal worker: every workflow and activity of Retenshun on one task queue.

`retenshun worker` runs `main()`; run as many as the load needs, against one PostgreSQL
and one Temporal cluster. Activities are built here, once per process, with their
dependencies (engine, session maker, settings), so tests can build them the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio.client import Client
from temporalio.worker import Worker

from activities.ai import AiActivities
from activities.automations import AutomationActivities
from activities.campaigns import CampaignActivities
from activities.health import HealthActivities
from activities.messaging import MessagingActivities
from activities.receipts import ReceiptActivities
from activities.reports import ReportActivities
from activities.segments import SegmentActivities
from core.crypto import SecretBox
from core.db import make_async_engine, make_sessionmaker, sqlalchemy_url
from core.settings import Settings, get_settings
from workflows.ai import GenerateContentWorkflow
from workflows.campaign import CampaignWorkflow
from workflows.dispatcher import OutboxDispatcher
from workflows.enrollment import AutomationEnrollmentWorkflow
from workflows.ping import WorkerPingWorkflow
from workflows.receipt import ProcessReceiptWorkflow
from workflows.reports import ReportsRollupWorkflow
from workflows.segment_refresh import SegmentRecomputeWorkflow, SegmentRefreshWorkflow
from workflows.send_message import SendMessageWorkflow
from workflows.starts import ensure_segment_jobs

log = logging.getLogger("retenshun.worker")

WORKFLOWS: list[type] = [
    WorkerPingWorkflow, SendMessageWorkflow, ProcessReceiptWorkflow, AutomationEnrollmentWorkflow,
    GenerateContentWorkflow, ReportsRollupWorkflow,
    CampaignWorkflow, SegmentRefreshWorkflow, SegmentRecomputeWorkflow,
]

# How long a starting worker waits for Temporal before giving up (it may start first).
CONNECT_TIMEOUT_SECONDS = 60.0
# In-flight activities get this long to finish on SIGTERM before they are cancelled.
GRACEFUL_SHUTDOWN = timedelta(seconds=10)


class WorkerError(RuntimeError):
    """The worker cannot start or stopped on its own (Temporal unreachable, bad namespace)."""


@dataclass
class WorkerDeps:
    """What activities are built with: one of each per worker process."""

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    secrets: SecretBox
    # Provider calls: Temporal owns retries, so the client makes one attempt per call.
    http: httpx.AsyncClient


def build_activities(deps: WorkerDeps) -> list[Callable[..., Any]]:
    health = HealthActivities(deps.sessions)
    messaging = MessagingActivities(deps.sessions, deps.secrets, deps.settings, deps.http)
    receipts = ReceiptActivities(deps.sessions)
    ai = AiActivities(deps.sessions, deps.secrets, deps.settings)
    reports = ReportActivities(deps.sessions)
    automations = AutomationActivities(deps.sessions, messaging, ai)
    campaigns = CampaignActivities(deps.sessions, messaging)
    segments = SegmentActivities(deps.sessions)
    return [
        health.ping_database, messaging.deliver, messaging.mark_failed, receipts.process,
        automations.begin, automations.record_step, automations.finish,
        automations.evaluate_branch, automations.send_step,
        ai.generate, ai.generate_cached_content, reports.rollup_page,
        campaigns.begin, campaigns.plan, campaigns.send_page, campaigns.finish,
        segments.refresh, segments.recompute,
    ]


def _safe_db(url: str) -> str:
    try:
        return make_url(sqlalchemy_url(url)).render_as_string(hide_password=True)
    except Exception:
        return "<unparsable DATABASE_URL>"


def _short(exc: BaseException, limit: int = 240) -> str:
    text = (str(exc).splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def connect_temporal(
    settings: Settings,
    timeout: float = CONNECT_TIMEOUT_SECONDS,
    stop: asyncio.Event | None = None,
) -> Client | None:
    """Client.connect, retried with backoff until `timeout` seconds have passed.

    Returns None when `stop` is set while waiting (SIGTERM before Temporal was up)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay, attempt = 0.5, 0
    while True:
        attempt += 1
        try:
            return await Client.connect(
                settings.temporal_address, namespace=settings.temporal_namespace
            )
        except Exception as exc:
            if loop.time() + delay >= deadline:
                raise WorkerError(
                    f"cannot reach Temporal at {settings.temporal_address} after {attempt} "
                    f"attempts in {timeout:.0f} s ({_short(exc)}); is TEMPORAL_ADDRESS right?"
                ) from exc
            log.warning("Temporal at %s not reachable yet (attempt %d): %s; retrying in %.1f s",
                        settings.temporal_address, attempt, _short(exc), delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                return None
            delay = min(delay * 2, 5.0)


async def run_worker(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
) -> None:
    """Serve settings.temporal_task_queue until `stop` is set (or the task is cancelled)."""
    engine = make_async_engine(settings.database_url, settings.db_pool_size)
    http = httpx.AsyncClient(timeout=httpx.Timeout(20.0, connect=5.0))
    try:
        log.info("connecting to Temporal at %s (namespace %s); database %s",
                 settings.temporal_address, settings.temporal_namespace,
                 _safe_db(settings.database_url))
        stop = stop or asyncio.Event()
        client = await connect_temporal(settings, connect_timeout, stop)
        if client is None:
            log.info("stopped before Temporal was reachable")
            return
        deps = WorkerDeps(
            settings=settings, engine=engine, sessions=make_sessionmaker(engine),
            secrets=SecretBox(settings.secret_key), http=http,
        )
        activities = build_activities(deps)
        worker = Worker(
            client,
            task_queue=settings.temporal_task_queue,
            workflows=WORKFLOWS,
            activities=activities,
            graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
            identity=f"retenshun-worker@{socket.gethostname()}",
        )
        log.info("worker serving task queue %r (%d workflows, %d activities)",
                 settings.temporal_task_queue, len(WORKFLOWS), len(activities))
        try:  # segment membership refresher + recompute schedule (idempotent)
            await ensure_segment_jobs(client, settings.temporal_task_queue)
        except Exception as exc:
            log.warning("cannot start the segment refresher or its schedule: %s", _short(exc))
        # The outbox dispatcher turns ingested triggers into enrollment workflows.
        dispatcher = OutboxDispatcher(deps.sessions, client, settings)
        dispatching = asyncio.create_task(dispatcher.run(stop), name="outbox-dispatcher")
        try:
            await _serve(worker, stop)
        finally:
            stop.set()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(dispatching, 10)
    finally:
        await http.aclose()
        await engine.dispose()


async def _serve(worker: Worker, stop: asyncio.Event) -> None:
    run = asyncio.create_task(worker.run(), name="temporal-worker")
    stopping = asyncio.create_task(stop.wait(), name="worker-stop")
    try:
        await asyncio.wait({run, stopping}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        log.info("worker cancelled: shutting down")
        await _shutdown(worker, run)
        raise
    finally:
        stopping.cancel()
    if run.done():
        exc = run.exception()
        if exc is not None:
            raise WorkerError(f"the Temporal worker stopped: {exc}") from exc
        return
    log.info("shutting down (in-flight activities get %s)", GRACEFUL_SHUTDOWN)
    await _shutdown(worker, run)
    log.info("worker stopped")


async def _shutdown(worker: Worker, run: asyncio.Task[None]) -> None:
    await worker.shutdown()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await run


def main() -> None:
    """Entry point of `retenshun worker`: logs to stderr, stops cleanly on SIGTERM / Ctrl-C."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_worker(settings, stop=stop)

    try:
        asyncio.run(_main())
    except WorkerError as exc:
        log.error("%s", exc)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
