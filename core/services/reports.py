"""Reports: per-day counts of events, active users and messages, from rollups and live.

A report covers the range's UTC days, today included (7d = today and the 6 days before).
Every figure of a day comes from one function, `compute_days`, run either

- ahead of time, for closed days (before today), by the rollup activity, which stores the
  result in `daily_rollups` with a `rolled_up` marker row per day; or
- live, for today and for any closed day that has no marker yet.

So a report never depends on the rollup having run (a missing day is computed live, exact,
only slower), and a 90-day report over millions of events reads ~90 small rollup rows per
metric plus today's rows. A rolled-up day is a snapshot: the rollup recomputes the last
`settle_days` closed days on every run (late events, delivery receipts), and every day at
least every `refresh_hours`; `invalidate` drops days at once (after an erasure).

Services flush, callers commit. Every query is scoped by project_id.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import delete, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.errors import BadRequest
from core.models import DailyRollup

RANGES = {"7d": 7, "30d": 30, "90d": 90}
METRICS = ("events", "users", "messages")
HORIZON_DAYS = max(RANGES.values())
CHANNELS = ("EMAIL", "PUSH", "SMS", "IN_APP")
STATUSES = ("queued", "sent", "delivered", "opened", "clicked", "bounced", "failed",
            "suppressed")
# Accepted by the provider (or stored in the inbox for IN_APP); a bounce was sent first.
SENT = ("sent", "delivered", "opened", "clicked", "bounced")
DELIVERED = ("delivered", "opened", "clicked")  # status is the furthest step reached
OPENED = ("opened", "clicked")
ENROLLMENT_STATUSES = ("running", "completed", "exited", "cancelled", "failed")
PUBLIC_STATUS = {"sending": "queued"}  # as core.services.messages shows it

MARKER = "rolled_up"
EVENTS = "events"
ACTIVE_USERS = "active_users"
MESSAGES_SENT = "messages_sent"  # the sum of msg:*:{SENT} metrics, kept for the series
SERIES_METRICS = (EVENTS, ACTIVE_USERS, MESSAGES_SENT)
_METRIC_MAX = 80  # daily_rollups.metric
_MAX_LIVE_CHUNK_DAYS = 7
# Short aggregates over indexes: JIT compilation would cost more than it saves (measured:
# ~140 ms of a ~550 ms live day on PostgreSQL 15). For this transaction only.
_NO_JIT = text("SET LOCAL jit = off")

_EVENTS_BY_DAY = text("""
SELECT d, sum(n)::bigint AS events, count(*)::bigint AS users
FROM (SELECT (timestamp AT TIME ZONE 'UTC')::date AS d, user_id, count(*) AS n
      FROM events
      WHERE project_id = :project_id AND timestamp >= :lo AND timestamp < :hi
      GROUP BY 1, 2) AS per_user
GROUP BY d
""")
_MESSAGES_BY_DAY = text("""
SELECT (created_at AT TIME ZONE 'UTC')::date AS d, channel, status, source, source_id,
       count(*)::bigint
FROM messages
WHERE project_id = :project_id AND created_at >= :lo AND created_at < :hi
GROUP BY 1, 2, 3, 4, 5
""")
# Through automations (few per project) so the (automation_id, started_at) index is used.
_ENROLLMENTS_BY_DAY = text("""
SELECT (e.started_at AT TIME ZONE 'UTC')::date AS d, e.automation_id, e.status, count(*)::bigint
FROM automations AS a
JOIN enrollments AS e ON e.automation_id = a.id
WHERE a.project_id = :project_id AND e.project_id = :project_id
  AND e.started_at >= :lo AND e.started_at < :hi
