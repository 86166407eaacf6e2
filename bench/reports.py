"""Reports benchmark: GET /api/v1/reports?range=90d over millions of events, beside the raw
SQL COUNT of the same events in the same run.

    .venv/bin/python bench/reports.py                       # 10,000,000 events
    .venv/bin/python bench/reports.py --events 1000000 --seconds 5

Starts its own embedded PostgreSQL in a temp dir (or, with --database-url, a scratch
database on that server, dropped at the end), applies the migrations and generates, for
one project, --events events spread evenly over the report's 90 UTC days (today up to
now included), --users users, --messages messages and --enrollments enrollments over the
same days (INSERT ... SELECT generate_series on --jobs connections, secondary indexes
dropped during the load and rebuilt after, then VACUUM ANALYZE). Then:

  rollup   the rollup activity's code (activities/reports.py, no Temporal needed) rolls up
           the 89 closed days, timed (then ANALYZE daily_rollups, as autovacuum would);
  report   the API (uvicorn, one worker, Temporal unreachable on purpose: reports never
           wait for it) answers GET /api/v1/reports?range=90d with every metric, called
           back to back for --seconds: p50 / p99;
  count    SELECT count(*) of the project's events over the same 90 days, --count-runs
           times: median.

The report's `events` must equal the COUNT (checked). ratio = report p50 / COUNT median.
--live also times one report with the rollups deleted (every day computed live).
The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from core import migrate  # noqa: E402
from core.crypto import sha256_hex  # noqa: E402
from core.db import libpq_url  # noqa: E402
from core.devstack import EmbeddedPostgres, free_port, start_embedded_postgres  # noqa: E402

PROJECT = "proj_benchreports000000001"
SECRET_KEY = "sk_live_benchreports_" + "x" * 24
CAMPAIGNS = 10
AUTOMATIONS = 5


def log(message: str) -> None:
    print(message, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--messages", type=int, default=1_000_000)
    p.add_argument("--enrollments", type=int, default=100_000)
    p.add_argument("--seconds", type=float, default=10.0, help="report calls, back to back")
    p.add_argument("--count-runs", type=int, default=3, help="raw COUNT runs (median)")
    p.add_argument("--jobs", type=int, default=2, help="connections loading in parallel")
    p.add_argument("--live", action="store_true",
                   help="also time one report with no rollups (every day live)")
    p.add_argument("--database-url", help="a PostgreSQL server to use instead of an "
                   "embedded one (a scratch database is created and dropped)")
    return p.parse_args(argv)


# --- the database ---


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(libpq_url(url))
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@contextlib.contextmanager
def database(server_url: str | None) -> Iterator[str]:
    """A fresh database with the migrations applied; everything removed afterwards."""
    tmp: Path | None = None
    embedded: EmbeddedPostgres | None = None
    if server_url is None:
        tmp = Path(tempfile.mkdtemp(prefix="retenshun-bench-reports-"))
        embedded = start_embedded_postgres(tmp / "pgdata")
        server_url = embedded.url
    name = f"bench_reports_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(libpq_url(server_url), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
            if embedded is not None:  # a bulk load: fewer checkpoints (ours to tune)
                conn.execute("ALTER SYSTEM SET max_wal_size = '8GB'")
                conn.execute("ALTER SYSTEM SET checkpoint_timeout = '30min'")
                conn.execute("SELECT pg_reload_conf()")
        url = _with_database(server_url, name)
        migrate.upgrade(url)
        yield url
    finally:
        with contextlib.suppress(Exception), psycopg.connect(libpq_url(server_url),
                                                             autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if embedded is not None:
            embedded.stop()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _timed(what: str, fn: Callable[[], Any]) -> float:
    started = time.monotonic()
    fn()
    took = time.monotonic() - started
    log(f"  {what}: {took:.1f} s")
    return took


def _parallel(url: str, jobs: int, sql: str, total: int, params: dict[str, Any]) -> None:
    """Run `sql` over [lo, hi) slices of 1..total on `jobs` connections at once."""
    bounds = [1 + total * k // jobs for k in range(jobs + 1)]
    errors: list[BaseException] = []

    def run(lo: int, hi: int) -> None:
        try:
            with psycopg.connect(libpq_url(url), autocommit=True) as conn:
                conn.execute("SET synchronous_commit = off")
                conn.execute(sql, {**params, "lo": lo, "hi": hi - 1})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(bounds[k], bounds[k + 1]))
               for k in range(jobs) if bounds[k] < bounds[k + 1]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


@contextlib.contextmanager
def _indexes_rebuilt(conn: psycopg.Connection[Any], table: str) -> Iterator[None]:
    """Drop the table's secondary indexes for a bulk load; recreate them after (same
    definitions, so the table ends exactly as migrations made it)."""
    rows = conn.execute(
        "SELECT i.indexname, i.indexdef FROM pg_indexes AS i JOIN pg_class AS c ON "
        "c.relname = i.indexname JOIN pg_index AS x ON x.indexrelid = c.oid "
        "WHERE i.tablename = %s AND NOT x.indisprimary", (table,)).fetchall()
    for name, _ in rows:
        conn.execute(f'DROP INDEX "{name}"')
    yield
    conn.execute("SET maintenance_work_mem = '512MB'")
    for _, definition in rows:
        conn.execute(definition)


_EVENTS = """
INSERT INTO events (id, project_id, user_id, event_name, properties, timestamp, received_at)
SELECT 'evt_' || lpad(i::text, 22, '0'), %(project)s,
       'u' || ((i::bigint * 2654435761) %% %(users)s),
       (ARRAY['Viewed Page', 'Clicked Button', 'Added to Cart', 'Checked Out', 'Signed In',
              'Searched', 'Shared', 'Opened App', 'Rated', 'Invited'])[1 + i %% 10],
       '{}'::jsonb, ts, ts
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS i,
     LATERAL (SELECT %(start)s::timestamptz + (i - 1) * %(step)s::interval AS ts) AS t
