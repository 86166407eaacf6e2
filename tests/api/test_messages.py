"""Sending through the whole product: HTTP -> SendMessageWorkflow on a real Temporal
server -> the worker's send activity -> a real SMTP server, then signed receipts."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from tests.activities.fakes import SmtpSink
from tests.support import Tenant, assert_error

pytestmark = pytest.mark.usefixtures("worker")

SMTP_PASSWORD = "s3cret-smtp-pass-do-not-leak"


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink(auth=("mailer", SMTP_PASSWORD)) as server:
        yield server


@pytest.fixture
def mailer(tenant: Tenant, sink: SmtpSink) -> Tenant:
    """A tenant whose email channel points at the sink, with one identified user."""
    r = tenant.sk.put("/channels", json={
        "emailProvider": "SMTP", "smtpHost": "127.0.0.1", "smtpPort": sink.port,
        "smtpUsername": "mailer", "smtpPassword": SMTP_PASSWORD,
        "smtpFromEmail": "hello@acme.example.com"})
    assert r.status_code == 200, r.text
    tenant.pk.post("/identify", json={"userId": "ann", "email": "ann@example.com",
                                       "properties": {"name": "Ann <3", "plan": "pro"}})
    return tenant


def _send(t: Tenant, **body: Any) -> dict[str, Any]:
    r = t.sk.post("/messages", json={"userId": "ann", "channel": "EMAIL", **body})
    assert r.status_code == 201, r.text
    return r.json()


def _wait_status(t: Tenant, message_id: str, status: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        message = t.sk.get(f"/messages/{message_id}").json()
        if message["status"] == status or time.monotonic() > deadline:
            assert message["status"] == status, message
            return message
        time.sleep(0.1)


def _webhook(t: Tenant, secret: str, payload: dict[str, Any], *, timestamp: int | None = None,
             signature: str | None = None) -> httpx.Response:
    body = json.dumps(payload).encode()
    signed = body if timestamp is None else f"{timestamp}.".encode() + body
    headers = {"Content-Type": "application/json",
               "X-Signature": signature or hmac.new(secret.encode(), signed,
                                                    hashlib.sha256).hexdigest()}
    if timestamp is not None:
        headers["X-Timestamp"] = str(timestamp)
    return httpx.post(f"{t.base}/api/v1/webhook/{t.project_id}", content=body, headers=headers)


def test_template_send_arrives_with_headers_and_both_bodies(mailer: Tenant,
                                                            sink: SmtpSink) -> None:
    tpl = mailer.sk.post("/templates", json={
        "name": "Welcome", "channel": "EMAIL", "subject": "Welcome to {{company}}, {{name}}!",
        "body": "<h1>Hi {{ name }}</h1><p>Your plan: {{ plan }}. Order {{ order }}.</p>"})
    assert tpl.status_code == 201, tpl.text
    sent = _send(mailer, templateId=tpl.json()["id"], data={"order": "#42"})
    assert sent["status"] == "sent" and sent["id"].startswith("msg_")
    (mail,) = sink.wait_for_blocking(1)
    msg = mail.message
    assert mail.rcpt_tos == ["ann@example.com"]
    assert msg["Subject"] == "Welcome to Acme, Ann <3!"  # subjects are not HTML-escaped
    assert sent["id"] in msg["Message-ID"]
    html = mail.part("text/html")
    assert "<h1>Hi Ann &lt;3</h1>" in html and "Order #42" in html
    assert "Hi Ann <3" in mail.part("text/plain")
    assert msg["List-Unsubscribe"] is None  # API sends are transactional by default
    assert sink.logins == ["mailer"]


def test_receipts_move_status_and_land_on_the_timeline(mailer: Tenant, sink: SmtpSink) -> None:
    secret = mailer.sk.post("/channels/webhook-secret").json()["secret"]
    assert secret.startswith("whsec_")
    sent = _send(mailer, subject="Hi", body="<p>x</p>")
    now = int(time.time())
    r = _webhook(mailer, secret, {"id": "r1", "event": "message.delivered",
                                  "data": {"messageId": sent["id"], "userId": "ann"}},
                 timestamp=now)
    assert r.status_code == 202 and r.json() == {"received": True, "duplicate": False}
    _wait_status(mailer, sent["id"], "delivered")
    _webhook(mailer, secret, {"id": "r2", "event": "message.opened",
                              "data": {"messageId": sent["id"]}})
    _wait_status(mailer, sent["id"], "opened")
    # A late "delivered" never undoes "opened".
    _webhook(mailer, secret, {"id": "r3", "event": "message.delivered",
                              "data": {"messageId": sent["id"]}})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        names = [e["eventName"] for e in
                 mailer.sk.get("/events", params={"userId": "ann"}).json()["events"]]
        if len(names) == 3:
            break
        time.sleep(0.1)
    assert sorted(names) == ["message.delivered", "message.delivered", "message.opened"]
    assert mailer.sk.get(f"/messages/{sent['id']}").json()["status"] == "opened"


def test_bad_signatures_stale_timestamps_and_replays(mailer: Tenant,
                                                     db: psycopg.Connection) -> None:
    payload = {"id": "dup-1", "event": "message.delivered", "data": {"messageId": "msg_x"}}
    assert_error(_webhook(mailer, "no-secret-yet", payload), 401)
    secret = mailer.sk.post("/channels/webhook-secret").json()["secret"]
    assert_error(_webhook(mailer, secret, payload, signature="0" * 64), 401)
    assert_error(_webhook(mailer, "whsec_wrong", payload), 401)
    assert_error(_webhook(mailer, secret, payload, timestamp=int(time.time()) - 600), 401)
    # A signature over the body alone does not cover a timestamped request.
    body_only = hmac.new(secret.encode(), json.dumps(payload).encode(),
                         hashlib.sha256).hexdigest()
    assert_error(_webhook(mailer, secret, payload, timestamp=int(time.time()),
                          signature=body_only), 401)
    assert _webhook(mailer, secret, payload, signature="sha256=" + body_only).status_code == 202
    replay = _webhook(mailer, secret, payload)
    assert replay.status_code == 202 and replay.json()["duplicate"] is True
    stored = db.execute("SELECT count(*) FROM webhook_receipts WHERE project_id = %s",
                        (mailer.project_id,)).fetchone()
    assert stored == (1,)
    assert_error(_webhook(mailer, secret, {"event": "message.teleported", "data": {}}), 400)
    r = httpx.post(f"{mailer.base}/api/v1/webhook/{mailer.project_id}", content=b"{not json",
                   headers={"X-Signature": hmac.new(secret.encode(), b"{not json",
                                                    hashlib.sha256).hexdigest()})
    assert_error(r, 400)
    # Rotation: the old secret stops working at once.
    new_secret = mailer.sk.post("/channels/webhook-secret").json()["secret"]
    assert_error(_webhook(mailer, secret, {**payload, "id": "dup-2"}), 401)
    assert _webhook(mailer, new_secret, {**payload, "id": "dup-2"}).status_code == 202


def test_hard_bounce_suppresses_later_sends_soft_does_not(mailer: Tenant, sink: SmtpSink) -> None:
    secret = mailer.sk.post("/channels/webhook-secret").json()["secret"]
    first = _send(mailer, subject="1", body="one")
    _webhook(mailer, secret, {"id": "b1", "event": "message.bounced",
                              "data": {"messageId": first["id"], "bounceType": "soft"}})
    _wait_status(mailer, first["id"], "bounced")
    second = _send(mailer, subject="2", body="two")
    assert second["status"] == "sent"
    _webhook(mailer, secret, {"id": "b2", "event": "message.bounced",
                              "data": {"messageId": second["id"]}})  # hard by default
    _wait_status(mailer, second["id"], "bounced")
    third = _send(mailer, subject="3", body="three")
    assert third["status"] == "suppressed"
    assert len(sink.messages) == 2  # the provider was never called for the third


def test_unsubscribe_link_stops_marketing_but_not_transactional(mailer: Tenant,
                                                                sink: SmtpSink) -> None:
    marketing = _send(mailer, subject="Sale", body="<p>50% off</p>", transactional=False)
    assert marketing["status"] == "sent"
    (mail,) = sink.wait_for_blocking(1)
    msg = mail.message
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = msg["List-Unsubscribe"].strip("<>")
    assert httpx.get(url).status_code == 200  # a confirmation page: GET changes nothing
    assert mailer.sk.get("/users/ann").json()["subscribed"] is True
    r = httpx.post(url, content=b"List-Unsubscribe=One-Click",
                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200 and r.json() == {"unsubscribed": True}
    assert mailer.sk.get("/users/ann").json()["subscribed"] is False
    assert _send(mailer, subject="Sale 2", body="x", transactional=False)["status"] == "suppressed"
    assert _send(mailer, subject="Receipt", body="x")["status"] == "sent"
    assert_error(httpx.post(url[:-3] + "abc"), 400)


def test_permanent_failures_are_recorded_not_retried(mailer: Tenant, sink: SmtpSink) -> None:
    sink.refuse("ann@example.com")
    failed = _send(mailer, subject="x", body="y")
    assert failed["status"] == "failed" and "550" in failed["error"]
    mailer.sk.put("/channels", json={"emailProvider": "POSTALYNK"})
    unconfigured = _send(mailer, subject="x", body="y")
    assert unconfigured["status"] == "failed"
    assert "postalynkApiKey" in unconfigured["error"]


def test_in_app_message_lands_in_the_inbox(mailer: Tenant) -> None:
    r = mailer.sk.post("/messages", json={"userId": "ann", "channel": "IN_APP",
                                           "subject": "Hello {{ name }}", "body": "News!"})
    assert r.json()["status"] == "sent"
    inbox = mailer.sk.get("/inbox/ann").json()
    assert [m["id"] for m in inbox["messages"]] == [r.json()["id"]]


def test_message_validation_and_listing(mailer: Tenant) -> None:
    assert_error(mailer.sk.post("/messages", json={"userId": "ann", "channel": "EMAIL"}), 400)
    assert_error(mailer.sk.post("/messages", json={"userId": "nobody", "channel": "EMAIL",
                                                    "subject": "s", "body": "b"}), 404)
    assert_error(mailer.sk.post("/messages", json={"userId": "ann", "channel": "FAX",
                                                    "body": "b"}), 400)
    assert_error(mailer.sk.post("/messages", json={"userId": "ann", "channel": "EMAIL",
                                                    "templateId": "tpl_nope"}), 404)
    bad = mailer.sk.post("/messages", json={"userId": "ann", "channel": "EMAIL",
                                            "subject": "s", "body": "{{ ''.__class__ }}"})
    assert_error(bad, 400)
    assert_error(mailer.pk.post("/messages", json={"userId": "ann", "channel": "EMAIL",
                                                    "subject": "s", "body": "b"}), 403)
    _send(mailer, subject="a", body="b")
    listed = mailer.sk.get("/messages", params={"userId": "ann", "channel": "EMAIL"}).json()
    assert listed["total"] == 1 and listed["messages"][0]["status"] == "sent"
    assert mailer.sk.get("/messages", params={"status": "failed"}).json()["total"] == 0


def test_secrets_never_leave_in_responses_or_logs(mailer: Tenant, db: psycopg.Connection,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    channels = mailer.sk.get("/channels")
    assert SMTP_PASSWORD not in channels.text
    email = channels.json()["email"]
    assert email["configured"] is True and email["hasSmtpPassword"] is True
    # A PATCH without the password keeps the stored one.
    mailer.sk.patch("/channels", json={"smtpFromEmail": "news@acme.example.com"})
    _send(mailer, subject="s", body="b")
    stored = db.execute("SELECT settings::text, secrets_enc FROM channel_configs "
                        "WHERE project_id = %s", (mailer.project_id,)).fetchone()
    assert stored is not None and SMTP_PASSWORD not in stored[0] + stored[1]
    assert all(SMTP_PASSWORD not in r.getMessage() for r in caplog.records)
    sent = mailer.sk.get("/messages").json()["messages"][0]
    assert sent["status"] == "sent"  # the password still worked after the PATCH


async def test_outcome_listener_wakes_the_waiting_post(settings: Any,
                                                       db: psycopg.Connection) -> None:
    """POST /messages waits on PostgreSQL (LISTEN/NOTIFY from the send activity), not on
    Temporal's result long-poll; unknown ids and discarded waiters are ignored."""
    import asyncio

    from api.messages import OutcomeListener
    from core.services.messages import OUTCOME_CHANNEL

    listener = OutcomeListener(settings.database_url)
    waiting = await listener.register("msg_waiting")
    other = await listener.register("msg_other")
    assert waiting is not None and other is not None
    listener.discard("msg_other")
    db.execute("SELECT pg_notify(%s, 'msg_unknown'), pg_notify(%s, 'msg_waiting'), "
               "pg_notify(%s, 'msg_other')", (OUTCOME_CHANNEL,) * 3)
    await asyncio.wait_for(waiting, 5)
    await asyncio.sleep(0.1)
    assert not other.done()
    assert listener._task is not None
    listener._task.cancel()
