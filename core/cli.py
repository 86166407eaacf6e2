"""`retenshun dev | api | worker | migrate`: the commands that run the product.

`dev` runs everything on one machine in one terminal (embedded PostgreSQL, Temporal dev
server with UI, SMTP catcher, migrations, API, worker); the other three run one part
each, for production, with settings from the environment (core.settings).

Layering: core never imports api/workflows/activities at module level; the commands
that need them import them when they run.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import IO, Annotated, Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import typer
from pydantic import ValidationError

from core.devstack import (
    EmbeddedPostgres,
    StackError,
    port_is_free,
    start_embedded_postgres,
    start_temporal_dev_server,
    stop_process,
)
from core.settings import Settings, get_settings

app = typer.Typer(
    name="retenshun",
    help="Retenshun: events, profiles, segments, automations and campaigns on Temporal.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

API_PREFIX = "/api/v1"  # mirrors api.app.API_PREFIX (core does not import api)
DEV_DATABASE = "retenshun"


class CliError(Exception):
    """A clear, one-line reason why a command cannot go on (exit code 1, no traceback)."""


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _settings_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err.get("loc", ()) if x != "__root__")
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "invalid settings: " + "; ".join(parts)


def load_settings() -> Settings:
    """core.settings.get_settings(), with a one-line error instead of a traceback."""
    try:
        return get_settings()
    except ValidationError as exc:
        _fail(_settings_error(exc))


def safe_url(url: str) -> str:
    """A database URL fit to print: the password replaced by ***."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)


# --------------------------------------------------------------------------- production


@app.command()
def api(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Uvicorn worker processes.")] = 1,
    log_level: Annotated[str, typer.Option(help="Uvicorn log level.")] = "info",
) -> None:
    """Serve the HTTP API (uvicorn, api.app:create_app) with settings from the environment."""
    load_settings()
    if not port_is_free(port, host):
        _fail(f"port {port} on {host} is taken (--port)")
    import uvicorn

    uvicorn.run("api.app:create_app", factory=True, host=host, port=port, workers=workers,
                log_level=log_level)


@app.command()
def worker() -> None:
    """Run a Temporal worker on TEMPORAL_TASK_QUEUE (stops cleanly on SIGTERM)."""
    load_settings()
    import worker as worker_module

    worker_module.main()


@app.command()
def migrate() -> None:
    """Apply every Alembic migration to DATABASE_URL."""
    settings = load_settings()
    from core.migrate import upgrade

    try:
        upgrade(settings.database_url)
    except Exception as exc:
        _fail(f"migrations on {safe_url(settings.database_url)} failed: {_first_line(exc)}")
    typer.echo(f"database {safe_url(settings.database_url)} is at the latest migration")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


# --------------------------------------------------------------------------- dev


class _Stop(Exception):
    """Ctrl-C / SIGTERM arrived while starting."""


@dataclass
class _Child:
    name: str
    proc: subprocess.Popen[bytes]
    pump: threading.Thread | None = None

    @property
    def title(self) -> str:
        return {"api": "API"}.get(self.name, self.name)


