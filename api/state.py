"""Process-wide resources of one API app, built in its lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg_pool import AsyncConnectionPool
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from api.keycache import KeyCache
from core.crypto import SecretBox
from core.outbox import OutboxWaker
from core.ratelimit import RateLimiter
from core.settings import Settings
from core.temporal import TemporalConnector


@dataclass
class AppState:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    raw_pool: AsyncConnectionPool
    limiter: RateLimiter
    secrets: SecretBox
    temporal: TemporalConnector
    outbox_waker: OutboxWaker
    key_cache: KeyCache[Any]  # hash -> api.deps.KeyContext
