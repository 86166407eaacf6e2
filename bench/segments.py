"""Segment estimate benchmark: POST /api/v1/segments/estimate against hand-written SQL.

    .venv/bin/python bench/segments.py --seconds 10                    # 1M users, 10M events
    .venv/bin/python bench/segments.py --seconds 3 --users 100000 --events 1000000

Starts its own stack: embedded PostgreSQL (temp dir, fresh database, migrations) and
the API (`uvicorn api.app:create_app --factory --workers 1`; Temporal is not needed).
Signs up over HTTP, then generates --users users and --events events for that project
inside PostgreSQL (INSERT ... SELECT generate_series; the events' secondary indexes are
dropped for the load and rebuilt after, then VACUUM ANALYZE): each user has a `plan`
(free/pro/team), an `age`, a nested `address.city`; events are 20 names spread over 90
days, `purchase` one in twenty, on users drawn at random.

Then, for each question, one after the other (nothing else runs): --warmup unmeasured
seconds then --seconds measured ones of

  product   POST /segments/estimate with the rules (HTTP, secret key, a keep-alive
            client), sequentially: latency per answer
  baseline  the same question as one hand-written SQL statement on a psycopg
            connection to the same database (same work_mem as the product's rules
            queries), sequentially: latency per answer

Questions: `attribute` (plan = pro), `event_count` (3+ purchases), `nested` (any of:
plan = pro and age < 30; 2+ purchases in the last 30 days and a city). Every answer of
the product must equal the baseline's count. ratio = the worst of the per-question
product p50 / baseline p50 (target <= 1.5). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c
import ingest

RATIO_TARGET = 1.5
EVENT_NAMES = ["purchase", "page_view", "app_open", "search", "add_to_cart", "share",
               "login", "logout", "signup_step", "invite", "comment", "like", "follow",
               "upload", "download", "rate", "subscribe", "unsubscribe", "refund", "review"]
WORK_MEM = "64MB"  # what core.services.segments sets for its rules queries

QUESTIONS: dict[str, tuple[list[Any], str]] = {
    "attribute": (
        [{"field": "plan", "operator": "eq", "value": "pro"}],
        "SELECT count(*) FROM users WHERE project_id = %(p)s "
        "AND properties->>'plan' = 'pro'",
    ),
    "event_count": (
        [{"event": "purchase", "operator": "gte", "value": 3}],
        "SELECT count(*) FROM (SELECT user_id FROM events WHERE project_id = %(p)s "
        "AND event_name = 'purchase' GROUP BY user_id HAVING count(*) >= 3) AS buyers",
    ),
    "nested": (
        [{"any": [
            {"all": [{"field": "plan", "operator": "eq", "value": "pro"},
                     {"field": "age", "operator": "lt", "value": 30}]},
            {"all": [{"event": "purchase", "operator": "gte", "value": 2, "withinDays": 30},
                     {"field": "address.city", "operator": "in",
                      "value": ["Paris", "Lyon"]}]},
        ]}],
        "SELECT count(*) FROM users u WHERE u.project_id = %(p)s AND ("
        "(u.properties->>'plan' = 'pro' AND (u.properties->>'age')::int < 30) OR "
        "(u.properties->'address'->>'city' IN ('Paris', 'Lyon') AND u.id IN ("
        "SELECT user_id FROM events WHERE project_id = %(p)s AND event_name = 'purchase' "
        "AND timestamp >= now() - interval '30 days' GROUP BY user_id "
        "HAVING count(*) >= 2)))",
    ),
}

USERS_SQL = """
INSERT INTO users (project_id, id, email, properties, subscribed, first_seen, last_seen,
                   last_event_at, event_count, session_count, created_at, updated_at)
SELECT %(p)s, 'user-' || g, 'user-' || g || '@example.com',
       jsonb_build_object(
           'plan', (ARRAY['free', 'pro', 'team'])[1 + (hashint4(g) & 1023) %% 3],
           'age', 18 + (hashint4(g + 7) & 1023) %% 60,
           'address', jsonb_build_object(
               'city', (ARRAY['Paris', 'Berlin', 'Lyon', 'Rome'])[1 + g %% 4])),
       true, now() - interval '200 days', now() - (g %% 90) * interval '1 day',
       now() - (g %% 90) * interval '1 day', 10, 2, now(), now()
FROM generate_series(%(lo)s::int, %(hi)s::int) AS g
"""

EVENTS_SQL = """
INSERT INTO events (id, project_id, user_id, event_name, properties, timestamp,
                    received_at)
SELECT 'evt_b' || g, %(p)s, 'user-' || (1 + (hashint4(g) & 2147483647) %% %(users)s),
       (%(names)s::text[])[1 + g %% 20], '{}'::jsonb,
       now() - ((hashint4(g + 1) & 2147483647) %% (90 * 86400)) * interval '1 second', now()
