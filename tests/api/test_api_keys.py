"""API keys over real HTTP: shown once, stored as SHA-256, revocation, scopes, projects."""

from __future__ import annotations

import hashlib
import re
import time
from typing import Any

import httpx
import psycopg
import pytest

from core.settings import Settings
from tests.support import Tenant, assert_error, serve_api, signup

BASE62 = re.compile(r"^[0-9A-Za-z]+$")


@pytest.fixture(scope="module")
def tenant(api_url: str) -> Tenant:
    """One project for this module (signup costs an argon2 hash); tests that need a project
    of their own sign one up."""
    return signup(api_url)


@pytest.fixture(scope="module")
def other(api_url: str) -> Tenant:
    return signup(api_url)


def _create(tenant: Tenant, kind: str, name: str = "a key") -> dict[str, Any]:
    r = tenant.dashboard.post("/api-keys", json={"name": name, "type": kind})
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def _revoke(tenant: Tenant, key_id: Any) -> httpx.Response:
    return tenant.dashboard.request("DELETE", "/api-keys", json={"id": key_id})


def _keyed(tenant: Tenant, headers: dict[str, str]) -> httpx.Client:
    return httpx.Client(base_url=tenant.base + "/api/v1", headers=headers, timeout=30)


def test_create_returns_the_full_key_once_with_prefix_and_256_random_bits(
    tenant: Tenant,
) -> None:
    secrets_seen = set()
    for kind, prefix in (("secret", "sk_live_"), ("public", "pk_live_")):
        for _ in range(2):
            body = _create(tenant, kind, name=f"{kind} extra")
            assert set(body) >= {"id", "name", "type", "prefix", "createdAt", "key"}
            assert body["id"].startswith("key_")
            assert body["type"] == kind
            assert body["name"] == f"{kind} extra"
            assert body["createdAt"].endswith("Z")
            key = body["key"]
            assert key.startswith(prefix)
            random_part = key[len(prefix):]
            # base62: 43 characters hold 43 * log2(62) = 256.03 bits.
            assert BASE62.match(random_part) and len(random_part) >= 43, key
            assert body["prefix"].startswith(prefix) and key.startswith(
                body["prefix"].rstrip(".")
            )
            # The prefix shown later must not give the key away.
            assert len(body["prefix"].rstrip(".")) <= len(prefix) + 8
            secrets_seen.add(random_part)
    assert len(secrets_seen) == 4


def test_list_shows_prefixes_never_full_keys(api_url: str) -> None:
    tenant = signup(api_url)
    created = _create(tenant, "secret", "listed")
    r = tenant.dashboard.get("/api-keys")
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"keys", "identitySecret"}
    assert body["identitySecret"] and len(body["identitySecret"]) >= 32
    by_id = {k["id"]: k for k in body["keys"]}
    # Two keys from signup + this one.
    assert len(by_id) == 3
    listed = by_id[created["id"]]
    assert listed == {k: v for k, v in created.items() if k != "key"}
    assert "key" not in listed
    for full in (created["key"], tenant.secret_key, tenant.public_key):
        assert full not in r.text
        # Not even the random part, in any form.
        assert full.split("_", 2)[2] not in r.text


def test_only_the_sha256_of_a_key_is_stored(tenant: Tenant, db: psycopg.Connection) -> None:
    created = _create(tenant, "secret", "stored")
    key = created["key"]
    row = db.execute(
        "SELECT key_hash, prefix, kind, project_id, t::text FROM api_keys t WHERE id = %s",
        (created["id"],),
    ).fetchone()
    assert row is not None
    key_hash, prefix, kind, project_id, whole_row = row
    assert key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert kind == "secret" and project_id == tenant.project_id
    assert key not in whole_row
    assert key.split("_", 2)[2] not in whole_row
    assert prefix == created["prefix"]


