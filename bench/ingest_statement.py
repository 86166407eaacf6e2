"""The batch ingestion statement alone: PostgreSQL's CPU per event, with and without HOT
user upserts.

    .venv/bin/python bench/ingest_statement.py --seconds 10

No HTTP, no server: --connections psycopg connections run the product's batch statement
(core.services.events._TRACK_BATCH) back to back, each call --batch-size events of
--users users stamped with the current time (so every event moves its user's
`last_seen`, as live traffic does). Embedded PostgreSQL in a temp dir, a fresh database,
the migrations applied. Two layouts of `users`, measured one after the other on emptied
tables (after --warmup seconds that create the users):

  baseline  the indexes before migration 0006 put back: (project_id, last_seen) and
            (updated_at). Every user upsert changes an indexed column, so none is HOT.
  current   the schema as migrated: (project_id, last_seen_day) and the partial index of
            `membership_stale` users. A typical upsert changes nothing indexed: HOT.

Per layout: events/s, PostgreSQL CPU per event (every process of the server, measured
from /proc over the window) and the share of user updates that were HOT
(pg_stat_user_tables). ratio = baseline CPU per event / current CPU per event (above 1:
the current layout is cheaper). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

from bench import _common as c
from core.ids import new_id
from core.services.events import _TRACK_BATCH

PROJECT = "prj_bench_statement"
BEFORE_0006 = ("CREATE INDEX bench_users_last_seen ON users (project_id, last_seen)",
               "CREATE INDEX bench_users_updated_at ON users (updated_at)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0, help="measured, per layout")
    p.add_argument("--warmup", type=float, default=4.0, help="unmeasured, per layout")
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--users", type=int, default=10_000)
    return p.parse_args(argv)


def batch_document(rnd: random.Random, size: int, users: int) -> str:
    """One batch as the endpoint builds it (core.services.events.track_batch)."""
    now = datetime.now(UTC).isoformat()
    return json.dumps([{
        "i": new_id("evt"), "u": f"user-{rnd.randrange(users)}",
        "n": f"Event {rnd.randrange(100)}",
        "p": {"plan": "pro", "amount": round(rnd.random() * 100, 2), "page": "/pricing"},
        "t": now, "k": None} for _ in range(size)])


async def drive(url: str, args: argparse.Namespace, seconds: float,
                window: list[tuple[float, dict[int, float]]], pids: list[int]) -> int:
    """Run batches on every connection for `seconds`; CPU snapshots at start and end."""
    conns = [await psycopg.AsyncConnection.connect(url, autocommit=True)
             for _ in range(args.connections)]
    pids = pids + [conn.info.backend_pid for conn in conns]
    events = 0
    window.append((time.monotonic(), c.cpu_snapshot(pids)))
    stop = time.monotonic() + seconds

    async def loop(conn: psycopg.AsyncConnection[Any], seed: int) -> None:
        nonlocal events
        rnd = random.Random(seed)
        while time.monotonic() < stop:
            doc = batch_document(rnd, args.batch_size, args.users)
            await conn.execute(_TRACK_BATCH, {"project_id": PROJECT, "now": datetime.now(UTC),
                                              "rows": doc})
            events += args.batch_size

    try:
        await asyncio.gather(*(loop(conn, i) for i, conn in enumerate(conns)))
        window.append((time.monotonic(), c.cpu_snapshot(pids)))
    finally:
        for conn in conns:
            await conn.close()
    return events


def updates(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    conn.execute("SELECT pg_stat_force_next_flush()")
    row = conn.execute("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                       "WHERE relname = 'users'").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def measure(db: c.Database, conn: psycopg.Connection[Any], args: argparse.Namespace,
            ) -> dict[str, float]:
    conn.execute("TRUNCATE events, users")
    conn.execute("CHECKPOINT")
    server = c.postgres_pids(db.postmaster_pid)  # postmaster, checkpointer, WAL writer…
    asyncio.run(drive(db.url, args, args.warmup, [], server))
    before = updates(conn)
    window: list[tuple[float, dict[int, float]]] = []
    events = asyncio.run(drive(db.url, args, args.seconds, window, server))
    after = updates(conn)
    (t0, cpu0), (t1, cpu1) = window
    upd, hot = after[0] - before[0], after[1] - before[1]
    return {"events_per_s": round(events / (t1 - t0)),
            "postgres_cpu_us_per_event": round(c.cpu_delta(cpu0, cpu1) / events * 1e6, 1),
            "hot_update_share": round(hot / upd, 3) if upd else 0.0}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with c.cleanup_scope() as cleanup:
        c.log("starting PostgreSQL (embedded, fresh DB, migrations)…")
        db = c.start_database(cleanup)
        with psycopg.connect(db.url, autocommit=True) as conn:
            conn.execute("INSERT INTO projects (id, name, identity_secret_enc) "
                         "VALUES (%s, 'bench', 'unused')", (PROJECT,))
            for statement in BEFORE_0006:
                conn.execute(statement)
            c.log("baseline: users indexed as before migration 0006…")
            baseline = measure(db, conn, args)
            for statement in BEFORE_0006:
                conn.execute("DROP INDEX " + statement.split()[2])
            c.log("current: users indexed as migrated…")
            current = measure(db, conn, args)
    for name, figures in (("baseline", baseline), ("current", current)):
        print(f"  {name:9s} {figures['events_per_s']:>8,} events/s   PostgreSQL "
              f"{figures['postgres_cpu_us_per_event']:6.1f} µs CPU/event   "
              f"HOT updates {figures['hot_update_share']:.0%}")
    ratio = round(baseline["postgres_cpu_us_per_event"]
                  / current["postgres_cpu_us_per_event"], 3)
    print(f"  ratio (baseline CPU per event / current) {ratio}")
    print(json.dumps({"bench": "ingest_statement", "seconds": args.seconds,
                      "connections": args.connections, "batch_size": args.batch_size,
                      "users": args.users, "baseline": baseline, "current": current,
                      "ratio": ratio}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