GROUP BY 1, 2, 3
""")
# Rolled-up days of a range, one row a day: the series' figures summed in SQL.
_ROLLUP_DAYS = text(f"""
SELECT day, max(updated_at) FILTER (WHERE metric = '{MARKER}') AS rolled_up_at,
       coalesce(sum(value) FILTER (WHERE metric = '{EVENTS}'), 0),
       coalesce(sum(value) FILTER (WHERE metric = '{ACTIVE_USERS}'), 0),
       coalesce(sum(value) FILTER (WHERE metric = '{MESSAGES_SENT}'), 0)
FROM daily_rollups
WHERE project_id = :project_id AND day >= :first AND day < :last
  AND metric IN ('{MARKER}', '{EVENTS}', '{ACTIVE_USERS}', '{MESSAGES_SENT}')
GROUP BY day
""")
# The range's other metrics (messages, campaigns, automations), summed over its days. Only
# marked days have rows: a rollup writes its marker in the same transaction.
_ROLLUP_TOTALS = text(f"""
SELECT metric, sum(value) FROM daily_rollups
WHERE project_id = :project_id AND day >= :first AND day < :last
  AND metric NOT IN ('{MARKER}', '{EVENTS}', '{ACTIVE_USERS}', '{MESSAGES_SENT}')
GROUP BY metric
""")
_MARKERS = text(f"""
SELECT day, updated_at FROM daily_rollups
WHERE project_id = :project_id AND metric = '{MARKER}' AND day >= :first AND day < :last
""")
_ACTIVE_USERS = text("""
SELECT count(*) FROM users WHERE project_id = :project_id
  AND last_seen_day >= (CAST(:start AS timestamptz) AT TIME ZONE 'UTC')::date
  AND last_seen >= :start
""")
_CANDIDATES = text("""
SELECT p.id FROM projects AS p
WHERE (CAST(:after AS text) IS NULL OR p.id > :after)
  AND (EXISTS (SELECT 1 FROM events AS e WHERE e.project_id = p.id AND e.timestamp >= :lo)
       OR EXISTS (SELECT 1 FROM messages AS m WHERE m.project_id = p.id AND m.created_at >= :lo)
       OR EXISTS (SELECT 1 FROM automations AS a JOIN enrollments AS n ON n.automation_id = a.id
                  WHERE a.project_id = p.id AND n.started_at >= :lo)
       OR EXISTS (SELECT 1 FROM daily_rollups AS r WHERE r.project_id = p.id
                  AND r.day >= CAST(:lo AS date)))
