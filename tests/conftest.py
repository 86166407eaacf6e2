"""Session-wide real services: PostgreSQL (embedded, or $DATABASE_URL) with migrations
applied, a Temporal dev server, and the API over HTTP. Tests isolate by project: each
signs up its own account, so no table needs truncating between tests."""

from __future__ import annotations

import os
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
def settings(database_url: str, temporal_address: str) -> Settings:
    return make_settings(database_url, temporal_address)


@pytest.fixture(scope="session")
def api_url(settings: Settings) -> Iterator[str]:
    with serve_api(settings) as url:
        yield url


@pytest.fixture
def tenant(api_url: str) -> Tenant:
    return signup(api_url)


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection]:
    """A direct connection, for asserting what was (or was not) stored."""
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        yield conn
