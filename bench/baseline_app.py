"""The baseline that bench/ingest.py compares ingestion against.

A bare FastAPI endpoint on the same stack as the product (uvicorn, same worker count,
psycopg 3 async pool of the same size, autocommit): it validates a body shaped like the
product's event (camelCase, unknown fields refused, UTC-normalised time) and inserts one
row per request. No auth, no rate limit, no user upsert: that is the product's overhead
the ratio measures.

Served by the bench as
    uvicorn baseline_app:create_app --factory --app-dir bench --workers 2
with DATABASE_URL set; the bench creates TABLE first (see create_table()).
Self-contained on purpose: product changes must not move the baseline.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import FastAPI, Request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

TABLE = "bench_baseline_events"
PATH = "/baseline/events"

CREATE_TABLE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id text PRIMARY KEY,
    user_id varchar(255) NOT NULL,
    event_name varchar(200) NOT NULL,
    properties jsonb NOT NULL DEFAULT '{{}}'::jsonb,
    timestamp timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
)
"""

_INSERT = (
    f"INSERT INTO {TABLE} (id, user_id, event_name, properties, timestamp, received_at) "
    "VALUES (%s, %s, %s, %s::jsonb, %s, %s)"
)


def _to_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class EventIn(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    user_id: str = Field(min_length=1, max_length=255)
    event_name: str = Field(min_length=1, max_length=200)
    properties: dict[str, Any] = Field(default_factory=dict)
    timestamp: Annotated[datetime, AfterValidator(_to_utc)] | None = None
    message_id: str | None = Field(None, min_length=1, max_length=255)


class TrackOut(BaseModel):
    id: str
    status: Literal["ok"]


def create_table(conn: Any) -> None:
    """Run by the bench (sync psycopg connection) before serving this app."""
    conn.execute(CREATE_TABLE)


def create_app() -> FastAPI:
    from psycopg_pool import AsyncConnectionPool

    url = os.environ["DATABASE_URL"]
    size = int(os.environ.get("BASELINE_POOL_SIZE", "10"))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = AsyncConnectionPool(
            url, min_size=2, max_size=size, open=False, kwargs={"autocommit": True}
        )
        await pool.open(wait=True, timeout=30)
        app.state.pool = pool
        try:
            yield
        finally:
            await pool.close()

    app = FastAPI(lifespan=lifespan)

    @app.post(PATH, response_model=TrackOut, status_code=202)
    async def track(body: EventIn, request: Request) -> TrackOut:
        now = datetime.now(UTC)
        event_id = "evt_" + uuid.uuid4().hex
        async with request.app.state.pool.connection() as conn:
            await conn.execute(
                _INSERT,
                (event_id, body.user_id, body.event_name,
                 orjson.dumps(body.properties).decode(), body.timestamp or now, now),
            )
        return TrackOut(id=event_id, status="ok")

    @app.get("/baseline/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
