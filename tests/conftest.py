"""Session-wide real services: PostgreSQL (embedded, or $DATABASE_URL) with migrations
applied, a Temporal dev server, and the API over HTTP. Tests isolate by project: each
signs up its own account, so no table needs truncating between tests."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from core import migrate
from core.db import libpq_url
from core.devstack import (
    free_port,
    start_embedded_postgres,
    start_temporal_dev_server,
    stop_process,
)
from core.settings import Settings
from tests.support import Tenant, serve_api, signup


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(libpq_url(url))
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh database with every migration applied, dropped at the end."""
    external = os.environ.get("DATABASE_URL")
    embedded = None
    if external:
        server_url = external
    else:
        embedded = start_embedded_postgres(tmp_path_factory.mktemp("pgdata"))
        server_url = embedded.url
    name = f"retenshun_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(libpq_url(server_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(server_url, name)
    migrate.upgrade(url)
    try:
        yield url
    finally:
        with psycopg.connect(libpq_url(server_url), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if embedded is not None:
            embedded.stop()


@pytest.fixture(scope="session")
def temporal_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("TEMPORAL_ADDRESS"):
        yield os.environ["TEMPORAL_ADDRESS"]
        return
    folder = tmp_path_factory.mktemp("temporal")
    port = free_port()
    proc = start_temporal_dev_server(folder / "temporal.db", port, None, folder / "temporal.log")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop_process(proc)


def make_settings(database_url: str, temporal_address: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "RETENSHUN_ENV": "test",
        "DATABASE_URL": database_url,
        "TEMPORAL_ADDRESS": temporal_address,
        "RETENSHUN_SECRET_KEY": "test-secret-key",
        "RETENSHUN_RATE_LIMIT_INGEST": "100000/second",
        "RETENSHUN_RATE_LIMIT_API": "100000/second",
        "RETENSHUN_DB_POOL_SIZE": 5,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def api_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def settings(database_url: str, temporal_address: str, api_port: int) -> Settings:
    # Links the product builds (unsubscribe, invites) point at the test API server.
    return make_settings(database_url, temporal_address,
                         RETENSHUN_PUBLIC_URL=f"http://127.0.0.1:{api_port}")


@pytest.fixture(scope="session")
def api_url(settings: Settings, api_port: int) -> Iterator[str]:
    with serve_api(settings, api_port) as url:
        yield url


@pytest.fixture(scope="session")
def worker(settings: Settings) -> Iterator[None]:
    """The real worker (every workflow and activity) serving the task queue, in a thread."""
    from worker import run_worker

    ready = threading.Event()
    control: dict[str, object] = {}

    def run() -> None:
        async def main() -> None:
            stop = asyncio.Event()
            control.update(loop=asyncio.get_running_loop(), stop=stop)
            ready.set()
            await run_worker(settings, stop=stop)

        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced by the fixture's teardown
            control["error"] = exc
            ready.set()

    thread = threading.Thread(target=run, name="test-worker", daemon=True)
    thread.start()
    ready.wait(30)
    yield
    loop, stop = control.get("loop"), control.get("stop")
    if isinstance(loop, asyncio.AbstractEventLoop) and isinstance(stop, asyncio.Event):
        loop.call_soon_threadsafe(stop.set)
    thread.join(30)
    assert "error" not in control, control.get("error")


@pytest.fixture
def tenant(api_url: str) -> Tenant:
    return signup(api_url)


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection]:
    """A direct connection, for asserting what was (or was not) stored."""
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        yield conn
