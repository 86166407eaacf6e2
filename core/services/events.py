"""Event ingestion (the hot path) and event reads.

Ingestion runs on a bare psycopg connection, not the ORM: one statement writes the
event and upserts its user (first/last seen, counts, sessions), and so does one
statement for a whole batch (plus a lookup of the first ids when idempotency keys
repeat earlier events). See bench/ingest.py for what this buys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from psycopg import AsyncConnection
from sqlalchemy import Select, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import BadRequest, NotFound
from core.ids import new_id
from core.models import EndUser, Event
from core.services import reports


@dataclass(slots=True)
class NewEvent:
    user_id: str
    event_name: str
    properties: dict[str, Any]
    timestamp: datetime | None = None
    idempotency_key: str | None = None
    id: str = field(default_factory=lambda: new_id("evt"))


@dataclass(frozen=True, slots=True)
class TrackResult:
    id: str
    duplicate: bool
    queued: bool = False  # an outbox row was written: wake the dispatcher (core.outbox)


@dataclass(frozen=True, slots=True)
class BatchResult:
    ids: list[str]
    accepted: int
    duplicates: int
    queued: bool = False


# The user upsert shared by single and batch ingestion. Per user it receives the
# first and last event time, the number of events and the number of 30-minute gaps
# between them; a new session also opens when the first event is 30+ minutes after
# the stored newest event. Rows are fed sorted by user id, so concurrent batches lock
# users in one order and cannot deadlock. No indexed value changes on a typical event
# (`membership_stale` is already true, `last_seen_day` moves once a day), so PostgreSQL
# updates the row in place (HOT), writing no index entries: migration 0006.
_UPSERT_USERS_TAIL = """
ON CONFLICT (project_id, id) DO UPDATE SET
    first_seen = LEAST(u.first_seen, EXCLUDED.first_seen),
    last_seen = GREATEST(u.last_seen, EXCLUDED.last_seen),
    last_event_at = GREATEST(u.last_event_at, EXCLUDED.last_event_at),
    event_count = u.event_count + EXCLUDED.event_count,
    session_count = u.session_count + EXCLUDED.session_count - 1
        + CASE WHEN u.last_event_at IS NULL
                 OR EXCLUDED.first_seen >= u.last_event_at + interval '30 minutes'
               THEN 1 ELSE 0 END,
    updated_at = EXCLUDED.updated_at,
    membership_stale = true
"""

_TRACK_ONE = (
    """
