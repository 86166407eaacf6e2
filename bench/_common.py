"""Shared benchmark plumbing: the local stack (embedded PostgreSQL, uvicorn servers),
cleanup on any exit, CPU accounting, and a cheap multi-process HTTP load generator.

The load generator shares the machine's cores with the server under test, so it is
built to cost little: N OS processes, each an asyncio (uvloop) loop with many
keep-alive connections, sending pre-built HTTP/1.1 requests and parsing only the status
line and Content-Length. `client="httpx"` runs the same schedule through
httpx.AsyncClient instead, to show how much a heavier client distorts the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import math
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psutil

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
HOST = "127.0.0.1"


def log(msg: str) -> None:
    print(msg, flush=True)


# --- cleanup on every exit (normal, exception, Ctrl-C, SIGTERM/SIGHUP) ---


class Cleanup:
    """A LIFO of cleanup callbacks that run once, with SIGINT ignored while they run."""

    def __init__(self) -> None:
        self._stack: list[tuple[str, Callable[[], None]]] = []
        self._done = False

    def push(self, what: str, fn: Callable[[], None]) -> None:
        self._stack.append((what, fn))

    def run(self) -> None:
        if self._done:
            return
        self._done = True
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            while self._stack:
                what, fn = self._stack.pop()
                try:
                    fn()
                except Exception as exc:  # keep cleaning the rest
                    print(f"cleanup of {what} failed: {exc!r}", file=sys.stderr, flush=True)
        finally:
            signal.signal(signal.SIGINT, previous)


def _raise_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def cleanup_scope() -> Iterator[Cleanup]:
    """SIGTERM/SIGHUP become SystemExit (Ctrl-C is KeyboardInterrupt): `finally` always runs."""
    cleanup = Cleanup()
    old = {s: signal.signal(s, _raise_exit) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield cleanup
    finally:
        cleanup.run()
        for s, handler in old.items():
            signal.signal(s, handler)


# --- PostgreSQL ---


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@dataclass
class Database:
    server_url: str  # the maintenance database (postgres)
    url: str  # the fresh benchmark database
    postmaster_pid: int | None


def start_database(cleanup: Cleanup, name: str = "bench", migrate: bool = True) -> Database:
    """Embedded PostgreSQL in a temp dir, a fresh database, migrations applied."""
    import psycopg

    from core.devstack import start_embedded_postgres

    tmp = Path(tempfile.mkdtemp(prefix="retenshun-bench-"))
    cleanup.push("temp dir", lambda: shutil.rmtree(tmp, ignore_errors=True))
    data_dir = tmp / "pgdata"
    # Registered before starting: an interrupt during start-up must still stop it.
    cleanup.push("PostgreSQL", lambda: _stop_postgres(data_dir))
    embedded = start_embedded_postgres(data_dir)
    with psycopg.connect(embedded.url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = with_database(embedded.url, name)
    if migrate:
        from core import migrate as migrations

        migrations.upgrade(url)
    pid_file = data_dir / "postmaster.pid"
    pid = int(pid_file.read_text().splitlines()[0]) if pid_file.exists() else None
    return Database(server_url=embedded.url, url=url, postmaster_pid=pid)


def _stop_postgres(data_dir: Path) -> None:
    from core.devstack import EmbeddedPostgres

    EmbeddedPostgres(data_dir=data_dir, url="").stop()


# --- uvicorn servers ---


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if the bench dies (even by SIGKILL)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    stopped: bool = False

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    def pids(self) -> list[int]:
        try:
            root = psutil.Process(self.proc.pid)
            return [root.pid] + [c.pid for c in root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)  # its own group: supervisor + workers
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        # Workers outliving a killed supervisor are in the same group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def worker_pids(self) -> list[int]:
        """The processes serving requests (not the supervisor or its resource tracker)."""
        out = []
        for pid in self.pids()[1:]:
            with contextlib.suppress(psutil.Error):
                if "spawn_main" in " ".join(psutil.Process(pid).cmdline()):
                    out.append(pid)
        return out

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def start_uvicorn(
    cleanup: Cleanup, name: str, app: str, env: dict[str, str], workers: int,
    log_dir: Path, app_dir: Path | None = None, ready_path: str = "/",
    cwd: Path = REPO, timeout: float = 180,
) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", app, "--factory", "--workers", str(workers),
           "--host", HOST, "--port", str(port), "--log-level", "warning", "--no-access-log"]
    if app_dir is not None:
        cmd += ["--app-dir", str(app_dir)]
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_parent,
        )
    server = Server(name, proc, port, log_path)
    cleanup.push(f"{name} server", server.stop)
    _wait_http(server, ready_path, timeout=timeout)
    return server


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _wait_http(server: Server, path: str, timeout: float) -> None:
    """Until the app answers (any status) on `path`, i.e. a worker ran its lifespan."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with {server.proc.returncode}:\n{server.log_tail()}"
            )
        try:
            httpx.get(server.base + path, timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{server.name} did not answer within {timeout:.0f} s:\n{server.log_tail()}")


# --- CPU accounting ---


def cpu_snapshot(pids: Sequence[int]) -> dict[int, float]:
    out: dict[int, float] = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            out[pid] = t.user + t.system
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used between two snapshots (a process born in between counts in full)."""
    return sum(max(0.0, t - before.get(pid, 0.0)) for pid, t in after.items())


def system_busy() -> float:
    """CPU seconds all processes on the machine have used (all cores), for "others"."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def wait_for_quiet(max_wait: float, threshold: float = 0.3, sample: float = 1.0) -> float:
    """Until the machine's CPU use (cores, all processes) stays under `threshold` for one
    `sample`, at most `max_wait` seconds; returns the last reading. Call it while the
    bench's own processes are idle: on a shared machine, someone's test run halves the
    figures."""
    deadline = time.monotonic() + max_wait
    announced = False
    while True:
        before = system_busy()
        time.sleep(sample)
        busy = (system_busy() - before) / sample
        if busy < threshold or time.monotonic() >= deadline:
            return busy
        if not announced:
            log(f"  waiting for a quiet machine (other processes use {busy:.2f} cores)…")
            announced = True


def postgres_pids(postmaster_pid: int | None) -> list[int]:
    if postmaster_pid is None:
        return []
    try:
        root = psutil.Process(postmaster_pid)
        return [root.pid] + [c.pid for c in root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def start_py_spy(name: str, profile: tuple[Path, list[int]],
                 seconds: float) -> list[subprocess.Popen[bytes]]:
    """py-spy (if installed) on each server worker for the measured window: raw stacks
    (collapsed format) of GIL-holding samples in DIR/PHASE-PID.txt."""
    out_dir, pids = profile
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        log("  (py-spy not installed: pip install py-spy; no profile)")
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
             "--rate", "250", "--gil", "--nonblocking", "--format", "raw",
             "--output", str(out_dir / f"{name}-{pid}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for pid in pids
    ]


# --- load generation ---


@dataclass
class Load:
    """What one phase sends: requests are cycled, each carrying `events_per_request`."""

    host: str
    port: int
    requests: list[bytes]  # complete raw HTTP/1.1 requests (for the raw client)
    path: str
    headers: dict[str, str]
    bodies: list[bytes]  # the same requests' bodies (for the httpx client)
    events_per_request: int


def raw_request(host: str, port: int, path: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}",
             "Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def make_load(host: str, port: int, path: str, headers: dict[str, str],
              bodies: list[bytes], events_per_request: int) -> Load:
    return Load(host, port, [raw_request(host, port, path, headers, b) for b in bodies],
                path, headers, bodies, events_per_request)


@dataclass
class PhaseResult:
    name: str
    seconds: float
    requests: int  # 2xx completed inside the measured window
    errors: int  # non-2xx or transport errors inside the window
    events_per_request: int
    latencies_ms: list[float]
    total_ok_requests: int  # every 2xx, warm-up and tail included (for the storage check)
    error_samples: list[str]
    cpu: dict[str, float] = field(default_factory=dict)  # cores used per part

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds

    @property
    def events_per_s(self) -> float:
        return self.requests * self.events_per_request / self.seconds

    def pct(self, q: float) -> float:
        return percentile(self.latencies_ms, q)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (q in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


class _Window:
    __slots__ = ("errors", "lat", "ok", "samples", "t0", "t1", "total_ok")

    def __init__(self, t0: float, t1: float) -> None:
        self.t0, self.t1 = t0, t1
        self.ok = 0
        self.errors = 0
        self.total_ok = 0
        self.lat = array("d")
        self.samples: list[str] = []

    def record(self, start: float, end: float, good: bool, what: str = "") -> None:
        if good:
            self.total_ok += 1
        # By completion time: in steady state that counts exactly the window's throughput
        # (a start-and-end rule would drop ~connections requests at each edge).
        if not self.t0 <= end <= self.t1:
            return
        if good:
            self.ok += 1
            self.lat.append(end - start)
        else:
            self.errors += 1
            if len(self.samples) < 5:
                self.samples.append(what)


async def _raw_connection(load: Load, offset: int, win: _Window, t_stop: float) -> None:
    reqs = load.requests
    n = len(reqs)
    i = offset
    loop_time = time.monotonic
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    while True:
        if reader is None or writer is None:
            try:
                reader, writer = await asyncio.open_connection(load.host, load.port)
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError as exc:
                now = loop_time()
                win.record(now, now, False, f"connect: {exc!r}")
                if now >= t_stop:
                    return
                await asyncio.sleep(0.05)
                continue
        start = loop_time()
        if start >= t_stop:
            break
        writer.write(reqs[i % n])
        i += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            lower = head.lower()
            at = lower.find(b"content-length:")
            if at < 0:
                raise RuntimeError(f"no Content-Length in response: {head[:200]!r}")
            length = int(lower[at + 15 : lower.find(b"\r\n", at)])
            body = await reader.readexactly(length)
            end = loop_time()
            good = 200 <= status < 300
            win.record(start, end, good, "" if good else f"{status}: {body[:200]!r}")
            if b"connection: close" in lower:
                writer.close()
                reader = writer = None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                RuntimeError, ValueError) as exc:
            win.record(start, loop_time(), False, f"transport: {exc!r}")
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _httpx_connection(client: Any, load: Load, offset: int, win: _Window,
                            t_stop: float) -> None:
    import httpx

    url = f"http://{load.host}:{load.port}{load.path}"
    headers = {"content-type": "application/json", **load.headers}
    bodies = load.bodies
    n = len(bodies)
    i = offset
    while True:
        start = time.monotonic()
        if start >= t_stop:
            return
        body = bodies[i % n]
        i += 1
        try:
            r = await client.post(url, content=body, headers=headers)
            good = r.is_success
            win.record(start, time.monotonic(), good,
                       "" if good else f"{r.status_code}: {r.text[:200]}")
        except httpx.HTTPError as exc:
            win.record(start, time.monotonic(), False, f"transport: {exc!r}")


def _loadgen_main(load: Load, connections: int, client: str, seed: int, pipe: Any) -> None:
    """One load-generator process: connect, report ready, run the schedule sent back."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()

    async def main() -> dict[str, Any]:
        if client == "httpx":
            import httpx

            limits = httpx.Limits(max_connections=connections,
                                  max_keepalive_connections=connections)
            http = httpx.AsyncClient(limits=limits, timeout=60)
        pipe.send("ready")
        t_start, t0, t1 = await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
        win = _Window(t0, t1)
        await asyncio.sleep(max(0.0, t_start - time.monotonic()))
        step = max(1, len(load.requests) // max(1, connections))
        offsets = [seed * 7919 + k * step for k in range(connections)]
        if client == "httpx":
            async with http:
                await asyncio.gather(*(_httpx_connection(http, load, o, win, t1)
                                       for o in offsets))
        else:
            await asyncio.gather(*(_raw_connection(load, o, win, t1) for o in offsets))
        return {"ok": win.ok, "errors": win.errors, "total_ok": win.total_ok,
                "lat": win.lat.tobytes(), "samples": win.samples}

    result = asyncio.run(main())
    pipe.send(result)
    pipe.close()


def run_phase(
    name: str, load: Load, *, seconds: float, warmup: float, connections: int,
    procs: int, client: str, cpu_groups: dict[str, Callable[[], list[int]]],
    cleanup: Cleanup, profile: tuple[Path, list[int]] | None = None,
) -> PhaseResult:
    """Drive `load` with `connections` keep-alive connections spread over `procs`
    processes: `warmup` seconds unmeasured, then `seconds` measured."""
    ctx = mp.get_context("spawn")
    per_proc = [connections // procs + (1 if k < connections % procs else 0)
                for k in range(procs)]
    workers: list[tuple[Any, Any]] = []

    def stop_workers() -> None:
        for proc, _ in workers:
            if proc.is_alive():
                proc.terminate()
        for proc, _ in workers:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)

    cleanup.push(f"{name} load generators", stop_workers)
    for k, conns in enumerate(per_proc):
        if conns == 0:
            continue
        parent_end, child_end = ctx.Pipe()
        proc = ctx.Process(target=_loadgen_main, args=(load, conns, client, k, child_end),
                           daemon=True)
        proc.start()
        child_end.close()
        workers.append((proc, parent_end))
    for proc, pipe in workers:
        if not pipe.poll(60) or pipe.recv() != "ready":
            raise RuntimeError(f"load generator {proc.pid} did not start")
    t_start = time.monotonic() + 0.3
    t0 = t_start + warmup
    t1 = t0 + seconds
    for _, pipe in workers:
        pipe.send((t_start, t0, t1))
    groups = {**cpu_groups, "loadgen": lambda: [p.pid for p, _ in workers]}
    time.sleep(max(0.0, t0 - time.monotonic()))
    spies = start_py_spy(name, profile, seconds) if profile else []
    before = {g: cpu_snapshot(f()) for g, f in groups.items()}
    busy_before = system_busy()
    time.sleep(max(0.0, t1 - time.monotonic()))
    busy_after = system_busy()
    after = {g: cpu_snapshot(f()) for g, f in groups.items()}
    for spy in spies:
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()
    results = []
    for proc, pipe in workers:
        if not pipe.poll(seconds + warmup + 120):
            raise RuntimeError(f"load generator {proc.pid} did not report")
        results.append(pipe.recv())
    stop_workers()
    lat = array("d")
    for r in results:
        lat.frombytes(r["lat"])
    latencies = sorted(x * 1000 for x in lat)
    cpu = {g: cpu_delta(before[g], after[g]) / seconds for g in groups}
    # Everything else on the machine (other people's tests...): a noisy run shows here.
    cpu["others"] = max(0.0, (busy_after - busy_before) / seconds - sum(cpu.values()))
    return PhaseResult(
        name=name, seconds=seconds, requests=sum(r["ok"] for r in results),
        errors=sum(r["errors"] for r in results), events_per_request=load.events_per_request,
        latencies_ms=latencies, total_ok_requests=sum(r["total_ok"] for r in results),
        error_samples=[s for r in results for s in r["samples"]][:5], cpu=cpu,
    )