ORDER BY p.id
LIMIT :limit
""")


# --- days and ranges ---


def midnight(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


def utc_today(now: datetime) -> date:
    return now.astimezone(UTC).date()


def parse_metrics(raw: str | None) -> list[str]:
    """`events,users,messages` (any subset, any order; default all) or a 400 naming them."""
    if raw is None or not raw.strip():
        return list(METRICS)
    asked = [m.strip() for m in raw.split(",")]
    unknown = [m for m in asked if m not in METRICS]
    if unknown or not any(asked):
        shown = ", ".join(repr(m) for m in unknown) or "an empty name"
        raise BadRequest(
            f"metrics: unknown metric {shown}; use a comma list of {', '.join(METRICS)}",
            details=[{"field": "metrics", "message": f"must be a comma list of "
                                                    f"{', '.join(METRICS)}"}],
        )
    return [m for m in METRICS if m in asked]


def _runs(days: Sequence[date], max_len: int) -> list[tuple[date, date]]:
    """Sorted days as [lo, hi) runs of consecutive days, each at most max_len long."""
    runs: list[tuple[date, date]] = []
    for day in sorted(days):
        if runs and runs[-1][1] == day and (runs[-1][1] - runs[-1][0]).days < max_len:
            runs[-1] = (runs[-1][0], day + timedelta(days=1))
        else:
            runs.append((day, day + timedelta(days=1)))
    return runs


# --- the one computation of a day's figures ---


async def compute_days(db: AsyncSession, project_id: str, lo: date, hi: date, *,
                       events: bool = True, messages: bool = True) -> dict[date, dict[str, int]]:
    """Every metric of the UTC days [lo, hi), zeros left out:

    events, active_users (distinct users with an event that day), messages_sent,
    msg:{channel}:{status}, campaign:{id}:{status}, automation:{id}:{status} (messages by
    the day they were created, at their current status), and enroll:{automationId}:{status}
    (enrollments by the day they started)."""
    out: dict[date, dict[str, int]] = defaultdict(dict)
    params = {"project_id": project_id, "lo": midnight(lo), "hi": midnight(hi)}
    if events:
        for day, count, users in (await db.execute(_EVENTS_BY_DAY, params)).all():
            out[day][EVENTS] = int(count)
            out[day][ACTIVE_USERS] = int(users)
    if messages:
        for day, channel, status, source, source_id, count in (
                await db.execute(_MESSAGES_BY_DAY, params)).all():
            status = PUBLIC_STATUS.get(status, status)
            _add(out[day], f"msg:{channel}:{status}", count)
            if status in SENT:
                _add(out[day], MESSAGES_SENT, count)
            if source in ("campaign", "automation") and source_id:
                _add(out[day], f"{source}:{source_id}:{status}", count)
        for day, automation_id, status, count in (
                await db.execute(_ENROLLMENTS_BY_DAY, params)).all():
            _add(out[day], f"enroll:{automation_id}:{status}", count)
    return dict(out)


def _add(metrics: dict[str, int], name: str, count: int) -> None:
    if len(name) <= _METRIC_MAX:
        metrics[name] = metrics.get(name, 0) + int(count)


# --- rollups (written by activities/reports.py) ---


async def lock_rollups(db: AsyncSession, project_id: str) -> None:
    """Serialise, per project and until the transaction ends, everything that writes
    rollups: a rollup takes it before it computes, an invalidation before it deletes. So a
    rollup never stores figures computed before an erasure that committed ahead of it (it
    waits, then reads after the erasure), and an erasure never runs beside a rollup it would
    not see (it waits, then deletes what that rollup stored)."""
    await db.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
                     {"k": f"rollup:{project_id}"})


async def store_rollups(db: AsyncSession, project_id: str, days: Sequence[date],
                        metrics: dict[date, dict[str, int]], computed_at: datetime) -> None:
    """Replace the rollups of `days` with `metrics` (+ one marker row per day). Serialised
    per project, so an on-demand and a scheduled rollup cannot collide."""
    await lock_rollups(db, project_id)
    await db.execute(delete(DailyRollup).where(DailyRollup.project_id == project_id,
                                               DailyRollup.day.in_(list(days))))
    rows = [{"project_id": project_id, "day": day, "metric": name, "value": value,
             "updated_at": computed_at}
            for day in days for name, value in metrics.get(day, {}).items() if value]
    rows += [{"project_id": project_id, "day": day, "metric": MARKER, "value": 1,
              "updated_at": computed_at} for day in days]
    await db.execute(pg_insert(DailyRollup), rows)
    await db.flush()


async def rollup_days(db: AsyncSession, project_id: str, lo: date, hi: date,
                      now: datetime) -> None:
    """Compute and store the closed days [lo, hi)."""
    if hi > utc_today(now):
        raise ValueError(f"{hi - timedelta(days=1)} is not closed yet: only days before "
                         "today are rolled up")
    days = [lo + timedelta(days=i) for i in range((hi - lo).days)]
    await db.execute(_NO_JIT)
    # Before computing: under READ COMMITTED the queries below then see every erasure that
    # invalidated these days ahead of us.
    await lock_rollups(db, project_id)
    await store_rollups(db, project_id, days, await compute_days(db, project_id, lo, hi), now)


def chunks(days: Sequence[date], max_len: int = 7) -> list[tuple[date, date]]:
    """Days as [lo, hi) runs of consecutive days, at most max_len each (the unit of work
    of a rollup and of a live computation)."""
    return _runs(days, max_len)


SMALL_PROJECT_ROWS = 100_000
_ROWS_SINCE = text("""
SELECT (SELECT count(*) FROM (SELECT 1 FROM events WHERE project_id = :project_id
                              AND timestamp >= :lo LIMIT :cap) AS e)
     + (SELECT count(*) FROM (SELECT 1 FROM messages WHERE project_id = :project_id
                              AND created_at >= :lo LIMIT :cap) AS m)
