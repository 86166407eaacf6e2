"""Report rollups: compute closed days ahead of time into `daily_rollups`.

One activity call rolls up a page of projects within a time budget and says where to
resume; the workflow (workflows/reports.py) loops over pages. A run of up to 7 days (all
due days at once for a small project) is one transaction (idempotent: a retry recomputes
and replaces it), and the activity heartbeats after each, so a large backfill survives
worker restarts without redoing finished days (they are no longer due).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity

from core.db import session_scope
from core.services import reports as report_service

log = logging.getLogger("retenshun.activities.reports")

PAGE_PROJECTS = 100
PAGE_BUDGET_SECONDS = 20.0


@dataclass
class RollupPageInput:
    project_id: str | None = None  # one project, or every project with data (paged)
    after: str | None = None  # resume after this project id
    settle_days: int = 3
    refresh_hours: float = 24.0


@dataclass
class RollupPageResult:
    done: bool
    after: str | None  # where the next page starts (exclusive)
    projects: int  # projects finished in this page
    days: int  # days computed


class ReportActivities:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]):
        self._sessions = sessions

    @activity.defn(name="rollup_reports_page")
    async def rollup_page(self, input: RollupPageInput) -> RollupPageResult:
        return await self.rollup(input, progress=lambda: activity.heartbeat())

    async def rollup(self, input: RollupPageInput, *,
                     progress: Callable[[], None] = lambda: None,
                     budget: float = PAGE_BUDGET_SECONDS) -> RollupPageResult:
        """Roll up due days of the page's projects until done or `budget` seconds passed
        (at least one day always runs, so every page makes progress)."""
        deadline = time.monotonic() + budget
        now = datetime.now(UTC)
        if input.project_id is not None:
            projects = [input.project_id]
        else:
            async with session_scope(self._sessions) as db:
                projects = await report_service.rollup_candidates(
                    db, now, after=input.after, limit=PAGE_PROJECTS)
        after, finished, computed = input.after, 0, 0
        for project_id in projects:
            async with session_scope(self._sessions) as db:
                due = await report_service.days_to_roll_up(
                    db, project_id, now, settle_days=input.settle_days,
                    refresh_hours=input.refresh_hours)
                if not due:
                    after, finished = project_id, finished + 1
                    continue
                size = await report_service.rollup_chunk_days(db, project_id, due[0])
            for lo, hi in report_service.chunks(due, size):
                if computed and time.monotonic() > deadline:
                    return RollupPageResult(False, after, finished, computed)
                await self.rollup_days(project_id, lo, hi, now)
                computed += (hi - lo).days
                progress()
            after, finished = project_id, finished + 1
        done = input.project_id is not None or len(projects) < PAGE_PROJECTS
        if computed:
            log.info("rolled up %d day(s) of %d project(s)", computed, finished)
        return RollupPageResult(done, after, finished, computed)

    async def rollup_days(self, project_id: str, lo: date, hi: date, now: datetime) -> None:
        """One transaction per run of up to 7 days: retried as a whole, never half-stored."""
        async with session_scope(self._sessions) as db:
            await report_service.rollup_days(db, project_id, lo, hi, now)