WITH ev AS (
    INSERT INTO events (id, project_id, user_id, event_name, properties, timestamp,
                        received_at, idempotency_key)
    VALUES (%(id)s, %(project_id)s, %(user_id)s, %(event_name)s, %(properties)s::jsonb,
            %(ts)s, %(now)s, %(key)s)
    ON CONFLICT (project_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id, timestamp
), up AS (
    INSERT INTO users AS u (project_id, id, first_seen, last_seen, last_event_at,
                            event_count, session_count, updated_at, membership_stale)
    SELECT %(project_id)s, %(user_id)s, ev.timestamp, ev.timestamp, ev.timestamp, 1, 1, %(now)s,
           true
    FROM ev
"""
    + _UPSERT_USERS_TAIL
    + """
), ob AS (
    -- Only events some automation watches (trigger, exit, WAIT_FOR_EVENT) go to the
    -- outbox, in this same transaction; the worker's dispatcher takes it from there.
    INSERT INTO outbox (project_id, kind, payload)
    SELECT %(project_id)s, 'event', jsonb_build_object(
        'eventId', ev.id, 'userId', %(user_id)s::text, 'eventName', %(event_name)s::text,
        'properties', %(properties)s::jsonb, 'timestamp', ev.timestamp)
    FROM ev
    WHERE EXISTS (SELECT 1 FROM automations a WHERE a.project_id = %(project_id)s
                  AND %(event_name)s::text = ANY(a.watch_events))
    RETURNING id
)
SELECT id, EXISTS (SELECT FROM ob) FROM ev
"""
)

# A whole batch in one statement, fed as one JSON document: psycopg dumps Python lists
# as array literals in Python (escaping each item), which cost more than everything else
# on this path; PostgreSQL parses the JSON in C. Per user, the upsert receives the first
# and last time, the count and the sessions (1 + 30-minute gaps) of the events actually
# inserted (repeats of an idempotency key are not).
_TRACK_BATCH = (
    """
WITH x AS (
    SELECT * FROM json_to_recordset(%(rows)s::json)
        AS x(i text, u text, n text, p jsonb, t timestamptz, k text)
), ins AS (
    INSERT INTO events (id, project_id, user_id, event_name, properties, timestamp,
                        received_at, idempotency_key)
    SELECT i, %(project_id)s, u, n, p, t, %(now)s, k FROM x
    ON CONFLICT (project_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id, user_id, event_name, properties, timestamp
), gaps AS (
    SELECT user_id, timestamp,
           CASE WHEN timestamp - lag(timestamp) OVER (PARTITION BY user_id ORDER BY timestamp)
                     >= interval '30 minutes' THEN 1 ELSE 0 END AS gap
    FROM ins
), up AS (
    INSERT INTO users AS u (project_id, id, first_seen, last_seen, last_event_at,
                            event_count, session_count, updated_at, membership_stale)
    SELECT %(project_id)s, user_id, min(timestamp), max(timestamp), max(timestamp),
           count(*), 1 + sum(gap), %(now)s, true
    FROM gaps GROUP BY user_id
    ORDER BY user_id
"""
    + _UPSERT_USERS_TAIL
    + """
), ob AS (
    INSERT INTO outbox (project_id, kind, payload)
    SELECT %(project_id)s, 'event', jsonb_build_object(
        'eventId', id, 'userId', user_id, 'eventName', event_name,
        'properties', properties, 'timestamp', timestamp)
    FROM ins
    WHERE event_name = ANY(ARRAY(SELECT DISTINCT unnest(a.watch_events) FROM automations a
                                 WHERE a.project_id = %(project_id)s))
    RETURNING id
)
SELECT id, EXISTS (SELECT FROM ob) FROM ins
"""
)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


# PostgreSQL text and jsonb cannot hold the NUL character. In JSON it is the escape
# \u0000 preceded by an even number of backslashes (else it is a literal "\u0000").
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
_NUL_MESSAGE = "text may not contain the NUL character (\\u0000)"


def _has_nul(json_text: str) -> bool:
    return "\\u0000" in json_text and _NUL_ESCAPE.search(json_text) is not None


def _check_no_nul(event: NewEvent, where: str) -> None:
    if "\x00" in event.user_id + event.event_name + (event.idempotency_key or "") or _has_nul(
        _dumps(event.properties)
    ):
        raise BadRequest(f"{where}: {_NUL_MESSAGE}")


async def track(conn: AsyncConnection, project_id: str, event: NewEvent) -> TrackResult:
    now = datetime.now(UTC)
    properties = _dumps(event.properties)
    if _has_nul(properties) or "\x00" in event.user_id + event.event_name + (
            event.idempotency_key or ""):
        _check_no_nul(event, "event")
    params = {
        "id": event.id, "project_id": project_id, "user_id": event.user_id,
        "event_name": event.event_name, "properties": properties,
        "ts": event.timestamp or now, "now": now, "key": event.idempotency_key,
    }
    cur = await conn.execute(_TRACK_ONE, params)
    if (row := await cur.fetchone()) is not None:
        return TrackResult(event.id, duplicate=False, queued=bool(row[1]))
    cur = await conn.execute(
        "SELECT id FROM events WHERE project_id = %s AND idempotency_key = %s",
        (project_id, event.idempotency_key),
    )
    row = await cur.fetchone()
    assert row is not None, "a conflict on the idempotency key means the first event exists"
    return TrackResult(row[0], duplicate=True)


async def track_batch(
    conn: AsyncConnection, project_id: str, events: list[NewEvent]
) -> BatchResult:
    now = datetime.now(UTC)
    for ev in events:
        ev.timestamp = ev.timestamp or now
    # A key repeated inside the batch is a duplicate of its first occurrence.
    first_by_key: dict[str, NewEvent] = {}
    unique: list[NewEvent] = []
    for ev in events:
        if ev.idempotency_key is None:
            unique.append(ev)
        elif ev.idempotency_key not in first_by_key:
            first_by_key[ev.idempotency_key] = ev
            unique.append(ev)
    rows = [{"i": e.id, "u": e.user_id, "n": e.event_name, "p": e.properties,
             "t": e.timestamp, "k": e.idempotency_key} for e in unique]
    doc = _dumps(rows)
    if _has_nul(doc):
        for i, ev in enumerate(events):
            _check_no_nul(ev, f"events[{i}]")
    cur = await conn.execute(_TRACK_BATCH, {"project_id": project_id, "now": now, "rows": doc})
    inserted_ids: set[str] = set()
    queued = False
    for event_id, watched in await cur.fetchall():
        inserted_ids.add(event_id)
        queued = queued or watched
    existing: dict[str, str] = {}
    stale_keys = [e.idempotency_key for e in unique if e.id not in inserted_ids]
    if stale_keys:
        cur = await conn.execute(
            "SELECT idempotency_key, id FROM events "
            "WHERE project_id = %s AND idempotency_key = ANY(%s)",
            (project_id, stale_keys),
        )
        existing = {k: i for k, i in await cur.fetchall()}
    ids: list[str] = []
    for ev in events:
        if ev.id in inserted_ids:
            ids.append(ev.id)
        else:
            key = ev.idempotency_key
            assert key is not None
            ids.append(existing.get(key) or first_by_key[key].id)
    return BatchResult(ids=ids, accepted=len(inserted_ids),
                       duplicates=len(events) - len(inserted_ids), queued=queued)


# --- reads (ORM; not the hot path) ---


def _filtered(
    project_id: str, user_id: str | None, event_name: str | None,
    start: datetime | None, end: datetime | None,
) -> Select[tuple[Event]]:
    query = select(Event).where(Event.project_id == project_id)
    if user_id is not None:
        query = query.where(Event.user_id == user_id)
    if event_name is not None:
        query = query.where(Event.event_name == event_name)
    if start is not None:
        query = query.where(Event.timestamp >= start)
    if end is not None:
        query = query.where(Event.timestamp <= end)
    return query


async def list_events(
    db: AsyncSession, project_id: str, *, user_id: str | None, event_name: str | None,
    start: datetime | None, end: datetime | None, page: int, limit: int,
) -> tuple[list[Event], int]:
    query = _filtered(project_id, user_id, event_name, start, end)
    total = await db.scalar(select(func.count()).select_from(query.subquery()))
    rows = await db.scalars(
        query.order_by(Event.timestamp.desc(), Event.id.desc())
        .offset((page - 1) * limit).limit(limit)
    )
    return list(rows), int(total or 0)


async def get_event(db: AsyncSession, project_id: str, event_id: str) -> Event:
    event = await db.scalar(
        select(Event).where(Event.project_id == project_id, Event.id == event_id)
    )
    if event is None:
        raise NotFound(f"No event {event_id} in this project")
    return event


async def delete_event(db: AsyncSession, project_id: str, event_id: str) -> None:
    event = await get_event(db, project_id, event_id)
    await reports.invalidate(db, project_id, event.timestamp)  # its day was counted
    await db.execute(delete(Event).where(Event.id == event.id))
    await db.execute(
        update(EndUser)
        .where(EndUser.project_id == project_id, EndUser.id == event.user_id,
               EndUser.event_count > 0)
        # updated_at moves too: the segment refresher clears a flag only if it did not.
        .values(event_count=EndUser.event_count - 1, membership_stale=True,
                updated_at=func.now())
    )