""")


async def rollup_chunk_days(db: AsyncSession, project_id: str, since: date) -> int:
    """How many days one rollup transaction should take: all of them for a small project
    (fewer than SMALL_PROJECT_ROWS events and messages since `since`: a bounded count,
    cheap), a week at a time otherwise."""
    rows = await db.scalar(_ROWS_SINCE, {"project_id": project_id, "lo": midnight(since),
                                         "cap": SMALL_PROJECT_ROWS})
    return HORIZON_DAYS if int(rows or 0) < SMALL_PROJECT_ROWS else 7


async def days_to_roll_up(db: AsyncSession, project_id: str, now: datetime, *,
                          settle_days: int, refresh_hours: float) -> list[date]:
    """Closed days of the horizon (the longest range) whose rollup is missing, was computed
    before the day settled (less than settle_days after it ended), or is older than
    refresh_hours. Oldest first."""
    today = utc_today(now)
    first = today - timedelta(days=HORIZON_DAYS - 1)
    computed = dict((await db.execute(_MARKERS, {
        "project_id": project_id, "first": first, "last": today})).all())
    due = []
    for offset in range((today - first).days):
        day = first + timedelta(days=offset)
        at = computed.get(day)
        if (at is None or at < midnight(day + timedelta(days=1 + settle_days))
                or at < now - timedelta(hours=refresh_hours)):
            due.append(day)
    return due


async def rollup_candidates(db: AsyncSession, now: datetime, *, after: str | None,
                            limit: int) -> list[str]:
    """Projects with anything in the horizon (events, messages, enrollments or rollups),
    by id after `after`."""
    lo = midnight(utc_today(now) - timedelta(days=HORIZON_DAYS - 1))
    rows = await db.execute(_CANDIDATES, {"after": after, "lo": lo, "limit": limit})
    return [r[0] for r in rows.all()]


async def invalidate(db: AsyncSession, project_id: str, since: date | datetime) -> None:
    """Forget the rollups of `since`'s day and later: reports compute those days live (so
    at once exactly) until the next rollup. For changes the rollup cannot see coming: an
    erased user, a deleted event, events imported into past days."""
    day = since.astimezone(UTC).date() if isinstance(since, datetime) else since
    await lock_rollups(db, project_id)  # a rollup computing now would store stale days
    await db.execute(delete(DailyRollup).where(DailyRollup.project_id == project_id,
                                               DailyRollup.day >= day))
    await db.flush()


# --- the report ---


@dataclass
class _Days:
    """The range's figures: per day for the series, summed for everything else."""

    series: dict[date, dict[str, int]]  # day -> SERIES_METRICS
    totals: dict[str, int]  # msg:/campaign:/automation:/enroll: metrics over the range
    rolled_up: int
    live: int
    oldest_rollup: datetime | None


Job = Callable[[AsyncSession], Awaitable[Any]]


async def _together(db: AsyncSession, sessions: async_sessionmaker[AsyncSession] | None,
                    *jobs: Job) -> list[Any]:
    """Run independent queries: one after the other on `db`, or, given a session maker,
    at the same time, each on a connection of its own (the report's latency is then its
    slowest query, not the sum)."""
    if sessions is None:
        return [await job(db) for job in jobs]

    async def own(job: Job) -> Any:
        async with sessions() as session:
            await session.execute(_NO_JIT)
            return await job(session)

    return list(await asyncio.gather(*(own(job) for job in jobs)))


