"""`retenshun dev` as a user runs it: a real process tree, embedded PostgreSQL and Temporal,
stopped by signals. No DATABASE_URL / TEMPORAL_ADDRESS: everything is embedded."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
import uuid
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest

from core.devstack import free_port

RETENSHUN = Path(sys.executable).parent / "retenshun"
READY = "Retenshun is running"
# Settings that would make `dev` use outside servers or keys: the test wants none of them.
OUTSIDE = ("DATABASE_URL", "TEMPORAL_ADDRESS", "TEMPORAL_UI_URL", "RETENSHUN_SECRET_KEY",
           "RETENSHUN_ENV", "RETENSHUN_PUBLIC_URL", "RETENSHUN_DEV_MAIL_DIR")


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in OUTSIDE}


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, state) for every live process, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        table[int(entry.name)] = (int(fields[1]), fields[0])
    return table


def _descendants(pid: int) -> set[int]:
    table = _proc_table()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, (ppid, _) in table.items() if ppid in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    state = _proc_table().get(pid)
    return state is not None and state[1] != "Z"


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class Dev:
    """One `retenshun dev` process, its output collected line by line."""

    def __init__(self, data_dir: Path, cwd: Path) -> None:
        self.data_dir = data_dir
        self.port, self.temporal_port, self.ui_port, self.smtp_port = (
            free_port(), free_port(), free_port(), free_port())
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.proc = subprocess.Popen(
            [str(RETENSHUN), "dev", "--data-dir", str(data_dir), "--port", str(self.port),
             "--temporal-port", str(self.temporal_port), "--temporal-ui-port", str(self.ui_port),
             "--smtp-port", str(self.smtp_port)],
            cwd=cwd, env=_clean_env(), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if READY in line:
                self.ready.set()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"`retenshun dev` not ready (exit {self.proc.returncode}):\n"
                            + self.output)
        time.sleep(0.2)  # let the rest of the URL block arrive

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"`retenshun dev` did not exit within {timeout} s:\n{self.output}")

    def kill(self) -> None:
        """After a failure: nothing of this run may outlive the test."""
        for pid in _descendants(self.proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.kill()
        try:
            os.kill(self.postgres_pid(), signal.SIGINT)  # PostgreSQL's fast shutdown
        except (OSError, ValueError, IndexError):
            pass

    def postgres_pid(self) -> int:
        return int((self.data_dir / "pg" / "postmaster.pid").read_text().splitlines()[0])

    def assert_all_gone(self, children: set[int], pg_pid: int) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            left = [p for p in children | {pg_pid} if _alive(p)]
            if not left:
                break
            time.sleep(0.2)
        assert not left, {p: _cmdline(p) for p in left}
        for port in (self.port, self.temporal_port, self.ui_port, self.smtp_port):
            assert not _listening(port), f"port {port} still open"


def test_dev_runs_everything_stops_cleanly_and_keeps_data(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    dev = Dev(data_dir, tmp_path)
    try:
        dev.wait_ready()
        out = dev.output
        for url in (f"{dev.base}/api/v1", f"{dev.base}/docs", f"{dev.base}/dev/mail",
                    f"http://127.0.0.1:{dev.ui_port}", f"smtp://127.0.0.1:{dev.smtp_port}",
                    str(data_dir)):
            assert url in out, (url, out)

        health = httpx.get(f"{dev.base}/api/v1/healthz", timeout=10)
        assert health.status_code == 200, health.text
        assert httpx.get(f"{dev.base}/docs", timeout=10).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{dev.ui_port}/", timeout=10).status_code == 200

        email, password = f"dev-{uuid.uuid4().hex[:8]}@example.com", "correct horse battery"
        r = httpx.post(f"{dev.base}/api/v1/auth/signup", timeout=10,
                       json={"email": email, "password": password, "projectName": "Dev"})
        assert r.status_code == 201, r.text

        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = "app@example.com", "jo@example.com", "Caught!"
        msg.set_content("Hello from the test")
        with smtplib.SMTP("127.0.0.1", dev.smtp_port, timeout=10) as smtp:
            smtp.send_message(msg)
        mail = httpx.get(f"{dev.base}/dev/mail", timeout=10).json()
        assert [m["subject"] for m in mail["messages"]] == ["Caught!"]
        assert mail["messages"][0]["rcptTo"] == ["jo@example.com"]

        key_file = data_dir / "secret.key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        key = key_file.read_text()

        children, pg_pid = _descendants(dev.proc.pid), dev.postgres_pid()
        assert any("core.cli worker" in _cmdline(p) for p in children)
        assert any("uvicorn" in _cmdline(p) for p in children)
        started = time.monotonic()
        dev.proc.send_signal(signal.SIGTERM)
        assert dev.wait_exit(40) == 0, dev.output
        assert time.monotonic() - started < 40
        assert "Stopped." in dev.output
        assert "Traceback" not in dev.output, dev.output
        dev.assert_all_gone(children, pg_pid)
    finally:
        if dev.proc.poll() is None:
            dev.kill()

    # Second start on the same data dir: the account, the key and the mail are still there.
    again = Dev(data_dir, tmp_path)
    try:
        again.wait_ready()
        r = httpx.post(f"{again.base}/api/v1/auth/login", timeout=10,
                       json={"email": email, "password": password})
        assert r.status_code == 200, r.text
        assert key_file.read_text() == key
        mail = httpx.get(f"{again.base}/dev/mail", timeout=10).json()
        assert [m["subject"] for m in mail["messages"]] == ["Caught!"]

        # A part that dies takes everything down, with a non-zero exit that says why.
        children, pg_pid = _descendants(again.proc.pid), again.postgres_pid()
        worker = next(p for p in children if "core.cli worker" in _cmdline(p))
        os.kill(worker, signal.SIGKILL)
        assert again.wait_exit(40) == 1, again.output
        assert "error: the worker exited" in again.output, again.output
        again.assert_all_gone(children, pg_pid)
    finally:
        if again.proc.poll() is None:
            again.kill()


def test_dev_refuses_a_taken_port_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run(
            [str(RETENSHUN), "dev", "--data-dir", str(tmp_path / "d"), "--port", str(port),
             "--smtp-port", str(free_port()), "--temporal-port", str(free_port()),
             "--temporal-ui-port", str(free_port())],
            cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=60,
        )
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stdout + r.stderr
    errors = [line for line in r.stderr.splitlines() if line.strip()]
    assert errors == [f"error: port {port} on 127.0.0.1 for the API is taken: stop what uses "
                      f"it or pass another --port"], r.stderr
