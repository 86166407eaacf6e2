"""A send is exactly-once: the activity run twice, and a worker killed (SIGKILL) right
after the provider accepted the mail, both leave one mail and a `sent` row. Also: saved
SendMessageWorkflow histories (before and after `deliver` became a local activity) still
replay, so sends in flight during an upgrade finish."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from temporalio.client import Client, WorkflowHistory
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Replayer

from activities.messaging import DeliverInput, MessagingActivities
from core.crypto import SecretBox
from core.db import make_async_engine, make_sessionmaker
from core.settings import Settings
from tests.activities.fakes import SmtpSink
from tests.faults import KillingSmtpSink, start_worker_process
from tests.support import Tenant
from workflows.send_message import SendMessageInput, SendMessageWorkflow


def _configure_and_queue(tenant: Tenant, sink: SmtpSink, db: psycopg.Connection) -> str:
    """Point the tenant's email at the sink and store one queued message (no workflow)."""
    tenant.sk.put("/channels", json={"emailProvider": "SMTP", "smtpHost": "127.0.0.1",
                                     "smtpPort": sink.port,
                                     "smtpFromEmail": "hi@acme.example.com"})
    tenant.pk.post("/identify", json={"userId": "u", "email": "u@example.com"})
    message_id = f"msg_{uuid.uuid4().hex}"
    db.execute(
        "INSERT INTO messages (id, project_id, user_id, channel, subject, body, send_key, "
        "to_address) VALUES (%s, %s, 'u', 'EMAIL', 'Once', '<p>only once</p>', %s, "
        "'u@example.com')", (message_id, tenant.project_id, message_id))
    return message_id


@pytest.fixture
async def activities(settings: Settings) -> AsyncIterator[MessagingActivities]:
    engine = make_async_engine(settings.database_url, 2)
    async with httpx.AsyncClient() as http:
        yield MessagingActivities(make_sessionmaker(engine), SecretBox(settings.secret_key),
                                  settings, http)
    await engine.dispose()


async def test_send_activity_run_twice_delivers_one_mail(
    tenant: Tenant, db: psycopg.Connection, activities: MessagingActivities,
) -> None:
    with SmtpSink() as sink:
        message_id = _configure_and_queue(tenant, sink, db)
        env = ActivityEnvironment()
        first = await env.run(activities.deliver, DeliverInput(tenant.project_id, message_id))
        second = await env.run(activities.deliver, DeliverInput(tenant.project_id, message_id))
        await asyncio.sleep(0.3)
        assert (first.status, second.status) == ("sent", "sent")
        assert len(sink.messages) == 1
    row = db.execute("SELECT status, provider, sent_at IS NOT NULL FROM messages WHERE id = %s",
                     (message_id,)).fetchone()
    assert row == ("sent", "SMTP", True)


@pytest.fixture
def worker_process(settings: Settings) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """`retenshun worker` processes on a queue of their own (the in-process test worker
    must not take these tasks)."""
    queue = f"exactly-once-{uuid.uuid4().hex[:8]}"
    procs: list[subprocess.Popen[bytes]] = []
    yield queue, procs
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(15)


async def test_worker_killed_after_provider_accepted_sends_once(
    tenant: Tenant, db: psycopg.Connection, settings: Settings,
    worker_process: tuple[str, list[subprocess.Popen[bytes]]],
) -> None:
    queue, procs = worker_process
    with KillingSmtpSink() as sink:
        message_id = _configure_and_queue(tenant, sink, db)
        sink.victim = start_worker_process(settings, queue)
        procs.append(sink.victim)
        client = await Client.connect(settings.temporal_address)
        handle = await client.start_workflow(
            SendMessageWorkflow.run, SendMessageInput(tenant.project_id, message_id),
            id=message_id, task_queue=queue)
        await sink.wait_for(1, timeout=30)
        deadline = time.monotonic() + 10
        while sink.victim.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert sink.victim.returncode == -signal.SIGKILL
        # The provider has the mail; the dead worker never recorded it.
        status = db.execute("SELECT status FROM messages WHERE id = %s", (message_id,)).fetchone()
        assert status == ("sending",)
        sink.victim = None
        procs.append(start_worker_process(settings, queue))
        # The local activity's workflow task times out (10 s) and the new worker runs it
        # again: it finds the claim and records `sent` without calling the provider.
        result = await asyncio.wait_for(handle.result(), timeout=120)
        assert result.status == "sent"
        await asyncio.sleep(0.5)
        assert len(sink.messages) == 1
    assert db.execute("SELECT status FROM messages WHERE id = %s",
                      (message_id,)).fetchone() == ("sent",)


async def test_send_activity_records_suppression_and_config_changes(
    tenant: Tenant, db: psycopg.Connection, activities: MessagingActivities,
) -> None:
    """The one-statement claim: a suppressed address is never claimed, and the cached
    channel settings follow a PUT made after they were cached."""
    with SmtpSink() as sink:
        first = _configure_and_queue(tenant, sink, db)
        env = ActivityEnvironment()
        assert (await env.run(activities.deliver, DeliverInput(tenant.project_id, first))
                ).status == "sent"
        tenant.sk.put("/channels", json={"emailProvider": "POSTALYNK"})
        second = _queue(tenant, db)
        result = await env.run(activities.deliver, DeliverInput(tenant.project_id, second))
        assert result.status == "failed" and "postalynkApiKey" in (result.error or "")
        tenant.sk.put("/channels", json={"emailProvider": "SMTP"})
        db.execute("INSERT INTO suppressions (project_id, address, reason) "
                   "VALUES (%s, 'u@example.com', 'bounced')", (tenant.project_id,))
        third = _queue(tenant, db)
        result = await env.run(activities.deliver, DeliverInput(tenant.project_id, third))
        assert result.status == "suppressed"
        await asyncio.sleep(0.3)
        assert len(sink.messages) == 1
    rows = dict(db.execute("SELECT id, status FROM messages WHERE id = ANY(%s)",
                           ([first, second, third],)).fetchall())
    assert rows == {first: "sent", second: "failed", third: "suppressed"}


def _queue(tenant: Tenant, db: psycopg.Connection) -> str:
    message_id = f"msg_{uuid.uuid4().hex}"
    db.execute(
        "INSERT INTO messages (id, project_id, user_id, channel, subject, body, send_key, "
        "to_address) VALUES (%s, %s, 'u', 'EMAIL', 'Again', '<p>x</p>', %s, "
        "'u@example.com')", (message_id, tenant.project_id, message_id))
    return message_id


HISTORIES = Path(__file__).parent / "histories"


@pytest.mark.parametrize("name", [
    # a51d7dd and before: `deliver` (and `mark_failed`) as regular activities.
    "send_message_regular_activity_sent", "send_message_regular_activity_gone",
    # Since the `send-deliver-local-activity` patch: both as local activities.
    "send_message_local_activity_sent", "send_message_local_activity_gone",
])
async def test_saved_send_histories_replay(name: str) -> None:
    """Recorded with stub activities (a sent message; a deleted one, which marks the
    message failed). A change to the workflow's commands that is not behind a new
    `workflow.patched` fails here."""
    history = WorkflowHistory.from_json(
        f"msg_history_{name}", (HISTORIES / f"{name}.json").read_text())
    await Replayer(workflows=[SendMessageWorkflow]).replay_workflow(history)
