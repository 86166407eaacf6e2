"""create_app(): routers under /api/v1, the contract's errors, middleware, lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi_offline import FastAPIOffline

from api import (
    ai,
    api_keys,
    auth,
    automations,
    campaigns,
    channels,
    dashboard,
    dev_mail,
    events,
    health,
    inbox,
    messages,
    news,
    projects,
    reports,
    segments,
    team,
    templates,
    users,
    webhooks,
)
from api.errors import install_error_handlers
from api.keycache import KeyCache
from api.middleware import BodyLimitMiddleware, RateLimitHeadersMiddleware
from api.state import AppState
from core.crypto import SecretBox
from core.db import libpq_url, make_async_engine, make_sessionmaker, open_raw_pool
from core.outbox import OutboxWaker
from core.ratelimit import RateLimiter, with_burst
from core.settings import Settings, get_settings
from core.temporal import TemporalConnector

API_PREFIX = "/api/v1"
log = logging.getLogger("retenshun.api")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_async_engine(settings.database_url, settings.db_pool_size)
        raw_pool = await open_raw_pool(settings.database_url, settings.db_pool_size)
        limiter = RateLimiter(
            ingest=with_burst(settings.rate_limit_ingest, settings.rate_limit_ingest_burst),
            api=with_burst(settings.rate_limit_api, None),
            redis_url=settings.redis_url,
        )
        app.state.retenshun = AppState(
            settings=settings, engine=engine, sessions=make_sessionmaker(engine),
            raw_pool=raw_pool, limiter=limiter, secrets=SecretBox(settings.secret_key),
            temporal=TemporalConnector(settings), outbox_waker=OutboxWaker(raw_pool),
            key_cache=KeyCache(libpq_url(settings.database_url)),
        )
        await app.state.retenshun.key_cache.start()
        try:
            yield
        finally:
            await app.state.retenshun.key_cache.close()
            await app.state.retenshun.outbox_waker.close()
            await raw_pool.close()
            await engine.dispose()

    # FastAPIOffline serves Swagger UI and ReDoc from package files, not a CDN: /docs works
    # on an offline machine too.
    app = FastAPIOffline(
        title="Retenshun API",
        version="0.1.0",
        description=(
            "Track events, keep user profiles, segment them and reach them through "
            "durable Temporal workflows. Authenticate with `x-api-key` (or "
            "`Authorization: Bearer`); dashboard routes take the session cookie. Every "
            "error is `{error, message, status}`."
        ),
        lifespan=lifespan,
    )
    install_error_handlers(app)
    v1 = APIRouter(prefix=API_PREFIX)
    routers = (
        # events first: routes are matched in order, and ingestion is the hot path.
        events, auth, projects, api_keys, team, users, automations, templates, channels,
        messages, webhooks, inbox, news, health, ai, reports, segments, campaigns,
    )
    for module in routers:
        v1.include_router(module.router)
    app.include_router(v1)
    app.include_router(dev_mail.router)
    app.include_router(dashboard.router)
    app.add_middleware(RateLimitHeadersMiddleware)
    app.add_middleware(BodyLimitMiddleware)
    return app
