"""The in-app inbox through real HTTP. Messages are inserted directly (the send pipeline
has its own tests); this covers what the app sees and who may see it."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import psycopg
import pytest

from core.ids import new_id
from tests.support import Tenant, assert_error, signup

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def put_message(
    db: psycopg.Connection, tenant: Tenant, user_id: str, *, minutes: int = 0,
    title: str | None = "Hello", body: str = "Body", channel: str = "IN_APP",
    status: str = "sent",
) -> str:
    message_id = new_id("msg")
    db.execute(
        "INSERT INTO messages (id, project_id, user_id, channel, subject, body, status, "
        "send_key, created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (message_id, tenant.project_id, user_id, channel, title, body, status,
         f"test:{message_id}", T0 + timedelta(minutes=minutes), T0 + timedelta(minutes=minutes)),
    )
    return message_id


def identity_secret(tenant: Tenant) -> str:
    r = tenant.dashboard.get("/api-keys")
    assert r.status_code == 200, r.text
    return r.json()["identitySecret"]  # type: ignore[no-any-return]


def user_hash(secret: str, user_id: str) -> str:
    return hmac.new(secret.encode(), user_id.encode(), hashlib.sha256).hexdigest()


def test_inbox_lists_in_app_messages_newest_first(tenant: Tenant, db: psycopg.Connection) -> None:
    old = put_message(db, tenant, "ann", minutes=1, title="Old", body="first")
    new = put_message(db, tenant, "ann", minutes=5, title=None, body="no title")
    mid = put_message(db, tenant, "ann", minutes=3, title="Mid", status="clicked")
    # Not in the inbox: other channels, not yet sent or failed, another user.
    put_message(db, tenant, "ann", minutes=9, channel="EMAIL")
    put_message(db, tenant, "ann", minutes=9, channel="PUSH")
    for status in ("queued", "sending", "failed", "suppressed", "bounced"):
        put_message(db, tenant, "ann", minutes=9, status=status)
    put_message(db, tenant, "bob", minutes=9)

    r = tenant.sk.get("/inbox/ann")
    assert r.status_code == 200, r.text
    inbox = r.json()
    assert [m["id"] for m in inbox["messages"]] == [new, mid, old]
    assert (inbox["total"], inbox["unread"], inbox["page"], inbox["limit"]) == (3, 3, 1, 50)
    assert inbox["messages"][2] == {
        "id": old, "title": "Old", "body": "first", "read": False, "readAt": None,
        "createdAt": "2026-03-01T12:01:00Z",
    }
    assert inbox["messages"][0]["title"] is None
    paged = tenant.sk.get("/inbox/ann", params={"limit": 2, "page": 2}).json()
    assert [m["id"] for m in paged["messages"]] == [old]
    assert (paged["total"], paged["unread"]) == (3, 3)
    # A user with nothing (or unknown) has an empty inbox, not a 404.
    assert tenant.sk.get("/inbox/nobody").json() == {
        "messages": [], "total": 0, "page": 1, "limit": 50, "unread": 0}


def test_mark_read_is_idempotent_and_counts(tenant: Tenant, db: psycopg.Connection) -> None:
    first = put_message(db, tenant, "ann", minutes=1)
    second = put_message(db, tenant, "ann", minutes=2, status="delivered")
    r = tenant.sk.post(f"/inbox/ann/{first}/read")
    assert r.status_code == 200 and r.json() == {"read": True}
    inbox = tenant.sk.get("/inbox/ann").json()
    assert inbox["unread"] == 1 and inbox["total"] == 2
    read = {m["id"]: m for m in inbox["messages"]}
    assert read[first]["read"] is True and read[first]["readAt"].endswith("Z")
    assert read[second]["read"] is False and read[second]["readAt"] is None
    # Again: still read, and the first read time is kept.
    assert tenant.sk.post(f"/inbox/ann/{first}/read").json() == {"read": True}
    again = {m["id"]: m for m in tenant.sk.get("/inbox/ann").json()["messages"]}
    assert again[first]["readAt"] == read[first]["readAt"]
    tenant.sk.post(f"/inbox/ann/{second}/read")
    assert tenant.sk.get("/inbox/ann").json()["unread"] == 0
    row = db.execute("SELECT status, read_at IS NOT NULL FROM messages WHERE id = %s",
                     (second,)).fetchone()
    assert row == ("delivered", True)


def test_mark_read_404s(tenant: Tenant, db: psycopg.Connection) -> None:
    bobs = put_message(db, tenant, "bob")
    email = put_message(db, tenant, "ann", channel="EMAIL")
    queued = put_message(db, tenant, "ann", status="queued")
    for message_id in (bobs, email, queued, "msg_nope"):
        assert_error(tenant.sk.post(f"/inbox/ann/{message_id}/read"), 404)
    other = signup(tenant.base, project="Other")
    assert_error(other.sk.post(f"/inbox/bob/{bobs}/read"), 404)
    assert other.sk.get("/inbox/bob").json()["total"] == 0
    unread = db.execute("SELECT count(*) FROM messages WHERE project_id = %s "
                        "AND read_at IS NOT NULL", (tenant.project_id,)).fetchone()
    assert unread == (0,)


def test_public_key_needs_the_users_hash(tenant: Tenant, db: psycopg.Connection) -> None:
    mine = put_message(db, tenant, "ann", title="for ann")
    theirs = put_message(db, tenant, "bob", title="for bob")
    secret = identity_secret(tenant)
    ann = {"X-User-Hash": user_hash(secret, "ann")}

    r = tenant.pk.get("/inbox/ann", headers=ann)
    assert r.status_code == 200, r.text
    assert [m["id"] for m in r.json()["messages"]] == [mine]
    upper = {"X-User-Hash": ann["X-User-Hash"].upper()}
    assert tenant.pk.get("/inbox/ann", headers=upper).status_code == 200
    assert tenant.pk.post(f"/inbox/ann/{mine}/read", headers=ann).json() == {"read": True}

    # Missing, wrong, or keyed with something else: 401.
    assert "X-User-Hash" in assert_error(tenant.pk.get("/inbox/ann"), 401)["message"]
    assert_error(tenant.pk.get("/inbox/ann", headers={"X-User-Hash": ""}), 401)
    assert_error(tenant.pk.get("/inbox/ann", headers={"X-User-Hash": "0" * 64}), 401)
    assert_error(tenant.pk.get("/inbox/ann",
                               headers={"X-User-Hash": user_hash("guess", "ann")}), 401)
    assert_error(tenant.pk.post(f"/inbox/ann/{mine}/read"), 401)
    # Ann's hash opens neither Bob's inbox nor his messages.
    assert_error(tenant.pk.get("/inbox/bob", headers=ann), 401)
    assert_error(tenant.pk.post(f"/inbox/bob/{theirs}/read", headers=ann), 401)
    # ...nor Bob's message through Ann's inbox.
    assert_error(tenant.pk.post(f"/inbox/ann/{theirs}/read", headers=ann), 404)
    bob = {"X-User-Hash": user_hash(secret, "bob")}
    assert [m["id"] for m in tenant.pk.get("/inbox/bob", headers=bob).json()["messages"]] \
        == [theirs]
    # Another project's identity secret makes a hash worth nothing here.
    other = signup(tenant.base, project="Other")
    forged = {"X-User-Hash": user_hash(identity_secret(other), "ann")}
    assert_error(tenant.pk.get("/inbox/ann", headers=forged), 401)
    # No key at all is 401 whatever the hash.
    assert_error(tenant.client().get("/inbox/ann", headers=ann), 401)


@pytest.mark.parametrize("user_id", ["user with spaces", "ünïcødé", "a+b@example.com"])
def test_user_ids_with_odd_characters(tenant: Tenant, db: psycopg.Connection,
                                      user_id: str) -> None:
    """The hash covers the userId's UTF-8 bytes, as the path carries it (percent-encoded)."""
    message_id = put_message(db, tenant, user_id)
    path = f"/inbox/{quote(user_id, safe='')}"
    headers = {"X-User-Hash": user_hash(identity_secret(tenant), user_id)}
    r = tenant.pk.get(path, headers=headers)
    assert r.status_code == 200, r.text
    assert [m["id"] for m in r.json()["messages"]] == [message_id]
    assert tenant.pk.post(f"{path}/{message_id}/read", headers=headers).json() == {"read": True}
