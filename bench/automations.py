"""Automations benchmark: enrollments started from ingestion against bare Temporal starts.

    .venv/bin/python bench/automations.py --seconds 20

Starts its own stack: embedded PostgreSQL (temp dir, fresh database, migrations), a
Temporal dev server (core.devstack: its own SQLite file, WAL pragmas), the API
(`uvicorn api.app:create_app --factory --workers 2`), ONE product worker process (every
workflow and activity plus the outbox dispatcher) and an SMTP sink for the email
channel. Signs up over HTTP, points the email channel at the sink, creates --automations
K active automations with distinct trigger events, then runs, one after the other:

  bare      client.start_workflow of a trivial workflow, served by a worker in this
            process on its own task queue, with the dispatcher's concurrency (32)
  ingest    POST /events at full speed for --seconds (each event triggers exactly one
            of the K automations, distinct users): events/s accepted, enrollments
            started/s (rows in `enrollments`, written by the run's first local activity) and
            outbox rows dispatched/s while ingesting; then --seconds without ingestion
            (the dispatcher draining its backlog); outbox backlog and lag
  steady    (not in the defaults) POST /events for new users paced to the pipeline:
            a new trigger whenever fewer than --inflight runs triggered have not
            begun; enrollments started/s and events/s over --seconds
  complete  a one-step automation (SEND_EMAIL, inline copy, to the sink), fed
            closed-loop (--inflight runs outstanding): completed runs/s, mails/s
  sleep     --sleepers enrollments of [WAIT 1 day, SEND_EMAIL] through the batch
            endpoint: time until all are asleep in the WAIT, and the Temporal server's
            memory (VmRSS) and disk before and after

  ceiling   (bench/_temporal_ceiling.py) workflows of the enrollment's shape that do
            nothing: signal-with-start with memo and search attributes, one workflow
            task running one no-op local activity, then a 1-day timer; closed-loop,
            the dispatcher's concurrency, counted when the local activity ran: what
            Temporal alone allows a design with one workflow per enrollment; then the
            same without the local activity (`timer-only`)

ratio = enrollment starts/s while ingesting / bare starts/s (target >= 0.5); ratio_ceiling
= ceiling runs/s / bare starts/s bounds it. The last
line of output is one JSON object with every figure. Loopback only; every process and
temp dir is removed at exit, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import os.path
import sys

from temporalio import workflow

# Plain string operations: the workflow sandbox re-imports this module and refuses
# file-system calls (Path.resolve) at import time.
_BENCH = os.path.dirname(os.path.abspath(__file__))
for _p in (_BENCH, os.path.dirname(_BENCH)):  # bench helpers; the repo (tests.activities)
    if _p not in sys.path:
        sys.path.insert(0, _p)

with workflow.unsafe.imports_passed_through():
    import argparse
    import asyncio
    import importlib
    import itertools
    import json
    import os
    import shutil
    import tempfile
    import threading
    import time
    import uuid
    from collections.abc import Callable
    from dataclasses import dataclass, field
    from datetime import UTC, datetime
    from pathlib import Path
    from typing import Any

    import _common as c
    import _stack as st
    import _temporal_ceiling
    import httpx
    import ingest
    import orjson
    import psycopg

RATIO_TARGET = 0.5
PHASES = ("bare", "bare-sws", "ingest", "steady", "complete", "sleep", "ceiling")
DEFAULT_PHASES = "bare,ingest,complete,sleep,ceiling"
SLEEP_SECONDS = 86_400  # the sleepers' WAIT: one day


# --- the baseline's trivial workflow: module level, no import-time side effects, so the
# workflow sandbox can re-import this module (main() only runs under the __main__ guard).


@workflow.defn(name="BenchBareWorkflow")
class BareWorkflow:
    @workflow.signal
    def event(self, payload: Any) -> None:
        pass

    @workflow.run
    async def run(self, n: int) -> int:
        return n


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seconds", type=float, default=10, help="measured seconds per phase")
    p.add_argument("--warmup", type=float, default=2, help="unmeasured seconds before each")
    p.add_argument("--automations", type=int, default=5, help="K active automations (ingest)")
    p.add_argument("--sleepers", type=int, default=10_000,
                   help="enrollments left sleeping in a WAIT (sleep phase)")
    p.add_argument("--sleepers-timeout", type=float, default=2400,
                   help="give up waiting for the sleepers after this many seconds")
    p.add_argument("--inflight", type=int, default=64,
                   help="complete phase: runs outstanding (triggered, not ended) at most")
    p.add_argument("--concurrency", type=int, default=0,
                   help="bare phase: concurrent start_workflow calls (0: the dispatcher's)")
    p.add_argument("--workers", type=int, default=2, help="uvicorn workers")
    p.add_argument("--pool-size", type=int, default=10, help="DB pool per API worker")
    p.add_argument("--connections", type=int, default=64,
                   help="ingest phase: concurrent keep-alive connections")
    p.add_argument("--max-event-rate", type=float, default=4000,
                   help="ingest phase: distinct pre-built events for this many events/s "
                   "(beyond that, users repeat and some events signal instead of start)")
    p.add_argument("--phases", default=DEFAULT_PHASES,
                   help=f"comma-separated subset of {','.join(PHASES)} (bare-sws: bare "
                   "signal-with-start with memo and search attributes, as the dispatcher)")
    p.add_argument("--py-spy", type=Path, metavar="DIR",
                   help="record the product worker with py-spy during the ingest, drain "
                   "and complete windows (DIR/PHASE-PID.txt, raw collapsed stacks)")
    p.add_argument("--product-dir", type=Path, default=c.REPO,
                   help="serve the API and the worker from this source tree (e.g. a patched "
                   "copy), to measure a change before it lands")
    p.add_argument("--no-pyc", action="store_true",
                   help="run the product without a bytecode cache, as PYTHONDONTWRITEBYTECODE=1 "
                   "does on a source checkout: the workflow sandbox then compiles the "
                   "workflow modules for every run (default: a cache in the temp dir, like "
                   "the Docker image's pip-compiled site-packages)")
    p.add_argument("--keep-logs", type=Path, metavar="DIR",
                   help="write the servers' logs here and keep them (default: a temp dir)")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                   help="before each phase, wait up to S seconds for the machine to go idle")
    p.add_argument("--strict", action="store_true", help="exit 1 when the ratio is missed")
    args = p.parse_args(argv)
    args.phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        p.error(f"unknown phases: {', '.join(sorted(unknown))}")
    if args.automations < 1 or args.sleepers < 1 or args.inflight < 1:
        p.error("--automations, --sleepers and --inflight must be >= 1")
    return args


# --- the product over HTTP ---


@dataclass
class Stack:
    db: c.Database
    temporal: st.Temporal
    api: c.Server
    worker: c.Server
    sink: Any  # tests.activities.fakes.SmtpSink
    keys: dict[str, str]
    cpu_groups: dict[str, Callable[[], list[int]]] = field(default_factory=dict)

    @property
    def v1(self) -> str:
        return self.api.base + "/api/v1"


def create_automation(stack: Stack, name: str, trigger: str,
                      steps: list[dict[str, Any]]) -> str:
    r = httpx.post(stack.v1 + "/automations", headers={"x-api-key": stack.keys["secret"]},
                   json={"name": name, "triggerType": "EVENT", "triggerEvent": trigger,
                         "active": True, "steps": steps}, timeout=30)
    if r.status_code != 201:
        raise RuntimeError(f"creating automation {name!r} failed: {r.status_code} {r.text}")
    return str(r.json()["id"])


def mail_step() -> dict[str, Any]:
    return {"type": "SEND_EMAIL", "subject": "Bench", "body": "<p>Hello from the bench</p>"}


def wall(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def db_one(url: str, sql: str, params: Any = None) -> Any:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchone()


# --- outbox / enrollment sampler (a thread: run_phase blocks the main one) ---


@dataclass
class Sample:
    at: float  # time.time()
    dispatched: int  # outbox rows deleted (by the dispatcher) since the sampler started
    backlog: int  # outbox rows present
    oldest_s: float  # age of the oldest outbox row
    enrollments: int  # enrollment rows of the watched automations
    waits: dict[str, int]  # what the active client backends wait on (wait event: count)


class Sampler(threading.Thread):
    """Every `interval`: the outbox backlog and its oldest row, rows the dispatcher deleted
    (pg_stat_user_tables, flushed by PostgreSQL about once a second), enrollment rows, and
    the wait events of the active client backends (where ingestion spends its time)."""

    def __init__(self, db_url: str, automation_ids: list[str], interval: float = 0.25):
        super().__init__(daemon=True, name="outbox-sampler")
        self.url = db_url
        self.ids = automation_ids
        self.interval = interval
        self.samples: list[Sample] = []
        self._halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        deleted = "SELECT n_tup_del FROM pg_stat_user_tables WHERE relname = 'outbox'"
        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                start = conn.execute(deleted).fetchone()[0]
                while not self._halt.is_set():
                    row = conn.execute(
                        f"SELECT ({deleted}), (SELECT count(*) FROM outbox), "
                        "(SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0) "
                        " FROM outbox), "
                        "(SELECT count(*) FROM enrollments WHERE automation_id = ANY(%s)), "
                        "(SELECT coalesce(jsonb_object_agg(w, n), '{}') FROM ("
                        "  SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') AS w,"
                        "         count(*) AS n FROM pg_stat_activity"
                        "  WHERE backend_type = 'client backend' AND state = 'active'"
                        "    AND pid <> pg_backend_pid() GROUP BY 1) AS x)",
                        (self.ids,)).fetchone()
                    self.samples.append(Sample(time.time(), row[0] - start, row[1],
                                               float(row[2]), row[3], row[4]))
                    self._halt.wait(self.interval)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def stop(self) -> None:
        self._halt.set()
        self.join(10)
        if self.error is not None:
            raise RuntimeError(f"sampler failed: {self.error!r}")

    def at(self, ts: float) -> Sample:
        """The sample nearest to wall time `ts`."""
        return min(self.samples, key=lambda s: abs(s.at - ts))

    def between(self, a: float, b: float) -> list[Sample]:
        return [s for s in self.samples if a <= s.at <= b]


# --- phase: bare start_workflow (and signal-with-start) against the same server ---


async def bare_phase(stack: Stack, args: argparse.Namespace, concurrency: int,
                     with_signal: bool) -> dict[str, Any]:
    from temporalio.client import Client
    from temporalio.common import (
        SearchAttributeKey,
        SearchAttributePair,
        TypedSearchAttributes,
        WorkflowIDReusePolicy,
    )
    from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
    from temporalio.worker import Worker
    from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

    # The class as defined in the importable module `automations` (not `__main__`), so
    # the sandbox can re-import its definition.
    bare = importlib.import_module("automations").BareWorkflow
    # The SDK core warns about every slow workflow task on stderr: only errors here.
    quiet = Runtime(telemetry=TelemetryConfig(logging=LoggingConfig(
        filter=TelemetryFilter(core_level="ERROR", other_level="ERROR"))))
    client = await Client.connect(stack.temporal.address, runtime=quiet)
    queue = f"bench-bare-{uuid.uuid4().hex[:8]}"
    run_tag = uuid.uuid4().hex[:8]
    search = TypedSearchAttributes([
        SearchAttributePair(SearchAttributeKey.for_keyword(k), f"bench-{k}")
        for k in ("projectId", "automationId", "userId")])
    meter = st.CpuMeter({**stack.cpu_groups, "bench": lambda: [os.getpid()]})
    ok = errors = 0
    latencies: list[float] = []
    samples: list[str] = []
    last: list[Any] = []
    # The sandbox re-imports a workflow's module for every run; this one is the whole
    # bench script, so it is passed through: the baseline worker costs next to nothing.
    runner = SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules("automations"))
    async with Worker(client, task_queue=queue, workflows=[bare], workflow_runner=runner):
        t_start = time.monotonic() + 0.2
        t0 = t_start + args.warmup
        t1 = t0 + args.seconds

        async def caller(k: int) -> None:
            nonlocal ok, errors
            handle = None
            for i in itertools.count():
                s = time.monotonic()
                if s >= t1:
                    break
                wid = f"bare:{run_tag}:{k}:{i}"
                try:
                    if with_signal:
                        handle = await client.start_workflow(
                            bare.run, i, id=wid, task_queue=queue,
                            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                            start_signal="event", start_signal_args=[{"eventId": wid}],
                            memo={"automation": "bench", "userId": wid},
                            search_attributes=search)
                    else:
                        handle = await client.start_workflow(bare.run, i, id=wid,
                                                             task_queue=queue)
                    good, what = True, ""
                except Exception as exc:
                    good, what = False, repr(exc)[:200]
                e = time.monotonic()
                if s >= t0 and e <= t1:
                    if good:
                        ok += 1
                        latencies.append((e - s) * 1000)
                    else:
                        errors += 1
                        if len(samples) < 5:
                            samples.append(what)
            if handle is not None:
                last.append(handle)

        async def metering() -> None:
            await asyncio.sleep(max(0.0, t0 - time.monotonic()))
            meter.start()
            await asyncio.sleep(max(0.0, t1 - time.monotonic()))
            cpu.update(meter.stop())

        cpu: dict[str, float] = {}
        await asyncio.sleep(max(0.0, t_start - time.monotonic()))
        await asyncio.gather(metering(), *(caller(k) for k in range(concurrency)))
        # Let the worker finish what was started, so the next phase has the machine.
        for handle in last:
            try:
                await asyncio.wait_for(handle.result(), 60)
            except Exception:
                break
    latencies.sort()
    return {"starts_per_s": ok / args.seconds, "errors": errors, "error_samples": samples,
            "p50_ms": c.percentile(latencies, 50), "p99_ms": c.percentile(latencies, 99),
            "concurrency": concurrency, "cpu": cpu}


# --- phase: enrollments from ingestion ---


def ingest_phase(stack: Stack, args: argparse.Namespace, cleanup: c.Cleanup,
                 triggers: list[str], automation_ids: list[str]) -> dict[str, Any]:
    # One load-generator process: connection k walks the bodies from k*len/connections,
    # so with enough distinct bodies no user repeats (every event starts a new run).
    n_bodies = max(8192, int(args.max_event_rate * (args.seconds + args.warmup) * 1.25))
    tag = uuid.uuid4().hex[:6]
    bodies = [orjson.dumps({"userId": f"in-{tag}-{i:07d}",
                            "eventName": triggers[i % len(triggers)]})
              for i in range(n_bodies)]
    load = c.make_load(c.HOST, stack.api.port, "/api/v1/events",
                       {"x-api-key": stack.keys["public"]}, bodies, 1)
    del bodies
    sampler = Sampler(stack.db.url, automation_ids)
    sampler.start()
    spy = (args.py_spy, stack.worker.pids()[:1]) if args.py_spy else None
    try:
        result = c.run_phase("ingest", load, seconds=args.seconds, warmup=args.warmup,
                             connections=args.connections, procs=1, client="raw",
                             cpu_groups=stack.cpu_groups, cleanup=cleanup, profile=spy)
        # Every request has been answered (so its event and outbox row are committed).
        ingest_end = time.time()
        # The drain window: as long again, nothing ingested, the dispatcher on its backlog.
        meter = st.CpuMeter(stack.cpu_groups)
        meter.start()
        spies = c.start_py_spy("drain", spy, args.seconds) if spy else []
        time.sleep(args.seconds + 1.2)  # + the statistics' flush interval
        drain_cpu = meter.stop()
        for proc in spies:
            proc.wait(30)
    finally:
        sampler.stop()
    drain_end = ingest_end + args.seconds
    first, n_events, n_users = db_one(
        stack.db.url,
        "SELECT extract(epoch FROM min(received_at)), count(*), count(DISTINCT user_id) "
        "FROM events WHERE event_name = ANY(%s)", (triggers,))
    first = float(first)
    starts_in, starts_drain = db_one(
        stack.db.url,
        "SELECT count(*) FILTER (WHERE started_at <= to_timestamp(%s)), "
        "count(*) FILTER (WHERE started_at > to_timestamp(%s)) FROM enrollments "
        "WHERE automation_id = ANY(%s) AND started_at >= to_timestamp(%s) "
        "AND started_at <= to_timestamp(%s)",
        (ingest_end, ingest_end, automation_ids, first, drain_end))
    ingest_s = max(1e-6, ingest_end - first)
    window = [x for x in sampler.samples if first <= x.at <= drain_end]
    during = [x for x in window if x.at <= ingest_end]
    # Deletions are counted when the dispatcher's session reports its statistics (about
    # once a second), so take the rows deleted by each window's end plus a second.
    dispatched_in = deleted_by(sampler, ingest_end + 1.0) - deleted_by(sampler, first)
    dispatched_drain = deleted_by(sampler, drain_end + 1.0) - deleted_by(sampler, ingest_end + 1.0)
    waits: dict[str, int] = {}
    for x in during:
        for k, v in x.waits.items():
            waits[k] = waits.get(k, 0) + v
    backlog_end = min(window, key=lambda x: abs(x.at - drain_end)).backlog if window else 0
    # Leave nothing behind for the next phases: drop the undispatched rows, then wait
    # until the runs Temporal already has have begun (their enrollment rows exist).
    with psycopg.connect(stack.db.url, autocommit=True) as conn:
        conn.execute("DELETE FROM outbox")
    begun = settle(stack.db.url, automation_ids, quiet=3.0, timeout=120)
    total_waits = max(1, sum(waits.values()))
    return {
        "result": result, "events": n_events, "distinct_users": n_users,
        "ingest_seconds": ingest_s,
        "enrollment_starts_per_s": starts_in / ingest_s,
        "dispatched_per_s": dispatched_in / ingest_s,
        "drain_enrollment_starts_per_s": starts_drain / args.seconds,
        "drain_dispatched_per_s": dispatched_drain / args.seconds,
        "outbox_max_backlog": max((x.backlog for x in window), default=0),
        "outbox_max_lag_s": max((x.oldest_s for x in window), default=0.0),
        "outbox_left_undispatched": backlog_end,
        "ingest_db_waits": {k: round(v / total_waits, 3)
                            for k, v in sorted(waits.items(), key=lambda kv: -kv[1])[:6]},
        "ingest_db_active_backends": sum(waits.values()) / max(1, len(during)),
        "enrollments_begun": begun, "drain_cpu": drain_cpu,
    }


def deleted_by(sampler: Sampler, ts: float) -> int:
    """Outbox rows deleted by wall time `ts` (the last sample at or before it)."""
    before = [x for x in sampler.samples if x.at <= ts]
    return before[-1].dispatched if before else 0


def settle(db_url: str, automation_ids: list[str], quiet: float, timeout: float) -> int:
    """Enrollment rows of those automations once their count stopped growing for `quiet` s."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    with psycopg.connect(db_url, autocommit=True) as conn:
        while True:
            n = conn.execute("SELECT count(*) FROM enrollments WHERE automation_id = ANY(%s)",
                             (automation_ids,)).fetchone()[0]
            now = time.monotonic()
            if n != last:
                last, since = n, now
            if now - since >= quiet or now >= deadline:
                return int(n)
            time.sleep(0.25)