async def _rolled_up(db: AsyncSession, project_id: str, first: date, today: date, *,
                     messages: bool) -> tuple[dict[date, dict[str, int]], dict[str, int],
                                              dict[date, datetime]]:
    """The closed days' rollups: series figures per marked day, summed other metrics, and
    when each marked day was rolled up."""
    params = {"project_id": project_id, "first": first, "last": today}
    series: dict[date, dict[str, int]] = {}
    marked: dict[date, datetime] = {}
    for day, rolled_up_at, n_events, n_users, n_sent in (
            await db.execute(_ROLLUP_DAYS, params)).all():
        if rolled_up_at is not None:
            marked[day] = rolled_up_at
            series[day] = {EVENTS: int(n_events), ACTIVE_USERS: int(n_users),
                           MESSAGES_SENT: int(n_sent)}
    totals: dict[str, int] = {}
    if messages and marked:
        totals = {m: int(v) for m, v in (await db.execute(_ROLLUP_TOTALS, params)).all()}
    return series, totals, marked


def _merge_live(days: _Days, computed: dict[date, dict[str, int]]) -> None:
    for day, metrics in computed.items():
        days.series[day] = {k: metrics.get(k, 0) for k in SERIES_METRICS}
        for metric, value in metrics.items():
            if ":" in metric:
                days.totals[metric] = days.totals.get(metric, 0) + value


async def _range_metrics(db: AsyncSession, sessions: async_sessionmaker[AsyncSession] | None,
                         project_id: str, first: date, today: date, *, events: bool,
                         messages: bool, active_since: datetime | None,
                         ) -> tuple[_Days, int | None]:
    """The range's figures (rollups + live days) and, with `active_since`, the users seen
    since then. Today is computed live alongside the rollup reads."""
    tomorrow = today + timedelta(days=1)

    async def count_active(session: AsyncSession) -> int | None:
        if active_since is None:
            return None
        return int(await session.scalar(_ACTIVE_USERS, {"project_id": project_id,
                                                        "start": active_since}) or 0)

    (series, totals, marked), today_metrics, active = await _together(
        db, sessions,
        lambda session: _rolled_up(session, project_id, first, today, messages=messages),
        lambda session: compute_days(session, project_id, today, tomorrow, events=events,
                                     messages=messages),
        count_active,
    )
    missing = [first + timedelta(days=i) for i in range((today - first).days)]
    missing = [d for d in missing if d not in marked]
    days = _Days(series, totals, len(marked), len(missing) + 1,
                 min(marked.values(), default=None))
    _merge_live(days, today_metrics)
    for lo, hi in _runs(missing, _MAX_LIVE_CHUNK_DAYS):  # closed days not rolled up yet
        _merge_live(days, await compute_days(db, project_id, lo, hi, events=events,
                                             messages=messages))
    return days, active


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _funnel(by_status: dict[str, int]) -> dict[str, Any]:
    sent = sum(by_status.get(s, 0) for s in SENT)
    delivered = sum(by_status.get(s, 0) for s in DELIVERED)
    return {
        "total": sum(by_status.values()),
        "sent": sent,
        "by_status": by_status,
        "rates": {
            "delivery": _ratio(delivered, sent),
            "open": _ratio(sum(by_status.get(s, 0) for s in OPENED), delivered),
            "click": _ratio(by_status.get("clicked", 0), delivered),
            "bounce": _ratio(by_status.get("bounced", 0), sent),
        },
    }


def _zero_statuses() -> dict[str, int]:
    return dict.fromkeys(STATUSES, 0)


async def _names(db: AsyncSession, table: str, project_id: str,
                 ids: Iterable[str]) -> dict[str, str]:
    wanted = list(ids)
    if not wanted:
        return {}
    rows = await db.execute(
        text(f"SELECT id, name FROM {table} WHERE project_id = :p AND id = ANY(:ids)"),
        {"p": project_id, "ids": wanted})
    return {i: n for i, n in rows.all()}


