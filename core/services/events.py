"""Event ingestion (the hot path) and event reads.

Ingestion runs on a bare psycopg connection, not the ORM: one statement writes the
event and upserts its user (first/last seen, counts, sessions) and a batch is two
statements, whatever its size. See bench/ingest.py for what this buys.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from psycopg import AsyncConnection
from sqlalchemy import Select, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import NotFound
from core.ids import new_id
from core.models import EndUser, Event

SESSION_GAP = timedelta(minutes=30)


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
# users in one order and cannot deadlock.
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
    updated_at = EXCLUDED.updated_at
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
                            event_count, session_count, updated_at)
    SELECT %(project_id)s, %(user_id)s, ev.timestamp, ev.timestamp, ev.timestamp, 1, 1, %(now)s
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

_OUTBOX_BATCH = """
WITH ob AS (
    INSERT INTO outbox (project_id, kind, payload)
    SELECT %(project_id)s::text, 'event', jsonb_build_object(
        'eventId', i, 'userId', u, 'eventName', n, 'properties', p::jsonb, 'timestamp', t)
    FROM unnest(%(ids)s::text[], %(users)s::text[], %(names)s::text[], %(props)s::text[],
                %(ts)s::timestamptz[]) AS x(i, u, n, p, t)
    WHERE n = ANY(ARRAY(SELECT DISTINCT unnest(a.watch_events) FROM automations a
                        WHERE a.project_id = %(project_id)s::text))
    RETURNING id
)
SELECT EXISTS (SELECT FROM ob)
"""

_INSERT_BATCH = """
INSERT INTO events (id, project_id, user_id, event_name, properties, timestamp,
                    received_at, idempotency_key)
SELECT i, %(project_id)s, u, n, p::jsonb, t, %(now)s, k
FROM unnest(%(ids)s::text[], %(users)s::text[], %(names)s::text[], %(props)s::text[],
            %(ts)s::timestamptz[], %(keys)s::text[]) AS x(i, u, n, p, t, k)
ON CONFLICT (project_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id
"""

_UPSERT_BATCH_USERS = (
    """
INSERT INTO users AS u (project_id, id, first_seen, last_seen, last_event_at,
                        event_count, session_count, updated_at)
SELECT %(project_id)s, uid, f, l, l, c, s, %(now)s
FROM unnest(%(uids)s::text[], %(firsts)s::timestamptz[], %(lasts)s::timestamptz[],
            %(counts)s::int[], %(sessions)s::int[]) AS x(uid, f, l, c, s)
ORDER BY uid
"""
    + _UPSERT_USERS_TAIL
)


def _dumps(value: dict[str, Any]) -> str:
    return orjson.dumps(value).decode()


async def track(conn: AsyncConnection, project_id: str, event: NewEvent) -> TrackResult:
    now = datetime.now(UTC)
    params = {
        "id": event.id, "project_id": project_id, "user_id": event.user_id,
        "event_name": event.event_name, "properties": _dumps(event.properties),
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


def _user_aggregates(events: list[NewEvent]) -> dict[str, list[Any]]:
    """Per user: first/last time, count, and sessions (1 + 30-minute gaps) in this batch."""
    times: dict[str, list[datetime]] = defaultdict(list)
    for ev in events:
        assert ev.timestamp is not None
        times[ev.user_id].append(ev.timestamp)
    cols: dict[str, list[Any]] = {k: [] for k in ("uids", "firsts", "lasts", "counts", "sessions")}
    for uid in sorted(times):
        ts = sorted(times[uid])
        gaps = sum(1 for a, b in itertools.pairwise(ts) if b - a >= SESSION_GAP)
        cols["uids"].append(uid)
        cols["firsts"].append(ts[0])
        cols["lasts"].append(ts[-1])
        cols["counts"].append(len(ts))
        cols["sessions"].append(1 + gaps)
    return cols


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
    queued = False
    async with conn.transaction():
        cur = await conn.execute(
            _INSERT_BATCH,
            {
                "project_id": project_id, "now": now,
                "ids": [e.id for e in unique], "users": [e.user_id for e in unique],
                "names": [e.event_name for e in unique],
                "props": [_dumps(e.properties) for e in unique],
                "ts": [e.timestamp for e in unique], "keys": [e.idempotency_key for e in unique],
            },
        )
        inserted_ids = {row[0] for row in await cur.fetchall()}
        inserted = [e for e in unique if e.id in inserted_ids]
        existing: dict[str, str] = {}
        stale_keys = [e.idempotency_key for e in unique if e.id not in inserted_ids]
        if stale_keys:
            cur = await conn.execute(
                "SELECT idempotency_key, id FROM events "
                "WHERE project_id = %s AND idempotency_key = ANY(%s)",
                (project_id, stale_keys),
            )
            existing = {k: i for k, i in await cur.fetchall()}
        if inserted:
            await conn.execute(
                _UPSERT_BATCH_USERS,
                {"project_id": project_id, "now": now, **_user_aggregates(inserted)},
            )
            cur = await conn.execute(_OUTBOX_BATCH, {
                "project_id": project_id, "ids": [e.id for e in inserted],
                "users": [e.user_id for e in inserted],
                "names": [e.event_name for e in inserted],
                "props": [_dumps(e.properties) for e in inserted],
                "ts": [e.timestamp for e in inserted],
            })
            queued = bool((await cur.fetchone() or (False,))[0])
    ids: list[str] = []
    for ev in events:
        if ev.id in inserted_ids:
            ids.append(ev.id)
        else:
            key = ev.idempotency_key
            assert key is not None
            ids.append(existing.get(key) or first_by_key[key].id)
    return BatchResult(ids=ids, accepted=len(inserted), duplicates=len(events) - len(inserted),
                       queued=queued)


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
    await db.execute(delete(Event).where(Event.id == event.id))
    await db.execute(
        update(EndUser)
        .where(EndUser.project_id == project_id, EndUser.id == event.user_id,
               EndUser.event_count > 0)
        .values(event_count=EndUser.event_count - 1)
    )
