"""GET /reports against counts computed here, independently, from the rows this test
inserted (directly at chosen days, and through the API today): first computed live, then
from the rollups the real ReportsRollupWorkflow wrote, then after changes."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest
from temporalio.client import Client

from core.db import make_async_engine, make_sessionmaker, session_scope
from core.services import reports as report_service
from core.settings import Settings
from tests.support import Tenant, assert_error, signup
from workflows.starts import start_reports_rollup

pytestmark = pytest.mark.usefixtures("worker")

STATUSES = ("queued", "sent", "delivered", "opened", "clicked", "bounced", "failed",
            "suppressed")
SENT = {"sent", "delivered", "opened", "clicked", "bounced"}
DELIVERED = {"delivered", "opened", "clicked"}


def _midnight(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), UTC)


def _today() -> date:
    """Today (UTC), not within a minute of midnight: a day boundary would move the range."""
    now = datetime.now(UTC)
    to_midnight = (_midnight(now.date() + timedelta(days=1)) - now).total_seconds()
    if to_midnight < 90:
        time.sleep(to_midnight + 1)
    return datetime.now(UTC).date()


@dataclass
class Dataset:
    """What was inserted, to compute every expected figure from."""

    today: date
    events: list[tuple[str, datetime]] = field(default_factory=list)  # (userId, timestamp)
    last_seen: dict[str, datetime] = field(default_factory=dict)
    # (channel, stored status, source, sourceId, createdAt)
    messages: list[tuple[str, str, str, str | None, datetime]] = field(default_factory=list)
    enrollments: list[tuple[str, str, datetime]] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)

    def first(self, days: int) -> date:
        return self.today - timedelta(days=days - 1)

    def expected(self, days: int) -> dict[str, Any]:
        first = self.first(days)
        in_range = [(u, t) for u, t in self.events if first <= t.date() <= self.today]
        per_day = Counter(t.date() for _, t in in_range)
        users_per_day: dict[date, set[str]] = defaultdict(set)
        for u, t in in_range:
            users_per_day[t.date()].add(u)
        msgs = [(c, "queued" if s == "sending" else s, src, sid, t)
                for c, s, src, sid, t in self.messages if first <= t.date() <= self.today]
        sent_per_day = Counter(t.date() for _, s, _, _, t in msgs if s in SENT)
        series = []
        for i in range(days):
            day = first + timedelta(days=i)
            series.append({"date": day.isoformat(), "events": per_day[day],
                           "activeUsers": len(users_per_day[day]),
                           "messagesSent": sent_per_day[day]})

        def funnel(statuses: list[str]) -> dict[str, Any]:
            counts = Counter(statuses)
            sent = sum(counts[s] for s in SENT)
            delivered = sum(counts[s] for s in DELIVERED)

            def ratio(a: int, b: int) -> float | None:
                return round(a / b, 4) if b else None

            return {"total": len(statuses), "sent": sent,
                    "byStatus": {s: counts[s] for s in STATUSES},
                    "rates": {"delivery": ratio(delivered, sent),
                              "open": ratio(counts["opened"] + counts["clicked"], delivered),
                              "click": ratio(counts["clicked"], delivered),
                              "bounce": ratio(counts["bounced"], sent)}}

        campaigns = sorted({sid for _, _, src, sid, _ in msgs if src == "campaign"})
        runs = [(a, s) for a, s, t in self.enrollments if first <= t.date() <= self.today]
        automations = sorted({sid for _, _, src, sid, _ in msgs if src == "automation"}
                             | {a for a, _ in runs})
        return {
            "events": len(in_range),
            "activeUsers": sum(1 for t in self.last_seen.values() if t >= _midnight(first)),
            "messagesSent": sum(1 for _, s, *_ in msgs if s in SENT),
            "series": series,
            "messages": {**funnel([s for _, s, *_ in msgs]), "byChannel": {
                c: funnel([s for ch, s, *_ in msgs if ch == c])
                for c in ("EMAIL", "PUSH", "SMS", "IN_APP")}},
            "campaigns": {cid: {"name": self.names.get(cid), **funnel(
                [s for _, s, src, sid, _ in msgs if sid == cid])} for cid in campaigns},
            "automations": {aid: {
                "name": self.names.get(aid),
                **funnel([s for _, s, src, sid, _ in msgs if src == "automation" and sid == aid]),
                "enrollments": {"total": sum(1 for a, _ in runs if a == aid), **{
                    st: sum(1 for a, s in runs if a == aid and s == st)
                    for st in ("running", "completed", "exited", "cancelled", "failed")}},
            } for aid in automations},
        }


def _insert(db: psycopg.Connection[Any], t: Tenant) -> Dataset:
    today = _today()
    data = Dataset(today)
    pid = t.project_id
    at = lambda days, hour: _midnight(today - timedelta(days=days)) + timedelta(  # noqa: E731
        hours=hour)
    # Events: (days ago, hour, users); today only in the past hour of the day.
    plan = [(0, 0.01, ["ann", "bob", "ann"]), (1, 23.9, ["bob"]), (2, 3, ["cat", "dan", "cat"]),
            (6, 12, ["ann"]), (7, 0, ["eve", "eve"]), (13, 5, ["fay"]), (29, 1, ["gus"]),
            (30, 2, ["gus", "hal"]), (45, 6, ["ivy"]), (89, 0, ["jon"]), (90, 9, ["kim"]),
            (120, 9, ["old"])]
    with db.transaction():
        for days, hour, users in plan:
            for n, user in enumerate(users):
                ts = at(days, hour) + timedelta(seconds=n)
                data.events.append((user, ts))
                db.execute(
                    "INSERT INTO events (id, project_id, user_id, event_name, properties, "
                    "timestamp, received_at) VALUES (%s, %s, %s, 'Viewed', '{}', %s, now())",
                    (f"evt_{uuid.uuid4().hex}", pid, user, ts))
        seen: dict[str, list[datetime]] = defaultdict(list)
        for user, ts in data.events:
            seen[user].append(ts)
        seen["identified-only"] = [at(3, 10)]  # /identify, no events: active, in no day
        for user, times in seen.items():
            data.last_seen[user] = max(times)
            db.execute(
                "INSERT INTO users (project_id, id, first_seen, last_seen, last_event_at, "
                "event_count, session_count) VALUES (%s, %s, %s, %s, %s, %s, 1)",
                (pid, user, min(times), max(times), max(times), len(times)))
        seg = f"seg_{uuid.uuid4().hex[:20]}"
        db.execute("INSERT INTO segments (id, project_id, name, rules) VALUES (%s, %s, 'All', "
                   "'[]')", (seg, pid))
        camp_a, camp_b = f"camp_a{uuid.uuid4().hex[:20]}", f"camp_b{uuid.uuid4().hex[:20]}"
        for cid, name in ((camp_a, "Spring sale"), (camp_b, "Winback")):
            data.names[cid] = name
            db.execute("INSERT INTO campaigns (id, project_id, name, channel, segment_id, "
                       "status) VALUES (%s, %s, %s, 'EMAIL', %s, 'SENT')", (cid, pid, name, seg))
        auto = f"auto_{uuid.uuid4().hex[:20]}"
        data.names[auto] = "Abandoned cart"
        db.execute("INSERT INTO automations (id, project_id, name, trigger_type, "
                   "trigger_event, steps) VALUES (%s, %s, 'Abandoned cart', 'EVENT', "
                   "'cart', '[]')", (auto, pid))
        messages = [
            (0, "EMAIL", "sent", "api", None), (0, "PUSH", "sending", "api", None),
            (1, "EMAIL", "delivered", "campaign", camp_a),
            (1, "EMAIL", "opened", "campaign", camp_a),
            (1, "EMAIL", "clicked", "campaign", camp_a),
            (1, "EMAIL", "bounced", "campaign", camp_a),
            (1, "EMAIL", "suppressed", "campaign", camp_a),
            (5, "PUSH", "delivered", "automation", auto),
            (5, "PUSH", "failed", "automation", auto),
            (8, "SMS", "sent", "api", None), (8, "SMS", "delivered", "api", None),
            (20, "EMAIL", "opened", "campaign", camp_b),
            (29, "IN_APP", "sent", "automation", auto),
            (40, "EMAIL", "delivered", "campaign", camp_b),
            (89, "SMS", "failed", "api", None), (91, "EMAIL", "sent", "api", None),
        ]
        for n, (days, channel, status, source, sid) in enumerate(messages):
            ts = at(days, 0.02 if days == 0 else 11) + timedelta(seconds=n)
            data.messages.append((channel, status, source, sid, ts))
            db.execute(
                "INSERT INTO messages (id, project_id, user_id, channel, body, status, source, "
                "source_id, send_key, created_at, updated_at) VALUES "
                "(%s, %s, 'ann', %s, 'b', %s, %s, %s, %s, %s, %s)",
                (f"msg_{uuid.uuid4().hex}", pid, channel, status, source, sid,
                 f"k{n}", ts, ts))
        for n, (days, status) in enumerate([(0, "running"), (2, "completed"), (2, "exited"),
                                            (10, "completed"), (60, "failed"),
                                            (95, "completed")]):
            ts = at(days, 0.03 if days == 0 else 8)
            data.enrollments.append((auto, status, ts))
            db.execute(
                "INSERT INTO enrollments (id, project_id, automation_id, user_id, workflow_id, "
                "status, automation_version, started_at) VALUES (%s, %s, %s, %s, %s, %s, 1, %s)",
                (f"run_{uuid.uuid4().hex}", pid, auto, f"u{n}", f"wf{n}", status, ts))
    return data


def _through_api(t: Tenant, data: Dataset, db: psycopg.Connection[Any]) -> None:
    """Today's activity tracked and sent through the product itself."""
    for user in ("api-1", "api-2", "api-1"):
        r = t.pk.post("/events", json={"userId": user, "eventName": "Signed In"})
        assert r.status_code in (200, 202), r.text
    r = t.sk.post("/messages", json={"userId": "api-1", "channel": "IN_APP", "subject": "Hi",
                                     "body": "Welcome"})
    assert r.status_code == 201 and r.json()["status"] == "sent", r.text
    # What the product stored, read back (timestamps and lastSeen are the server's).
    for user, ts in db.execute("SELECT user_id, timestamp FROM events WHERE project_id = %s "
                               "AND user_id LIKE 'api-%%'", (t.project_id,)).fetchall():
        data.events.append((user, ts))
    for user, last_seen in db.execute("SELECT id, last_seen FROM users WHERE project_id = %s "
                                      "AND id LIKE 'api-%%'", (t.project_id,)).fetchall():
        data.last_seen[user] = last_seen
    ((created,),) = db.execute("SELECT created_at FROM messages WHERE id = %s",
                               (r.json()["id"],)).fetchall()
    data.messages.append(("IN_APP", "sent", "api", None, created))