# --- phase: one-step sends completed ---


async def complete_phase(stack: Stack, args: argparse.Namespace,
                         automation_id: str, trigger: str) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    sent = done = 0
    stop = asyncio.Event()
    counter = itertools.count()
    errors: list[str] = []
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    async with httpx.AsyncClient(base_url=stack.v1, limits=limits, timeout=60,
                                 headers={"x-api-key": stack.keys["public"]}) as http, \
            await psycopg.AsyncConnection.connect(stack.db.url, autocommit=True) as conn:

        async def monitor() -> None:
            nonlocal done
            while True:
                cur = await conn.execute(
                    "SELECT count(*) FROM enrollments WHERE automation_id = %s "
                    "AND ended_at IS NOT NULL", (automation_id,))
                done = (await cur.fetchone())[0]
                await asyncio.sleep(0.1)

        async def feeder() -> None:
            nonlocal sent
            while not stop.is_set():
                if sent - done >= args.inflight:
                    await asyncio.sleep(0.02)
                    continue
                i = next(counter)
                user = f"cp-{tag}-{i:07d}"
                sent += 1
                r1 = await http.post("/identify", json={"userId": user,
                                                         "email": f"{user}@example.com"})
                r2 = await http.post("/events", json={"userId": user, "eventName": trigger})
                for r in (r1, r2):
                    if not r.is_success and len(errors) < 5:
                        errors.append(f"{r.request.url.path} {r.status_code}: {r.text[:200]}")
                if not r2.is_success:
                    sent -= 1

        watch = asyncio.create_task(monitor())
        feeders = [asyncio.create_task(feeder()) for _ in range(8)]
        spies: list[Any] = []
        try:
            # A run takes seconds end to end: measure once the pipeline has turned over
            # (as many runs completed as are kept outstanding), after the warm-up.
            filled = time.monotonic() + 120
            while done < args.inflight and time.monotonic() < filled:
                await asyncio.sleep(0.2)
            await asyncio.sleep(args.warmup)
            t0, mails0 = time.time(), len(stack.sink.messages)
            meter = st.CpuMeter(stack.cpu_groups)
            meter.start()
            if args.py_spy:
                spies = c.start_py_spy("complete", (args.py_spy, stack.worker.pids()[:1]),
                                       args.seconds)
            await asyncio.sleep(args.seconds)
            t1, mails1 = time.time(), len(stack.sink.messages)
            cpu = meter.stop()
            stop.set()
            await asyncio.gather(*feeders)
            deadline = time.monotonic() + 120
            while done < sent and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
        finally:
            stop.set()
            for task in [watch, *feeders]:
                task.cancel()
            await asyncio.gather(watch, *feeders, return_exceptions=True)
            for proc in spies:
                proc.wait(30)
        cur = await conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'completed' AND ended_at >= %s "
            "  AND ended_at <= %s), "
            "count(*) FILTER (WHERE status NOT IN ('completed', 'running')), "
            "percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM ended_at - "
            "  started_at)) FILTER (WHERE ended_at >= %s AND ended_at <= %s) "
            "FROM enrollments WHERE automation_id = %s",
            (wall(t0), wall(t1), wall(t0), wall(t1), automation_id))
        completed, not_completed, run_p50 = await cur.fetchone()
    seconds = t1 - t0
    return {"completed_per_s": completed / seconds, "mails_per_s": (mails1 - mails0) / seconds,
            "triggered": sent, "ended": done, "not_completed": not_completed,
            "run_p50_s": float(run_p50) if run_p50 is not None else None,
            "errors": errors, "cpu": cpu}