"""
_USERS = """
INSERT INTO users (project_id, id, first_seen, last_seen, last_event_at, event_count,
                   session_count, properties)
SELECT project_id, user_id, min(timestamp), max(timestamp), max(timestamp), count(*), 1,
       jsonb_build_object('plan', 'pro')
FROM events WHERE project_id = %(project)s GROUP BY project_id, user_id
"""
_MESSAGES = """
INSERT INTO messages (id, project_id, user_id, channel, subject, body, status, source,
                      source_id, send_key, created_at, updated_at, sent_at)
SELECT 'msg_' || lpad(i::text, 22, '0'), %(project)s,
       'u' || ((i::bigint * 2654435761) %% %(users)s),
       (ARRAY['EMAIL', 'PUSH', 'SMS', 'IN_APP'])[1 + i %% 4], 'Hello', 'Body',
       (ARRAY['sent', 'delivered', 'delivered', 'opened', 'clicked', 'bounced', 'failed',
              'suppressed'])[1 + (i / 4) %% 8],
       (ARRAY['api', 'campaign', 'automation'])[1 + i %% 3],
       CASE i %% 3 WHEN 1 THEN 'camp_bench' || lpad((i %% %(campaigns)s)::text, 17, '0')
                   WHEN 2 THEN 'auto_bench' || lpad((i %% %(automations)s)::text, 17, '0')
       END,
       'bench:' || i, ts, ts, ts
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS i,
     LATERAL (SELECT %(start)s::timestamptz + (i - 1) * %(step)s::interval AS ts) AS t
"""
_ENROLLMENTS = """
INSERT INTO enrollments (id, project_id, automation_id, user_id, workflow_id, status,
                         automation_version, started_at)
SELECT 'run_' || lpad(i::text, 22, '0'), %(project)s,
       'auto_bench' || lpad((i %% %(automations)s)::text, 17, '0'), 'u' || i, 'wf' || i,
       (ARRAY['completed', 'completed', 'exited', 'failed', 'cancelled'])[1 + i %% 5],
       1, ts
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS i,
     LATERAL (SELECT %(start)s::timestamptz + (i - 1) * %(step)s::interval AS ts) AS t
