"""Database plumbing: the declarative Base, engines, and one-transaction scopes.

Two ways in, on purpose: the ORM (SQLAlchemy async sessions) for CRUD, and a bare
psycopg pool for the ingestion hot path, where ORM overhead would cost half the
throughput (see bench/ingest.py and docs in README).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

from psycopg_pool import AsyncConnectionPool
from sqlalchemy import MetaData, create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import NullPool

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def libpq_url(url: str) -> str:
    """`postgresql://…` as libpq wants it, whatever driver suffix the user gave."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in ("postgresql", "postgres"):
        raise ValueError(f"DATABASE_URL must be a postgresql:// URL, got scheme {parts.scheme!r}")
    return urlunsplit(("postgresql", *parts[1:]))


def sqlalchemy_url(url: str) -> str:
    return "postgresql+psycopg" + libpq_url(url)[len("postgresql") :]


def make_async_engine(url: str, pool_size: int = 10) -> AsyncEngine:
    return create_async_engine(
        sqlalchemy_url(url), pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=False
    )


def make_sync_engine(url: str) -> Engine:
    return create_engine(sqlalchemy_url(url), poolclass=NullPool)


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def session_scope(maker: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One unit of work: commit on success, roll back on any error."""
    async with maker() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


async def open_raw_pool(url: str, size: int = 10) -> AsyncConnectionPool:
    pool = AsyncConnectionPool(
        libpq_url(url), min_size=2, max_size=size, open=False, kwargs={"autocommit": True}
    )
    await pool.open(wait=True, timeout=30)
    return pool