class _Output:
    """One writer for our messages and the children's prefixed output."""

    COLORS = {"api": "36", "worker": "35", "mail": "33"}

    def __init__(self, stream: IO[str], errors: IO[str]) -> None:
        self.stream = stream
        self.errors = errors
        # Re-entrant: a signal handler may print while the main thread holds it.
        self.lock = threading.RLock()
        self.tty = stream.isatty()
        try:
            from rich.console import Console

            self.console: Any = Console(file=stream, highlight=False, soft_wrap=True)
        except ImportError:  # rich comes with typer, but plain text works too
            self.console = None

    def write(self, text: str) -> None:
        with self.lock, contextlib.suppress(OSError, ValueError):
            self.stream.write(text)
            self.stream.flush()

    def say(self, text: str) -> None:
        self.write(text + "\n")

    def error(self, text: str) -> None:
        with self.lock, contextlib.suppress(OSError, ValueError):
            self.stream.flush()
            self.errors.write(f"error: {text}\n")
            self.errors.flush()

    def child_line(self, name: str, line: str) -> None:
        prefix = f"{name:>6} | "
        if self.tty and name in self.COLORS:
            prefix = f"\x1b[{self.COLORS[name]}m{prefix}\x1b[0m"
        self.write(prefix + line.rstrip("\r\n") + "\n")

    def block(self, title: str, rows: list[tuple[str, str]], footer: str) -> None:
        width = max(len(label) for label, _ in rows)
        if self.console is not None:
            from rich.markup import escape

            lines = [f"\n[bold green]{escape(title)}[/]\n"]
            lines += [f"  [bold]{escape(label.ljust(width))}[/]  [cyan]{escape(value)}[/]"
                      for label, value in rows]
            lines.append(f"\n[dim]{escape(footer)}[/]\n")
            with self.lock, contextlib.suppress(OSError, ValueError):
                self.console.print("\n".join(lines))
                self.stream.flush()
            return
        text = [f"\n{title}\n"] + [f"  {label.ljust(width)}  {value}" for label, value in rows]
        self.say("\n".join([*text, f"\n{footer}\n"]))


def _pump(out: _Output, name: str, stream: IO[bytes]) -> None:
    for raw in iter(stream.readline, b""):
        out.child_line(name, raw.decode("utf-8", "replace"))
    stream.close()


def _process_start_time(pid: int) -> float | None:
    try:
        import psutil

        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return float(proc.create_time())
    except Exception:
        return None


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def _display_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104