def test_revoked_key_is_401_on_its_very_next_request(
    tenant: Tenant, db: psycopg.Connection
) -> None:
    created = _create(tenant, "secret", "to revoke")
    with tenant.client(created["key"]) as c:
        assert c.get("/events").status_code == 200
        r = _revoke(tenant, created["id"])
        assert r.status_code == 200, r.text
        assert r.json() == {"deleted": True}
        body = assert_error(c.get("/events"), 401)
        assert body["error"] == "Unauthorized"
        assert_error(c.post("/events", json={"userId": "u", "eventName": "e"}), 401)
    row = db.execute("SELECT revoked_at FROM api_keys WHERE id = %s", (created["id"],)).fetchone()
    assert row is not None and row[0] is not None
    # Gone from the list, the other keys still work.
    ids = {k["id"] for k in tenant.dashboard.get("/api-keys").json()["keys"]}
    assert created["id"] not in ids
    assert tenant.sk.get("/events").status_code == 200
    # Revoking again: it is no longer an active key.
    assert_error(_revoke(tenant, created["id"]), 404)


def test_revoking_a_public_key_stops_ingestion(tenant: Tenant) -> None:
    created = _create(tenant, "public", "pk to revoke")
    with tenant.client(created["key"]) as c:
        assert c.post("/events", json={"userId": "u", "eventName": "e"}).status_code == 202
        assert _revoke(tenant, created["id"]).status_code == 200
        assert_error(c.post("/events", json={"userId": "u", "eventName": "e"}), 401)


def test_revoke_unknown_or_foreign_key_is_404(tenant: Tenant, other: Tenant) -> None:
    other_key = other.dashboard.get("/api-keys").json()["keys"][0]
    assert_error(_revoke(tenant, "key_doesnotexist"), 404)
    body = assert_error(_revoke(tenant, other_key["id"]), 404)
    assert other_key["id"] in body["message"]
    # And the other project's key still works.
    assert other.sk.get("/events").status_code == 200


def test_revoke_validation(tenant: Tenant) -> None:
    body = assert_error(tenant.dashboard.request("DELETE", "/api-keys"), 400)
    assert body["details"][0]["field"] == "body"
    body = assert_error(_revoke(tenant, 123), 400)
    assert [d["field"] for d in body["details"]] == ["id"]
    body = assert_error(
        tenant.dashboard.request("DELETE", "/api-keys", json={"id": "key_x", "extra": 1}), 400
    )
    assert [d["field"] for d in body["details"]] == ["extra"]


def test_create_validation(tenant: Tenant) -> None:
    d = tenant.dashboard
    body = assert_error(d.post("/api-keys", json={"name": "x", "type": "admin"}), 400)
    assert [x["field"] for x in body["details"]] == ["type"]
    body = assert_error(d.post("/api-keys", json={"name": "", "type": "public"}), 400)
    assert [x["field"] for x in body["details"]] == ["name"]
    body = assert_error(d.post("/api-keys", json={"type": "public"}), 400)
    assert [x["field"] for x in body["details"]] == ["name"]


# --- scopes ------------------------------------------------------------------------------------


def test_public_key_may_track_and_identify(tenant: Tenant) -> None:
    with tenant.pk as c:
        r = c.post("/events", json={"userId": "u1", "eventName": "opened_app"})
        assert r.status_code == 202, r.text
        r = c.post("/events/batch", json={"events": [{"userId": "u1", "eventName": "a"},
                                                     {"userId": "u2", "eventName": "b"}]})
        assert r.status_code == 202, r.text
        assert r.json()["accepted"] == 2
        r = c.post("/identify", json={"userId": "u1", "email": "u1@example.com"})
        assert r.status_code == 200, r.text
        assert r.json()["email"] == "u1@example.com"


def test_public_key_may_not_read(tenant: Tenant) -> None:
    event_id = tenant.pk.post("/events", json={"userId": "u", "eventName": "e"}).json()["id"]
    tenant.pk.post("/identify", json={"userId": "u"})
    with tenant.pk as c:
        for method, path in (("GET", "/events"), ("GET", f"/events/{event_id}"),
                             ("DELETE", f"/events/{event_id}"), ("GET", "/users"),
                             ("GET", "/users/u"), ("DELETE", "/users/u")):
            body = assert_error(c.request(method, path), 403)
            assert body["error"] == "Forbidden"
            assert "secret" in body["message"].lower()
    # Nothing was deleted by the refused calls.
    assert tenant.sk.get(f"/events/{event_id}").status_code == 200
    assert tenant.sk.get("/users/u").status_code == 200


