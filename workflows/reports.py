"""ReportsRollupWorkflow: keeps `daily_rollups` current for GET /reports.

Started every ROLLUP_EVERY by the Temporal Schedule `reports-rollup` (every project with
data; overlapping runs are skipped), and on demand for one project, id
`reports-rollup:{projectId}`, when a report finds closed days without a rollup. It loops
over pages of projects (one activity call each, heartbeating per day) and continues as
new after PAGES_PER_RUN pages, so its history stays small for any number of projects.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow

from workflows.options import DB

with workflow.unsafe.imports_passed_through():
    from activities.reports import ReportActivities, RollupPageInput

ROLLUP_EVERY = timedelta(minutes=10)
PAGES_PER_RUN = 50
# A page works for ~20 s and heartbeats after every day it computes.
ROLLUP = dataclasses.replace(DB, start_to_close_timeout=timedelta(minutes=5),
                             heartbeat_timeout=timedelta(minutes=1))


@dataclass
class RollupInput:
    project_id: str | None = None  # None: every project with data in the last 90 days
    after: str | None = None  # set by continue-as-new
    settle_days: int = 3  # recompute a closed day on every run until it is this old
    refresh_hours: float = 24.0  # and recompute every day at least this often
    projects: int = 0  # totals carried across continue-as-new
    days: int = 0


@dataclass
class RollupResult:
    projects: int
    days: int


@workflow.defn
class ReportsRollupWorkflow:
    @workflow.run
    async def run(self, input: RollupInput) -> RollupResult:
        after, projects, days = input.after, input.projects, input.days
        for _ in range(PAGES_PER_RUN):
            page = await workflow.execute_activity_method(
                ReportActivities.rollup_page,
                RollupPageInput(project_id=input.project_id, after=after,
                                settle_days=input.settle_days,
                                refresh_hours=input.refresh_hours),
                **ROLLUP.kwargs(),
            )
            after, projects, days = page.after, projects + page.projects, days + page.days
            if page.done:
                return RollupResult(projects, days)
        workflow.continue_as_new(dataclasses.replace(input, after=after, projects=projects,
                                                     days=days))