# --- phase: enrollments from paced ingestion ---


async def steady_phase(stack: Stack, args: argparse.Namespace,
                       automation_id: str, trigger: str) -> dict[str, Any]:
    """Trigger events for new users, one POST /events each, whenever fewer than
    --inflight of them have not begun their run yet: ingestion paced to what the
    pipeline absorbs (closed loop), so the rate measured is the pipeline's."""
    tag = uuid.uuid4().hex[:6]
    sent = begun = 0
    stop = asyncio.Event()
    counter = itertools.count()
    errors: list[str] = []
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    async with httpx.AsyncClient(base_url=stack.v1, limits=limits, timeout=60,
                                 headers={"x-api-key": stack.keys["public"]}) as http, \
            await psycopg.AsyncConnection.connect(stack.db.url, autocommit=True) as conn:

        async def monitor() -> None:
            nonlocal begun
            while True:
                cur = await conn.execute(
                    "SELECT count(*) FROM enrollments WHERE automation_id = %s",
                    (automation_id,))
                begun = (await cur.fetchone())[0]
                await asyncio.sleep(0.1)

        async def feeder() -> None:
            nonlocal sent
            while not stop.is_set():
                if sent - begun >= args.inflight:
                    await asyncio.sleep(0.02)
                    continue
                sent += 1
                user = f"st-{tag}-{next(counter):07d}"
                r = await http.post("/events", json={"userId": user, "eventName": trigger})
                if not r.is_success:
                    sent -= 1
                    if len(errors) < 5:
                        errors.append(f"{r.status_code}: {r.text[:200]}")

        watch = asyncio.create_task(monitor())
        feeders = [asyncio.create_task(feeder()) for _ in range(8)]
        try:
            await asyncio.sleep(args.warmup + 2)
            t0, begun0, sent0 = time.monotonic(), begun, sent
            meter = st.CpuMeter(stack.cpu_groups)
            meter.start()
            await asyncio.sleep(args.seconds)
            t1, begun1, sent1 = time.monotonic(), begun, sent
            cpu = meter.stop()
        finally:
            stop.set()
            for task in [watch, *feeders]:
                task.cancel()
            await asyncio.gather(watch, *feeders, return_exceptions=True)
    seconds = t1 - t0
    return {"begun_per_s": (begun1 - begun0) / seconds,
            "events_per_s": (sent1 - sent0) / seconds, "errors": errors, "cpu": cpu}


