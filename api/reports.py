"""Reports: GET /reports, totals and one entry a day, from rollups plus a live today."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import Field

from api.deps import SecretKey, SessionDep, StateDep
from api.responses import SECRET_ERRORS
from api.state import AppState
from core.schemas import ReadModel, UtcDatetime
from core.services import reports as report_service
from workflows.starts import ensure_reports_schedule, start_reports_rollup

router = APIRouter(prefix="/reports", tags=["reports"])
log = logging.getLogger("retenshun.api.reports")


class Rates(ReadModel):
    """Ratios in [0, 1] (4 decimals); null when the denominator is 0."""

    delivery: float | None = Field(description="(delivered + opened + clicked) ÷ sent")
    open: float | None = Field(description="(opened + clicked) ÷ (delivered + opened + clicked)")
    click: float | None = Field(description="clicked ÷ (delivered + opened + clicked)")
    bounce: float | None = Field(description="bounced ÷ sent")


class Funnel(ReadModel):
    total: int = Field(description="Messages created in the range, any status")
    sent: int = Field(description="Accepted by the provider (IN_APP: stored in the inbox): "
                      "status sent, delivered, opened, clicked or bounced")
    by_status: dict[str, int] = Field(description="Every status, zeros included; a message "
                                      "counts once, at the furthest status it reached")
    rates: Rates


class MessageStats(Funnel):
    by_channel: dict[str, Funnel] = Field(description="EMAIL, PUSH, SMS, IN_APP")


class CampaignStats(Funnel):
    id: str
    name: str | None = Field(description="null once the campaign was deleted")


class AutomationStats(Funnel):
    id: str
    name: str | None = Field(description="null once the automation was deleted")
    enrollments: dict[str, int] = Field(
        description="Runs started in the range by current status, and `total`")


class SeriesDay(ReadModel):
    date: str = Field(description="UTC day, YYYY-MM-DD", examples=["2026-11-26"])
    events: int | None = Field(None, description="Events whose timestamp is that day")
    active_users: int | None = Field(None, description="Distinct users with an event that day")
    messages_sent: int | None = Field(None, description="Messages created that day and sent")


class RollupInfo(ReadModel):
    rolled_up_days: int = Field(description="Days read from rollups (closed days)")
    live_days: int = Field(description="Days computed now: today, and closed days that have "
                           "no rollup yet")
    oldest_rollup_at: UtcDatetime | None = Field(
        description="When the oldest rollup used was computed")


class Report(ReadModel):
    """Keys of metrics not asked for are left out."""

    range: str = Field(examples=["30d"])
    metrics: list[str] = Field(examples=[["events", "users", "messages"]])
    from_: UtcDatetime = Field(alias="from", description="Start of the first day (UTC)")
    to: UtcDatetime = Field(description="When the report was computed")
    days: int
    events: int | None = Field(None, description="Events in the range (= sum of the series)")
    active_users: int | None = Field(
        None, description="Users seen in the range: an event, or /identify (lastSeen)")
    messages_sent: int | None = Field(None, description="= messages.sent")
    series: list[SeriesDay] = Field(description="One entry a day, oldest first, zero-filled")
    messages: MessageStats | None = None
    campaigns: list[CampaignStats] | None = Field(
        None, description="Messages of each campaign created in the range")
    automations: list[AutomationStats] | None = Field(
        None, description="Messages and enrollments of each automation in the range")
    rollup: RollupInfo


@router.get("", response_model=Report, response_model_exclude_unset=True,
            responses=SECRET_ERRORS)
async def get_report(
    key: SecretKey, db: SessionDep, state: StateDep,
    range_: Annotated[Literal["7d", "30d", "90d"], Query(
        alias="range", description="Today (UTC) and the days before it")] = "30d",
    metrics: Annotated[str | None, Query(
        description="Comma list of events, users, messages (default: all)",
        examples=["events,users,messages"])] = None,
) -> Report:
    """Totals as in the reference (`events`, `activeUsers`, `messagesSent`), a `series` of
    one entry a day, messages by channel and status with delivery/open/click/bounce rates,
    and per-campaign and per-automation counts. Closed days come from rollups kept by the
    Temporal schedule `reports-rollup`; today, and any day not rolled up yet, is computed
    live, so figures are exact as of the day's last rollup (docs/ai-and-reports.md)."""
    wanted = report_service.parse_metrics(metrics)
    report = await report_service.build_report(db, key.project_id, range_, wanted,
                                               sessions=state.sessions)
    _maintain(state, key.project_id, missing_days=report["rollup"]["live_days"] > 1)
    return Report.model_validate(report)


# --- keeping rollups current, off the request path ---

_RESCHEDULE_EVERY = 3600.0  # re-ensure the schedule (in case it was deleted)
_KICK_EVERY = 60.0  # at most one on-demand rollup per project per minute per process
_schedule_checked = -math.inf
_kicked: dict[str, float] = {}
_tasks: set[asyncio.Task[None]] = set()


def _maintain(state: AppState, project_id: str, *, missing_days: bool) -> None:
    """Make sure the rollup schedule exists and, when closed days were computed live, roll
    up this project now. Fire and forget: a report never waits for (or fails on) Temporal."""
    global _schedule_checked
    now = time.monotonic()
    ensure = now - _schedule_checked > _RESCHEDULE_EVERY
    kick = missing_days and now - _kicked.get(project_id, -math.inf) > _KICK_EVERY
    if not (ensure or kick):
        return
    if ensure:
        _schedule_checked = now
    if kick:
        _kicked[project_id] = now
    task = asyncio.create_task(_run_maintenance(state, project_id, ensure, kick))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


async def _run_maintenance(state: AppState, project_id: str, ensure: bool, kick: bool) -> None:
    queue = state.settings.temporal_task_queue
    try:
        client = await state.temporal.client(timeout=2.0)
        if ensure and await ensure_reports_schedule(client, queue):
            log.info("created the Temporal schedule %s", "reports-rollup")
        if kick:
            await start_reports_rollup(client, queue, project_id=project_id)
    except Exception as exc:
        global _schedule_checked
        if ensure:  # try again a minute from now
            _schedule_checked = time.monotonic() - _RESCHEDULE_EVERY + _KICK_EVERY
        log.info("report rollup maintenance skipped (Temporal unavailable?): %s", exc)
