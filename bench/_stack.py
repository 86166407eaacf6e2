"""More of the local stack for benchmarks that need Temporal: the dev server, the product's
worker as a process, memory of a process tree. Like bench/_common.py, everything started
here is registered with a `Cleanup` before it starts, so an interrupt still stops it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import _common as c
import psutil


def tree_pids(pid: int | None) -> list[int]:
    """A process and all its descendants (empty when it is gone)."""
    if pid is None:
        return []
    try:
        root = psutil.Process(pid)
        return [root.pid] + [p.pid for p in root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def vm_rss_kb(pid: int) -> int:
    """VmRSS of one process from /proc/<pid>/status, in KiB (0 when it is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def tree_rss_mb(pid: int | None) -> float:
    return sum(vm_rss_kb(p) for p in tree_pids(pid)) / 1024


@dataclass
class Temporal:
    proc: subprocess.Popen[bytes]
    address: str
    db_file: Path
    log_path: Path

    def pids(self) -> list[int]:
        return tree_pids(self.proc.pid)

    def rss_mb(self) -> float:
        return tree_rss_mb(self.proc.pid)

    def disk_mb(self) -> float:
        """The SQLite state: the database file and its WAL."""
        files = [self.db_file, Path(f"{self.db_file}-wal"), Path(f"{self.db_file}-shm")]
        return sum(f.stat().st_size for f in files if f.exists()) / 2**20


def start_temporal(cleanup: c.Cleanup, folder: Path) -> Temporal:
    """`temporal server start-dev` (core.devstack: WAL pragmas, search attributes,
    headless) with its own SQLite file in `folder`, on a free loopback port."""
    from core.devstack import start_temporal_dev_server, stop_process

    port = c.free_port()
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / "temporal.log"
    holder: list[subprocess.Popen[bytes]] = []
    cleanup.push("Temporal dev server", lambda: [stop_process(p) for p in holder])
    proc = start_temporal_dev_server(folder / "temporal.db", port, None, log_path)
    holder.append(proc)
    return Temporal(proc, f"{c.HOST}:{port}", folder / "temporal.db", log_path)


def start_worker(cleanup: c.Cleanup, env: dict[str, str], log_dir: Path,
                 name: str = "worker", cwd: Path = c.REPO, timeout: float = 180) -> c.Server:
    """One product worker process (`python -c "import worker; worker.main()"`): every
    workflow and activity, and the outbox dispatcher. Ready once it logs that it serves
    its task queue. SIGTERM (Server.stop) shuts it down gracefully."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import worker; worker.main()"],
            cwd=cwd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=c._die_with_parent,
        )
    server = c.Server(name, proc, 0, log_path)
    cleanup.push(f"{name} process", server.stop)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{server.log_tail()}")
        if "worker serving task queue" in log_path.read_text(errors="replace"):
            return server
        time.sleep(0.1)
    raise RuntimeError(f"{name} not serving within {timeout:.0f} s:\n{server.log_tail()}")


class CpuMeter:
    """CPU cores used by named process groups over a window, plus `others` (the rest of
    the machine), with bench/_common.py's helpers."""

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups

    def start(self) -> None:
        self._t = time.monotonic()
        self._busy = c.system_busy()
        self._before = {g: c.cpu_snapshot(f()) for g, f in self.groups.items()}

    def stop(self) -> dict[str, float]:
        seconds = max(1e-6, time.monotonic() - self._t)
        after = {g: c.cpu_snapshot(f()) for g, f in self.groups.items()}
        busy = c.system_busy() - self._busy
        cpu = {g: c.cpu_delta(self._before[g], after[g]) / seconds for g in self.groups}
        cpu["others"] = max(0.0, busy / seconds - sum(cpu.values()))
        return cpu


def start_uvicorn(cleanup: c.Cleanup, name: str, app: str, env: dict[str, str], workers: int,
                  log_dir: Path, ready_path: str, app_dir: Path, cwd: Path,
                  timeout: float = 180) -> c.Server:
    """bench/_common.start_uvicorn with a longer start-up allowance (`timeout`): on a
    shared, busy machine two workers importing the app can take more than a minute."""
    import httpx

    port = c.free_port()
    cmd = [sys.executable, "-m", "uvicorn", app, "--factory", "--workers", str(workers),
           "--host", c.HOST, "--port", str(port), "--log-level", "warning", "--no-access-log",
           "--app-dir", str(app_dir)]
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=c._die_with_parent,
        )
    server = c.Server(name, proc, port, log_path)
    cleanup.push(f"{name} server", server.stop)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{server.log_tail()}")
        try:
            httpx.get(server.base + ready_path, timeout=5)
            return server
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError(f"{name} did not answer within {timeout:.0f} s:\n{server.log_tail()}")
