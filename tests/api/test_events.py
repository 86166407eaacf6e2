"""Events through real HTTP: tracking, idempotency, batches, filters, concurrency."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import psycopg

from tests.support import Tenant, assert_error, signup


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def test_track_returns_event_with_contract_fields(tenant: Tenant) -> None:
    r = tenant.pk.post("/events", json={"userId": "u1", "eventName": "purchase",
                                         "properties": {"amount": 49.99, "sku": "p1"}})
    assert r.status_code == 202
    event_id = r.json()["id"]
    assert event_id.startswith("evt_")
    got = tenant.sk.get(f"/events/{event_id}").json()
    assert got["userId"] == "u1" and got["eventName"] == "purchase"
    assert got["properties"] == {"amount": 49.99, "sku": "p1"}
    assert got["timestamp"].endswith("Z") and got["receivedAt"].endswith("Z")
    assert set(got) == {"id", "userId", "eventName", "properties", "timestamp", "receivedAt"}


def test_timestamp_with_offset_is_stored_in_utc(tenant: Tenant) -> None:
    r = tenant.sk.post("/events", json={"userId": "u1", "eventName": "x",
                                         "timestamp": "2026-03-01T12:00:00+02:00"})
    got = tenant.sk.get(f"/events/{r.json()['id']}").json()
    assert got["timestamp"] == "2026-03-01T10:00:00Z"


def test_message_id_makes_tracking_idempotent(tenant: Tenant, db: psycopg.Connection) -> None:
    body = {"userId": "u1", "eventName": "order", "messageId": "m-1"}
    first = tenant.pk.post("/events", json=body)
    again = tenant.pk.post("/events", json=body)
    assert first.status_code == 202 and again.status_code == 200
    assert again.json() == {"id": first.json()["id"], "status": "duplicate"}
    count = db.execute("SELECT count(*) FROM events WHERE project_id = %s",
                       (tenant.project_id,)).fetchone()
    assert count == (1,)
    assert tenant.sk.get("/users/u1").json()["eventCount"] == 1


def test_idempotency_key_header_works_like_message_id(tenant: Tenant) -> None:
    body = {"userId": "u1", "eventName": "order"}
    first = tenant.pk.post("/events", json=body, headers={"Idempotency-Key": "k-9"})
    again = tenant.pk.post("/events", json=body, headers={"Idempotency-Key": "k-9"})
    assert again.json() == {"id": first.json()["id"], "status": "duplicate"}
    other = tenant.pk.post("/events", json=body, headers={"Idempotency-Key": "k-10"})
    assert other.json()["status"] == "ok"


def test_idempotency_is_scoped_to_the_project(api_url: str, tenant: Tenant) -> None:
    other = signup(api_url)
    body = {"userId": "u1", "eventName": "order", "messageId": "shared"}
    assert tenant.pk.post("/events", json=body).json()["status"] == "ok"
    assert other.pk.post("/events", json=body).json()["status"] == "ok"


def test_concurrent_duplicates_store_one_event(tenant: Tenant, db: psycopg.Connection) -> None:
    body = {"userId": "race", "eventName": "pay", "messageId": "once"}

    def send(_: int) -> str:
        with tenant.pk as client:
            return client.post("/events", json=body).json()["id"]

    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(send, range(16)))
    assert len(ids) == 1
    stored = db.execute("SELECT count(*) FROM events WHERE project_id = %s AND user_id = 'race'",
                        (tenant.project_id,)).fetchone()
    assert stored == (1,)
    assert tenant.sk.get("/users/race").json()["eventCount"] == 1


def test_concurrent_events_for_one_user_are_all_counted(tenant: Tenant) -> None:
    def send(i: int) -> int:
        with tenant.pk as client:
            return client.post("/events", json={"userId": "hot", "eventName": f"e{i}"}).status_code

    with ThreadPoolExecutor(10) as pool:
        statuses = list(pool.map(send, range(60)))
    assert statuses == [202] * 60
    user = tenant.sk.get("/users/hot").json()
    assert user["eventCount"] == 60
    assert user["sessionCount"] == 1


def test_sessions_split_on_thirty_minute_gaps(tenant: Tenant) -> None:
    t0 = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)
    for minutes in (0, 10, 39, 69, 200):  # gaps: 10, 29, 30 (new), 131 (new)
        tenant.pk.post("/events", json={"userId": "s", "eventName": "view",
                                         "timestamp": _iso(t0 + timedelta(minutes=minutes))})
    user = tenant.sk.get("/users/s").json()
    assert user["sessionCount"] == 3
    assert user["eventCount"] == 5
    assert user["firstSeen"] == "2026-05-01T09:00:00Z"
    assert user["lastSeen"] == "2026-05-01T12:20:00Z"


def test_batch_counts_sessions_and_users_like_single_events(tenant: Tenant) -> None:
    t0 = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)
    events = [
        {"userId": "b1", "eventName": "view", "timestamp": _iso(t0 + timedelta(minutes=m))}
        for m in (0, 5, 50, 51)
    ] + [{"userId": "b2", "eventName": "view", "timestamp": _iso(t0)}]
    r = tenant.pk.post("/events/batch", json={"events": events})
    assert r.status_code == 202
    body = r.json()
    assert body["accepted"] == 5 and body["duplicates"] == 0 and len(body["ids"]) == 5
    b1 = tenant.sk.get("/users/b1").json()
    assert (b1["eventCount"], b1["sessionCount"]) == (4, 2)
    # A later batch 30+ minutes after the newest event opens another session.
    tenant.pk.post("/events/batch", json={"events": [
        {"userId": "b1", "eventName": "view", "timestamp": _iso(t0 + timedelta(minutes=90))}]})
    b1 = tenant.sk.get("/users/b1").json()
    assert (b1["eventCount"], b1["sessionCount"]) == (5, 3)


def test_batch_duplicates_inside_and_across_batches(tenant: Tenant) -> None:
    first = tenant.pk.post("/events", json={"userId": "d", "eventName": "a", "messageId": "m1"})
    batch = [
        {"userId": "d", "eventName": "a", "messageId": "m1"},  # seen before
        {"userId": "d", "eventName": "b", "messageId": "m2"},
        {"userId": "d", "eventName": "b", "messageId": "m2"},  # repeated inside the batch
        {"userId": "d", "eventName": "c"},
    ]
    body = tenant.pk.post("/events/batch", json={"events": batch}).json()
    assert body["accepted"] == 2 and body["duplicates"] == 2
    assert body["ids"][0] == first.json()["id"]
    assert body["ids"][1] == body["ids"][2]
    assert tenant.sk.get("/users/d").json()["eventCount"] == 3
    again = tenant.pk.post("/events/batch", json={"events": batch}).json()
    assert again["accepted"] == 1 and again["duplicates"] == 3  # only the keyless one is new
    assert again["ids"][:3] == body["ids"][:3]


def test_batch_validation_is_all_or_nothing(tenant: Tenant, db: psycopg.Connection) -> None:
    events = [{"userId": f"v{i}", "eventName": "ok"} for i in range(5)]
    events[3] = {"userId": "", "eventName": "bad"}
    body = assert_error(tenant.pk.post("/events/batch", json={"events": events}), 400)
    assert any(d["field"] == "events[3].userId" for d in body["details"])
    stored = db.execute("SELECT count(*) FROM events WHERE project_id = %s",
                        (tenant.project_id,)).fetchone()
    assert stored == (0,)


def test_batch_limits(tenant: Tenant) -> None:
    assert_error(tenant.pk.post("/events/batch", json={"events": []}), 400)
    too_many = [{"userId": "u", "eventName": "e"}] * 1001
    assert_error(tenant.pk.post("/events/batch", json={"events": too_many}), 400)
    full = tenant.pk.post("/events/batch", json={"events": too_many[:1000]})
    assert full.status_code == 202 and full.json()["accepted"] == 1000


def test_track_validation_errors(tenant: Tenant) -> None:
    body = assert_error(tenant.pk.post("/events", json={"eventName": "x"}), 400)
    assert body["details"][0]["field"] == "userId"
    body = assert_error(tenant.pk.post("/events", json={"userId": "u", "eventName": "x",
                                                        "evnt": 1}), 400)
    assert body["details"][0] == {"field": "evnt", "message": "Unknown field"}
    assert_error(tenant.pk.post("/events", json={"userId": "u", "eventName": "x",
                                                 "timestamp": "yesterday"}), 400)
    assert_error(tenant.pk.post("/events", json={"userId": "u", "eventName": "x",
                                                 "properties": [1, 2]}), 400)


def test_list_filters_and_paging(tenant: Tenant) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    events = [
        {"userId": "a" if i % 2 else "b", "eventName": "click" if i % 3 else "view",
         "timestamp": _iso(t0 + timedelta(days=i))}
        for i in range(10)
    ]
    tenant.sk.post("/events/batch", json={"events": events})
    everything = tenant.sk.get("/events", params={"limit": 1000}).json()
    assert everything["total"] == 10
    stamps = [e["timestamp"] for e in everything["events"]]
    assert stamps == sorted(stamps, reverse=True)  # newest first
    by_user = tenant.sk.get("/events", params={"userId": "a"}).json()
    assert by_user["total"] == 5 and {e["userId"] for e in by_user["events"]} == {"a"}
    by_name = tenant.sk.get("/events", params={"eventName": "view"}).json()
    assert by_name["total"] == 4
    window = tenant.sk.get("/events", params={"from": "2026-01-03T00:00:00Z",
                                              "to": "2026-01-05T00:00:00+00:00"}).json()
    assert [e["timestamp"][:10] for e in window["events"]] == [
        "2026-01-05", "2026-01-04", "2026-01-03"]
    page2 = tenant.sk.get("/events", params={"page": 2, "limit": 3}).json()
    assert (page2["page"], page2["limit"], page2["total"]) == (2, 3, 10)
    assert [e["timestamp"] for e in page2["events"]] == stamps[3:6]
    assert_error(tenant.sk.get("/events", params={"limit": 1001}), 400)
    assert_error(tenant.sk.get("/events", params={"page": 0}), 400)


def test_delete_event(tenant: Tenant) -> None:
    event_id = tenant.pk.post("/events", json={"userId": "z", "eventName": "e"}).json()["id"]
    assert tenant.sk.delete(f"/events/{event_id}").json() == {"deleted": True}
    assert_error(tenant.sk.get(f"/events/{event_id}"), 404)
    assert_error(tenant.sk.delete(f"/events/{event_id}"), 404)
    assert tenant.sk.get("/users/z").json()["eventCount"] == 0


def test_other_projects_events_are_not_found(api_url: str, tenant: Tenant) -> None:
    other = signup(api_url)
    event_id = other.pk.post("/events", json={"userId": "u", "eventName": "e"}).json()["id"]
    assert_error(tenant.sk.get(f"/events/{event_id}"), 404)
    assert_error(tenant.sk.delete(f"/events/{event_id}"), 404)
    assert tenant.sk.get("/events").json()["total"] == 0


def test_bearer_header_tracks_too(tenant: Tenant) -> None:
    with httpx.Client(base_url=tenant.base + "/api/v1",
                      headers={"Authorization": f"Bearer {tenant.public_key}"}) as client:
        assert client.post("/events", json={"userId": "u", "eventName": "e"}).status_code == 202


def test_watched_events_wake_the_dispatcher_after_commit(
    tenant: Tenant, db: psycopg.Connection,
) -> None:
    """Events an automation watches NOTIFY the worker's dispatcher (after they commit, a
    few pokes coalesced into one); other events do not."""
    tenant.sk.post("/automations", json={
        "name": "Watcher", "triggerType": "EVENT", "triggerEvent": "watched", "active": True,
        "steps": [{"type": "WAIT", "delay": 3600}],
    }).raise_for_status()
    db.execute("LISTEN retenshun_outbox")

    def wakes(within: float) -> int:
        return sum(1 for _ in db.notifies(timeout=within))

    wakes(0.5)  # drain wake-ups from other tests' events
    tenant.pk.post("/events", json={"userId": "w1", "eventName": "unwatched"}).raise_for_status()
    assert wakes(0.5) == 0
    for i in range(5):
        tenant.pk.post("/events", json={"userId": f"w{i}", "eventName": "watched"}
                       ).raise_for_status()
    assert 1 <= wakes(1.0) <= 5
    tenant.pk.post("/events/batch", json={"events": [{"userId": "w9", "eventName": "watched"}]}
                   ).raise_for_status()
    assert wakes(1.0) >= 1


def test_nul_characters_are_refused_with_the_field(tenant: Tenant) -> None:
    """PostgreSQL cannot store U+0000: a clear 400 naming the event, never a 500."""
    body = assert_error(tenant.pk.post("/events", json={"userId": "u\u0000", "eventName": "x"}),
                        400)
    assert "NUL" in body["message"]
    assert_error(tenant.pk.post("/events", json={"userId": "u", "eventName": "x",
                                                  "properties": {"a": ["b\u0000"]}}), 400)
    body = assert_error(tenant.pk.post("/events/batch", json={"events": [
        {"userId": "u", "eventName": "x"},
        {"userId": "u", "eventName": "x", "properties": {"k\u0000": 1}}]}), 400)
    assert body["message"].startswith("events[1]:")
    # A literal backslash-u0000 is ordinary text; nothing of the refused batch was stored.
    ok = tenant.pk.post("/events/batch", json={"events": [
        {"userId": "u", "eventName": "x", "properties": {"a": "\\u0000"}}]})
    assert ok.status_code == 202 and ok.json()["accepted"] == 1
    assert tenant.sk.get("/users/u").json()["eventCount"] == 1
    got = tenant.sk.get(f"/events/{ok.json()['ids'][0]}").json()
    assert got["properties"] == {"a": "\\u0000"}
    assert_error(tenant.pk.post("/identify", json={"userId": "v", "email": "v\u0000@x.io"}), 400)
