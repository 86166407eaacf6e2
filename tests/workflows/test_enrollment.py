"""AutomationEnrollmentWorkflow on Temporal's time-skipping test server, with the real
activities (PostgreSQL, SMTP): multi-day waits run in a second."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from temporalio.client import WorkflowHandle

from tests.activities.fakes import SmtpSink
from tests.support import Tenant
from tests.workflows.conftest import QUEUE, Env
from workflows.enrollment import (
    AutomationEnrollmentWorkflow,
    CancelSignal,
    EnrollmentInput,
    EnrollmentResult,
    EventSignal,
)


@pytest.fixture
def shop(tenant: Tenant) -> Tenant:
    tenant.pk.post("/identify", json={"userId": "ann", "email": "ann@example.com",
                                       "properties": {"name": "Ann", "plan": "pro"}})
    return tenant


def _automation(t: Tenant, steps: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    r = t.sk.post("/automations", json={"name": "T", "triggerType": "EVENT",
                                         "triggerEvent": "never_tracked_here", "active": True,
                                         "steps": steps, **extra})
    assert r.status_code == 201, r.text
    return dict(r.json())


async def _start(env: Env, t: Tenant, automation: dict[str, Any],
                 trigger: EventSignal | None = None,
                 ) -> WorkflowHandle[AutomationEnrollmentWorkflow, EnrollmentResult]:
    trigger = trigger or EventSignal(event_id=f"evt_{uuid.uuid4().hex}", event_name="go")
    return await env.client.start_workflow(
        AutomationEnrollmentWorkflow.run,
        EnrollmentInput(project_id=t.project_id, automation_id=automation["id"],
                        user_id="ann", version=automation["version"], steps=automation["steps"],
                        exit_event=automation.get("exitEvent"), trigger=trigger),
        id=f"enroll:{automation['id']}:ann:{uuid.uuid4().hex[:6]}", task_queue=QUEUE)


def _email(sink: SmtpSink, subject: str) -> dict[str, Any]:
    return {"type": "SEND_EMAIL", "subject": subject, "body": f"<p>{subject} {{{{ name }}}}</p>"}


@pytest.fixture
def mailing(shop: Tenant) -> AsyncIterator[SmtpSink]:
    with SmtpSink() as sink:
        shop.sk.put("/channels", json={"emailProvider": "SMTP", "smtpHost": "127.0.0.1",
                                       "smtpPort": sink.port,
                                       "smtpFromEmail": "hi@shop.example.com"})
        yield sink


async def test_three_day_wait_runs_in_seconds(skipping: Env, shop: Tenant, mailing: SmtpSink,
                                              db: psycopg.Connection) -> None:
    automation = _automation(shop, [_email(mailing, "Day 0"), {"type": "WAIT", "delay": 259200},
                                    _email(mailing, "Day 3")])
    handle = await _start(skipping, shop, automation)
    result = await asyncio.wait_for(handle.result(), 60)
    assert result.status == "completed"
    assert [m.message["Subject"] for m in mailing.messages] == ["Day 0", "Day 3"]
    status, ended, step = db.execute(
        "SELECT status, ended_at IS NOT NULL, current_step FROM enrollments "
        "WHERE automation_id = %s", (automation["id"],)).fetchone() or (None, None, None)
    assert (status, ended) == ("completed", True) and step.startswith("steps[2]")


async def test_wait_for_event_then_and_else(skipping: Env, shop: Tenant,
                                            mailing: SmtpSink) -> None:
    steps = [{"type": "WAIT_FOR_EVENT", "event": "checkout_completed", "timeout": 3600,
              "matchProperty": "cartId", "then": [_email(mailing, "Thanks")],
              "else": [_email(mailing, "Forgot something?")]}]
    automation = _automation(shop, steps)
    trigger = EventSignal("evt_cart1", "cart_abandoned", {"cartId": "c1"})
    arrived = await _start(skipping, shop, automation, trigger)
    await asyncio.sleep(0.5)
    # An event for another cart does not count; the matching one does.
    await arrived.signal(AutomationEnrollmentWorkflow.event,
                         EventSignal("evt_x", "checkout_completed", {"cartId": "c9"}))
    await arrived.signal(AutomationEnrollmentWorkflow.event,
                         EventSignal("evt_y", "checkout_completed", {"cartId": "c1"}))
    assert (await asyncio.wait_for(arrived.result(), 60)).status == "completed"
    timed_out = await _start(skipping, shop, automation,
                             EventSignal("evt_cart2", "cart_abandoned", {"cartId": "c2"}))
    assert (await asyncio.wait_for(timed_out.result(), 60)).status == "completed"
    assert [m.message["Subject"] for m in mailing.messages] == ["Thanks", "Forgot something?"]


async def test_branch_follows_the_profile(skipping: Env, shop: Tenant,
                                          mailing: SmtpSink) -> None:
    steps = [{"type": "BRANCH", "rules": [{"field": "plan", "operator": "eq", "value": "pro"}],
              "then": [_email(mailing, "Pro")], "else": [_email(mailing, "Free")]}]
    handle = await _start(skipping, shop, _automation(shop, steps))
    await asyncio.wait_for(handle.result(), 60)
    shop.sk.patch("/users/ann", json={"properties": {"plan": "free"}})
    handle = await _start(skipping, shop, _automation(shop, steps))
    await asyncio.wait_for(handle.result(), 60)
    assert [m.message["Subject"] for m in mailing.messages] == ["Pro", "Free"]


async def test_exit_event_and_cancel_stop_a_waiting_run(skipping: Env, shop: Tenant,
                                                        mailing: SmtpSink) -> None:
    steps = [{"type": "WAIT", "delay": 86400}, _email(mailing, "Never")]
    automation = _automation(shop, steps, exitEvent="purchased")
    handle = await _start(skipping, shop, automation)
    await asyncio.sleep(0.5)
    await handle.signal(AutomationEnrollmentWorkflow.event, EventSignal("evt_p", "purchased"))
    assert (await asyncio.wait_for(handle.result(), 60)).status == "exited"
    handle = await _start(skipping, shop, automation)
    await asyncio.sleep(0.5)
    await handle.signal(AutomationEnrollmentWorkflow.cancel, CancelSignal("user deleted"))
    result = await asyncio.wait_for(handle.result(), 60)
    assert (result.status, result.reason) == ("cancelled", "user deleted")
    assert mailing.messages == []


async def test_deactivation_mid_run_sends_nothing_more(skipping: Env, shop: Tenant,
                                                       mailing: SmtpSink) -> None:
    automation = _automation(shop, [_email(mailing, "First"), {"type": "WAIT", "delay": 7200},
                                    _email(mailing, "Second")])
    handle = await _start(skipping, shop, automation)
    await asyncio.to_thread(mailing.wait_for_blocking, 1)
    shop.sk.patch(f"/automations/{automation['id']}", json={"active": False})
    result = await asyncio.wait_for(handle.result(), 60)
    assert (result.status, result.reason) == ("cancelled", "automation inactive")
    assert [m.message["Subject"] for m in mailing.messages] == ["First"]


async def test_edits_mid_run_keep_the_snapshot(skipping: Env, shop: Tenant,
                                               mailing: SmtpSink) -> None:
    automation = _automation(shop, [{"type": "WAIT", "delay": 3600}, _email(mailing, "Old")])
    handle = await _start(skipping, shop, automation)
    await asyncio.sleep(0.3)
    edited = shop.sk.patch(f"/automations/{automation['id']}",
                           json={"steps": [_email(mailing, "New")]}).json()
    assert edited["version"] == 2
    await asyncio.wait_for(handle.result(), 60)
    assert [m.message["Subject"] for m in mailing.messages] == ["Old"]


async def test_ai_step_generates_once_and_renders_per_user(skipping: Env, tenant: Tenant,
                                                           db: psycopg.Connection) -> None:
    from tests.api.test_ai import API_KEY, GOOD_PUSH, FakeOpenAI

    with FakeOpenAI(GOOD_PUSH) as llm:
        tenant.sk.put("/channels", json={"openaiApiKey": API_KEY, "openaiBaseUrl": llm.base})
        for user, name in (("ann", "Ann"), ("bob", "Bob")):
            tenant.pk.post("/identify", json={"userId": user, "properties": {"firstName": name}})
        steps = [{"type": "SEND_IN_APP",
                  "ai": {"context": "Remind them about their cart", "tone": "friendly"}}]
        automation = _automation(tenant, steps)
        for user in ("ann", "bob"):
            handle = await skipping.client.start_workflow(
                AutomationEnrollmentWorkflow.run,
                EnrollmentInput(tenant.project_id, automation["id"], user, 1, steps,
                                trigger=EventSignal(f"evt_{user}", "go")),
                id=f"enroll:{automation['id']}:{user}", task_queue=QUEUE)
            assert (await asyncio.wait_for(handle.result(), 60)).status == "completed"
        assert len(llm.completions()) == 1  # one generation per automation version and step
    titles = dict(db.execute(
        "SELECT user_id, subject FROM messages WHERE source_id = %s AND status = 'sent'",
        (automation["id"],)).fetchall())
    assert titles == {"ann": "Forgot something, Ann?", "bob": "Forgot something, Bob?"}
