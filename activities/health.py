"""Health activities: prove that a worker is up and reaches PostgreSQL."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity


@dataclass
class PingDatabaseInput:
    """Why the ping was asked for (shows up in the workflow history)."""

    reason: str = ""


class HealthActivities:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]):
        self._sessions = sessions

    @activity.defn(name="ping_database")
    async def ping_database(self, input: PingDatabaseInput) -> str:
        """`SELECT version()` through the worker's engine; returns the server's version."""
        async with self._sessions() as session:
            version = (await session.execute(text("SELECT version()"))).scalar_one()
        return str(version)