def test_missing_and_unknown_keys_are_401(tenant: Tenant) -> None:
    with tenant.client() as c:
        for method, path, payload in (("GET", "/events", None), ("GET", "/users", None),
                                      ("POST", "/events", {"userId": "u", "eventName": "e"}),
                                      ("POST", "/identify", {"userId": "u"})):
            body = assert_error(c.request(method, path, json=payload), 401)
            assert body["error"] == "Unauthorized"
    for bogus in ("sk_live_" + "0" * 43, "pk_live_nope", tenant.secret_key + "x",
                  tenant.secret_key[:-1]):
        with tenant.client(bogus) as c:
            assert_error(c.get("/events"), 401)
            assert_error(c.post("/events", json={"userId": "u", "eventName": "e"}), 401)
    # A wrong Authorization scheme is no key at all.
    with _keyed(tenant, {"Authorization": f"Basic {tenant.secret_key}"}) as c:
        assert_error(c.get("/events"), 401)


def test_bearer_works_like_x_api_key(tenant: Tenant) -> None:
    with _keyed(tenant, {"Authorization": f"Bearer {tenant.secret_key}"}) as c:
        r = c.post("/events", json={"userId": "bearer", "eventName": "e"})
        assert r.status_code == 202, r.text
        listed = c.get("/events", params={"userId": "bearer"})
        assert listed.status_code == 200
        assert [e["id"] for e in listed.json()["events"]] == [r.json()["id"]]
    with _keyed(tenant, {"Authorization": f"bearer {tenant.public_key}"}) as c:
        assert c.post("/events", json={"userId": "u", "eventName": "e"}).status_code == 202
        assert_error(c.get("/events"), 403)
    with _keyed(tenant, {"Authorization": "Bearer sk_live_unknown"}) as c:
        assert_error(c.get("/events"), 401)


def test_another_projects_ids_are_404_not_403(tenant: Tenant, other: Tenant) -> None:
    theirs = other.pk.post("/events", json={"userId": "them", "eventName": "secret_thing"})
    assert theirs.status_code == 202
    event_id = theirs.json()["id"]
    other.pk.post("/identify", json={"userId": "them"})
    with tenant.sk as c:
        assert_error(c.get(f"/events/{event_id}"), 404)
        assert_error(c.delete(f"/events/{event_id}"), 404)
        assert_error(c.get("/users/them"), 404)
        assert c.get("/events", params={"userId": "them"}).json()["total"] == 0
        assert event_id not in c.get("/events", params={"limit": 1000}).text
    # Still there for its owner.
    assert other.sk.get(f"/events/{event_id}").status_code == 200
    assert other.sk.get("/users/them").status_code == 200


def test_keys_of_one_project_see_one_project(tenant: Tenant) -> None:
    second = _create(tenant, "secret", "second secret")
    event_id = tenant.pk.post("/events", json={"userId": "via-pk", "eventName": "e"}).json()["id"]
    with tenant.client(second["key"]) as c:
        listed = c.get("/events", params={"userId": "via-pk"}).json()
        assert [e["id"] for e in listed["events"]] == [event_id]
        assert c.get(f"/events/{event_id}").status_code == 200


def test_revocation_reaches_every_api_process(tenant: Tenant, settings: Settings) -> None:
    """Each API process caches valid keys; a revocation made through one process empties
    the others' caches by NOTIFY, so they refuse the key too (within milliseconds)."""
    created = _create(tenant, "public", "used on two servers")
    with serve_api(settings) as other_base, httpx.Client(
        base_url=other_base + "/api/v1", headers={"x-api-key": created["key"]}, timeout=30,
    ) as elsewhere:
        track = {"userId": "u", "eventName": "e"}
        for _ in range(3):  # looked up once, then served from that process's cache
            assert elsewhere.post("/events", json=track).status_code == 202
        assert _revoke(tenant, created["id"]).status_code == 200
        deadline = time.monotonic() + 2
        while (status := elsewhere.post("/events", json=track).status_code) != 401:
            assert status == 202 and time.monotonic() < deadline, "still accepted after 2 s"
            time.sleep(0.01)