"""


def generate(url: str, args: argparse.Namespace, start: datetime, end: datetime) -> dict[str,
                                                                                          float]:
    """The project, its key, and its rows spread evenly over [start, end)."""
    span = end - start
    params = {"project": PROJECT, "users": args.users, "start": start,
              "campaigns": CAMPAIGNS, "automations": AUTOMATIONS}
    took: dict[str, float] = {}
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute("INSERT INTO projects (id, name, identity_secret_enc) VALUES "
                     "(%s, 'Bench', 'unused')", (PROJECT,))
        conn.execute("INSERT INTO api_keys (id, project_id, name, kind, key_hash, prefix) "
                     "VALUES ('key_bench', %s, 'bench', 'secret', %s, 'sk_live_bench')",
                     (PROJECT, sha256_hex(SECRET_KEY)))
        conn.execute("INSERT INTO segments (id, project_id, name, rules) VALUES "
                     "('seg_bench', %s, 'All', '[]')", (PROJECT,))
        for k in range(CAMPAIGNS):
            conn.execute("INSERT INTO campaigns (id, project_id, name, channel, segment_id, "
                         "status) VALUES (%s, %s, %s, 'EMAIL', 'seg_bench', 'SENT')",
                         (f"camp_bench{k:017d}", PROJECT, f"Campaign {k}"))
        for k in range(AUTOMATIONS):
            conn.execute("INSERT INTO automations (id, project_id, name, trigger_type, "
                         "trigger_event, steps, active) VALUES (%s, %s, %s, 'EVENT', 'x', "
                         "'[]', true)", (f"auto_bench{k:017d}", PROJECT, f"Automation {k}"))
        for table, sql, count in (("events", _EVENTS, args.events),
                                  ("messages", _MESSAGES, args.messages),
                                  ("enrollments", _ENROLLMENTS, args.enrollments)):
            if count <= 0:
                continue
            log(f"generating {count:,} {table}")
            step = span / count
            with _indexes_rebuilt(conn, table):
                took[f"load_{table}"] = _timed(f"{table} rows", lambda s=sql, c=count, st=step:
                                               _parallel(url, args.jobs, s, c,
                                                         {**params, "step": st}))
                started = time.monotonic()
            took[f"index_{table}"] = time.monotonic() - started
            log(f"  {table} indexes: {took[f'index_{table}']:.1f} s")
        took["load_users"] = _timed("users rows", lambda: conn.execute(_USERS, params))
        took["vacuum"] = _timed("VACUUM ANALYZE", lambda: conn.execute("VACUUM ANALYZE"))
    return took


# --- measuring ---


def rollup(url: str) -> tuple[float, int]:
    """The rollup activity's code, as the worker runs it (without Temporal)."""
    import asyncio

    from activities.reports import ReportActivities, RollupPageInput
    from core.db import make_async_engine, make_sessionmaker

    async def main() -> int:
        engine = make_async_engine(url, 2)
        try:
            acts = ReportActivities(make_sessionmaker(engine))
            result = await acts.rollup(RollupPageInput(project_id=PROJECT), budget=1e9)
            return result.days
        finally:
            await engine.dispose()

    started = time.monotonic()
    days = asyncio.run(main())
    return time.monotonic() - started, days


@contextlib.contextmanager
def api_server(url: str) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": url, "RETENSHUN_ENV": "test",
           "RETENSHUN_SECRET_KEY": "bench-secret-key", "TEMPORAL_ADDRESS": "127.0.0.1:1",
           "RETENSHUN_RATE_LIMIT_API": "1000000/second",
           "RETENSHUN_RATE_LIMIT_INGEST": "1000000/second"}
    log_file = tempfile.NamedTemporaryFile(prefix="bench-reports-api-", suffix=".log",
                                           delete=False)
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory", "--host",
         "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log"],
        cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the API did not start: " + Path(log_file.name).read_text())
            time.sleep(0.1)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        Path(log_file.name).unlink(missing_ok=True)


def measure_reports(base: str, seconds: float, *, warmup: int = 3,
                    at_least: int = 5) -> tuple[list[float], dict[str, Any]]:
    headers = {"x-api-key": SECRET_KEY}
    with httpx.Client(base_url=base, headers=headers, timeout=120) as http:
        def call() -> tuple[float, dict[str, Any]]:
            started = time.perf_counter()
            r = http.get("/api/v1/reports", params={"range": "90d"})
            took = (time.perf_counter() - started) * 1000
            if r.status_code != 200:
                raise RuntimeError(f"GET /reports answered {r.status_code}: {r.text[:300]}")
            return took, r.json()

        for _ in range(warmup):  # connections, caches
            call()
        latencies: list[float] = []
        report: dict[str, Any] = {}
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline or len(latencies) < at_least:
            took, report = call()
            latencies.append(took)
    return sorted(latencies), report