@dataclass
class DevStack:
    """Everything `retenshun dev` starts, and how to stop it again in reverse order."""

    host: str
    port: int
    data_dir: Path
    temporal_port: int
    temporal_ui_port: int
    smtp_port: int
    out: _Output

    stop_requested: bool = False
    children: list[_Child] = field(default_factory=list)
    temporal: subprocess.Popen[bytes] | None = None
    postgres: EmbeddedPostgres | None = None
    pg_dir: Path | None = None
    catcher: Any = None
    lock_fd: int | None = None
    settings: Settings | None = None
    database_url: str = ""
    temporal_address: str = ""
    temporal_ui_url: str | None = None
    external_db: bool = False
    external_temporal: bool = False

    # -- paths

    @property
    def base_url(self) -> str:
        return f"http://{_display_host(self.host)}:{self.port}"

    @property
    def mail_dir(self) -> Path:
        return self.data_dir / "mail"

    @property
    def pids_file(self) -> Path:
        return self.data_dir / "dev.pids.json"

    def _check(self) -> None:
        if self.stop_requested:
            raise _Stop

    # -- start

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        self._reap_leftovers()
        base = self._base_settings()
        self.external_db = "database_url" in base.model_fields_set
        self.external_temporal = "temporal_address" in base.model_fields_set
        self._check_ports()
        secret = self._secret_key(base)

        self.out.say(f"Starting Retenshun dev stack in {self.data_dir}")
        self._start_catcher()
        self._check()
        # Temporal starts beside PostgreSQL (they do not depend on each other).
        temporal_failed: list[BaseException] = []

        def start_temporal() -> None:
            try:
                self._start_temporal(base)
            except BaseException as exc:
                temporal_failed.append(exc)

        starter = threading.Thread(target=start_temporal, name="start-temporal", daemon=True)
        starter.start()
        try:
            self._start_postgres(base)
        finally:
            starter.join()
        if temporal_failed:
            raise temporal_failed[0]
        self._check()
        self.out.say("Applying migrations…")
        from core.migrate import upgrade

        try:
            upgrade(self.database_url)
        except Exception as exc:
            raise CliError(f"migrations failed on {safe_url(self.database_url)}: "
                           f"{_first_line(exc)}") from exc
        self._check()

        env = self._child_env(secret, base)
        self.settings = Settings(  # type: ignore[call-arg]
            RETENSHUN_ENV="dev", DATABASE_URL=self.database_url,
            TEMPORAL_ADDRESS=self.temporal_address, RETENSHUN_SECRET_KEY=secret,
        )
        self._spawn("api", [sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory",
                            "--host", self.host, "--port", str(self.port),
                            "--log-level", "info"], env)
        self._spawn("worker", [sys.executable, "-m", "core.cli", "worker"], env)
        self._write_pids()
        self._wait_healthy(timeout=60)
        self._prove_worker(timeout=60)

    def _lock(self) -> None:
        fd = os.open(self.data_dir / "dev.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise CliError(f"another `retenshun dev` is using {self.data_dir}: stop it first, "
                           "or pass another --data-dir") from None
        self.lock_fd = fd

    def _reap_leftovers(self) -> None:
        """Stop what a previous run that was killed (not stopped) left behind."""
        try:
            recorded = json.loads(self.pids_file.read_text())
        except (OSError, ValueError):
            return
        alive = {name: (pid, started) for name, (pid, started) in recorded.items()
                 if started is not None and _process_start_time(pid) == started}
        for name, (pid, _) in alive.items():
            self.out.say(f"Stopping a leftover {name} (pid {pid}) from a run that was killed")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while alive and time.monotonic() < deadline:
            alive = {n: v for n, v in alive.items() if _process_start_time(v[0]) == v[1]}
            time.sleep(0.1)
        for pid, _ in alive.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        self.pids_file.unlink(missing_ok=True)

    def _write_pids(self) -> None:
        procs = {c.name: c.proc for c in self.children}
        if self.temporal is not None:
            procs["temporal"] = self.temporal
        data = {n: (p.pid, _process_start_time(p.pid)) for n, p in procs.items()}
        self.pids_file.write_text(json.dumps(data))

    def _base_settings(self) -> Settings:
        try:
            return Settings(RETENSHUN_ENV="dev")  # type: ignore[call-arg]
        except ValidationError as exc:
            raise CliError(_settings_error(exc)) from None

    def _check_ports(self) -> None:
        wanted = [(self.port, "--port", "the API", self.host),
                  (self.smtp_port, "--smtp-port", "the SMTP catcher", "127.0.0.1")]
        if not self.external_temporal:
            wanted += [(self.temporal_port, "--temporal-port", "Temporal", "127.0.0.1"),
                       (self.temporal_ui_port, "--temporal-ui-port", "the Temporal UI",
                        "127.0.0.1")]
        seen: dict[int, str] = {}
        for port, flag, what, host in wanted:
            if port in seen:
                raise CliError(f"{flag} {port} is also given to {seen[port]}: pick another")
            seen[port] = flag
            if not port_is_free(port, host):
                raise CliError(f"port {port} on {host} for {what} is taken: stop what uses it "
                               f"or pass another {flag}")

    def _secret_key(self, base: Settings) -> str:
        if "secret_key" in base.model_fields_set:
            return base.secret_key
        path = self.data_dir / "secret.key"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            os.chmod(path, 0o600)
            key = path.read_text().strip()
            if key:
                return key
            path.unlink()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        key = secrets.token_urlsafe(48)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        return key

    def _start_catcher(self) -> None:
        from core.mailcatcher import MailCatcher

        catcher = MailCatcher(self.mail_dir, "127.0.0.1", self.smtp_port,
                              on_mail=self._on_mail)
        try:
            catcher.start()
        except Exception as exc:
            raise CliError(f"the SMTP catcher could not listen on 127.0.0.1:{self.smtp_port}: "
                           f"{_first_line(exc)} (--smtp-port)") from exc
        self.catcher = catcher

    def _on_mail(self, path: Path, mail_from: str, rcpt_tos: list[str], data: bytes) -> None:
        import email
        import email.policy

        subject = email.message_from_bytes(data, policy=email.policy.default).get("Subject", "")
        self.out.child_line("mail", f"caught {mail_from} -> {', '.join(rcpt_tos)}: "
                                    f"{str(subject)!r} ({self.base_url}/dev/mail)")

    def _start_postgres(self, base: Settings) -> None:
        if self.external_db:
            self.database_url = base.database_url
            self.out.say(f"Using PostgreSQL at {safe_url(self.database_url)} (DATABASE_URL)")
            return
        self.pg_dir = self.data_dir / "pg"
        fresh = not (self.pg_dir / "PG_VERSION").exists()
        self.out.say("Initialising embedded PostgreSQL (first run)…" if fresh
                     else "Starting embedded PostgreSQL…")
        try:
            with warnings.catch_warnings():  # platformdirs: "XDG_RUNTIME_DIR is not set"
                warnings.simplefilter("ignore")
                self.postgres = start_embedded_postgres(self.pg_dir)
        except StackError:
            raise
        except Exception as exc:
            raise CliError(f"embedded PostgreSQL did not start: {_first_line(exc)} "
                           f"(log: {self.pg_dir / 'log'})") from exc
        import psycopg

        try:
            with psycopg.connect(self.postgres.url, autocommit=True) as conn:
                exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                      (DEV_DATABASE,)).fetchone()
                if not exists:
                    conn.execute(f'CREATE DATABASE "{DEV_DATABASE}"')
        except psycopg.Error as exc:
            raise CliError(f"embedded PostgreSQL does not answer: {_first_line(exc)}") from exc
        self.database_url = _with_database(self.postgres.url, DEV_DATABASE)

    def _start_temporal(self, base: Settings) -> None:
        if self.external_temporal:
            self.temporal_address = base.temporal_address
            self.temporal_ui_url = (base.temporal_ui_url if "temporal_ui_url"
                                    in base.model_fields_set else None)
            self.out.say(f"Using Temporal at {self.temporal_address} (TEMPORAL_ADDRESS)")
            return
        self.out.say("Starting Temporal dev server…")
        log_file = self.data_dir / "logs" / "temporal.log"
        try:
            self.temporal = start_temporal_dev_server(
                self.data_dir / "temporal.db", self.temporal_port, self.temporal_ui_port,
                log_file, namespace=base.temporal_namespace,
            )
        except StackError as exc:
            hint = f" (log: {log_file})" if log_file.exists() and log_file.stat().st_size else ""
            raise CliError(f"{exc}{hint}") from None
        self.temporal_address = f"127.0.0.1:{self.temporal_port}"
        self.temporal_ui_url = f"http://127.0.0.1:{self.temporal_ui_port}"

    def _child_env(self, secret: str, base: Settings) -> dict[str, str]:
        env = dict(os.environ)
        # A public URL set by the developer (a tunnel, for provider webhooks) is kept.
        public_url = base.public_url if "public_url" in base.model_fields_set else self.base_url
        env.update({
            "RETENSHUN_ENV": "dev",
            "DATABASE_URL": self.database_url,
            "TEMPORAL_ADDRESS": self.temporal_address,
            "RETENSHUN_DEV_MAIL_DIR": str(self.mail_dir),
            "RETENSHUN_PUBLIC_URL": public_url,
            "RETENSHUN_SMTP_CATCHER": f"127.0.0.1:{self.smtp_port}",
            "RETENSHUN_SECRET_KEY": secret,
            "PYTHONUNBUFFERED": "1",
        })
        if self.temporal_ui_url:
            env["TEMPORAL_UI_URL"] = self.temporal_ui_url
        return env

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        # Own session: Ctrl-C reaches only us, and we stop the children in order.
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        child = _Child(name, proc)
        assert proc.stdout is not None
        child.pump = threading.Thread(target=_pump, args=(self.out, name, proc.stdout),
                                      name=f"pump-{name}", daemon=True)
        child.pump.start()
        self.children.append(child)

    def _dead_part(self) -> str | None:
        for child in self.children:
            if child.proc.poll() is not None:
                return f"the {child.title} exited with code {child.proc.returncode}"
        if self.temporal is not None and self.temporal.poll() is not None:
            return (f"the Temporal dev server exited with code {self.temporal.returncode} "
                    f"(log: {self.data_dir / 'logs' / 'temporal.log'})")
        if self.postgres is not None:
            pid_file = self.postgres.data_dir / "postmaster.pid"
            try:
                pid = int(pid_file.read_text().splitlines()[0])
                os.kill(pid, 0)
            except (OSError, ValueError, IndexError):
                return f"embedded PostgreSQL stopped (log: {self.postgres.data_dir / 'log'})"
        return None

    def _wait_healthy(self, timeout: float) -> None:
        import httpx

        url = f"{self.base_url}{API_PREFIX}/healthz"
        deadline = time.monotonic() + timeout
        last = "no answer"
        with httpx.Client(timeout=2) as client:
            while time.monotonic() < deadline:
                self._check()
                dead = self._dead_part()
                if dead:
                    raise CliError(f"{dead} while starting (see its output above)")
                try:
                    r = client.get(url)
                    if r.status_code == 200:
                        return
                    last = f"{r.status_code} {r.text[:200]}"
                except httpx.HTTPError as exc:
                    last = _first_line(exc)
                time.sleep(0.2)
        raise CliError(f"{url} did not answer 200 within {timeout:.0f} s (last: {last})")

    def _prove_worker(self, timeout: float) -> None:
        """Run WorkerPingWorkflow through the task queue: a worker serves it, or we fail."""
        from temporalio.client import Client

        from workflows.ping import WorkerPingInput, WorkerPingWorkflow, ping_workflow_id

        settings = self.settings
        assert settings is not None

        async def ping() -> str:
            client = await Client.connect(settings.temporal_address,
                                          namespace=settings.temporal_namespace)
            handle = await client.start_workflow(
                WorkerPingWorkflow.run, WorkerPingInput(reason="retenshun dev start-up check"),
                id=ping_workflow_id(uuid.uuid4().hex), task_queue=settings.temporal_task_queue,
                execution_timeout=timedelta(seconds=timeout),
            )
            result = asyncio.ensure_future(handle.result())
            deadline = time.monotonic() + timeout
            try:
                while not result.done():
                    if self.stop_requested:
                        raise _Stop
                    dead = self._dead_part()
                    if dead:
                        raise CliError(f"{dead} while starting (see its output above)")
                    if time.monotonic() > deadline:
                        raise CliError(f"no worker ran the ping workflow on task queue "
                                       f"{settings.temporal_task_queue!r} within {timeout:.0f} s")
                    await asyncio.wait({result}, timeout=0.2)
            finally:
                if not result.done():
                    result.cancel()
            return result.result()

        try:
            asyncio.run(ping())
        except (CliError, _Stop):
            raise
        except Exception as exc:
            raise CliError(f"the worker check (ping workflow) failed: {_first_line(exc)}") from exc

    # -- run

    def print_urls(self) -> None:
        base = self.base_url
        ui = self.temporal_ui_url or "(external Temporal: set TEMPORAL_UI_URL to show it here)"
        database = (safe_url(self.database_url) if self.external_db
                    else f"embedded, {self.pg_dir} ({self.database_url})")
        rows = [
            ("API", f"{base}{API_PREFIX}"),
            ("API docs", f"{base}/docs"),
            ("Dashboard", f"{base}/"),
            ("Temporal UI", ui),
            ("SMTP catcher", f"smtp://127.0.0.1:{self.smtp_port}  (caught mail: {base}/dev/mail)"),
            ("PostgreSQL", database),
            ("Data dir", str(self.data_dir)),
        ]
        self.out.block("Retenshun is running", rows, "Press Ctrl-C to stop everything.")

    def supervise(self) -> int:
        """Until Ctrl-C / SIGTERM (0) or until a part dies (1)."""
        while not self.stop_requested:
            dead = self._dead_part()
            if dead:
                self.out.error(f"{dead}; stopping everything")
                return 1
            time.sleep(0.25)
        return 0

    # -- stop

    def stop(self) -> None:
        """Stop in reverse order; every step runs even if an earlier one fails."""
        running = [c for c in self.children if c.proc.poll() is None]
        names = [c.title for c in running]
        if self.temporal is not None and self.temporal.poll() is None:
            names.append("Temporal")
        if self.postgres is not None or self.pg_dir is not None:
            names.append("PostgreSQL")
        if names:
            self.out.say(f"Stopping {', '.join(names)}…")
        for child in running:
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for child in running:
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.out.say(f"the {child.title} did not stop in time: killing it")
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.proc.pid, signal.SIGKILL)
                child.proc.wait(5)
        for child in self.children:
            if child.pump is not None:
                child.pump.join(5)
        steps = [("Temporal", self._stop_temporal), ("SMTP catcher", self._stop_catcher),
                 ("PostgreSQL", self._stop_postgres)]
        for what, step in steps:
            try:
                step()
            except Exception as exc:
                self.out.error(f"stopping {what}: {_first_line(exc)}")
        self.pids_file.unlink(missing_ok=True)
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None
        if names:
            self.out.say("Stopped.")

    def _stop_temporal(self) -> None:
        if self.temporal is not None:
            stop_process(self.temporal)

    def _stop_catcher(self) -> None:
        if self.catcher is not None:
            self.catcher.stop()

    def _stop_postgres(self) -> None:
        # Also when start-up was interrupted before get_server returned: stop by pid file.
        pg = self.postgres or (EmbeddedPostgres(self.pg_dir, "") if self.pg_dir else None)
        if pg is not None:
            pg.stop()


