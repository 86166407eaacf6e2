"""Send benchmark: POST /api/v1/messages to an SMTP catcher against bare aiosmtplib sends.

    .venv/bin/python bench/send.py --seconds 20

Starts its own stack: embedded PostgreSQL (temp dir, fresh database, migrations), a
Temporal dev server (core.devstack: its own SQLite file, WAL pragmas), the API
(`uvicorn api.app:create_app --factory --workers 2`), --worker-procs product worker
processes (`python -c "import worker; worker.main()"`, one by default) and an SMTP
catcher (aiosmtpd Controller, uvloop) in a process of its own that only counts what it
receives. Signs up over HTTP, creates a secret key, identifies --users users with an
email each and points the email channel at the catcher. Then, one after the other:

  baseline  --concurrency tasks in this process, each building the product's email
            (activities/providers/smtp.py build_email: same headers, same size) and
            sending it with aiosmtplib.send, one connection per message, like the
            provider, to the same catcher: mails received/s
  product   --concurrency closed-loop clients POSTing /api/v1/messages (EMAIL, inline
            subject + HTML body, a different user each): mails received by the catcher
            per second in the window, the POST latency (it waits up to
            RETENSHUN_MESSAGE_WAIT_SECONDS for the send) and how many answered `sent`;
            afterwards every created message must end `sent` (GET /messages?status=sent)
            with exactly one mail caught each
  ceiling   (bench/_temporal_ceiling.py; skip with --no-ceiling) --concurrency callers
            start a workflow of the send's shape (one workflow task, one local activity
            that does nothing) against the same Temporal server, served by a worker in
            this process: completed workflows/s, what Temporal alone allows

each with --warmup unmeasured seconds then --seconds measured ones. ratio = product
mails/s ÷ baseline mails/s (target >= 0.4); ceiling_ratio = ceiling workflows/s ÷
baseline mails/s bounds the ratio of any design with one workflow per message. The
last line of output is one JSON object with every figure. Loopback only; every process
and temp dir is removed at exit, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import itertools
import json
import multiprocessing as mp
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c
import _stack as st
import _temporal_ceiling
import ingest

RATIO_TARGET = 0.4
FROM_EMAIL = "Retenshun Bench <bench@example.com>"
SUBJECT = "Your weekly summary is ready"
# About 1.6 KB of HTML (a small newsletter-like mail), static: the product renders it as
# a template without variables, so both sides send the very same subject and body.
BODY = (
    "<html><body style=\"font-family: sans-serif\">"
    "<h1>Your weekly summary</h1>"
    "<p>Hello, here is what happened in your account this week. You opened "
    "<b>12 reports</b>, shared <b>3 dashboards</b> and invited <b>2 teammates</b>.</p>"
    + "".join(
        f"<h2>Section {k}</h2><p>Lorem ipsum dolor sit amet, consectetur adipiscing elit, "
        f"sed do eiusmod tempor incididunt ut labore et dolore magna aliqua. "
        f"<a href=\"https://example.com/s/{k}\">Read more</a></p>"
        for k in range(1, 7)
    )
    + "<p>See you next week,<br>The Bench team</p></body></html>"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seconds", type=float, default=10, help="measured seconds per phase")
    p.add_argument("--warmup", type=float, default=3, help="unmeasured seconds before each")
    p.add_argument("--concurrency", type=int, default=32,
                   help="concurrent clients (product POSTs, baseline sends)")
    p.add_argument("--users", type=int, default=1000, help="identified users (cycled)")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat baseline+product; the ratio is the median per round")
    p.add_argument("--workers", type=int, default=2, help="uvicorn workers")
    p.add_argument("--worker-procs", type=int, default=1,
                   help="product worker processes (Temporal workers)")
    p.add_argument("--pool-size", type=int, default=10, help="DB pool per process")
    p.add_argument("--wait-seconds", type=float, default=None,
                   help="RETENSHUN_MESSAGE_WAIT_SECONDS for the API (default: the product's)")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                   help="before each phase, wait up to this long for other processes to "
                   "leave the CPU idle (a shared machine skews absolute figures)")
    p.add_argument("--drain-timeout", type=float, default=300,
                   help="after the product phase, wait this long at most for every "
                   "message to be sent")
    p.add_argument("--product-dir", type=Path, default=c.REPO,
                   help="serve the API and worker from this source tree (e.g. a patched copy)")
    p.add_argument("--py-spy", type=Path, metavar="DIR",
                   help="record the product worker(s) and API workers with py-spy during "
                   "each product window (DIR/PHASE-PID.txt, raw collapsed stacks)")
    p.add_argument("--keep-logs", type=Path, metavar="DIR",
                   help="write the servers' logs here and keep them (default: a temp dir)")
    p.add_argument("--no-ceiling", action="store_true",
                   help="skip the Temporal ceiling phase (bench/_temporal_ceiling.py)")
    p.add_argument("--strict", action="store_true", help="exit 1 when the ratio is missed")
    args = p.parse_args(argv)
    if args.concurrency < 1 or args.rounds < 1 or args.worker_procs < 1:
        p.error("--concurrency, --rounds and --worker-procs must be >= 1")
    if args.users <= args.concurrency:
        p.error("--users must exceed --concurrency (concurrent sends go to distinct users)")
    return args


# --- the SMTP catcher: its own process, counts messages and bytes ---


def _catcher_main(port: int, count: Any, size: Any, pipe: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    c._die_with_parent()
    from aiosmtpd.controller import Controller

    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()

    class Counting:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            data = envelope.original_content or envelope.content or b""
            size.value += len(data)
            count.value += 1  # after size: a reader seeing the count sees its bytes
            return "250 2.0.0 OK"

    controller = Controller(Counting(), hostname=c.HOST, port=port, loop=loop,
                            server_hostname="catcher.bench", ready_timeout=20,
                            decode_data=False, enable_SMTPUTF8=True)
    controller.start()
    pipe.send("ready")
    with contextlib.suppress(EOFError, OSError):
        pipe.recv()
    controller.stop()


@dataclass
class Catcher:
    proc: Any
    pipe: Any
    port: int
    _count: Any
    _size: Any

    @property
    def count(self) -> int:
        return int(self._count.value)

    @property
    def bytes(self) -> int:
        return int(self._size.value)

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc.is_alive() else []

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.pipe.send("stop")
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


def start_catcher(cleanup: c.Cleanup) -> Catcher:
    ctx = mp.get_context("spawn")
    count = ctx.RawValue(ctypes.c_longlong, 0)
    size = ctx.RawValue(ctypes.c_longlong, 0)
    port = c.free_port()
    parent_end, child_end = ctx.Pipe()
    proc = ctx.Process(target=_catcher_main, args=(port, count, size, child_end),
                       daemon=True, name="smtp-catcher")
    catcher = Catcher(proc, parent_end, port, count, size)
    cleanup.push("SMTP catcher", catcher.stop)
    proc.start()
    child_end.close()
    if not parent_end.poll(60) or parent_end.recv() != "ready":
        raise RuntimeError("the SMTP catcher did not start")
    return catcher


# --- the stack ---


@dataclass
class Stack:
    db: c.Database
    temporal: st.Temporal
    api: c.Server
    workers: list[c.Server]
    catcher: Catcher
    keys: dict[str, str]
    users: list[tuple[str, str]]  # (userId, email)
    cpu_groups: dict[str, Callable[[], list[int]]] = field(default_factory=dict)

    @property
    def v1(self) -> str:
        return self.api.base + "/api/v1"


def start_stack(args: argparse.Namespace, cleanup: c.Cleanup, tmp: Path,
                log_dir: Path) -> Stack:
    c.log("starting PostgreSQL (embedded, fresh DB)…")
    db = c.start_database(cleanup)
    c.log("starting the Temporal dev server…")
    temporal = st.start_temporal(cleanup, tmp / "temporal")
    catcher = start_catcher(cleanup)
    env = {**ingest.product_env(db.url, args.pool_size),
           "TEMPORAL_ADDRESS": temporal.address, "TEMPORAL_UI_URL": "http://127.0.0.1:1"}
    if args.wait_seconds is not None:
        env["RETENSHUN_MESSAGE_WAIT_SECONDS"] = str(args.wait_seconds)
    c.log(f"API: uvicorn api.app:create_app --workers {args.workers}; "
          f"{args.worker_procs} worker process(es); SMTP catcher on :{catcher.port}…")
    api = c.start_uvicorn(cleanup, "api", "api.app:create_app", env, args.workers, log_dir,
                          ready_path="/api/v1/events", cwd=args.product_dir)
    workers = [st.start_worker(cleanup, env, log_dir, name=f"worker{k}", cwd=args.product_dir)
               for k in range(args.worker_procs)]
    keys = ingest.signup(api.base)
    r = httpx.put(api.base + "/api/v1/channels", headers={"x-api-key": keys["secret"]},
                  json={"emailProvider": "SMTP", "smtpHost": c.HOST, "smtpPort": catcher.port,
                        "smtpFromEmail": FROM_EMAIL}, timeout=30)
    if not r.is_success:
        raise RuntimeError(f"configuring the email channel failed: {r.status_code} {r.text}")
    users = [(f"user-{i:05d}", f"user-{i:05d}@example.com") for i in range(args.users)]
    c.log(f"identifying {len(users):,} users…")
    asyncio.run(identify(api.base + "/api/v1", keys["secret"], users))
    stack = Stack(db, temporal, api, workers, catcher, keys, users)
    stack.cpu_groups = {
        "api": api.pids,
        "worker": lambda: [p for w in workers for p in w.pids()],
        "temporal": temporal.pids,
        "postgres": lambda: c.postgres_pids(db.postmaster_pid),
        "catcher": catcher.pids,
        "bench": lambda: [os.getpid()],
    }
    return stack


async def identify(v1: str, secret: str, users: list[tuple[str, str]]) -> None:
    todo = iter(users)
    async with httpx.AsyncClient(base_url=v1, headers={"x-api-key": secret},
                                 timeout=60) as http:

        async def one() -> None:
            for user, email in todo:
                r = await http.post("/identify", json={
                    "userId": user, "email": email, "properties": {"plan": "pro"}})
                if not r.is_success:
                    raise RuntimeError(f"identify {user} failed: {r.status_code} {r.text}")

        await asyncio.gather(*(one() for _ in range(16)))


# --- a measured window shared by both phases ---


@dataclass
class Window:
    seconds: float
    warmup: float
    t_start: float = 0.0
    t0: float = 0.0
    t1: float = 0.0
    mails0: int = 0
    mails1: int = 0
    bytes0: int = 0
    bytes1: int = 0
    wall0: float = 0.0
    wall1: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    ok: int = 0  # operations that succeeded (started and ended) inside the window
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)

    def schedule(self) -> None:
        self.t_start = time.monotonic() + 0.2
        self.t0 = self.t_start + self.warmup
        self.t1 = self.t0 + self.seconds

    def record(self, start: float, end: float, good: bool, what: str = "") -> None:
        if start < self.t0 or end > self.t1:
            return
        if good:
            self.ok += 1
            self.latencies_ms.append((end - start) * 1000)
        else:
            self.errors += 1
            if len(self.samples) < 5:
                self.samples.append(what)

    async def meter(self, stack: Stack, spy_pids: list[int] | None, spy_dir: Path | None,
                    name: str) -> None:
        """Catcher counts and CPU at t0 and t1 (and py-spy over the window)."""
        meter = st.CpuMeter(stack.cpu_groups)
        await asyncio.sleep(max(0.0, self.t0 - time.monotonic()))
        self.mails0, self.bytes0, self.wall0 = stack.catcher.count, stack.catcher.bytes, time.time()
        meter.start()
        spies = (c.start_py_spy(name, (spy_dir, spy_pids), self.seconds)
                 if spy_dir and spy_pids else [])
        await asyncio.sleep(max(0.0, self.t1 - time.monotonic()))
        self.mails1, self.bytes1, self.wall1 = stack.catcher.count, stack.catcher.bytes, time.time()
        self.cpu = meter.stop()
        for proc in spies:
            await asyncio.to_thread(proc.wait, 30)

    @property
    def mails(self) -> int:
        return self.mails1 - self.mails0

    @property
    def mails_per_s(self) -> float:
        return self.mails / self.seconds

    @property
    def mean_mail_bytes(self) -> float:
        return (self.bytes1 - self.bytes0) / max(1, self.mails)

    def pct(self, q: float) -> float:
        return c.percentile(sorted(self.latencies_ms), q)


# --- phase: baseline (aiosmtplib straight to the catcher) ---


async def baseline_phase(stack: Stack, args: argparse.Namespace) -> Window:
    import aiosmtplib

    from activities.providers.base import OutboundMessage
    from activities.providers.smtp import build_email
    from core.ids import new_id
    from core.rendering import html_to_text

    win = Window(args.seconds, args.warmup)
    counter = itertools.count()
    users = stack.users
    sender = FROM_EMAIL.split("<")[1].rstrip(">")

    async def client() -> None:
        while True:
            start = time.monotonic()
            if start >= win.t1:
                return
            user, email = users[next(counter) % len(users)]
            # What the send activity hands the provider, and what the provider does.
            outbound = OutboundMessage(
                message_id=new_id("msg"), project_id=stack.keys["project_id"], user_id=user,
                channel="EMAIL", to=email, subject=SUBJECT, body=BODY,
                text=html_to_text(BODY), transactional=True,
                user_properties={"plan": "pro"},
            )
            try:
                mail = build_email(outbound, FROM_EMAIL)
                await aiosmtplib.send(mail, sender=sender, recipients=[email],
                                      hostname=c.HOST, port=stack.catcher.port, timeout=10)
                win.record(start, time.monotonic(), True)
            except Exception as exc:
                win.record(start, time.monotonic(), False, repr(exc)[:200])

    win.schedule()
    await asyncio.sleep(max(0.0, win.t_start - time.monotonic()))
    await asyncio.gather(win.meter(stack, None, None, "baseline"),
                         *(client() for _ in range(args.concurrency)))
    return win


# --- phase: the product (POST /messages) ---


@dataclass
class ProductResult:
    win: Window
    created: int  # 201 answers, warm-up and tail included
    caught_in_phase: int = 0  # mails the catcher got from the first POST to the drain's end
    sent_total: int = 0  # GET /messages?status=sent total (cumulative over rounds)
    messages_total: int = 0  # GET /messages total (cumulative over rounds)
    drain_s: float = 0.0
    drained: bool = False
    db_timings: dict[str, float | None] = field(default_factory=dict)


async def product_phase(stack: Stack, args: argparse.Namespace, round_no: int) -> ProductResult:
    win = Window(args.seconds, args.warmup)
    counter = itertools.count(round_no * 7919)
    bodies = [orjson.dumps({"userId": u, "channel": "EMAIL", "subject": SUBJECT, "body": BODY})
              for u, _ in stack.users]
    created = 0
    limits = httpx.Limits(max_connections=args.concurrency,
                          max_keepalive_connections=args.concurrency)
    headers = {"x-api-key": stack.keys["secret"], "content-type": "application/json"}
    caught_before = stack.catcher.count
    async with httpx.AsyncClient(base_url=stack.v1, headers=headers, limits=limits,
                                 timeout=120) as http:

        async def client() -> None:
            nonlocal created
            while True:
                start = time.monotonic()
                if start >= win.t1:
                    return
                try:
                    r = await http.post("/messages", content=bodies[next(counter) % len(bodies)])
                except httpx.HTTPError as exc:
                    win.record(start, time.monotonic(), False, f"transport: {exc!r}"[:200])
                    continue
                end = time.monotonic()
                good = r.status_code == 201
                if good:
                    created += 1
                    if win.t0 <= start and end <= win.t1:
                        win.statuses[r.json()["status"]] += 1
                win.record(start, end, good, "" if good else f"{r.status_code}: {r.text[:200]}")

        spy = ([p for w in stack.workers for p in w.pids()[:1]] + stack.api.worker_pids()
               if args.py_spy else None)
        win.schedule()
        await asyncio.sleep(max(0.0, win.t_start - time.monotonic()))
        await asyncio.gather(win.meter(stack, spy, args.py_spy, f"product{round_no}"),
                             *(client() for _ in range(args.concurrency)))
        result = ProductResult(win, created)
        # Drain: every message created must be sent, with one mail each.
        t = time.monotonic()
        deadline = t + args.drain_timeout
        while True:
            r = await http.get("/messages", params={"status": "sent", "limit": 1})
            result.sent_total = int(r.json()["total"]) if r.is_success else -1
            r = await http.get("/messages", params={"limit": 1})
            result.messages_total = int(r.json()["total"]) if r.is_success else -1
            result.caught_in_phase = stack.catcher.count - caught_before
            if (result.sent_total == result.messages_total
                    and result.caught_in_phase >= created) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.25)
        await asyncio.sleep(0.5)  # a duplicate would arrive late
        result.caught_in_phase = stack.catcher.count - caught_before
        result.drain_s = time.monotonic() - t
        result.drained = (result.sent_total == result.messages_total
                          and result.caught_in_phase == created)
    result.db_timings = db_timings(stack.db.url, win.wall0, win.wall1)
    return result


def db_timings(url: str, wall0: float, wall1: float) -> dict[str, float | None]:
    """For messages created in the window: created -> sent (the row's timestamps: the
    API insert, then the send activity's update after the catcher accepted)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*), "
            " percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM sent_at - "
            "   created_at)), "
            " percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM sent_at - "
            "   created_at)) "
            "FROM messages WHERE created_at >= to_timestamp(%s) AND created_at <= "
            "to_timestamp(%s)", (wall0, wall1)).fetchone()
    n, p50, p99 = row
    return {"created_in_window": int(n),
            "created_to_sent_p50_ms": None if p50 is None else float(p50) * 1000,
            "created_to_sent_p99_ms": None if p99 is None else float(p99) * 1000}