def _report(t: Tenant, **params: str) -> dict[str, Any]:
    r = t.sk.get("/reports", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def _check(report: dict[str, Any], data: Dataset, days: int) -> None:
    want = data.expected(days)
    assert report["range"] == f"{days}d" and report["days"] == days
    assert report["from"] == data.first(days).isoformat() + "T00:00:00Z"
    assert [e["date"] for e in report["series"]] == [e["date"] for e in want["series"]]
    assert report["series"] == want["series"]
    for key in ("events", "activeUsers", "messagesSent"):
        assert report[key] == want[key], key
    assert report["messages"] == want["messages"]
    assert {c["id"]: {k: v for k, v in c.items() if k != "id"}
            for c in report["campaigns"]} == want["campaigns"]
    assert {a["id"]: {k: v for k, v in a.items() if k != "id"}
            for a in report["automations"]} == want["automations"]


@pytest.fixture
async def temporal(settings: Settings) -> AsyncIterator[Client]:
    yield await Client.connect(settings.temporal_address)


async def _roll_up(client: Client, settings: Settings, project_id: str) -> None:
    handle = await start_reports_rollup(client, settings.temporal_task_queue,
                                        project_id=project_id)
    await handle.result()


async def test_reports_match_inserted_rows_live_then_from_rollups(
        tenant: Tenant, db: psycopg.Connection[Any], temporal: Client,
        settings: Settings) -> None:
    data = _insert(db, tenant)
    tenant.pk.post("/identify", json={"userId": "api-1", "properties": {"plan": "pro"}})
    _through_api(tenant, data, db)
    other = signup(tenant.base)  # another project's activity never shows
    other.pk.post("/events", json={"userId": "ann", "eventName": "Viewed"})

    live = {days: _report(tenant, range=f"{days}d") for days in (7, 30, 90)}
    for days, report in live.items():
        _check(report, data, days)
    assert live[90]["events"] == len(data.events) - 2  # 90 and 120 days ago are outside
    assert live[7]["activeUsers"] == 7  # ann bob cat dan + identified-only + api-1 api-2
    assert live[30]["messages"]["byStatus"]["queued"] == 1  # `sending` reads as queued

    await _roll_up(temporal, settings, tenant.project_id)
    (markers,) = db.execute(
        "SELECT count(*) FROM daily_rollups WHERE project_id = %s AND metric = 'rolled_up' "
        "AND day < %s", (tenant.project_id, data.today)).fetchone() or (0,)
    assert markers == 89
    for days in (7, 30, 90):
        report = _report(tenant, range=f"{days}d")
        _check(report, data, days)
        assert report["rollup"]["rolledUpDays"] == days - 1
        assert report["rollup"]["liveDays"] == 1
        strip = lambda r: {k: v for k, v in r.items() if k not in ("to", "rollup")}  # noqa: E731
        assert strip(report) == strip(live[days])

    # Activity today keeps counting live on top of the rollups.
    tenant.pk.post("/events", json={"userId": "api-3", "eventName": "Signed In"})
    ((ts, seen),) = db.execute("SELECT e.timestamp, u.last_seen FROM events e JOIN users u ON "
                               "u.project_id = e.project_id AND u.id = e.user_id WHERE "
                               "e.project_id = %s AND e.user_id = 'api-3'",
                               (tenant.project_id,)).fetchall()
    data.events.append(("api-3", ts))
    data.last_seen["api-3"] = seen
    _check(_report(tenant, range="30d"), data, 30)


async def test_rollups_refresh_settling_days_and_invalidate_old_ones(
        tenant: Tenant, db: psycopg.Connection[Any], temporal: Client,
        settings: Settings) -> None:
    data = _insert(db, tenant)
    await _roll_up(temporal, settings, tenant.project_id)
    _check(_report(tenant, range="30d"), data, 30)

    # A late receipt for yesterday's message: yesterday is still settling, so the next
    # rollup run recomputes it.
    db.execute("UPDATE messages SET status = 'clicked' WHERE project_id = %s AND "
               "status = 'delivered' AND source = 'campaign' AND created_at >= %s",
               (tenant.project_id, _midnight(data.today - timedelta(days=1))))
    data.messages = [(c, "clicked" if (s, src) == ("delivered", "campaign")
                      and t.date() == data.today - timedelta(days=1) else s, src, sid, t)
                     for c, s, src, sid, t in data.messages]
    await _roll_up(temporal, settings, tenant.project_id)
    _check(_report(tenant, range="30d"), data, 30)

    # An event imported into a settled day (13 days ago) is not seen by the rollup...
    old = _midnight(data.today - timedelta(days=13)) + timedelta(hours=7)
    db.execute("INSERT INTO events (id, project_id, user_id, event_name, properties, "
               "timestamp) VALUES (%s, %s, 'fay', 'Imported', '{}', %s)",
               (f"evt_{uuid.uuid4().hex}", tenant.project_id, old))
    await _roll_up(temporal, settings, tenant.project_id)
    stale = _report(tenant, range="30d")
    assert stale["events"] == data.expected(30)["events"]
    # ...until its days are invalidated: computed live at once, exact, then rolled up again.
    data.events.append(("fay", old))
    engine = make_async_engine(settings.database_url, 1)
    try:
        async with session_scope(make_sessionmaker(engine)) as session:
            await report_service.invalidate(session, tenant.project_id, old)
    finally:
        await engine.dispose()
    fresh = _report(tenant, range="30d")
    _check(fresh, data, 30)
    assert fresh["rollup"]["liveDays"] == 14
    await _roll_up(temporal, settings, tenant.project_id)
    again = _report(tenant, range="30d")
    _check(again, data, 30)
    assert again["rollup"]["liveDays"] == 1


def test_metrics_select_the_keys(tenant: Tenant) -> None:
    tenant.pk.post("/events", json={"userId": "u1", "eventName": "e"})
    only_events = _report(tenant, range="7d", metrics="events")
    assert set(only_events) == {"range", "metrics", "from", "to", "days", "events", "series",
                                "rollup"}
    assert only_events["metrics"] == ["events"]
    assert only_events["events"] == 1
    assert all(set(e) == {"date", "events"} for e in only_events["series"])
    assert only_events["series"][-1]["events"] == 1
    both = _report(tenant, metrics="users, events")
    assert both["range"] == "30d" and len(both["series"]) == 30
    assert both["metrics"] == ["events", "users"] and both["activeUsers"] == 1
    assert "messages" not in both and "campaigns" not in both
    full = _report(tenant, range="90d")
    assert {"events", "activeUsers", "messagesSent", "messages", "campaigns",
            "automations"} <= set(full)
    assert full["messages"]["rates"] == {"delivery": None, "open": None, "click": None,
                                         "bounce": None}
    assert set(full["messages"]["byChannel"]) == {"EMAIL", "PUSH", "SMS", "IN_APP"}


@pytest.mark.parametrize(("params", "field"), [
    ({"range": "1y"}, "range"), ({"range": "7"}, "range"), ({"metrics": "events,clicks"},
                                                           "metrics"),
    ({"metrics": ","}, "metrics"),
])
def test_invalid_parameters_are_400(tenant: Tenant, params: dict[str, str], field: str) -> None:
    body = assert_error(tenant.sk.get("/reports", params=params), 400)
    assert [d["field"] for d in body["details"]] == [field]


def test_reports_need_a_secret_key(tenant: Tenant) -> None:
    assert_error(tenant.pk.get("/reports"), 403)
    assert_error(tenant.client().get("/reports"), 401)


def test_openapi_documents_the_report(api_url: str, tenant: Tenant) -> None:
    schema = tenant.client().get(api_url + "/openapi.json").json()
    get = schema["paths"]["/api/v1/reports"]["get"]
    assert {p["name"] for p in get["parameters"]} == {"range", "metrics"}
    ref = get["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    props = schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]["properties"]
    assert {"range", "from", "events", "activeUsers", "messagesSent", "series"} <= set(props)
    assert json.dumps(get["responses"]).count("ErrorBody") >= 4


async def test_erasing_a_user_or_an_event_corrects_rolled_up_days(
        tenant: Tenant, temporal: Client, settings: Settings) -> None:
    today = _today()
    at = lambda days_ago: (_midnight(today - timedelta(days=days_ago))  # noqa: E731
                           + timedelta(hours=9)).isoformat()
    events = [{"userId": u, "eventName": "Viewed", "timestamp": at(d)}
              for u, days in (("zed", (1, 2, 3)), ("amy", (2, 4))) for d in days]
    ids = tenant.pk.post("/events/batch", json={"events": events}).json()["ids"]
    await _roll_up(temporal, settings, tenant.project_id)
    before = _report(tenant, range="7d")
    assert before["rollup"]["rolledUpDays"] == 6 and before["events"] == 5
    assert before["activeUsers"] == 2

    assert tenant.sk.delete("/users/zed").json() == {"deleted": True}
    after_user = _report(tenant, range="7d")
    assert after_user["events"] == 2 and after_user["activeUsers"] == 1
    assert [d["events"] for d in after_user["series"]][-5:] == [1, 0, 1, 0, 0]

    assert tenant.sk.delete(f"/events/{ids[3]}").json() == {"deleted": True}  # amy, 2 days ago
    after_event = _report(tenant, range="7d")
    assert after_event["events"] == 1
    assert [d["events"] for d in after_event["series"]][-5:] == [1, 0, 0, 0, 0]


async def test_a_rollup_computing_beside_an_erasure_never_stores_the_erased_event(
        tenant: Tenant, settings: Settings) -> None:
    """The race CI once hit: a report kicked an on-demand rollup, which computed a day just
    before DELETE /events erased an event of it and stored its figures just after."""
    today = _today()
    at = lambda days_ago: (_midnight(today - timedelta(days=days_ago))  # noqa: E731
                           + timedelta(hours=9)).isoformat()
    ids = tenant.pk.post("/events/batch", json={"events": [
        {"userId": "amy", "eventName": "Viewed", "timestamp": at(d)} for d in (2, 3)]},
    ).json()["ids"]
    engine = make_async_engine(settings.database_url, 1)
    try:
        async with make_sessionmaker(engine)() as rollup:  # computed, not committed yet
            await report_service.rollup_days(rollup, tenant.project_id,
                                             today - timedelta(days=6), today,
                                             datetime.now(UTC))
            erase = asyncio.ensure_future(asyncio.to_thread(tenant.sk.delete,
                                                            f"/events/{ids[0]}"))
            await asyncio.wait({erase}, timeout=1.0)  # long enough to finish if unblocked
            await rollup.commit()
        assert (await erase).json() == {"deleted": True}
    finally:
        await engine.dispose()
    report = _report(tenant, range="7d")
    assert report["events"] == 1
    assert [d["events"] for d in report["series"]][-4:] == [1, 0, 0, 0]
