"""Dashboard accounts over real HTTP: signup, login, logout, me, sessions, CSRF."""

from __future__ import annotations

import hashlib
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest

from core.settings import Settings
from tests.conftest import make_settings
from tests.support import Tenant, assert_error, serve_api, signup

COOKIE = "retenshun_session"
PASSWORD = "correct horse battery"


def _email(tag: str = "user") -> str:
    return f"{tag}-{uuid.uuid4().hex[:12]}@example.com"


def _client(api_url: str, **kw: Any) -> httpx.Client:
    return httpx.Client(base_url=api_url + "/api/v1", timeout=30, **kw)


def _signup(api_url: str, email: str, password: str = PASSWORD,
            project: str = "Acme") -> httpx.Response:
    with _client(api_url) as c:
        return c.post("/auth/signup",
                      json={"email": email, "password": password, "projectName": project})


def _cookie_value(response: httpx.Response) -> str:
    value = response.cookies.get(COOKIE)
    assert value, response.headers.get_list("set-cookie")
    return value


def _with_cookie(api_url: str, token: str, csrf: str | None = None) -> httpx.Client:
    """A client that sends the session cookie by hand (not through a jar that expires it)."""
    headers = {"Cookie": f"{COOKIE}={token}"}
    if csrf:
        headers["X-CSRF-Token"] = csrf
    return _client(api_url, headers=headers)


@pytest.fixture(scope="module")
def tenant(api_url: str) -> Tenant:
    """One account for this module's login/session tests (each opens its own sessions);
    signup costs an argon2 hash, so it is not repeated per test."""
    return signup(api_url)


def _details_fields(body: dict[str, Any]) -> set[str]:
    assert isinstance(body.get("details"), list) and body["details"], body
    for d in body["details"]:
        assert set(d) == {"field", "message"} and d["message"], d
    return {d["field"] for d in body["details"]}


# --- signup ------------------------------------------------------------------------------------


def test_signup_creates_account_project_admin_and_sets_a_safe_cookie(api_url: str) -> None:
    email = _email("signup")
    r = _signup(api_url, email, project="Rocket Inc")
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"user", "project", "csrfToken"}
    assert body["user"]["email"] == email
    assert body["user"]["role"] == "ADMIN"
    assert body["user"]["id"].startswith("usr_")
    assert body["project"]["id"].startswith("proj_")
    assert body["project"]["name"] == "Rocket Inc"
    assert body["project"]["createdAt"].endswith("Z")
    assert isinstance(body["csrfToken"], str) and len(body["csrfToken"]) >= 24

    cookies = [c for c in r.headers.get_list("set-cookie") if c.startswith(COOKIE + "=")]
    assert len(cookies) == 1, r.headers.get_list("set-cookie")
    attrs = [a.strip().lower() for a in cookies[0].split(";")]
    assert "httponly" in attrs
    assert "samesite=lax" in attrs
    assert "path=/" in attrs
    assert "secure" not in attrs  # served over plain http here (see the https test)
    token = _cookie_value(r)
    assert len(token) >= 40  # 256 random bits
    assert token != body["csrfToken"]
    # Signup carries rate-limit headers too (unauthenticated routes are limited per address).
    assert "ratelimit-limit" in r.headers


def test_signup_logs_in(api_url: str) -> None:
    email = _email("me")
    r = _signup(api_url, email)
    with _with_cookie(api_url, _cookie_value(r)) as c:
        me = c.get("/auth/me")
    assert me.status_code == 200, me.text
    assert me.json()["user"] == r.json()["user"]
    assert me.json()["project"] == r.json()["project"]
    assert "csrfToken" not in me.json()


def test_password_is_stored_as_argon2_hash(api_url: str, db: psycopg.Connection) -> None:
    email = _email("hash")
    password = "a-very-distinctive-password-1234"
    assert _signup(api_url, email, password).status_code == 201
    row = db.execute("SELECT password_hash FROM accounts WHERE email = %s", (email,)).fetchone()
    assert row is not None
    assert row[0].startswith("$argon2id$"), row[0]
    assert password not in row[0]
    # Nowhere else in the account row either.
    full = db.execute("SELECT accounts::text FROM accounts WHERE email = %s", (email,)).fetchone()
    assert full is not None and password not in full[0]


