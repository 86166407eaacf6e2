"""Team members and invites over real HTTP: roles, single-use hashed tokens, expiry."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import psycopg

from tests.support import Tenant, assert_error, signup

MEMBER_PASSWORD = "member password 123"


def _email(tag: str = "mate") -> str:
    return f"{tag}-{uuid.uuid4().hex[:12]}@example.com"


def _invite(tenant: Tenant, email: str, role: str | None = None) -> dict[str, Any]:
    payload = {"email": email} if role is None else {"email": email, "role": role}
    r = tenant.dashboard.post("/team/invites", json=payload)
    assert r.status_code == 201, r.text
    return r.json()["invite"]  # type: ignore[no-any-return]


def _token(invite: dict[str, Any]) -> str:
    tokens = parse_qs(urlsplit(invite["acceptUrl"]).query)["token"]
    assert len(tokens) == 1
    return tokens[0]


def _accept(base: str, token: str, password: str = MEMBER_PASSWORD) -> httpx.Response:
    with httpx.Client(base_url=base + "/api/v1", timeout=30) as c:
        return c.post("/auth/accept-invite", json={"token": token, "password": password})


def _member_client(tenant: Tenant, email: str | None = None, role: str = "MEMBER",
                   ) -> tuple[httpx.Client, dict[str, Any]]:
    """Invite, accept, and return a dashboard client logged in as the new member."""
    inv = _invite(tenant, email or _email(), role)
    r = _accept(tenant.base, _token(inv))
    assert r.status_code == 200, r.text
    body = r.json()
    client = httpx.Client(base_url=tenant.base + "/api/v1", timeout=30,
                          headers={"X-CSRF-Token": body["csrfToken"]})
    client.cookies.set("retenshun_session", r.cookies["retenshun_session"])
    return client, body


def test_team_lists_the_admin(tenant: Tenant) -> None:
    r = tenant.dashboard.get("/team")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["invites"] == []
    assert len(body["members"]) == 1
    admin = body["members"][0]
    assert admin["email"] == tenant.email
    assert admin["role"] == "ADMIN"
    assert admin["id"].startswith("usr_")
    assert admin["joinedAt"].endswith("Z")


def test_invite_is_pending_with_expiry_and_an_accept_url(
    tenant: Tenant, db: psycopg.Connection
) -> None:
    email = _email("invitee")
    before = datetime.now(UTC)
    inv = _invite(tenant, email)
    assert inv["id"].startswith("inv_")
    assert inv["email"] == email
    assert inv["role"] == "MEMBER"  # the default
    assert inv["status"] == "PENDING"
    expires = datetime.fromisoformat(inv["expiresAt"].replace("Z", "+00:00"))
    assert inv["expiresAt"].endswith("Z")
    # Default TTL is 7 days.
    assert before + timedelta(days=6, hours=23) < expires < before + timedelta(days=7, hours=1)
    token = _token(inv)
    assert len(token) >= 40
    assert "/accept-invite?" in inv["acceptUrl"]

    row = db.execute("SELECT token_hash, status, t::text FROM invites t WHERE id = %s",
                     (inv["id"],)).fetchone()
    assert row is not None
    assert row[0] == hashlib.sha256(token.encode()).hexdigest()
    assert row[1] == "PENDING"
    assert token not in row[2]

    listed = tenant.dashboard.get("/team").json()
    assert [i["id"] for i in listed["invites"]] == [inv["id"]]
    assert "acceptUrl" not in listed["invites"][0]
    assert token not in tenant.dashboard.get("/team").text
    assert len(listed["members"]) == 1  # not a member until accepted


def test_invite_email_is_lower_cased_and_admin_role_kept(tenant: Tenant) -> None:
    email = _email("Caps").replace("caps", "CAPS")
    inv = _invite(tenant, email.upper(), role="ADMIN")
    assert inv["email"] == email.lower()
    assert inv["role"] == "ADMIN"


def test_invite_validation(tenant: Tenant) -> None:
    d = tenant.dashboard
    body = assert_error(d.post("/team/invites", json={"email": "nope"}), 400)
    assert [x["field"] for x in body["details"]] == ["email"]
    body = assert_error(d.post("/team/invites", json={"email": _email(), "role": "OWNER"}), 400)
    assert [x["field"] for x in body["details"]] == ["role"]
    body = assert_error(d.post("/team/invites", json={"email": _email(), "name": "Bob"}), 400)
    assert [x["field"] for x in body["details"]] == ["name"]


def test_invite_needs_csrf(tenant: Tenant) -> None:
    r = tenant.dashboard.post("/team/invites", json={"email": _email()},
                              headers={"X-CSRF-Token": "forged"})
    assert_error(r, 403)
    assert tenant.dashboard.get("/team").json()["invites"] == []


def test_accept_invite_creates_a_member_and_logs_in(
    tenant: Tenant, db: psycopg.Connection
) -> None:
    email = _email("joiner")
    inv = _invite(tenant, email)
    r = _accept(tenant.base, _token(inv))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user"]["email"] == email
    assert body["user"]["role"] == "MEMBER"
    assert body["project"]["id"] == tenant.project_id
    assert body["csrfToken"]
    assert "httponly" in r.headers["set-cookie"].lower()

    with httpx.Client(base_url=tenant.base + "/api/v1", timeout=30) as c:
        c.cookies.set("retenshun_session", r.cookies["retenshun_session"])
        me = c.get("/auth/me")
        assert me.status_code == 200
        assert me.json()["user"]["role"] == "MEMBER"
        # The member can read the team and the keys list.
        assert c.get("/team").status_code == 200
        assert c.get("/api-keys").status_code == 200

    team = tenant.dashboard.get("/team").json()
    assert {(m["email"], m["role"]) for m in team["members"]} == {
        (tenant.email, "ADMIN"), (email, "MEMBER")
    }
    assert team["invites"] == []  # no longer pending
    status = db.execute("SELECT status, accepted_at FROM invites WHERE id = %s",
                        (inv["id"],)).fetchone()
    assert status is not None and status[0] == "ACCEPTED" and status[1] is not None
    pw = db.execute("SELECT password_hash FROM accounts WHERE email = %s", (email,)).fetchone()
    assert pw is not None and pw[0].startswith("$argon2")

    # The new member logs in with the password chosen at acceptance.
    with httpx.Client(base_url=tenant.base + "/api/v1", timeout=30) as c:
        login = c.post("/auth/login", json={"email": email, "password": MEMBER_PASSWORD})
        assert login.status_code == 200, login.text
        assert login.json()["project"]["id"] == tenant.project_id


def test_invite_token_is_single_use(tenant: Tenant) -> None:
    inv = _invite(tenant, _email("once"))
    token = _token(inv)
    assert _accept(tenant.base, token).status_code == 200
    body = assert_error(_accept(tenant.base, token), 400)
    assert body["error"] == "Bad Request"
    assert_error(_accept(tenant.base, token, "another password"), 400)


def test_unknown_invite_token_is_400(api_url: str) -> None:
    assert_error(_accept(api_url, "definitely-not-a-token"), 400)


def test_accept_invite_validation(tenant: Tenant) -> None:
    inv = _invite(tenant, _email("short"))
    body = assert_error(_accept(tenant.base, _token(inv), "short"), 400)
    assert [d["field"] for d in body["details"]] == ["password"]
    # The failed attempt did not use the invite up.
    assert _accept(tenant.base, _token(inv)).status_code == 200


def test_expired_invite_is_400(tenant: Tenant, db: psycopg.Connection) -> None:
    inv = _invite(tenant, _email("late"))
    db.execute("UPDATE invites SET expires_at = now() - interval '1 second' WHERE id = %s",
               (inv["id"],))
    body = assert_error(_accept(tenant.base, _token(inv)), 400)
    assert "expired" in body["message"].lower()
    team = tenant.dashboard.get("/team").json()
    assert len(team["members"]) == 1
    assert team["invites"] == []  # an expired invite is no longer pending


def test_inviting_an_existing_member_is_409(tenant: Tenant) -> None:
    body = assert_error(tenant.dashboard.post("/team/invites", json={"email": tenant.email}), 409)
    assert body["error"] == "Conflict"
    assert_error(tenant.dashboard.post("/team/invites", json={"email": tenant.email.upper()}),
                 409)
    email = _email("twice")
    _member_client(tenant, email)
    assert_error(tenant.dashboard.post("/team/invites", json={"email": email}), 409)


def test_accepting_a_second_invite_after_joining_logs_in(tenant: Tenant) -> None:
    email = _email("double")
    first, second = _invite(tenant, email), _invite(tenant, email)
    assert _accept(tenant.base, _token(first)).status_code == 200
    r = _accept(tenant.base, _token(second))
    # The link still logs the member in, with the role they have; it is used up.
    assert r.status_code == 200, r.text
    assert r.json()["user"]["role"] == "MEMBER"
    team = tenant.dashboard.get("/team").json()
    assert [m["email"] for m in team["members"]].count(email) == 1
    assert team["invites"] == []
    assert_error(_accept(tenant.base, _token(second)), 400)


def test_member_cannot_invite_or_manage_keys(tenant: Tenant) -> None:
    member, _ = _member_client(tenant)
    with member:
        body = assert_error(member.post("/team/invites", json={"email": _email()}), 403)
        assert "admin" in body["message"].lower()
        assert_error(member.post("/api-keys", json={"name": "m", "type": "secret"}), 403)
        keys = member.get("/api-keys").json()["keys"]
        assert_error(member.request("DELETE", "/api-keys", json={"id": keys[0]["id"]}), 403)
    # Nothing changed.
    assert tenant.dashboard.get("/team").json()["invites"] == []
    after = tenant.dashboard.get("/api-keys").json()["keys"]
    assert [k["id"] for k in after] == [k["id"] for k in keys]
    assert tenant.sk.get("/events").status_code == 200


def test_invited_admin_can_invite_and_manage_keys(tenant: Tenant) -> None:
    admin, body = _member_client(tenant, role="ADMIN")
    assert body["user"]["role"] == "ADMIN"
    with admin:
        assert admin.post("/team/invites", json={"email": _email()}).status_code == 201
        assert admin.post("/api-keys", json={"name": "by admin 2", "type": "public"}
                          ).status_code == 201


def test_existing_account_joins_with_its_own_password(tenant: Tenant, api_url: str) -> None:
    other = signup(api_url)
    inv = _invite(tenant, other.email)
    # Someone holding the link but not the password cannot take the account over.
    assert_error(_accept(tenant.base, _token(inv), "not their password"), 401)
    r = _accept(tenant.base, _token(inv), other.password)
    assert r.status_code == 200, r.text
    assert r.json()["project"]["id"] == tenant.project_id
    assert r.json()["user"]["role"] == "MEMBER"
    members = tenant.dashboard.get("/team").json()["members"]
    assert other.email in {m["email"] for m in members}
    # Their own project is untouched.
    assert other.dashboard.get("/auth/me").json()["project"]["id"] == other.project_id


def test_team_is_per_project(tenant: Tenant, api_url: str) -> None:
    other = signup(api_url)
    _invite(other, _email("theirs"))
    team = tenant.dashboard.get("/team").json()
    assert [m["email"] for m in team["members"]] == [tenant.email]
    assert team["invites"] == []