# --- reporting ---


def cpu_text(cpu: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())


def rounded(cpu: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in cpu.items()}


def per_mail_ms(cpu: dict[str, float], mails_per_s: float) -> dict[str, float]:
    """CPU milliseconds per delivered mail by part: steadier than rates on a busy machine."""
    if mails_per_s <= 0:
        return {}
    return {k: round(v * 1000 / mails_per_s, 2) for k, v in cpu.items() if k != "others"}


def report_baseline(w: Window) -> None:
    c.log(f"  baseline  {w.mails_per_s:>8,.1f} mails/s received   ({w.ok:,} sends, "
          f"{w.errors} errors; mean mail {w.mean_mail_bytes:,.0f} bytes)")
    c.log(f"            send latency p50 {w.pct(50):.1f} ms  p99 {w.pct(99):.1f} ms")
    c.log(f"            CPU cores: {cpu_text(w.cpu)}")
    c.log(f"            CPU ms/mail: {cpu_text(per_mail_ms(w.cpu, w.mails_per_s))}")
    for s in w.samples:
        c.log(f"            error sample: {s}")


def report_product(p: ProductResult) -> None:
    w = p.win
    answers = ", ".join(f"{k} {v}" for k, v in sorted(w.statuses.items()))
    c.log(f"  product   {w.mails_per_s:>8,.1f} mails/s received   ({w.ok:,} POSTs answered "
          f"in the window: {answers or 'none'}; {w.errors} errors; mean mail "
          f"{w.mean_mail_bytes:,.0f} bytes)")
    c.log(f"            POST latency p50 {w.pct(50):.1f} ms  p99 {w.pct(99):.1f} ms; "
          f"created->sent p50 {fmt_ms(p.db_timings.get('created_to_sent_p50_ms'))} "
          f"p99 {fmt_ms(p.db_timings.get('created_to_sent_p99_ms'))}")
    c.log(f"            CPU cores: {cpu_text(w.cpu)}")
    c.log(f"            CPU ms/mail: {cpu_text(per_mail_ms(w.cpu, w.mails_per_s))}")
    verdict = "ok" if p.drained else "MISMATCH"
    c.log(f"            check: {p.created:,} created, {p.caught_in_phase:,} mails caught, "
          f"{p.sent_total:,}/{p.messages_total:,} messages `sent` in all, after "
          f"{p.drain_s:.1f} s of drain: {verdict}")
    for s in w.samples:
        c.log(f"            error sample: {s}")


