"""Campaigns over real HTTP with the real worker on the Temporal dev server: the
reference's example, drafts sent now, scheduling, rescheduling, unscheduling,
cancelling, 409 once sending began, rate limits, stats and suppression."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from temporalio.client import Client, WorkflowExecutionStatus

from core import temporal as ids
from core.settings import Settings
from tests.activities.fakes import SmtpSink
from tests.api.test_segments import eventually
from tests.support import Tenant, assert_error

pytestmark = pytest.mark.usefixtures("worker")


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as server:
        yield server


@pytest.fixture
def shop(tenant: Tenant, sink: SmtpSink) -> Tenant:
    """Email at the sink; six users, four on the pro plan (one unsubscribed, one without
    an email address); a `pro` segment and an EMAIL template."""
    r = tenant.sk.put("/channels", json={
        "emailProvider": "SMTP", "smtpHost": "127.0.0.1", "smtpPort": sink.port,
        "smtpFromEmail": "news@acme.example.com"})
    assert r.status_code == 200, r.text
    for uid, plan, email in [("ann", "pro", "ann@example.com"), ("bob", "pro", "bob@example.com"),
                             ("cat", "pro", "cat@example.com"), ("dan", "pro", None),
                             ("eve", "free", "eve@example.com"), ("fay", "free", None)]:
        body: dict[str, Any] = {"userId": uid, "properties": {"plan": plan, "name": uid.title()}}
        if email:
            body["email"] = email
        assert tenant.sk.post("/identify", json=body).status_code == 200
    assert tenant.sk.patch("/users/cat", json={"subscribed": False}).status_code == 200
    seg = tenant.sk.post("/segments", json={"name": "Pro", "rules": [
        {"field": "plan", "operator": "eq", "value": "pro"}]})
    assert seg.status_code == 201, seg.text
    tpl = tenant.sk.post("/templates", json={
        "name": "Sale", "channel": "EMAIL", "subject": "Spring sale, {{ name }}!",
        "body": "<p>Hi {{ name }}, 20% off for {{ plan }} users.</p>"})
    assert tpl.status_code == 201, tpl.text
    tenant.segment_id = seg.json()["id"]  # type: ignore[attr-defined]
    tenant.template_id = tpl.json()["id"]  # type: ignore[attr-defined]
    return tenant


def _campaign(t: Tenant, **fields: Any) -> dict[str, Any]:
    body = {"name": "Spring Sale", "channel": "EMAIL", "segmentId": t.segment_id,  # type: ignore[attr-defined]
            "templateId": t.template_id, **fields}  # type: ignore[attr-defined]
    r = t.sk.post("/campaigns", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def _status(t: Tenant, campaign_id: str, status: str, timeout: float = 30) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        c = t.sk.get(f"/campaigns/{campaign_id}").json()
        return c if c["status"] == status else None

    return eventually(check, timeout)


def _in(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


async def _workflow_status(settings: Settings, campaign_id: str) -> WorkflowExecutionStatus:
    client = await Client.connect(settings.temporal_address)
    desc = await client.get_workflow_handle(ids.campaign_workflow_id(campaign_id)).describe()
    assert desc.status is not None
    return desc.status


def test_draft_sent_now_reaches_each_member_once_with_stats(shop: Tenant, sink: SmtpSink,
                                                            db: psycopg.Connection) -> None:
    draft = _campaign(shop)
    assert draft["id"].startswith("camp_") and draft["status"] == "DRAFT"
    assert draft["stats"] == {"recipients": 0, "sent": 0, "failed": 0, "suppressed": 0,
                              "delivered": 0, "opened": 0, "clicked": 0}
    sending = shop.sk.post(f"/campaigns/{draft['id']}/send")
    assert sending.status_code == 202, sending.text
    assert sending.json()["status"] == "SENDING"
    done = _status(shop, draft["id"], "SENT")
    mails = sink.wait_for_blocking(2)
    time.sleep(0.3)
    assert sorted(m.rcpt_tos[0] for m in sink.messages) == ["ann@example.com",
                                                            "bob@example.com"]
    assert {m.message["Subject"] for m in mails} == {"Spring sale, Ann!", "Spring sale, Bob!"}
    assert mails[0].message["List-Unsubscribe"]  # marketing mail: one-click unsubscribe
    # cat unsubscribed: suppressed; dan has no address: failed; eve is not pro.
    assert done["stats"] == {"recipients": 4, "sent": 2, "failed": 1, "suppressed": 1,
                             "delivered": 0, "opened": 0, "clicked": 0}
    assert done["startedAt"] and done["completedAt"]
    rows = dict(db.execute(
        "SELECT user_id, status FROM messages WHERE project_id = %s AND source = 'campaign' "
        "AND source_id = %s", (shop.project_id, draft["id"])).fetchall())
    assert rows == {"ann": "sent", "bob": "sent", "cat": "suppressed", "dan": "failed"}
    # Over: no more edits, no second send; the list shows it with its stats.
    assert_error(shop.sk.patch(f"/campaigns/{draft['id']}", json={"name": "again"}), 409)
    assert_error(shop.sk.post(f"/campaigns/{draft['id']}/send"), 409)
    listed = shop.sk.get("/campaigns", params={"status": "SENT"}).json()
    assert listed["total"] == 1 and listed["campaigns"][0]["stats"]["sent"] == 2


async def test_reference_example_schedules_reschedules_and_sends(
    shop: Tenant, sink: SmtpSink, settings: Settings,
) -> None:
    camp = await asyncio.to_thread(_campaign, shop, scheduledAt="2026-04-01T10:00:00Z")
    # 2026-04-01 may be past or future here: either way it is scheduled, then sends.
    assert camp["status"] == "SCHEDULED" and camp["scheduledAt"] == "2026-04-01T10:00:00Z"
    later = await asyncio.to_thread(_campaign, shop, name="Later", scheduledAt=_in(3600))
    assert later["status"] == "SCHEDULED"
    assert await _workflow_status(settings, later["id"]) == WorkflowExecutionStatus.RUNNING
    renamed = shop.sk.patch(f"/campaigns/{later['id']}", json={"name": "Spring Mega Sale"})
    assert renamed.status_code == 200 and renamed.json()["status"] == "SCHEDULED"
    # Rescheduling to two seconds from now wakes the sleeping workflow.
    moved = shop.sk.patch(f"/campaigns/{later['id']}", json={"scheduledAt": _in(2)})
    assert moved.status_code == 200, moved.text
    sent = await asyncio.to_thread(_status, shop, later["id"], "SENT")
    assert sent["name"] == "Spring Mega Sale" and sent["stats"]["sent"] == 2
    assert await _workflow_status(settings, later["id"]) == WorkflowExecutionStatus.COMPLETED


async def test_unschedule_cancel_and_delete(shop: Tenant, sink: SmtpSink,
                                            settings: Settings) -> None:
    camp = await asyncio.to_thread(_campaign, shop, scheduledAt=_in(3600))
    back = shop.sk.patch(f"/campaigns/{camp['id']}", json={"scheduledAt": None}).json()
    assert back["status"] == "DRAFT" and back["scheduledAt"] is None

    async def finished() -> bool:
        return await _workflow_status(settings, camp["id"]) == (
            WorkflowExecutionStatus.COMPLETED)

    deadline = time.monotonic() + 20
    while not await finished():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    # Scheduled again, then cancelled by DELETE: kept as CANCELLED, workflow cancelled.
    again = shop.sk.put(f"/campaigns/{camp['id']}", json={
        "name": "Back", "channel": "EMAIL", "segmentId": shop.segment_id,  # type: ignore[attr-defined]
        "subject": "Hello {{ name }}", "body": "<p>inline</p>", "scheduledAt": _in(3600)})
    assert again.status_code == 200, again.text
    assert again.json()["status"] == "SCHEDULED" and again.json()["templateId"] is None
    assert shop.sk.delete(f"/campaigns/{camp['id']}").json() == {"deleted": True}
    cancelled = shop.sk.get(f"/campaigns/{camp['id']}").json()
    assert cancelled["status"] == "CANCELLED" and cancelled["completedAt"]
    deadline = time.monotonic() + 20
    while await _workflow_status(settings, camp["id"]) == WorkflowExecutionStatus.RUNNING:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    assert_error(shop.sk.patch(f"/campaigns/{camp['id']}", json={"name": "x"}), 409)
    assert_error(shop.sk.post(f"/campaigns/{camp['id']}/send"), 409)
    # A second DELETE removes it.
    assert shop.sk.delete(f"/campaigns/{camp['id']}").json() == {"deleted": True}
    assert_error(shop.sk.get(f"/campaigns/{camp['id']}"), 404)
    assert sink.messages == []


def test_validation(shop: Tenant, api_url: str) -> None:
    from tests.support import signup

    seg, tpl = shop.segment_id, shop.template_id  # type: ignore[attr-defined]
    base = {"name": "x", "channel": "EMAIL", "segmentId": seg}
    cases = [
        ({**base, "templateId": tpl, "body": "b"}, None),
        ({**base}, None),
        ({**base, "channel": "PUSH", "templateId": tpl}, "templateId"),
        ({**base, "templateId": "tpl_nope"}, "templateId"),
        ({**base, "segmentId": "seg_nope", "templateId": tpl}, "segmentId"),
        ({**base, "body": "<p>no subject</p>"}, "subject"),
        ({**base, "subject": "s", "body": "{{ broken"}, None),
        ({**base, "templateId": tpl, "rateLimit": 0}, "rateLimit"),
        ({**base, "templateId": tpl, "channel": "FAX"}, "channel"),
        ({**base, "templateId": tpl, "scheduledAt": "tomorrow"}, "scheduledAt"),
        ({**base, "templateId": tpl, "segmentid": seg}, "segmentid"),
    ]
    for body, field in cases:
        err = assert_error(shop.sk.post("/campaigns", json=body), 400)
        if field:
            assert field in {d["field"] for d in err.get("details") or []}, err
    other = signup(api_url)
    camp = _campaign(shop)
    assert_error(other.sk.get(f"/campaigns/{camp['id']}"), 404)
    assert_error(other.sk.post(f"/campaigns/{camp['id']}/send"), 404)
    assert_error(other.sk.delete(f"/campaigns/{camp['id']}"), 404)
    assert_error(shop.pk.get("/campaigns"), 403)
    # Switching a draft to inline content drops the template, and back.
    inline = shop.sk.patch(f"/campaigns/{camp['id']}",
                           json={"subject": "S", "body": "<p>B</p>"}).json()
    assert inline["templateId"] is None and inline["body"] == "<p>B</p>"
    templated = shop.sk.patch(f"/campaigns/{camp['id']}", json={"templateId": tpl}).json()
    assert templated["templateId"] == tpl and templated["body"] is None
    assert_error(shop.sk.patch(f"/campaigns/{camp['id']}", json={"segmentId": None}), 400)


def test_rate_limit_paces_the_sends(tenant: Tenant) -> None:
    for i in range(8):
        tenant.sk.post("/identify", json={"userId": f"u{i}", "properties": {"beta": True}})
    seg = tenant.sk.post("/segments", json={"name": "Beta", "rules": [
        {"field": "beta", "operator": "eq", "value": True}]}).json()
    camp = tenant.sk.post("/campaigns", json={
        "name": "Slow", "channel": "IN_APP", "segmentId": seg["id"], "subject": "Hi",
        "body": "Hello {{ user.id }}", "rateLimit": 4}).json()
    assert camp["rateLimit"] == 4
    started = time.monotonic()
    tenant.sk.post(f"/campaigns/{camp['id']}/send")
    done = _status(tenant, camp["id"], "SENT")
    assert time.monotonic() - started >= 1.7  # 8 messages at 4/s: 7 gaps of 0.25 s
    assert done["stats"]["sent"] == 8 and done["stats"]["recipients"] == 8
    inbox = tenant.sk.get("/inbox/u3").json()
    assert "Hello u3" in str(inbox)