FROM generate_series(%(lo)s::int, %(hi)s::int) AS g
"""

EVENT_INDEXES = ["ix_events_project_ts", "ix_events_project_user_ts",
                 "ix_events_project_name_ts", "uq_events_project_idempotency"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seconds", type=float, default=10, help="measured seconds per phase")
    p.add_argument("--warmup", type=float, default=2, help="unmeasured seconds before each")
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--chunk", type=int, default=1_000_000, help="rows per INSERT while loading")
    p.add_argument("--strict", action="store_true", help="exit 1 when the ratio is missed")
    return p.parse_args(argv)


def load(url: str, project_id: str, users: int, events: int, chunk: int) -> dict[str, float]:
    timings: dict[str, float] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        t = time.monotonic()
        for lo in range(1, users + 1, chunk):
            conn.execute(USERS_SQL, {"p": project_id, "lo": lo, "hi": min(users, lo + chunk - 1)})
        timings["users_s"] = time.monotonic() - t
        c.log(f"  {users:,} users in {timings['users_s']:.1f} s")
        definitions = [conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s",
                                    (name,)).fetchone() for name in EVENT_INDEXES]
        for name in EVENT_INDEXES:
            conn.execute(f'DROP INDEX "{name}"')
        t = time.monotonic()
        done = 0
        for lo in range(1, events + 1, chunk):
            hi = min(events, lo + chunk - 1)
            conn.execute(EVENTS_SQL, {"p": project_id, "lo": lo, "hi": hi, "users": users,
                                      "names": EVENT_NAMES})
            done = hi
            c.log(f"  {done:,} events ({time.monotonic() - t:.0f} s)")
        timings["events_s"] = time.monotonic() - t
        t = time.monotonic()
        conn.execute("SET maintenance_work_mem = '512MB'")
        for row in definitions:
            assert row is not None
            conn.execute(row[0])
        timings["indexes_s"] = time.monotonic() - t
        t = time.monotonic()
        conn.execute("VACUUM ANALYZE users")
        conn.execute("VACUUM ANALYZE events")
        timings["analyze_s"] = time.monotonic() - t
        c.log(f"  events indexed in {timings['indexes_s']:.1f} s, "
              f"analyzed in {timings['analyze_s']:.1f} s")
    return timings


def measure(name: str, ask: Callable[[], int], seconds: float, warmup: float,
            ) -> tuple[list[float], set[int]]:
    t_end = time.monotonic() + warmup
    answers: set[int] = set()
    while time.monotonic() < t_end:
        answers.add(ask())
    latencies: list[float] = []
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end or len(latencies) < 3:
        t0 = time.perf_counter()
        answers.add(ask())
        latencies.append((time.perf_counter() - t0) * 1000)
    return latencies, answers


def summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {"p50_ms": round(statistics.median(ordered), 2),
            "p90_ms": round(c.percentile(ordered, 90), 2),
            "min_ms": round(ordered[0], 2), "n": len(ordered)}


def run(args: argparse.Namespace, cleanup: c.Cleanup) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="retenshun-bench-seg-"))
    c.log("starting PostgreSQL (embedded, fresh DB)…")
    db = c.start_database(cleanup)
    api = c.start_uvicorn(cleanup, "api", "api.app:create_app", ingest.product_env(db.url, 4),
                          1, tmp / "logs", ready_path="/api/v1/events")
    keys = ingest.signup(api.base)
    project_id = keys["project_id"]
    c.log(f"loading {args.users:,} users and {args.events:,} events (generate_series)…")
    timings = load(db.url, project_id, args.users, args.events, args.chunk)
    results: dict[str, Any] = {}
    ratios: list[float] = []
    with httpx.Client(base_url=api.base + "/api/v1", headers={"x-api-key": keys["secret"]},
                      timeout=300) as http, psycopg.connect(db.url, autocommit=True) as conn:
        conn.execute(f"SET work_mem = '{WORK_MEM}'")
        for name, (rules, sql) in QUESTIONS.items():

            def product(rules: list[Any] = rules) -> int:
                r = http.post("/segments/estimate", json={"rules": rules})
                r.raise_for_status()
                return int(r.json()["estimatedCount"])

            def baseline(sql: str = sql) -> int:
                row = conn.execute(sql, {"p": project_id}).fetchone()
                assert row is not None
                return int(row[0])

            c.log(f"{name}: rules {json.dumps(rules)}")
            base_lat, base_answers = measure("baseline", baseline, args.seconds, args.warmup)
            prod_lat, prod_answers = measure("product", product, args.seconds, args.warmup)
            b, p = summary(base_lat), summary(prod_lat)
            ratio = p["p50_ms"] / b["p50_ms"]
            ratios.append(ratio)
            agree = prod_answers == base_answers and len(base_answers) == 1
            results[name] = {"count": sorted(base_answers)[0], "product": p, "baseline": b,
                             "ratio": round(ratio, 3), "same_answer": agree}
            c.log(f"  count {sorted(base_answers)}; product p50 {p['p50_ms']:.1f} ms "
                  f"(p90 {p['p90_ms']:.1f}, n={p['n']}); hand-written SQL p50 "
                  f"{b['p50_ms']:.1f} ms (p90 {b['p90_ms']:.1f}, n={b['n']}); "
                  f"ratio {ratio:.2f}{'' if agree else '  ANSWERS DIFFER: ' + str(prod_answers)}")
    ratio = max(ratios)
    out = {"ratio": round(ratio, 3), "target": RATIO_TARGET, "ratio_met": ratio <= RATIO_TARGET,
           "users": args.users, "events": args.events, "seconds": args.seconds,
           "load": {k: round(v, 1) for k, v in timings.items()}, "questions": results,
           "all_answers_agree": all(r["same_answer"] for r in results.values())}
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with c.cleanup_scope() as cleanup:
        out = run(args, cleanup)
    c.log(f"ratio (worst product p50 / hand-written p50): {out['ratio']:.2f} "
          f"(target <= {RATIO_TARGET})")
    print(json.dumps(out), flush=True)
    if args.strict and not (out["ratio_met"] and out["all_answers_agree"]):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
