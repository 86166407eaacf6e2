"""Automations end to end on the dev server: a tracked event -> outbox -> dispatcher ->
AutomationEnrollmentWorkflow -> emails at a real SMTP server, in order."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.types.json import Jsonb
from temporalio.testing import ActivityEnvironment

from activities.automations import AutomationActivities, BeginInput, BeginResult
from activities.messaging import MessagingActivities
from core.crypto import SecretBox
from core.db import make_async_engine, make_sessionmaker
from core.settings import Settings
from tests.activities.fakes import SmtpSink
from tests.support import Tenant, assert_error

pytestmark = pytest.mark.usefixtures("worker")


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as server:
        yield server


@pytest.fixture
def shop(tenant: Tenant, sink: SmtpSink) -> Tenant:
    tenant.sk.put("/channels", json={"emailProvider": "SMTP", "smtpHost": "127.0.0.1",
                                     "smtpPort": sink.port,
                                     "smtpFromEmail": "hi@shop.example.com"})
    tenant.pk.post("/identify", json={"userId": "ann", "email": "ann@example.com",
                                       "properties": {"name": "Ann"}})
    return tenant


def _template(t: Tenant, name: str, channel: str = "EMAIL", **extra: Any) -> str:
    body = {"name": name, "channel": channel, "subject": f"{name} {{{{ name }}}}",
            "body": f"<p>{name} for {{{{ name }}}}</p>", **extra}
    r = t.sk.post("/templates", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _runs(t: Tenant, automation_id: str, want: int, status: str, timeout: float = 30,
          ) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        runs = t.sk.get(f"/automations/{automation_id}/runs").json()["runs"]
        done = [r for r in runs if r["status"] == status]
        if len(done) >= want or time.monotonic() > deadline:
            assert len(done) >= want, runs
            return runs
        time.sleep(0.2)


def test_welcome_sequence_sends_in_order_and_shows_its_run(shop: Tenant, sink: SmtpSink) -> None:
    first, second = _template(shop, "Welcome"), _template(shop, "Tips")
    r = shop.sk.post("/automations", json={
        "name": "Welcome Sequence", "triggerType": "EVENT", "triggerEvent": "signed_up",
        "active": True, "steps": [
            {"type": "SEND_EMAIL", "templateId": first, "delay": 0},
            {"type": "WAIT", "delay": 2},
            {"type": "SEND_EMAIL", "templateId": second},
        ]})
    assert r.status_code == 201, r.text
    automation = r.json()
    assert automation["version"] == 1 and automation["active"] is True
    assert shop.pk.post("/events", json={"userId": "ann", "eventName": "signed_up"}
                        ).status_code == 202
    mails = sink.wait_for_blocking(2, timeout=40)
    assert [m.message["Subject"] for m in mails] == ["Welcome Ann", "Tips Ann"]
    (run,) = _runs(shop, automation["id"], 1, "completed")
    assert run["workflowId"] == f"enroll:{automation['id']}:ann"
    assert run["userId"] == "ann" and run["endedAt"] and run["currentStep"].startswith(
        "steps[2]")
    assert run["temporalUrl"].startswith("http") and "/workflows/enroll" in run["temporalUrl"]
    sent = shop.sk.get("/messages", params={"userId": "ann"}).json()["messages"]
    assert {m["source"] for m in sent} == {"automation"} and len(sent) == 2


def test_trigger_during_a_run_is_ignored_and_filter_applies(shop: Tenant, sink: SmtpSink,
                                                            ) -> None:
    tpl = _template(shop, "Cart")
    automation = shop.sk.post("/automations", json={
        "name": "Big carts", "triggerType": "EVENT", "triggerEvent": "cart_updated",
        "triggerFilter": [{"field": "total", "operator": "gte", "value": 100}],
        "active": True, "steps": [{"type": "WAIT", "delay": 3},
                                  {"type": "SEND_EMAIL", "templateId": tpl}]}).json()
    shop.pk.post("/events", json={"userId": "ann", "eventName": "cart_updated",
                                   "properties": {"total": 20}})  # filtered out
    shop.pk.post("/events", json={"userId": "ann", "eventName": "cart_updated",
                                   "properties": {"total": 150}})
    time.sleep(1)
    shop.pk.post("/events", json={"userId": "ann", "eventName": "cart_updated",
                                   "properties": {"total": 200}})  # during the run: ignored
    _runs(shop, automation["id"], 1, "completed")
    time.sleep(0.5)
    assert len(sink.messages) == 1
    assert len(shop.sk.get(f"/automations/{automation['id']}/runs").json()["runs"]) == 1


def test_exit_event_ends_the_run(shop: Tenant, sink: SmtpSink) -> None:
    tpl = _template(shop, "Nudge")
    automation = shop.sk.post("/automations", json={
        "name": "Nudge", "triggerType": "EVENT", "triggerEvent": "trial_started",
        "exitEvent": "purchased", "active": True,
        "steps": [{"type": "WAIT", "delay": 600}, {"type": "SEND_EMAIL", "templateId": tpl}],
    }).json()
    shop.pk.post("/events", json={"userId": "ann", "eventName": "trial_started"})
    _runs(shop, automation["id"], 1, "running")
    shop.pk.post("/events", json={"userId": "ann", "eventName": "purchased"})
    (run,) = _runs(shop, automation["id"], 1, "exited")
    assert run["currentStep"].startswith("steps[0]")  # it never reached the send
    assert sink.messages == []


def test_delete_cancels_runs_and_user_delete_ends_theirs(shop: Tenant,
                                                        db: psycopg.Connection) -> None:
    tpl = _template(shop, "Later")
    steps = [{"type": "WAIT", "delay": 3600}, {"type": "SEND_EMAIL", "templateId": tpl}]
    a1 = shop.sk.post("/automations", json={"name": "A", "triggerType": "EVENT",
                                            "triggerEvent": "go", "active": True,
                                            "steps": steps}).json()
    a2 = shop.sk.post("/automations", json={"name": "B", "triggerType": "EVENT",
                                            "triggerEvent": "go", "active": True,
                                            "steps": steps}).json()
    shop.pk.post("/identify", json={"userId": "bob", "email": "bob@example.com"})
    shop.pk.post("/events/batch", json={"events": [{"userId": "ann", "eventName": "go"},
                                                   {"userId": "bob", "eventName": "go"}]})
    _runs(shop, a2["id"], 2, "running")
    assert shop.sk.delete("/users/bob").json() == {"deleted": True}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = dict(db.execute("SELECT user_id, status FROM enrollments WHERE automation_id = %s",
                               (a2["id"],)).fetchall())
        if rows.get("bob") == "cancelled":
            break
        time.sleep(0.2)
    assert rows == {"ann": "running", "bob": "cancelled"}
    assert shop.sk.delete(f"/automations/{a1['id']}").json() == {"deleted": True}
    assert_error(shop.sk.get(f"/automations/{a1['id']}"), 404)


def test_step_validation_names_the_path(shop: Tenant) -> None:
    push = _template(shop, "Push", channel="PUSH")
    base = {"name": "X", "triggerType": "EVENT", "triggerEvent": "e"}
    cases = [
        ([{"type": "SEND_FAX", "body": "x"}], "steps[0].type"),
        ([{"type": "SEND_EMAIL", "templateId": "tpl_missing"}], "steps[0].templateId"),
        ([{"type": "SEND_EMAIL", "templateId": push}], "steps[0].templateId"),
        ([{"type": "WAIT", "delay": -5}], "steps[0].delay"),
        ([{"type": "WAIT"}], "steps[0].delay"),
        ([{"type": "WAIT_FOR_EVENT", "event": "paid", "timeout": 60}], "steps[0]"),
        ([{"type": "WAIT", "delay": 1}, {"type": "WAIT_FOR_EVENT", "event": "paid",
          "timeout": 60, "else": [{"type": "SEND_PUSH", "templateId": "tpl_nope"}]}],
         "steps[1].else[0].templateId"),
        ([{"type": "SEND_EMAIL", "subject": "Hi", "body": "{{ ''.__class__ }}"}],
         "steps[0].body"),
        ([{"type": "WAIT", "delay": 1, "colour": "red"}], "steps[0].colour"),
    ]
    for steps, field in cases:
        body = assert_error(shop.sk.post("/automations", json={**base, "steps": steps}), 400)
        assert body["details"][0]["field"] == field, (steps, body)
    assert_error(shop.sk.post("/automations", json={**base, "triggerEvent": None,
                                                    "steps": []}), 400)
    assert_error(shop.sk.post("/automations", json={"name": "S", "triggerType": "SEGMENT_ENTRY",
                                                    "segmentId": "seg_nope", "steps": []}), 400)


def test_edits_bump_the_version_and_lists_page(shop: Tenant) -> None:
    created = shop.sk.post("/automations", json={
        "name": "V", "triggerType": "EVENT", "triggerEvent": "e",
        "steps": [{"type": "WAIT", "delay": 1}]}).json()
    renamed = shop.sk.patch(f"/automations/{created['id']}", json={"name": "V2"}).json()
    assert renamed["version"] == 1 and renamed["name"] == "V2" and renamed["active"] is False
    edited = shop.sk.patch(f"/automations/{created['id']}",
                           json={"steps": [{"type": "WAIT", "delay": 2}]}).json()
    assert edited["version"] == 2
    listed = shop.sk.get("/automations").json()
    assert listed["total"] == 1 and listed["automations"][0]["id"] == created["id"]
    assert_error(shop.pk.get("/automations"), 403)
    assert_error(shop.sk.get("/automations/auto_missing/runs"), 404)


def test_one_event_starts_one_automation_and_wakes_another_waiting_for_it(
        shop: Tenant, sink: SmtpSink) -> None:
    """The dispatcher's routing: signal-with-start for the automation the event triggers,
    and (one enrollments query per batch) an `event` signal to the user's running
    enrollments that await it."""
    waiting = shop.sk.post("/automations", json={
        "name": "Cart", "triggerType": "EVENT", "triggerEvent": "cart_abandoned",
        "active": True, "steps": [{
            "type": "WAIT_FOR_EVENT", "event": "checkout_completed", "timeout": 600,
            "matchProperty": "cartId",
            "then": [{"type": "SEND_EMAIL", "subject": "Thanks", "body": "<p>Paid</p>"}],
            "else": [{"type": "SEND_EMAIL", "subject": "Forgot?", "body": "<p>Cart</p>"}]}],
    }).json()
    receipt = shop.sk.post("/automations", json={
        "name": "Receipt", "triggerType": "EVENT", "triggerEvent": "checkout_completed",
        "active": True,
        "steps": [{"type": "SEND_EMAIL", "subject": "Receipt", "body": "<p>R</p>"}]}).json()
    shop.pk.post("/events", json={"userId": "ann", "eventName": "cart_abandoned",
                                   "properties": {"cartId": "c1"}})
    _runs(shop, waiting["id"], 1, "running")
    shop.pk.post("/events", json={"userId": "ann", "eventName": "checkout_completed",
                                   "properties": {"cartId": "c1"}})
    _runs(shop, waiting["id"], 1, "completed")
    _runs(shop, receipt["id"], 1, "completed")
    mails = sink.wait_for_blocking(2, timeout=30)
    assert sorted(m.message["Subject"] for m in mails) == ["Receipt", "Thanks"]


def test_a_row_leased_by_a_crashed_dispatcher_comes_back_and_enrolls_once(
        shop: Tenant, db: psycopg.Connection) -> None:
    """A dispatcher that died after claiming rows leaves them with `available_at` in the
    future (its lease): nobody takes them before, any dispatcher takes them after, and a
    redelivered trigger does not start a second run."""
    automation = shop.sk.post("/automations", json={
        "name": "Lease", "triggerType": "EVENT", "triggerEvent": "leased", "active": True,
        "steps": [{"type": "WAIT", "delay": 3600},
                  {"type": "SEND_EMAIL", "subject": "Later", "body": "<p>x</p>"}]}).json()
    payload = Jsonb({"eventId": "evt_leased", "userId": "ann", "eventName": "leased",
                     "properties": {}, "timestamp": "2026-11-26T00:00:00+00:00"})
    for lease in (2, 3):  # the same trigger twice, as after a crash between call and delete
        db.execute("INSERT INTO outbox (project_id, kind, payload, available_at) "
                   "VALUES (%s, 'event', %s, now() + make_interval(secs => %s))",
                   (shop.project_id, payload, lease))
    time.sleep(1.2)
    assert shop.sk.get(f"/automations/{automation['id']}/runs").json()["runs"] == []
    _runs(shop, automation["id"], 1, "running", timeout=30)
    deadline = time.monotonic() + 30
    while db.execute("SELECT count(*) FROM outbox WHERE project_id = %s",
                     (shop.project_id,)).fetchone() != (0,):
        assert time.monotonic() < deadline, "outbox rows left"
        time.sleep(0.2)
    runs = shop.sk.get(f"/automations/{automation['id']}/runs").json()["runs"]
    assert [r["status"] for r in runs] == ["running"]


async def test_begin_records_a_run_once_and_refuses_stopped_automations(
        tenant: Tenant, db: psycopg.Connection, settings: Settings) -> None:
    """The enrollment's first local activity, run here directly: it records the run once
    (a retry finds its row), closes a row that a run terminated from outside left
    `running`, and starts nothing for an automation made inactive or deleted."""
    auto = tenant.sk.post("/automations", json={
        "name": "Direct", "triggerType": "EVENT", "triggerEvent": "never.sent", "active": True,
        "steps": [{"type": "WAIT", "delay": 60}]}).json()
    db.execute("INSERT INTO enrollments (id, project_id, automation_id, user_id, workflow_id, "
               "status, automation_version) VALUES ('run_left', %s, %s, 'ann', 'wf', "
               "'running', 1)", (tenant.project_id, auto["id"]))
    engine = make_async_engine(settings.database_url, 1)
    http = httpx.AsyncClient()
    try:
        sessions = make_sessionmaker(engine)
        acts = AutomationActivities(sessions, MessagingActivities(
            sessions, SecretBox(settings.secret_key), settings, http))

        async def begin(run_id: str, automation_id: str = auto["id"]) -> BeginResult:
            return await ActivityEnvironment().run(acts.begin, BeginInput(
                tenant.project_id, automation_id, "ann", run_id, "enroll:x:ann", 1,
                "evt_1", "steps[0] WAIT"))

        assert await begin("run_new") == BeginResult(True)
        assert await begin("run_new") == BeginResult(True)  # a retry
        rows = db.execute("SELECT id, status, current_step, ended_at IS NOT NULL "
                          "FROM enrollments WHERE automation_id = %s ORDER BY id",
                          (auto["id"],)).fetchall()
        assert rows == [("run_left", "cancelled", None, True),
                        ("run_new", "running", "steps[0] WAIT", False)]
        tenant.sk.patch(f"/automations/{auto['id']}", json={"active": False})
        assert await begin("run_later") == BeginResult(False, "automation inactive")
        assert await begin("run_other", "aut_missing") == BeginResult(
            False, "automation deleted")
    finally:
        await http.aclose()
        await engine.dispose()
    assert db.execute("SELECT count(*) FROM enrollments WHERE automation_id = %s",
                      (auto["id"],)).fetchone() == (2,)