@app.command()
def dev(
    host: Annotated[str, typer.Option(help="Interface for the API.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="API port.")] = 8000,
    data_dir: Annotated[Path, typer.Option(help="Where PostgreSQL, Temporal and caught mail "
                                                "keep their data.")] = Path(".retenshun"),
    temporal_port: Annotated[int, typer.Option(help="Temporal gRPC port.")] = 7233,
    temporal_ui_port: Annotated[int, typer.Option(help="Temporal UI port.")] = 8233,
    smtp_port: Annotated[int, typer.Option(help="SMTP catcher port.")] = 1025,
) -> None:
    """Run everything on this machine: PostgreSQL, Temporal + UI, SMTP catcher, API, worker.

    DATABASE_URL / TEMPORAL_ADDRESS, when set, are used instead of the embedded servers.
    Data stays in --data-dir across restarts. Ctrl-C or SIGTERM stops everything.
    """
    out = _Output(sys.stdout, sys.stderr)
    stack = DevStack(host=host, port=port, data_dir=data_dir.expanduser().resolve(),
                     temporal_port=temporal_port, temporal_ui_port=temporal_ui_port,
                     smtp_port=smtp_port, out=out)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if not stack.stop_requested:
            stack.stop_requested = True
            out.say(f"\nReceived {signal.Signals(signum).name}: stopping…")

    previous = {s: signal.signal(s, on_signal)
                for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    code = 0
    try:
        stack.start()
        stack._check()
        stack.print_urls()
        code = stack.supervise()
    except _Stop:
        code = 0
    except (CliError, StackError) as exc:
        out.error(str(exc))
        code = 1
    except Exception as exc:
        if os.environ.get("RETENSHUN_DEBUG"):
            traceback.print_exc()
        out.error(f"unexpected {_first_line(exc)} (RETENSHUN_DEBUG=1 shows the traceback)")
        code = 1
    finally:
        stack.stop_requested = True  # further signals only note it; the stop runs to its end
        stack.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    raise typer.Exit(code)


if __name__ == "__main__":
    app()