def raw_count(url: str, start: datetime, end: datetime, runs: int) -> tuple[list[float], int]:
    times, count = [], 0
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        for _ in range(runs):
            started = time.perf_counter()
            row = conn.execute("SELECT count(*) FROM events WHERE project_id = %s AND "
                               "timestamp >= %s AND timestamp < %s",
                               (PROJECT, start, end)).fetchone()
            times.append((time.perf_counter() - started) * 1000)
            count = int(row[0]) if row else 0
    return times, count


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile of ascending values."""
    return values[max(0, math.ceil(q / 100 * len(values)) - 1)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    now = datetime.now(UTC)
    today = now.date()
    start = datetime.combine(today - timedelta(days=89), datetime.min.time(), UTC)
    # Rows end a second before now; the COUNT's upper bound is the start of tomorrow, the
    # report's last day.
    end = now - timedelta(seconds=1)
    tomorrow = start + timedelta(days=90)
    figures: dict[str, Any] = {"events": args.events, "users": args.users,
                               "messages": args.messages, "enrollments": args.enrollments,
                               "jobs": args.jobs, "seconds": args.seconds}
    log(f"reports benchmark: {args.events:,} events, {args.messages:,} messages, "
        f"{args.enrollments:,} enrollments, {args.users:,} users over the 90 days from "
        f"{start:%Y-%m-%d} to now")
    with database(args.database_url) as url:
        with psycopg.connect(libpq_url(url)) as conn:
            figures["server_version"] = conn.info.server_version
        total_started = time.monotonic()
        figures.update({f"{k}_s": round(v, 1) for k, v in generate(url, args, start,
                                                                   end).items()})
        took, days = rollup(url)
        figures["rollup_s"], figures["rollup_days"] = round(took, 2), days
        log(f"rollup of {days} closed days: {took:.1f} s")
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            conn.execute("ANALYZE daily_rollups")  # as autovacuum soon would
        with api_server(url) as base:
            latencies, report = measure_reports(base, args.seconds)
            counts, count = raw_count(url, start, tomorrow, args.count_runs)
            if args.live:
                with psycopg.connect(libpq_url(url), autocommit=True) as conn:
                    conn.execute("DELETE FROM daily_rollups")
                live, live_report = measure_reports(base, 0, warmup=0, at_least=1)
                figures["live_report_ms"] = round(statistics.median(live), 1)
                assert live_report["events"] == count
        figures["total_s"] = round(time.monotonic() - total_started, 1)
    p50, p99 = statistics.median(latencies), pct(latencies, 99)
    count_ms = statistics.median(counts)
    exact = report["events"] == count == args.events
    figures.update({
        "report_calls": len(latencies), "report_p50_ms": round(p50, 1),
        "report_p99_ms": round(p99, 1), "report_max_ms": round(latencies[-1], 1),
        "report_events": report["events"], "report_active_users": report["activeUsers"],
        "report_messages_sent": report["messagesSent"],
        "report_rolled_up_days": report["rollup"]["rolledUpDays"],
        "report_live_days": report["rollup"]["liveDays"],
        "count_events": count, "count_runs_ms": [round(c, 1) for c in counts],
        "count_median_ms": round(count_ms, 1), "events_match": exact,
        "ratio": round(p50 / count_ms, 4),
    })
    log("")
    log(f"GET /reports?range=90d   p50 {p50:8.1f} ms   p99 {p99:8.1f} ms   "
        f"({len(latencies)} calls in {args.seconds:.0f} s; events {report['events']:,}, "
        f"activeUsers {report['activeUsers']:,}, messagesSent {report['messagesSent']:,})")
    log(f"raw SQL COUNT(*)         median {count_ms:8.1f} ms   ({count:,} events; runs "
        f"{', '.join(f'{c:.0f}' for c in counts)} ms)")
    if args.live:
        log(f"report with no rollups   {figures['live_report_ms']:8.1f} ms")
    log(f"ratio report p50 / COUNT = {p50 / count_ms:.4f}; report events == COUNT == "
        f"generated: {exact}")
    print(json.dumps(figures), flush=True)
    return 0 if exact else 1


if __name__ == "__main__":
    raise SystemExit(main())