async def build_report(db: AsyncSession, project_id: str, range_key: str,
                       metrics: Sequence[str], now: datetime | None = None, *,
                       sessions: async_sessionmaker[AsyncSession] | None = None,
                       ) -> dict[str, Any]:
    """The report as plain data (snake_case keys of api/reports.py's models); only the
    keys of the requested metrics are present. With `sessions`, independent queries run
    at the same time on connections of their own (read-only, each its own snapshot)."""
    if range_key not in RANGES:
        raise BadRequest(f"range must be one of {', '.join(RANGES)}")
    now = now or datetime.now(UTC)
    today = utc_today(now)
    first = today - timedelta(days=RANGES[range_key] - 1)
    want_events, want_users, want_messages = (m in metrics for m in METRICS)
    await db.execute(_NO_JIT)
    days, active_users = await _range_metrics(
        db, sessions, project_id, first, today, events=want_events or want_users,
        messages=want_messages, active_since=midnight(first) if want_users else None)
    report: dict[str, Any] = {
        "range": range_key, "metrics": list(metrics), "from_": midnight(first), "to": now,
        "days": RANGES[range_key],
    }
    series: list[dict[str, Any]] = []
    for offset in range(RANGES[range_key]):
        day = first + timedelta(days=offset)
        figures = days.series.get(day, {})
        entry: dict[str, Any] = {"date": day.isoformat()}
        if want_events:
            entry["events"] = figures.get(EVENTS, 0)
        if want_users:
            entry["active_users"] = figures.get(ACTIVE_USERS, 0)
        if want_messages:
            entry["messages_sent"] = figures.get(MESSAGES_SENT, 0)
        series.append(entry)
    by_status = _zero_statuses()
    by_channel = {c: _zero_statuses() for c in CHANNELS}
    sources: dict[str, dict[str, dict[str, int]]] = {"campaign": {}, "automation": {}}
    enrollments: dict[str, dict[str, int]] = {}
    for name, value in days.totals.items():
        kind, _, rest = name.partition(":")
        key, _, status = rest.rpartition(":")
        if kind == "msg":
            by_channel.setdefault(key, _zero_statuses())
            by_channel[key][status] = by_channel[key].get(status, 0) + value
            by_status[status] = by_status.get(status, 0) + value
        elif kind in sources:
            counts = sources[kind].setdefault(key, _zero_statuses())
            counts[status] = counts.get(status, 0) + value
        elif kind == "enroll":
            counts = enrollments.setdefault(key, dict.fromkeys(ENROLLMENT_STATUSES, 0))
            counts[status] = counts.get(status, 0) + value
    report["series"] = series
    if want_events:
        report["events"] = sum(e["events"] for e in series)
    if want_users:
        report["active_users"] = active_users
    if want_messages:
        report["messages_sent"] = sum(e["messages_sent"] for e in series)
        report["messages"] = {**_funnel(by_status),
                              "by_channel": {c: _funnel(s) for c, s in by_channel.items()}}
        names = await _names(db, "campaigns", project_id, sources["campaign"])
        report["campaigns"] = sorted(
            ({"id": cid, "name": names.get(cid), **_funnel(counts)}
             for cid, counts in sources["campaign"].items()),
            key=lambda c: (-c["total"], c["id"]))
        automation_ids = set(sources["automation"]) | set(enrollments)
        names = await _names(db, "automations", project_id, automation_ids)
        report["automations"] = sorted(
            ({"id": aid, "name": names.get(aid),
              **_funnel(sources["automation"].get(aid) or _zero_statuses()),
              "enrollments": {"total": sum((enrollments.get(aid) or {}).values()),
                              **(enrollments.get(aid)
                                 or dict.fromkeys(ENROLLMENT_STATUSES, 0))}}
             for aid in automation_ids),
            key=lambda a: (-a["enrollments"]["total"] - a["total"], a["id"]))
    report["rollup"] = {"rolled_up_days": days.rolled_up, "live_days": days.live,
                        "oldest_rollup_at": days.oldest_rollup}
    return report