# --- phase: sleepers ---


async def sleep_phase(stack: Stack, args: argparse.Namespace,
                      automation_id: str, trigger: str) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    users = [f"sl-{tag}-{i:07d}" for i in range(args.sleepers)]
    batches = [users[i:i + 100] for i in range(0, len(users), 100)]
    await asyncio.sleep(1)
    rss_before, disk_before = stack.temporal.rss_mb(), stack.temporal.disk_mb()
    errors: list[str] = []
    meter = st.CpuMeter(stack.cpu_groups)
    meter.start()
    t_first = time.monotonic()
    async with httpx.AsyncClient(base_url=stack.v1, timeout=120,
                                 headers={"x-api-key": stack.keys["public"]}) as http:
        queue = list(reversed(batches))

        async def sender() -> None:
            while queue:
                batch = queue.pop()
                r = await http.post("/events/batch", json={"events": [
                    {"userId": u, "eventName": trigger} for u in batch]})
                if r.status_code != 202 and len(errors) < 5:
                    errors.append(f"{r.status_code}: {r.text[:200]}")

        await asyncio.gather(*(sender() for _ in range(4)))
    ingested_s = time.monotonic() - t_first
    asleep = 0
    deadline = t_first + args.sleepers_timeout
    last_report = time.monotonic()
    async with await psycopg.AsyncConnection.connect(stack.db.url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            # Asleep: the run began and recorded that it entered the WAIT (then its timer).
            cur = await conn.execute(
                "SELECT count(*) FROM enrollments WHERE automation_id = %s "
                "AND status = 'running' AND current_step LIKE 'steps[0]%%'", (automation_id,))
            asleep = (await cur.fetchone())[0]
            if asleep >= args.sleepers:
                break
            if time.monotonic() - last_report >= 15:
                c.log(f"  … {asleep:,} of {args.sleepers:,} asleep after "
                      f"{time.monotonic() - t_first:.0f} s")
                last_report = time.monotonic()
            await asyncio.sleep(0.25)
    all_s = time.monotonic() - t_first
    cpu = meter.stop()
    await asyncio.sleep(3)  # let the server settle before reading its memory
    rss_after, disk_after = stack.temporal.rss_mb(), stack.temporal.disk_mb()
    n = max(1, asleep)
    return {"sleepers": args.sleepers, "asleep": asleep, "complete": asleep >= args.sleepers,
            "ingest_seconds": ingested_s, "seconds": all_s, "per_s": asleep / all_s,
            "rss_mb_before": rss_before, "rss_mb_after": rss_after,
            "rss_kb_per_sleeper": (rss_after - rss_before) * 1024 / n,
            "disk_mb_before": disk_before, "disk_mb_after": disk_after,
            "disk_kb_per_sleeper": (disk_after - disk_before) * 1024 / n,
            "errors": errors, "cpu": cpu}


# --- main ---


def start_stack(args: argparse.Namespace, cleanup: c.Cleanup, tmp: Path,
                log_dir: Path) -> Stack:
    from tests.activities.fakes import SmtpSink

    c.log("starting PostgreSQL (embedded, fresh DB)…")
    db = c.start_database(cleanup)
    c.log("starting the Temporal dev server…")
    temporal = st.start_temporal(cleanup, tmp / "temporal")
    sink = SmtpSink()
    cleanup.push("SMTP sink", sink.stop)
    sink.start()
    env = {**ingest.product_env(db.url, args.pool_size),
           "TEMPORAL_ADDRESS": temporal.address, "RETENSHUN_MESSAGE_WAIT_SECONDS": "5",
           "TEMPORAL_UI_URL": "http://127.0.0.1:1"}
    if not args.no_pyc:
        env.update({"PYTHONDONTWRITEBYTECODE": "", "PYTHONPYCACHEPREFIX": str(tmp / "pycache")})
    c.log(f"API: uvicorn api.app:create_app --workers {args.workers}; one worker process…")
    api = st.start_uvicorn(cleanup, "api", "api.app:create_app", env, args.workers, log_dir,
                           ready_path="/api/v1/events", app_dir=args.product_dir,
                           cwd=args.product_dir)
    worker = st.start_worker(cleanup, env, log_dir, cwd=args.product_dir)
    keys = ingest.signup(api.base)
    r = httpx.put(api.base + "/api/v1/channels", headers={"x-api-key": keys["secret"]},
                  json={"emailProvider": "SMTP", "smtpHost": c.HOST, "smtpPort": sink.port,
                        "smtpFromEmail": "bench@example.com"}, timeout=30)
    if not r.is_success:
        raise RuntimeError(f"configuring the email channel failed: {r.status_code} {r.text}")
    stack = Stack(db, temporal, api, worker, sink, keys)
    stack.cpu_groups = {"api": api.pids, "worker": worker.pids, "temporal": temporal.pids,
                        "postgres": lambda: c.postgres_pids(db.postmaster_pid)}
    return stack


def settle_machine(args: argparse.Namespace) -> None:
    """--wait-quiet: on a shared machine, wait (bounded) for other processes to go idle."""
    if args.wait_quiet > 0:
        busy = c.wait_for_quiet(args.wait_quiet, 0.3)
        if busy >= 0.3:
            c.log(f"  (machine still busy: {busy:.2f} cores in use; measuring anyway)")


def cpu_text(cpu: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())


def run(args: argparse.Namespace, cleanup: c.Cleanup) -> dict[str, Any]:
    from workflows.dispatcher import CONCURRENCY

    tmp = Path(tempfile.mkdtemp(prefix="retenshun-bench-auto-"))
    cleanup.push("temp dir", lambda: shutil.rmtree(tmp, ignore_errors=True))
    log_dir = args.keep_logs or tmp / "logs"
    stack = start_stack(args, cleanup, tmp, log_dir)
    concurrency = args.concurrency or CONCURRENCY
    out: dict[str, Any] = {
        "bench": "automations", "seconds": args.seconds, "warmup": args.warmup,
        "automations": args.automations, "sleepers": args.sleepers,
        "inflight": args.inflight, "connections": args.connections,
        "bare_concurrency": concurrency, "dispatcher_concurrency": CONCURRENCY,
        "phases": args.phases,
    }

    bare = sws = None
    if "bare" in args.phases:
        settle_machine(args)
        c.log(f"bare: start_workflow of a trivial workflow, {concurrency} concurrent…")
        bare = asyncio.run(bare_phase(stack, args, concurrency, with_signal=False))
        c.log(f"  bare      {bare['starts_per_s']:>8,.1f} starts/s   p50 {bare['p50_ms']:.1f} ms"
              f"  p99 {bare['p99_ms']:.1f} ms  ({bare['errors']} errors)")
        c.log(f"            CPU cores: {cpu_text(bare['cpu'])}")
        out.update({"bare_starts_per_s": round(bare["starts_per_s"], 1),
                    "bare_p50_ms": round(bare["p50_ms"], 2),
                    "bare_p99_ms": round(bare["p99_ms"], 2), "bare_errors": bare["errors"],
                    "bare_cpu_cores": rounded(bare["cpu"])})
    if "bare-sws" in args.phases:
        settle_machine(args)
        c.log("bare-sws: signal-with-start + memo + 3 search attributes (as the dispatcher)…")
        sws = asyncio.run(bare_phase(stack, args, concurrency, with_signal=True))
        c.log(f"  bare-sws  {sws['starts_per_s']:>8,.1f} starts/s   p50 {sws['p50_ms']:.1f} ms"
              f"  p99 {sws['p99_ms']:.1f} ms  ({sws['errors']} errors)")
        c.log(f"            CPU cores: {cpu_text(sws['cpu'])}")
        out.update({"bare_sws_starts_per_s": round(sws["starts_per_s"], 1),
                    "bare_sws_p50_ms": round(sws["p50_ms"], 2),
                    "bare_sws_errors": sws["errors"],
                    "bare_sws_cpu_cores": rounded(sws["cpu"])})

    ing = None
    if "ingest" in args.phases:
        triggers = [f"bench_trigger_{k}" for k in range(args.automations)]
        ids = [create_automation(stack, f"Bench {k}", t,
                                 [{"type": "WAIT", "delay": SLEEP_SECONDS}, mail_step()])
               for k, t in enumerate(triggers)]
        settle_machine(args)
        c.log(f"ingest: POST /events at full speed, {args.automations} automations, "
              "then as long again draining…")
        ing = ingest_phase(stack, args, cleanup, triggers, ids)
        r: c.PhaseResult = ing["result"]
        c.log(f"  ingest    {r.events_per_s:>8,.0f} events/s accepted  p50 {r.pct(50):.1f} ms"
              f"  p99 {r.pct(99):.1f} ms  ({r.errors} errors)")
        c.log(f"            {ing['enrollment_starts_per_s']:>8,.1f} enrollments started/s, "
              f"{ing['dispatched_per_s']:,.1f} outbox rows dispatched/s while ingesting "
              f"({ing['ingest_seconds']:.1f} s)")
        c.log(f"            CPU cores: {cpu_text(r.cpu)}")
        c.log(f"  drain     {ing['drain_enrollment_starts_per_s']:>8,.1f} enrollments started/s, "
              f"{ing['drain_dispatched_per_s']:,.1f} dispatched/s with ingestion stopped")
        c.log(f"            CPU cores: {cpu_text(ing['drain_cpu'])}")
        waits = ", ".join(f"{k} {v:.0%}" for k, v in ing["ingest_db_waits"].items())
        c.log(f"  ingest DB {ing['ingest_db_active_backends']:.1f} active client backends on "
              f"average; waiting on: {waits}")
        c.log(f"  outbox    max backlog {ing['outbox_max_backlog']:,} rows, oldest row "
              f"{ing['outbox_max_lag_s']:.1f} s; {ing['outbox_left_undispatched']:,} left "
              f"undispatched (dropped); {ing['enrollments_begun']:,} runs begun in all")
        if ing["distinct_users"] != ing["events"]:
            c.log(f"  note: {ing['events'] - ing['distinct_users']:,} events repeated a user "
                  "(raise --max-event-rate): those signal a running enrollment")
        out.update({
            "ingest_events_per_s": round(r.events_per_s, 1), "ingest_errors": r.errors,
            "ingest_p50_ms": round(r.pct(50), 2), "ingest_p99_ms": round(r.pct(99), 2),
            "ingest_cpu_cores": rounded(r.cpu), "ingest_events": ing["events"],
            "ingest_repeated_users": ing["events"] - ing["distinct_users"],
            "enrollment_starts_per_s": round(ing["enrollment_starts_per_s"], 1),
            "dispatched_per_s": round(ing["dispatched_per_s"], 1),
            "drain_enrollment_starts_per_s": round(ing["drain_enrollment_starts_per_s"], 1),
            "drain_dispatched_per_s": round(ing["drain_dispatched_per_s"], 1),
            "drain_cpu_cores": rounded(ing["drain_cpu"]),
            "outbox_max_backlog": ing["outbox_max_backlog"],
            "outbox_max_lag_s": round(ing["outbox_max_lag_s"], 2),
            "outbox_left_undispatched": ing["outbox_left_undispatched"],
            "ingest_db_waits": ing["ingest_db_waits"],
            "ingest_db_active_backends": round(ing["ingest_db_active_backends"], 2),
        })

    if "steady" in args.phases:
        aid = create_automation(stack, "Bench steady", "bench_steady",
                                [{"type": "WAIT", "delay": SLEEP_SECONDS}, mail_step()])
        settle_machine(args)
        c.log(f"steady: POST /events paced to the pipeline ({args.inflight} triggered runs "
              "not begun at most), [WAIT 1 day, SEND_EMAIL]…")
        std = asyncio.run(steady_phase(stack, args, aid, "bench_steady"))
        c.log(f"  steady    {std['begun_per_s']:>8,.1f} enrollments started/s while "
              f"ingesting {std['events_per_s']:,.1f} events/s")
        c.log(f"            CPU cores: {cpu_text(std['cpu'])}")
        for e in std["errors"]:
            c.log(f"            error sample: {e}")
        out.update({"steady_enrollment_starts_per_s": round(std["begun_per_s"], 1),
                    "steady_events_per_s": round(std["events_per_s"], 1),
                    "steady_cpu_cores": rounded(std["cpu"]),
                    "ratio_steady": (round(std["begun_per_s"] / bare["starts_per_s"], 3)
                                     if bare and bare["starts_per_s"] else None)})

    comp = None
    if "complete" in args.phases:
        aid = create_automation(stack, "Bench send", "bench_send", [mail_step()])
        settle_machine(args)
        c.log(f"complete: one-step SEND_EMAIL runs, {args.inflight} outstanding at most…")
        comp = asyncio.run(complete_phase(stack, args, aid, "bench_send"))
        c.log(f"  complete  {comp['completed_per_s']:>8,.1f} runs completed/s, "
              f"{comp['mails_per_s']:,.1f} mails received/s (median run "
              f"{comp['run_p50_s'] or 0:.2f} s; {comp['not_completed']} ended otherwise)")
        c.log(f"            CPU cores: {cpu_text(comp['cpu'])}")
        for e in comp["errors"]:
            c.log(f"            error sample: {e}")
        out.update({"completed_runs_per_s": round(comp["completed_per_s"], 1),
                    "mails_per_s": round(comp["mails_per_s"], 1),
                    "complete_run_p50_s": none_or(comp["run_p50_s"], 3),
                    "complete_not_completed": comp["not_completed"],
                    "complete_cpu_cores": rounded(comp["cpu"])})

    slp = None
    if "sleep" in args.phases:
        aid = create_automation(stack, "Bench sleep", "bench_sleep",
                                [{"type": "WAIT", "delay": SLEEP_SECONDS}, mail_step()])
        settle_machine(args)
        c.log(f"sleep: {args.sleepers:,} enrollments into a 1-day WAIT via /events/batch…")
        slp = asyncio.run(sleep_phase(stack, args, aid, "bench_sleep"))
        c.log(f"  sleep     {slp['asleep']:,} asleep in {slp['seconds']:.1f} s "
              f"({slp['per_s']:,.1f}/s; events ingested in {slp['ingest_seconds']:.1f} s)"
              + ("" if slp["complete"] else "  INCOMPLETE (--sleepers-timeout)"))
        c.log(f"            Temporal RSS {slp['rss_mb_before']:,.0f} -> "
              f"{slp['rss_mb_after']:,.0f} MB ({slp['rss_kb_per_sleeper']:.1f} KB each); "
              f"disk {slp['disk_mb_before']:,.0f} -> {slp['disk_mb_after']:,.0f} MB "
              f"({slp['disk_kb_per_sleeper']:.1f} KB each)")
        c.log(f"            CPU cores: {cpu_text(slp['cpu'])}")
        out.update({"sleepers_asleep": slp["asleep"],
                    "sleepers_seconds": round(slp["seconds"], 1),
                    "sleepers_per_s": round(slp["per_s"], 1),
                    "sleepers_ingest_seconds": round(slp["ingest_seconds"], 2),
                    "temporal_rss_mb_before": round(slp["rss_mb_before"], 1),
                    "temporal_rss_mb_after": round(slp["rss_mb_after"], 1),
                    "temporal_rss_kb_per_sleeper": round(slp["rss_kb_per_sleeper"], 2),
                    "temporal_disk_mb_before": round(slp["disk_mb_before"], 1),
                    "temporal_disk_mb_after": round(slp["disk_mb_after"], 1),
                    "temporal_disk_kb_per_sleeper": round(slp["disk_kb_per_sleeper"], 2),
                    "sleep_cpu_cores": rounded(slp["cpu"])})

    ceiling = None
    if "ceiling" in args.phases:
        for shape, what in (("enrollment", "one local activity that does nothing"),
                            ("timer-only", "no activity")):
            settle_machine(args)
            c.log(f"ceiling ({shape}): signal-with-start + memo + search attributes, {what}, "
                  f"a 1-day timer; {concurrency} closed-loop callers…")
            result = asyncio.run(_temporal_ceiling.ceiling_phase(
                stack.temporal.address, args.seconds, args.warmup, concurrency,
                stack.cpu_groups, shape=shape))
            c.log(f"  ceiling   {result['workflows_per_s']:>8,.1f} runs begun/s   p50 "
                  f"{result['p50_ms']:.1f} ms  p99 {result['p99_ms']:.1f} ms  "
                  f"({result['errors']} errors)")
            c.log(f"            CPU cores: {cpu_text(result['cpu'])}")
            for e in result["error_samples"]:
                c.log(f"            error sample: {e}")
            key = "ceiling" if shape == "enrollment" else "ceiling_timer_only"
            out.update({f"{key}_runs_per_s": round(result["workflows_per_s"], 1),
                        f"{key}_p50_ms": round(result["p50_ms"], 2),
                        f"{key}_errors": result["errors"],
                        f"{key}_cpu_cores": rounded(result["cpu"])})
            if shape == "enrollment":
                ceiling = result
            else:
                out["ratio_ceiling_timer_only"] = (
                    round(result["workflows_per_s"] / bare["starts_per_s"], 3)
                    if bare and bare["starts_per_s"] else None)

    return summarise(out, bare, sws, ing, comp, slp, ceiling)


def summarise(out: dict[str, Any], bare: dict[str, Any] | None, sws: dict[str, Any] | None,
              ing: dict[str, Any] | None, comp: dict[str, Any] | None,
              slp: dict[str, Any] | None, ceiling: dict[str, Any] | None = None,
              ) -> dict[str, Any]:
    base = bare["starts_per_s"] if bare and bare["starts_per_s"] else None

    def over(x: float | None) -> float | None:
        return None if x is None or base is None else round(x / base, 3)

    ratio = over(ing["enrollment_starts_per_s"]) if ing else None
    out["ratio"] = ratio
    out["ratio_drain"] = over(ing["drain_enrollment_starts_per_s"]) if ing else None
    out["ratio_dispatched"] = over(ing["dispatched_per_s"]) if ing else None
    out["ratio_drain_dispatched"] = over(ing["drain_dispatched_per_s"]) if ing else None
    out["ratio_completed"] = over(comp["completed_per_s"]) if comp else None
    out["ratio_sleepers"] = over(slp["per_s"]) if slp else None
    out["ratio_bare_sws"] = over(sws["starts_per_s"]) if sws else None
    out["ratio_ceiling"] = over(ceiling["workflows_per_s"]) if ceiling else None
    # CPU per unit of work (ms of CPU per start / run / event): steadier than the rates
    # on a shared machine. Bare: the Temporal server plus this process (callers and the
    # bare worker). Enrollment phases: the product worker, the Temporal server and
    # PostgreSQL. Ingest: the API per accepted event.
    per: dict[str, float | None] = {
        "bare_start": ms_per(bare and bare["cpu"], bare and bare["starts_per_s"],
                             ("temporal", "bench", "worker")),
        "drain_enrollment": ms_per(ing and ing["drain_cpu"],
                                   ing and ing["drain_enrollment_starts_per_s"], PRODUCT),
        "sleeper": ms_per(slp and slp["cpu"], slp and slp["per_s"], PRODUCT),
        "completed_run": ms_per(comp and comp["cpu"], comp and comp["completed_per_s"],
                                PRODUCT),
        "ingested_event_api": ms_per(ing and ing["result"].cpu,
                                     ing and ing["result"].events_per_s, ("api",)),
    }
    out["cpu_ms_per"] = {k: None if v is None else round(v, 1) for k, v in per.items()}
    # What the ratio would be on an otherwise idle CPU-bound machine: a bare start's CPU
    # over an enrollment's (a sleeper's run to its WAIT + the API's cost of its event).
    if per["bare_start"] and per["sleeper"]:
        out["ratio_cpu"] = round(per["bare_start"] / (per["sleeper"]
                                                      + (per["ingested_event_api"] or 0)), 3)
    out["targets"] = {"ratio_min": RATIO_TARGET,
                      "ratio_met": None if ratio is None else ratio >= RATIO_TARGET}
    c.log("")
    c.log("summary (÷ bare start_workflow starts/s"
          + (f" = {base:,.1f})" if base else ", not measured)"))
    rows = [("enrollments started/s while ingesting", "ratio"),
            ("enrollments started/s draining (no ingestion)", "ratio_drain"),
            ("enrollments started/s, ingestion paced (steady)", "ratio_steady"),
            ("outbox rows dispatched/s while ingesting", "ratio_dispatched"),
            ("outbox rows dispatched/s draining", "ratio_drain_dispatched"),
            ("one-step runs completed/s", "ratio_completed"),
            ("sleepers asleep/s", "ratio_sleepers"),
            ("bare signal-with-start + memo + search attributes", "ratio_bare_sws"),
            ("ceiling: enrollment-shaped runs doing nothing", "ratio_ceiling"),
            ("ceiling: the same without the local activity", "ratio_ceiling_timer_only")]
    for label, key in rows:
        if out.get(key) is not None:
            c.log(f"  {label:<50} {out[key]:.3f}")
    cpu_text_per = ", ".join(f"{k.replace('_', ' ')} {v:.1f}"
                             for k, v in out["cpu_ms_per"].items() if v is not None)
    if cpu_text_per:
        c.log(f"  CPU ms per unit: {cpu_text_per}")
    if out.get("ratio_cpu") is not None:
        c.log(f"  ratio_cpu {out['ratio_cpu']:.3f} (bare start CPU / (sleeper + its event's "
              "API) CPU: the ratio on an idle CPU-bound machine)")
    if ratio is not None:
        verdict = "ok" if ratio >= RATIO_TARGET else "BELOW TARGET"
        c.log(f"  ratio {ratio:.3f} (target >= {RATIO_TARGET}): {verdict}")
    others = [v.get("others", 0.0) for v in (
        bare and bare["cpu"], ing and ing["result"].cpu, ing and ing["drain_cpu"],
        comp and comp["cpu"]) if v]
    if others and max(others) > 0.3:
        c.log(f"  note: other processes used up to {max(others):.2f} cores meanwhile; "
              "absolute figures are low, ratios are the figures to trust")
    return out


PRODUCT = ("worker", "temporal", "postgres")


def ms_per(cpu: dict[str, float] | bool | None, rate: float | bool | None,
           parts: tuple[str, ...]) -> float | None:
    """CPU milliseconds per unit: the parts' cores divided by the rate (units/s)."""
    if not isinstance(cpu, dict) or not rate:
        return None
    return 1000 * sum(cpu.get(p, 0.0) for p in parts) / float(rate)


def rounded(cpu: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in cpu.items()}


def none_or(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with c.cleanup_scope() as cleanup:
            summary = run(args, cleanup)
    except KeyboardInterrupt:
        print("interrupted: every process stopped, temp dirs removed", file=sys.stderr,
              flush=True)
        return 130
    print(json.dumps(summary), flush=True)
    return 1 if args.strict and summary["targets"]["ratio_met"] is False else 0


if __name__ == "__main__":
    sys.exit(main())