def test_session_token_is_stored_hashed(api_url: str, db: psycopg.Connection) -> None:
    r = _signup(api_url, _email("tok"))
    token = _cookie_value(r)
    rows = db.execute(
        "SELECT token_hash FROM auth_sessions WHERE account_id = %s", (r.json()["user"]["id"],)
    ).fetchall()
    assert len(rows) == 1
    assert rows[0][0] != token
    assert rows[0][0] == hashlib.sha256(token.encode()).hexdigest()


def test_duplicate_email_is_409_case_insensitively(api_url: str) -> None:
    email = _email("dup")
    assert _signup(api_url, email).status_code == 201
    body = assert_error(_signup(api_url, email), 409)
    assert body["error"] == "Conflict"
    assert_error(_signup(api_url, email.upper()), 409)


def test_concurrent_duplicate_signups_give_one_account_and_409s(
    api_url: str, db: psycopg.Connection
) -> None:
    email = _email("race")
    with ThreadPoolExecutor(3) as pool:
        responses = list(pool.map(lambda _: _signup(api_url, email), range(3)))
    codes = sorted(r.status_code for r in responses)
    assert codes == [201, 409, 409], [r.text for r in responses]
    for r in responses:
        if r.status_code == 409:
            assert_error(r, 409)
    count = db.execute("SELECT count(*) FROM accounts WHERE email = %s", (email,)).fetchone()
    assert count == (1,)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"email": "not-an-email", "password": PASSWORD, "projectName": "A"}, "email"),
        ({"email": "x@example.com", "password": "short", "projectName": "A"}, "password"),
        ({"email": "x@example.com", "password": PASSWORD, "projectName": ""}, "projectName"),
        ({"email": "x@example.com", "password": PASSWORD}, "projectName"),
        ({"email": "x@example.com", "password": PASSWORD, "projectName": "A", "plan": "pro"},
         "plan"),
    ],
    ids=["bad-email", "short-password", "empty-project", "missing-project", "unknown-field"],
)
def test_signup_validation_is_400_naming_the_field(
    api_url: str, payload: dict[str, Any], field: str
) -> None:
    with _client(api_url) as c:
        r = c.post("/auth/signup", json=payload)
    body = assert_error(r, 400)
    assert body["error"] == "Bad Request"
    assert _details_fields(body) == {field}
    assert COOKIE not in r.cookies


def test_signup_unknown_field_detail_says_unknown(api_url: str) -> None:
    with _client(api_url) as c:
        r = c.post("/auth/signup", json={"email": _email(), "password": PASSWORD,
                                         "projectName": "A", "projectname": "typo"})
    body = assert_error(r, 400)
    assert body["details"] == [{"field": "projectname", "message": "Unknown field"}]


# --- login / logout / me -----------------------------------------------------------------------


def test_login_returns_user_project_csrf_and_a_fresh_session(tenant: Tenant) -> None:
    with _client(tenant.base) as c:
        r = c.post("/auth/login", json={"email": tenant.email, "password": tenant.password})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["user"]["email"] == tenant.email
        assert body["user"]["role"] == "ADMIN"
        assert body["project"]["id"] == tenant.project_id
        assert body["csrfToken"] and body["csrfToken"] != tenant.csrf
        set_cookie = r.headers["set-cookie"].lower()
        assert "httponly" in set_cookie and "samesite=lax" in set_cookie
        assert c.get("/auth/me").status_code == 200
    # The old session (from signup) still works: sessions are independent.
    assert tenant.dashboard.get("/auth/me").status_code == 200


def test_login_email_is_case_insensitive(tenant: Tenant) -> None:
    with _client(tenant.base) as c:
        r = c.post("/auth/login", json={"email": tenant.email.upper(),
                                        "password": tenant.password})
    assert r.status_code == 200, r.text


def test_wrong_password_and_unknown_email_are_the_same_401(tenant: Tenant) -> None:
    with _client(tenant.base) as c:
        wrong = c.post("/auth/login", json={"email": tenant.email, "password": "nope-nope-nope"})
        unknown = c.post("/auth/login", json={"email": _email("ghost"), "password": PASSWORD})
    a, b = assert_error(wrong, 401), assert_error(unknown, 401)
    assert a == b
    assert a["error"] == "Unauthorized"
    assert COOKIE not in wrong.cookies and COOKIE not in unknown.cookies


