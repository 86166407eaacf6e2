"""End-user profiles through real HTTP: identify, merge, search, active filter, erase."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import psycopg

from tests.support import Tenant, assert_error, signup


def test_identify_creates_then_merges(tenant: Tenant) -> None:
    r = tenant.pk.post("/identify", json={"userId": "u1", "email": "Ann@Example.com",
                                           "properties": {"plan": "free", "age": 31}})
    assert r.status_code == 200
    user = r.json()
    assert user["id"] == "u1" and user["properties"] == {"plan": "free", "age": 31}
    assert user["subscribed"] is True and user["eventCount"] == 0
    merged = tenant.pk.post("/identify", json={"userId": "u1",
                                                "properties": {"plan": "pro", "age": None}}).json()
    assert merged["properties"] == {"plan": "pro"}  # null removed "age"
    assert merged["email"] == "Ann@example.com"  # kept when not sent (domain normalised)


def test_patch_and_put_merge_and_create(tenant: Tenant) -> None:
    created = tenant.sk.patch("/users/new", json={"properties": {"a": 1}})
    assert created.status_code == 200 and created.json()["properties"] == {"a": 1}
    put = tenant.sk.put("/users/new", json={"email": "n@example.com",
                                            "properties": {"b": {"c": 2}}}).json()
    assert put["properties"] == {"a": 1, "b": {"c": 2}} and put["email"] == "n@example.com"
    cleared = tenant.sk.patch("/users/new", json={"email": None, "subscribed": False}).json()
    assert cleared["email"] is None and cleared["subscribed"] is False
    assert tenant.sk.get("/users/new").json()["subscribed"] is False


def test_patch_does_not_move_last_seen_but_identify_does(tenant: Tenant) -> None:
    old = "2026-01-01T00:00:00Z"
    tenant.pk.post("/events", json={"userId": "t", "eventName": "e", "timestamp": old})
    assert tenant.sk.patch("/users/t", json={"properties": {"x": 1}}).json()["lastSeen"] == old
    seen = tenant.pk.post("/identify", json={"userId": "t"}).json()["lastSeen"]
    assert seen > old


def test_user_validation(tenant: Tenant) -> None:
    assert_error(tenant.pk.post("/identify", json={"userId": "u", "email": "not-an-email"}), 400)
    assert_error(tenant.pk.post("/identify", json={"email": "a@example.com"}), 400)
    body = assert_error(tenant.sk.patch("/users/u", json={"props": {}}), 400)
    assert body["details"][0]["field"] == "props"
    assert_error(tenant.sk.get("/users/nobody"), 404)


def test_search_and_active_filter(tenant: Tenant, db: psycopg.Connection) -> None:
    for uid, email in [("alice", "alice@corp.com"), ("bob", "b@CORP.com"), ("carol", None),
                       ("100%_real", None)]:
        tenant.pk.post("/identify", json={"userId": uid, "email": email} if email
                       else {"userId": uid})
    found = tenant.sk.get("/users", params={"search": "corp"}).json()
    assert {u["id"] for u in found["users"]} == {"alice", "bob"} and found["total"] == 2
    assert {u["id"] for u in tenant.sk.get("/users", params={"search": "CAR"}).json()["users"]} \
        == {"carol"}
    # LIKE wildcards in the search are literal characters.
    assert [u["id"] for u in tenant.sk.get("/users", params={"search": "%_"}).json()["users"]] \
        == ["100%_real"]
    stale = datetime.now(UTC) - timedelta(days=45)
    db.execute("UPDATE users SET last_seen = %s WHERE project_id = %s AND id = 'carol'",
               (stale, tenant.project_id))
    active = tenant.sk.get("/users", params={"filter": "active"}).json()
    inactive = tenant.sk.get("/users", params={"filter": "inactive"}).json()
    assert "carol" not in {u["id"] for u in active["users"]} and active["total"] == 3
    # Most recently seen first.
    assert [u["id"] for u in active["users"]] == ["100%_real", "bob", "alice"]
    assert [u["id"] for u in inactive["users"]] == ["carol"]
    assert_error(tenant.sk.get("/users", params={"filter": "sleepy"}), 400)
    paged = tenant.sk.get("/users", params={"limit": 2, "page": 2}).json()
    assert (paged["total"], len(paged["users"]), paged["page"]) == (4, 2, 2)


def test_concurrent_identify_of_one_user_keeps_every_property(tenant: Tenant) -> None:
    def identify(i: int) -> int:
        with tenant.pk as client:
            return client.post("/identify", json={"userId": "same",
                                                  "properties": {f"k{i}": i}}).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(identify, range(24))) == {200}
    props = tenant.sk.get("/users/same").json()["properties"]
    assert props == {f"k{i}": i for i in range(24)}


def test_delete_user_erases_profile_and_events(tenant: Tenant, db: psycopg.Connection) -> None:
    tenant.pk.post("/events/batch", json={"events": [
        {"userId": "gone", "eventName": "e"}, {"userId": "gone", "eventName": "f"},
        {"userId": "stays", "eventName": "e"}]})
    assert tenant.sk.delete("/users/gone").json() == {"deleted": True}
    assert_error(tenant.sk.get("/users/gone"), 404)
    left = db.execute("SELECT user_id FROM events WHERE project_id = %s",
                      (tenant.project_id,)).fetchall()
    assert left == [("stays",)]
    assert_error(tenant.sk.delete("/users/gone"), 404)


def test_users_are_per_project(api_url: str, tenant: Tenant) -> None:
    other = signup(api_url)
    other.pk.post("/identify", json={"userId": "shared-id", "properties": {"p": "other"}})
    assert_error(tenant.sk.get("/users/shared-id"), 404)
    tenant.pk.post("/identify", json={"userId": "shared-id", "properties": {"p": "mine"}})
    assert other.sk.get("/users/shared-id").json()["properties"] == {"p": "other"}
