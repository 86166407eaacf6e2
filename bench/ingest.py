"""Ingestion benchmark: POST /api/v1/events and /events/batch against a bare baseline.

    .venv/bin/python bench/ingest.py --seconds 10

Starts its own stack (embedded PostgreSQL in a temp dir, fresh database, migrations,
`uvicorn api.app:create_app --factory --workers 2`), signs up a tenant and creates a
public key over HTTP, then runs, one after the other so nothing competes:

  baseline  bench/baseline_app.py on the same stack: validate + one INSERT per request
  single    POST /api/v1/events, one event per request
  batch     POST /api/v1/events/batch, --batch-size events per request

each with --warmup unmeasured seconds then --seconds measured ones, through the same
load generator (bench/_common.py). `--url URL --public-key pk_… [--secret-key sk_…]`
targets a running product instead (the baseline still gets its own embedded
PostgreSQL). Targets: single >= 50% of the baseline's requests/s, batch >= 20,000
events/s. The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c
import baseline_app

PHASES = ("baseline", "single", "batch")
SINGLE_TARGET_RATIO = 0.5
# --wait-quiet: the machine counts as idle under QUIET_CORES of other processes' CPU; a
# phase during which they took more than NOISY_CORES is measured again (NOISY_RETRIES).
QUIET_CORES = 0.3
NOISY_CORES = 0.3
NOISY_RETRIES = 3
BATCH_TARGET_EVENTS = 20_000

_VERBS = ["Viewed", "Clicked", "Opened", "Completed", "Started", "Shared", "Saved",
          "Searched", "Purchased", "Updated"]
_NOUNS = ["Page", "Product", "Checkout", "Onboarding Step", "Invoice", "Report",
          "Settings", "Cart", "Article", "Video"]
EVENT_NAMES = [f"{v} {n}" for v in _VERBS for n in _NOUNS]  # 100 distinct names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seconds", type=float, default=10, help="measured seconds per phase")
    p.add_argument("--warmup", type=float, default=2, help="unmeasured seconds before each")
    p.add_argument("--url", help="a running product (e.g. http://127.0.0.1:8000)")
    p.add_argument("--public-key", help="ingestion key for --url")
    p.add_argument("--secret-key", help="with --url: used to check the events were stored "
                   "(and to ingest if no --public-key)")
    p.add_argument("--workers", type=int, default=2, help="uvicorn workers (both apps)")
    p.add_argument("--pool-size", type=int, default=10, help="DB pool per worker (both apps)")
    p.add_argument("--connections", type=int, default=64,
                   help="concurrent keep-alive connections, single and baseline phases")
    p.add_argument("--batch-connections", type=int, default=16,
                   help="concurrent connections, batch phase")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--procs", type=int, default=2, help="load-generator processes")
    p.add_argument("--client", choices=["raw", "httpx"], default="raw",
                   help="load-generator HTTP client (raw: minimal asyncio HTTP/1.1)")
    p.add_argument("--users", type=int, default=10_000, help="distinct userIds")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat the phases, alternating; the ratio is the median per round")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                   help="before each phase, wait up to this long for other processes "
                   "to leave the CPU idle, and measure a phase again (up to 3 times) if "
                   "they took over 0.3 cores meanwhile (a shared machine skews figures)")
    p.add_argument("--phases", default="baseline,single,batch",
                   help="comma-separated subset of baseline,single,batch")
    p.add_argument("--product-dir", type=Path, default=c.REPO,
                   help="serve the product from this source tree (e.g. another checkout)")
    p.add_argument("--py-spy", type=Path, metavar="DIR",
                   help="profile each server worker with py-spy during each measured phase")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = p.parse_args(argv)
    args.phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        p.error(f"unknown phases: {', '.join(sorted(unknown))}")
    if args.url:
        host = urlsplit(args.url).hostname
        if host not in ("127.0.0.1", "localhost", "::1"):
            p.error("--url must be a loopback address (this benchmark is loopback only)")
        if not (args.public_key or args.secret_key) and ({"single", "batch"} & set(args.phases)):
            p.error("--url needs --public-key or --secret-key")
    return args


# --- payloads ---


def _event(rng: random.Random, users: int, ts: str) -> dict[str, Any]:
    return {
        "userId": f"user-{rng.randrange(users):05d}",
        "eventName": rng.choice(EVENT_NAMES),
        "properties": {
            "plan": rng.choice(["free", "pro", "team"]),
            "amount": round(rng.uniform(1, 500), 2),
            "path": f"/p/{rng.randrange(1000)}",
            "mobile": rng.random() < 0.4,
        },
        "timestamp": ts,
    }


def single_bodies(users: int, n: int = 4096, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    ts = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return [orjson.dumps(_event(rng, users, ts)) for _ in range(n)]


def batch_bodies(users: int, size: int, n: int = 200, seed: int = 2) -> list[bytes]:
    rng = random.Random(seed)
    ts = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return [orjson.dumps({"events": [_event(rng, users, ts) for _ in range(size)]})
            for _ in range(n)]


# --- the product ---


def signup(base: str) -> dict[str, str]:
    """A fresh account + project, and a public and a secret key, over HTTP."""
    with httpx.Client(base_url=base + "/api/v1", timeout=30) as dash:
        r = dash.post("/auth/signup", json={
            "email": f"bench-{uuid.uuid4().hex[:10]}@example.com",
            "password": "correct horse battery staple", "projectName": "Bench"})
        if r.status_code != 201:
            raise RuntimeError(f"signup failed: {r.status_code} {r.text}")
        body = r.json()
        dash.headers["X-CSRF-Token"] = body["csrfToken"]
        keys = {"project_id": body["project"]["id"]}
        for kind in ("public", "secret"):
            k = dash.post("/api-keys", json={"name": f"bench {kind}", "type": kind})
            if k.status_code != 201:
                raise RuntimeError(f"creating a {kind} key failed: {k.status_code} {k.text}")
            keys[kind] = k.json()["key"]
    return keys


def stored_events(base: str, secret_key: str) -> int | None:
    r = httpx.get(base + "/api/v1/events", params={"limit": 1},
                  headers={"x-api-key": secret_key}, timeout=120)
    return int(r.json()["total"]) if r.status_code == 200 else None


def product_env(db_url: str, pool_size: int) -> dict[str, str]:
    return {
        "RETENSHUN_ENV": "test", "DATABASE_URL": db_url, "RETENSHUN_SECRET_KEY": "bench",
        "RETENSHUN_RATE_LIMIT_INGEST": "1000000/second",
        "RETENSHUN_RATE_LIMIT_API": "1000000/second",
        "RETENSHUN_DB_POOL_SIZE": str(pool_size), "TEMPORAL_ADDRESS": "127.0.0.1:1",
        "RETENSHUN_REDIS_URL": "",
    }


# --- reporting ---


def describe(r: c.PhaseResult, unit: str) -> str:
    cpu = ", ".join(f"{k} {v:.2f}" for k, v in r.cpu.items())
    if r.cpu.get("server") and r.requests:
        cpu += f"; server CPU {server_ms(r):.2f} ms/request"
    if r.requests:
        cpu += f", loadgen {cpu_ms(r, 'loadgen'):.2f}"
    rate = r.events_per_s if unit == "events" else r.requests_per_s
    lines = [
        f"  {r.name:<9} {rate:>10,.0f} {unit}/s   ({r.requests:,} requests in "
        f"{r.seconds:g} s, {r.errors} errors)",
        f"  {'':<9} latency p50 {r.pct(50):.2f} ms   p99 {r.pct(99):.2f} ms",
        f"  {'':<9} CPU cores used: {cpu}",
    ]
    lines += [f"  {'':<9} error sample: {s}" for s in r.error_samples]
    return "\n".join(lines)


def cpu_ms(r: c.PhaseResult, part: str) -> float:
    """CPU per request of one part: steadier than requests/s when the machine is shared."""
    return r.cpu.get(part, 0.0) * r.seconds * 1000 / max(1, r.requests)


def server_ms(r: c.PhaseResult) -> float:
    return cpu_ms(r, "server")


def phase_json(r: c.PhaseResult | None, prefix: str) -> dict[str, Any]:
    if r is None:
        return {}
    out = {
        f"{prefix}_requests_per_s": round(r.requests_per_s, 1),
        f"{prefix}_p50_ms": round(r.pct(50), 3),
        f"{prefix}_p99_ms": round(r.pct(99), 3),
        f"{prefix}_errors": r.errors,
        f"{prefix}_cpu_cores": {k: round(v, 3) for k, v in r.cpu.items()},
    }
    for part in ("server", "postgres", "loadgen"):
        if part in r.cpu:
            out[f"{prefix}_{part}_cpu_ms_per_request"] = round(cpu_ms(r, part), 3)
    if prefix != "baseline":
        out[f"{prefix}_events_per_s"] = round(r.events_per_s, 1)
    return out


# --- main ---


def run(args: argparse.Namespace, cleanup: c.Cleanup) -> dict[str, Any]:
    runs: dict[str, list[c.PhaseResult]] = {p: [] for p in PHASES}
    log_dir = Path(tempfile.mkdtemp(prefix="retenshun-bench-logs-"))
    cleanup.push("log dir", lambda: shutil.rmtree(log_dir, ignore_errors=True))
    common = {"seconds": args.seconds, "warmup": args.warmup, "procs": args.procs,
              "client": args.client, "cleanup": cleanup}

    def profile(server: c.Server | None) -> tuple[Path, list[int]] | None:
        if args.py_spy is None or server is None:
            return None
        return args.py_spy, server.worker_pids()

    c.log(f"starting PostgreSQL ({'baseline only' if args.url else 'embedded, fresh DB'})…")
    db = c.start_database(cleanup, migrate=not args.url)
    pg_cpu: Callable[[], list[int]] = lambda: c.postgres_pids(db.postmaster_pid)  # noqa: E731

    # Both servers are started up front and driven one at a time (an idle server costs
    # nothing), so rounds can alternate baseline and product under the same conditions.
    loads: dict[str, c.Load] = {}
    servers: dict[str, c.Server | None] = {}
    if "baseline" in args.phases:
        import psycopg

        with psycopg.connect(db.url, autocommit=True) as conn:
            baseline_app.create_table(conn)
        c.log(f"baseline: uvicorn baseline_app --workers {args.workers}…")
        server = c.start_uvicorn(
            cleanup, "baseline", "baseline_app:create_app",
            {"DATABASE_URL": db.url, "BASELINE_POOL_SIZE": str(args.pool_size)},
            args.workers, log_dir, app_dir=c.BENCH_DIR, ready_path="/baseline/health")
        servers["baseline"] = server
        loads["baseline"] = c.make_load(c.HOST, server.port, baseline_app.PATH, {},
                                        single_bodies(args.users), 1)

    stored_before = None
    base = secret = None
    if {"single", "batch"} & set(args.phases):
        product: c.Server | None = None
        if args.url:
            base = args.url.rstrip("/")
            host, port = urlsplit(base).hostname or c.HOST, urlsplit(base).port or 80
            key = args.public_key or args.secret_key
            secret = args.secret_key
        else:
            c.log(f"product: uvicorn api.app:create_app --workers {args.workers}…")
            product = c.start_uvicorn(
                cleanup, "product", "api.app:create_app", product_env(db.url, args.pool_size),
                args.workers, log_dir, ready_path="/api/v1/events",
                app_dir=args.product_dir, cwd=args.product_dir)
            base, host, port = product.base, c.HOST, product.port
            keys = signup(base)
            key, secret = keys["public"], keys["secret"]
        if secret:
            stored_before = stored_events(base, secret)
        headers = {"x-api-key": key}
        servers["single"] = servers["batch"] = product
        loads["single"] = c.make_load(host, port, "/api/v1/events", headers,
                                      single_bodies(args.users), 1)
        loads["batch"] = c.make_load(host, port, "/api/v1/events/batch", headers,
                                     batch_bodies(args.users, args.batch_size),
                                     args.batch_size)

    accepted = 0
    for rnd in range(args.rounds):
        if args.rounds > 1:
            c.log(f"round {rnd + 1}/{args.rounds}")
        for phase in args.phases:
            server = servers[phase]
            cpu_groups: dict[str, Callable[[], list[int]]] = {}
            if server is not None:
                cpu_groups = {"server": server.pids, "postgres": pg_cpu}
            conns = args.batch_connections if phase == "batch" else args.connections
            for attempt in range(1 + (NOISY_RETRIES if args.wait_quiet > 0 else 0)):
                if args.wait_quiet > 0:
                    c.wait_for_quiet(args.wait_quiet, QUIET_CORES)
                result = c.run_phase(phase, loads[phase], connections=conns,
                                     cpu_groups=cpu_groups, profile=profile(server), **common)
                if phase != "baseline":  # every accepted event, remeasured phases too
                    accepted += result.total_ok_requests * result.events_per_request
                others = result.cpu.get("others", 0.0)
                if args.wait_quiet <= 0 or others <= NOISY_CORES or attempt == NOISY_RETRIES:
                    break
                c.log(f"  {phase}: other processes took {others:.2f} cores; measuring again")
            runs[phase].append(result)
            c.log(describe(result, "requests" if phase == "baseline" else "events"))

    stored_after = stored_events(base, secret) if base and secret else None
    for server in {id(s): s for s in servers.values() if s is not None}.values():
        server.stop()
    stored = None if stored_before is None or stored_after is None else (
        stored_after - stored_before)
    return summarise(args, runs, accepted, stored)


def merge(results: list[c.PhaseResult]) -> c.PhaseResult | None:
    """Several rounds of a phase as one: summed requests and time, pooled latencies."""
    if not results:
        return None
    if len(results) == 1:
        return results[0]
    total = sum(r.seconds for r in results)
    cpu_keys = {k for r in results for k in r.cpu}
    return c.PhaseResult(
        name=results[0].name, seconds=total, requests=sum(r.requests for r in results),
        errors=sum(r.errors for r in results),
        events_per_request=results[0].events_per_request,
        latencies_ms=sorted(x for r in results for x in r.latencies_ms),
        total_ok_requests=sum(r.total_ok_requests for r in results),
        error_samples=[s for r in results for s in r.error_samples][:5],
        cpu={k: sum(r.cpu.get(k, 0.0) * r.seconds for r in results) / total
             for k in cpu_keys},
    )


def cpu_per_request(r: c.PhaseResult | None) -> float | None:
    """Server + PostgreSQL + load generator CPU ms per request (None if not measured)."""
    if r is None or not r.requests or "server" not in r.cpu:
        return None
    return sum(cpu_ms(r, part) for part in ("server", "postgres", "loadgen"))


def summarise(args: argparse.Namespace, runs: dict[str, list[c.PhaseResult]],
              accepted: int, stored: int | None) -> dict[str, Any]:
    base, single, batch = (merge(runs[p]) for p in PHASES)
    out: dict[str, Any] = {
        "bench": "ingest", "seconds": args.seconds, "warmup": args.warmup,
        "rounds": args.rounds, "workers": args.workers, "connections": args.connections,
        "batch_connections": args.batch_connections, "batch_size": args.batch_size,
        "loadgen_procs": args.procs, "client": args.client,
    }
    out.update(phase_json(base, "baseline"))
    out.update(phase_json(single, "single"))
    out.update(phase_json(batch, "batch"))
    # Each round's ratio pairs phases measured minutes apart at most; the median of
    # those resists drift in the machine's load better than a ratio of totals.
    round_ratios = [s.events_per_s / b.requests_per_s
                    for b, s in zip(runs["baseline"], runs["single"], strict=False)
                    if b.requests]
    ratio = statistics.median(round_ratios) if round_ratios else None
    out["ratio"] = round(ratio, 3) if ratio is not None else None
    if len(round_ratios) > 1:
        out["round_ratios"] = [round(x, 3) for x in round_ratios]
        out["round_batch_events_per_s"] = [round(r.events_per_s, 1) for r in runs["batch"]]
    # What the ratio would be if the CPU were the only limit and all ours: the cost per
    # request of the baseline over the product's. Little moved by other load.
    b_cpu, s_cpu = cpu_per_request(base), cpu_per_request(single)
    ratio_cpu = b_cpu / s_cpu if b_cpu and s_cpu else None
    out["ratio_cpu"] = round(ratio_cpu, 3) if ratio_cpu is not None else None
    out["targets"] = {
        "ratio_min": SINGLE_TARGET_RATIO, "batch_events_per_s_min": BATCH_TARGET_EVENTS,
        "ratio_met": None if ratio is None else ratio >= SINGLE_TARGET_RATIO,
        "batch_met": None if batch is None else batch.events_per_s >= BATCH_TARGET_EVENTS,
    }
    if stored is not None:
        out["stored_check"] = {"accepted": accepted, "stored": stored, "ok": stored == accepted}

    c.log("")
    c.log("summary" + (f" ({args.rounds} rounds)" if args.rounds > 1 else ""))
    if base:
        c.log(f"  baseline  {base.requests_per_s:>10,.0f} req/s     "
              f"p50 {base.pct(50):6.2f} ms  p99 {base.pct(99):6.2f} ms")
    if single:
        c.log(f"  single    {single.events_per_s:>10,.0f} events/s  "
              f"p50 {single.pct(50):6.2f} ms  p99 {single.pct(99):6.2f} ms")
    if batch:
        c.log(f"  batch     {batch.events_per_s:>10,.0f} events/s  "
              f"p50 {batch.pct(50):6.2f} ms  p99 {batch.pct(99):6.2f} ms  "
              f"({batch.requests_per_s:,.0f} req/s of {args.batch_size})")
    others = [r.cpu.get("others", 0.0) for rs in runs.values() for r in rs]
    if others and max(others) > 0.2:
        c.log(f"  note: other processes used up to {max(others):.2f} of the cores meanwhile; "
              "absolute rates are depressed; see also ratio_cpu")
    if ratio is not None:
        verdict = "ok" if ratio >= SINGLE_TARGET_RATIO else "BELOW TARGET"
        c.log(f"  ratio single/baseline {ratio:.3f} (target >= {SINGLE_TARGET_RATIO}): {verdict}")
    if ratio_cpu is not None:
        c.log(f"  ratio_cpu {ratio_cpu:.3f}: baseline {b_cpu:.2f} ms CPU/request (server + "
              f"PostgreSQL + load generator) over single {s_cpu:.2f} ms")
    if batch:
        verdict = "ok" if batch.events_per_s >= BATCH_TARGET_EVENTS else "BELOW TARGET"
        c.log(f"  batch {batch.events_per_s:,.0f} events/s "
              f"(target >= {BATCH_TARGET_EVENTS:,}): {verdict}")
    if "stored_check" in out:
        chk = out["stored_check"]
        c.log(f"  stored events: {chk['stored']:,} of {chk['accepted']:,} accepted "
              f"({'ok' if chk['ok'] else 'MISMATCH'})")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with c.cleanup_scope() as cleanup:
            summary = run(args, cleanup)
    except KeyboardInterrupt:
        print("interrupted: servers and PostgreSQL stopped", file=sys.stderr, flush=True)
        return 130
    print(json.dumps(summary), flush=True)
    missed = [k for k in ("ratio_met", "batch_met") if summary["targets"][k] is False]
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