def test_login_validation_is_400(api_url: str) -> None:
    with _client(api_url) as c:
        body = assert_error(c.post("/auth/login", json={"email": "x@example.com"}), 400)
        assert _details_fields(body) == {"password"}
        body = assert_error(
            c.post("/auth/login", json={"email": "x@example.com", "password": "p", "x": 1}), 400
        )
        assert _details_fields(body) == {"x"}


def test_logout_ends_the_session_even_if_the_cookie_is_replayed(tenant: Tenant) -> None:
    with _client(tenant.base) as c:
        r = c.post("/auth/login", json={"email": tenant.email, "password": tenant.password})
        token, csrf = _cookie_value(r), r.json()["csrfToken"]
    with _with_cookie(tenant.base, token, csrf) as c:
        assert c.get("/auth/me").status_code == 200
        out = c.post("/auth/logout")
        assert out.status_code == 200, out.text
        assert out.json() == {"loggedOut": True}
        # The cookie is cleared in the browser...
        cleared = [h for h in out.headers.get_list("set-cookie") if h.startswith(COOKIE + "=")]
        assert cleared and ("max-age=0" in cleared[0].lower() or "expires=" in cleared[0].lower())
        # ...and dead on the server even when replayed by hand.
        assert_error(c.get("/auth/me"), 401)
        assert_error(c.get("/api-keys"), 401)
    # Other sessions of the same account live on.
    assert tenant.dashboard.get("/auth/me").status_code == 200


def test_logout_needs_csrf(tenant: Tenant) -> None:
    token = tenant.dashboard.cookies[COOKIE]
    with _with_cookie(tenant.base, token) as c:
        assert_error(c.post("/auth/logout"), 403)
        assert c.get("/auth/me").status_code == 200  # still logged in


def test_me_without_cookie_is_401_and_with_garbage_cookie_is_401(api_url: str) -> None:
    with _client(api_url) as c:
        body = assert_error(c.get("/auth/me"), 401)
        assert body["error"] == "Unauthorized"
    with _with_cookie(api_url, "not-a-real-session-token") as c:
        assert_error(c.get("/auth/me"), 401)


# --- session expiry ----------------------------------------------------------------------------


def test_expired_session_is_401(tenant: Tenant, db: psycopg.Connection) -> None:
    with _client(tenant.base) as c:
        r = c.post("/auth/login", json={"email": tenant.email, "password": tenant.password})
    token = _cookie_value(r)
    token_hash = hashlib.sha256(token.encode()).hexdigest()
    with _with_cookie(tenant.base, token, r.json()["csrfToken"]) as c:
        assert c.get("/auth/me").status_code == 200
        updated = db.execute(
            "UPDATE auth_sessions SET expires_at = now() - interval '1 second' "
            "WHERE token_hash = %s", (token_hash,)
        )
        assert updated.rowcount == 1
        assert_error(c.get("/auth/me"), 401)
        assert_error(c.get("/api-keys"), 401)
        assert_error(c.post("/api-keys", json={"name": "x", "type": "public"}), 401)
    # The signup session of the same account is unaffected.
    assert tenant.dashboard.get("/auth/me").status_code == 200


def test_session_ttl_setting_expires_sessions(
    database_url: str, temporal_address: str, tenant: Tenant
) -> None:
    settings: Settings = make_settings(database_url, temporal_address, RETENSHUN_SESSION_TTL=1)
    with serve_api(settings) as url, _client(url) as c:
        r = c.post("/auth/login", json={"email": tenant.email, "password": tenant.password})
        assert r.status_code == 200, r.text
        assert "max-age=1" in r.headers["set-cookie"].lower()
        token = _cookie_value(r)
        with _with_cookie(url, token) as authed:
            assert authed.get("/auth/me").status_code == 200
            time.sleep(1.2)
            body = assert_error(authed.get("/auth/me"), 401)
            assert "expired" in body["message"].lower()