def fmt_ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0f} ms"


def window_json(w: Window, prefix: str) -> dict[str, Any]:
    return {
        f"{prefix}_mails_per_s": round(w.mails_per_s, 1),
        f"{prefix}_mails": w.mails,
        f"{prefix}_p50_ms": round(w.pct(50), 2),
        f"{prefix}_p99_ms": round(w.pct(99), 2),
        f"{prefix}_ok": w.ok,
        f"{prefix}_errors": w.errors,
        f"{prefix}_mean_mail_bytes": round(w.mean_mail_bytes, 1),
        f"{prefix}_cpu_cores": rounded(w.cpu),
        f"{prefix}_cpu_ms_per_mail": per_mail_ms(w.cpu, w.mails_per_s),
    }


# --- main ---


def run(args: argparse.Namespace, cleanup: c.Cleanup) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="retenshun-bench-send-"))
    cleanup.push("temp dir", lambda: shutil.rmtree(tmp, ignore_errors=True))
    log_dir = args.keep_logs or tmp / "logs"
    stack = start_stack(args, cleanup, tmp, log_dir)
    rounds: list[tuple[Window, ProductResult]] = []
    for k in range(args.rounds):
        tag = f" (round {k + 1}/{args.rounds})" if args.rounds > 1 else ""
        c.log(f"baseline{tag}: build_email + aiosmtplib.send, {args.concurrency} concurrent, "
              "one connection per mail…")
        if args.wait_quiet:
            c.wait_for_quiet(args.wait_quiet)
        base = asyncio.run(baseline_phase(stack, args))
        report_baseline(base)
        c.log(f"product{tag}: POST /api/v1/messages, {args.concurrency} concurrent clients…")
        if args.wait_quiet:
            c.wait_for_quiet(args.wait_quiet)
        prod = asyncio.run(product_phase(stack, args, k))
        report_product(prod)
        rounds.append((base, prod))
    ratios = [p.win.mails_per_s / b.mails_per_s if b.mails_per_s else 0.0 for b, p in rounds]
    ratio = statistics.median(ratios)
    base, prod = rounds[-1] if len(rounds) == 1 else _median_round(rounds, ratios)
    ceiling: dict[str, Any] = {}
    if not args.no_ceiling:
        c.log(f"ceiling: workflows of the send's shape (1 workflow task, 1 local activity "
              f"that does nothing), {args.concurrency} closed-loop callers, same Temporal…")
        if args.wait_quiet:
            c.wait_for_quiet(args.wait_quiet)
        ceiling = asyncio.run(_temporal_ceiling.ceiling_phase(
            stack.temporal.address, args.seconds, args.warmup, args.concurrency,
            stack.cpu_groups))
        rate = ceiling["workflows_per_s"]
        c.log(f"  ceiling   {rate:>8,.1f} workflows/s   ({ceiling['errors']} errors; p50 "
              f"{ceiling['p50_ms']:.1f} ms, p99 {ceiling['p99_ms']:.1f} ms)")
        c.log(f"            CPU cores: {cpu_text(ceiling['cpu'])}")
        c.log(f"            CPU ms/workflow: {cpu_text(per_mail_ms(ceiling['cpu'], rate))}")
        for sample in ceiling["error_samples"]:
            c.log(f"            error sample: {sample}")
    out: dict[str, Any] = {
        "bench": "send", "product_dir": str(args.product_dir), "seconds": args.seconds,
        "warmup": args.warmup,
        "concurrency": args.concurrency, "users": args.users, "rounds": args.rounds,
        "api_workers": args.workers, "worker_procs": args.worker_procs,
        "message_wait_seconds": args.wait_seconds,
        **window_json(base, "baseline"),
        **window_json(prod.win, "product"),
        "product_answers": dict(prod.win.statuses),
        **{f"product_{k}": (None if v is None else round(v, 1))
           for k, v in prod.db_timings.items()},
        "product_created": sum(p.created for _, p in rounds),
        "product_mails_caught": sum(p.caught_in_phase for _, p in rounds),
        # Cumulative over the rounds: the last round's check.
        "messages_sent": rounds[-1][1].sent_total, "messages_total": rounds[-1][1].messages_total,
        "all_sent_once": all(p.drained for _, p in rounds),
        "drain_seconds": round(max(p.drain_s for _, p in rounds), 1),
        "ratio": round(ratio, 3),
        "targets": {"ratio_min": RATIO_TARGET, "ratio_met": ratio >= RATIO_TARGET},
    }
    if ceiling:
        out["ceiling_workflows_per_s"] = round(ceiling["workflows_per_s"], 1)
        out["ceiling_p50_ms"] = round(ceiling["p50_ms"], 2)
        out["ceiling_errors"] = ceiling["errors"]
        out["ceiling_cpu_cores"] = rounded(ceiling["cpu"])
        out["ceiling_cpu_ms_per_workflow"] = per_mail_ms(ceiling["cpu"],
                                                         ceiling["workflows_per_s"])
        out["ceiling_ratio"] = (round(ceiling["workflows_per_s"] / base.mails_per_s, 3)
                                if base.mails_per_s else None)
    if args.rounds > 1:
        out["round_ratios"] = [round(r, 3) for r in ratios]
        out["round_baseline_mails_per_s"] = [round(b.mails_per_s, 1) for b, _ in rounds]
        out["round_product_mails_per_s"] = [round(p.win.mails_per_s, 1) for _, p in rounds]
    c.log("")
    verdict = "ok" if ratio >= RATIO_TARGET else "BELOW TARGET"
    c.log(f"ratio = product mails/s ÷ baseline mails/s = {ratio:.3f} "
          f"(target >= {RATIO_TARGET}): {verdict}")
    if ceiling and out["ceiling_ratio"] is not None:
        c.log(f"ceiling_ratio = Temporal-only workflows/s ÷ baseline mails/s = "
              f"{out['ceiling_ratio']:.3f} (no design with one workflow per message can "
              "exceed it on this Temporal server)")
    others = max(max(b.cpu.get("others", 0.0), p.win.cpu.get("others", 0.0))
                 for b, p in rounds)
    if others > 0.3:
        c.log(f"note: other processes used up to {others:.2f} cores meanwhile; absolute "
              "figures are depressed, the ratio and CPU ms/mail are steadier")
    if not out["all_sent_once"]:
        c.log("CHECK FAILED: not every created message was sent exactly once (see above)")
    return out


def _median_round(rounds: list[tuple[Window, ProductResult]],
                  ratios: list[float]) -> tuple[Window, ProductResult]:
    """The round whose ratio is the median (the lower one for an even count)."""
    order = sorted(range(len(ratios)), key=ratios.__getitem__)
    return rounds[order[(len(order) - 1) // 2]]


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
    if not summary["all_sent_once"]:
        return 2
    return 1 if args.strict and not summary["targets"]["ratio_met"] else 0


if __name__ == "__main__":
    sys.exit(main())
