"""Automations under failure: Temporal stopped while events arrive, and a worker killed
mid-run. Each uses its own Temporal server (and database, or task queue) so nothing else
in the suite takes its work."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from temporalio.client import Client

from core import migrate
from core.db import libpq_url
from core.devstack import free_port, start_temporal_dev_server, stop_process
from core.settings import Settings
from tests.conftest import _with_database, make_settings
from tests.faults import KillingSmtpSink, start_worker_process
from tests.support import Tenant, serve_api, signup
from workflows.enrollment import AutomationEnrollmentWorkflow, EnrollmentInput, EventSignal


@pytest.fixture
def own_database(database_url: str) -> Iterator[str]:
    name = f"retenshun_fault_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(database_url, name)
    migrate.upgrade(url)
    yield url
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _wait_runs(t: Tenant, automation_id: str, status: str, count: int, timeout: float,
               ) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    runs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        runs = t.sk.get(f"/automations/{automation_id}/runs").json()["runs"]
        if sum(r["status"] == status for r in runs) >= count:
            return runs
        time.sleep(0.3)
    raise AssertionError(f"wanted {count} {status} runs, got {runs}")


def test_events_are_accepted_while_temporal_is_down_and_enroll_once_it_is_back(
    own_database: str, tmp_path: Path,
) -> None:
    port = free_port()
    db_file = tmp_path / "temporal.db"
    temporal = start_temporal_dev_server(db_file, port, None, tmp_path / "t.log")
    settings = make_settings(own_database, f"127.0.0.1:{port}")
    worker = start_worker_process(settings)
    try:
        with serve_api(settings) as url:
            tenant = signup(url)
            automation = tenant.sk.post("/automations", json={
                "name": "Hello", "triggerType": "EVENT", "triggerEvent": "joined",
                "active": True,
                "steps": [{"type": "SEND_IN_APP", "subject": "Hi", "body": "Welcome"}]}).json()
            stop_process(temporal)  # Temporal is down from here on
            started = time.monotonic()
            statuses = [tenant.pk.post("/events", json={"userId": f"u{i}",
                                                         "eventName": "joined"}).status_code
                        for i in range(5)]
            assert statuses == [202] * 5
            assert time.monotonic() - started < 10  # ingestion never waited on Temporal
            time.sleep(2)
            assert tenant.sk.get(f"/automations/{automation['id']}/runs").json()["runs"] == []
            temporal = start_temporal_dev_server(db_file, port, None, tmp_path / "t.log")
            runs = _wait_runs(tenant, automation["id"], "completed", 5, timeout=90)
            assert sorted(r["userId"] for r in runs) == [f"u{i}" for i in range(5)]
            inbox = tenant.sk.get("/inbox/u3").json()["messages"]
            assert [m["title"] for m in inbox] == ["Hi"]
    finally:
        worker.terminate()
        worker.wait(20)
        stop_process(temporal)


async def test_worker_killed_mid_run_sends_each_email_once(
    tenant: Tenant, settings: Settings,
) -> None:
    queue = f"fault-{uuid.uuid4().hex[:8]}"
    procs: list[subprocess.Popen[bytes]] = []
    with KillingSmtpSink() as sink:
        tenant.sk.put("/channels", json={"emailProvider": "SMTP", "smtpHost": "127.0.0.1",
                                         "smtpPort": sink.port,
                                         "smtpFromEmail": "hi@shop.example.com"})
        tenant.pk.post("/identify", json={"userId": "ann", "email": "ann@example.com"})
        steps = [{"type": "SEND_EMAIL", "subject": "One", "body": "<p>1</p>"},
                 {"type": "WAIT", "delay": 2},
                 {"type": "SEND_EMAIL", "subject": "Two", "body": "<p>2</p>"}]
        automation = tenant.sk.post("/automations", json={
            "name": "Drip", "triggerType": "EVENT", "triggerEvent": "not_tracked",
            "active": True, "steps": steps}).json()
        sink.victim = start_worker_process(settings, queue)
        procs.append(sink.victim)
        try:
            client = await Client.connect(settings.temporal_address)
            handle = await client.start_workflow(
                AutomationEnrollmentWorkflow.run,
                EnrollmentInput(tenant.project_id, automation["id"], "ann", 1, steps,
                                trigger=EventSignal("evt_k", "not_tracked")),
                id=f"enroll:{automation['id']}:ann", task_queue=queue)
            await sink.wait_for(1, timeout=30)
            deadline = time.monotonic() + 10
            while sink.victim.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert sink.victim.returncode == -signal.SIGKILL
            sink.victim = None
            procs.append(start_worker_process(settings, queue))
            result = await asyncio.wait_for(handle.result(), timeout=150)
            assert result.status == "completed"
            await asyncio.sleep(0.5)
            assert [m.message["Subject"] for m in sink.messages] == ["One", "Two"]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait(20)