def test_expired_sessions_are_swept_at_the_next_login(
    tenant: Tenant, db: psycopg.Connection
) -> None:
    with _client(tenant.base) as c:
        r = c.post("/auth/login", json={"email": tenant.email, "password": tenant.password})
        token_hash = hashlib.sha256(_cookie_value(r).encode()).hexdigest()
        db.execute("UPDATE auth_sessions SET expires_at = now() - interval '1 minute' "
                   "WHERE token_hash = %s", (token_hash,))
        assert c.post("/auth/login", json={"email": tenant.email, "password": tenant.password}
                      ).status_code == 200
    gone = db.execute("SELECT count(*) FROM auth_sessions WHERE token_hash = %s", (token_hash,))
    assert gone.fetchone() == (0,)
    assert tenant.dashboard.get("/auth/me").status_code == 200  # live sessions stay


def test_cookie_is_secure_when_served_over_https(
    database_url: str, temporal_address: str, tenant: Tenant
) -> None:
    settings = make_settings(database_url, temporal_address,
                             RETENSHUN_PUBLIC_URL="https://app.example.com")
    with serve_api(settings) as url, _client(url) as c:
        r = c.post("/auth/login", json={"email": tenant.email, "password": tenant.password})
        assert r.status_code == 200, r.text
        attrs = [a.strip().lower() for a in r.headers["set-cookie"].split(";")]
        assert "secure" in attrs and "httponly" in attrs and "samesite=lax" in attrs
        with _with_cookie(url, _cookie_value(r), r.json()["csrfToken"]) as authed:
            out = authed.post("/auth/logout")
            assert out.status_code == 200
            assert "secure" in out.headers["set-cookie"].lower()


# --- CSRF and credential kinds -----------------------------------------------------------------


def test_csrf_is_required_on_cookie_writes(tenant: Tenant) -> None:
    token = tenant.dashboard.cookies[COOKIE]
    payload = {"name": "csrf test", "type": "public"}
    with _with_cookie(tenant.base, token) as c:
        missing = assert_error(c.post("/api-keys", json=payload), 403)
        assert "csrf" in missing["message"].lower()
        assert_error(c.post("/api-keys", json=payload, headers={"X-CSRF-Token": "wrong"}), 403)
        assert_error(
            c.post("/api-keys", json=payload, headers={"X-CSRF-Token": tenant.csrf + "x"}), 403
        )
        # Reads do not need it.
        listed = c.get("/api-keys")
        assert listed.status_code == 200
        assert "csrf test" not in {k["name"] for k in listed.json()["keys"]}
        ok = c.post("/api-keys", json=payload, headers={"X-CSRF-Token": tenant.csrf})
        assert ok.status_code == 201, ok.text


def test_csrf_token_of_another_session_is_refused(tenant: Tenant) -> None:
    with _client(tenant.base) as c:
        other = c.post("/auth/login", json={"email": tenant.email, "password": tenant.password})
    other_csrf = other.json()["csrfToken"]
    token = tenant.dashboard.cookies[COOKIE]
    with _with_cookie(tenant.base, token, other_csrf) as c:
        assert_error(c.post("/api-keys", json={"name": "n", "type": "public"}), 403)


def test_api_keys_are_refused_on_session_endpoints(tenant: Tenant) -> None:
    for client in (tenant.sk, tenant.pk):
        with client as c:
            body = assert_error(c.get("/api-keys"), 403)
            assert "session" in body["message"].lower()
            assert_error(c.get("/team"), 403)
            assert_error(c.get("/auth/me"), 403)
    bearer = {"Authorization": f"Bearer {tenant.secret_key}"}
    with _client(tenant.base, headers=bearer) as c:
        assert_error(c.get("/api-keys"), 403)
    # Even with a valid cookie next to it, a key on a session route is refused.
    assert_error(tenant.dashboard.get("/api-keys", headers={"x-api-key": tenant.secret_key}), 403)


def test_session_endpoints_without_cookie_are_401(api_url: str) -> None:
    with _client(api_url) as c:
        for method, path in (("GET", "/api-keys"), ("POST", "/api-keys"),
                             ("DELETE", "/api-keys"), ("GET", "/team"),
                             ("POST", "/team/invites"), ("POST", "/auth/logout")):
            assert_error(c.request(method, path), 401)


def test_session_cookie_does_not_work_as_an_api_key(tenant: Tenant) -> None:
    """The dashboard cookie opens the dashboard, not the API-key endpoints."""
    assert_error(tenant.dashboard.get("/events"), 401)
    assert_error(tenant.dashboard.get("/users"), 401)
