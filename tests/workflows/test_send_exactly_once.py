"""A send is exactly-once: the activity run twice, and a worker killed (SIGKILL) right
after the provider accepted the mail, both leave one mail and a `sent` row."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import psycopg
import pytest
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

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
        # Temporal retries the activity once its attempt times out (SEND preset: 30 s).
        result = await asyncio.wait_for(handle.result(), timeout=120)
        assert result.status == "sent"
        await asyncio.sleep(0.5)
        assert len(sink.messages) == 1
    assert db.execute("SELECT status FROM messages WHERE id = %s",
                      (message_id,)).fetchone() == ("sent",)
