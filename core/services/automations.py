"""Automations: CRUD with full step validation, runs listing, and cancelling runs
(through the outbox, so it works while Temporal is down)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from core import rendering
from core.automation_steps import validate_steps, watched_events
from core.errors import BadRequest, NotFound
from core.ids import new_id
from core.models import Automation, Enrollment, OutboxEntry, Segment, Template

EDITABLE = ("name", "description", "trigger_type", "trigger_event", "trigger_filter",
            "segment_id", "exit_event", "steps", "active")
# Changing any of these makes a new version: running enrollments keep their snapshot.
VERSIONED = ("trigger_type", "trigger_event", "trigger_filter", "segment_id", "exit_event",
             "steps")


@dataclass
class AutomationFields:
    name: str
    trigger_type: str
    steps: list[Any]
    description: str | None = None
    trigger_event: str | None = None
    trigger_filter: list[Any] | None = None
    segment_id: str | None = None
    exit_event: str | None = None
    active: bool = False


async def _validate(db: AsyncSession, project_id: str, f: AutomationFields) -> None:
    from core.segments import validate_rules

    if f.trigger_type == "EVENT":
        if not f.trigger_event:
            raise BadRequest("triggerEvent is required when triggerType is EVENT",
                             details=[{"field": "triggerEvent", "message": "Field required"}])
        if f.segment_id:
            raise BadRequest("segmentId only goes with triggerType SEGMENT_ENTRY",
                             details=[{"field": "segmentId", "message": "Not allowed"}])
        if f.trigger_filter is not None:
            validate_rules(f.trigger_filter, "triggerFilter", attributes_only=True)
    else:
        if not f.segment_id:
            raise BadRequest("segmentId is required when triggerType is SEGMENT_ENTRY",
                             details=[{"field": "segmentId", "message": "Field required"}])
        if f.trigger_event or f.trigger_filter:
            raise BadRequest("triggerEvent/triggerFilter only go with triggerType EVENT")
        if await db.scalar(select(Segment.id).where(
                Segment.project_id == project_id, Segment.id == f.segment_id)) is None:
            raise BadRequest(f"No segment {f.segment_id} in this project",
                             details=[{"field": "segmentId", "message": "Unknown segment"}])
    templates = {tid: channel for tid, channel in (await db.execute(
        select(Template.id, Template.channel).where(Template.project_id == project_id)))}
    validate_steps(
        f.steps, template_channel=templates.get, validate_rules=validate_rules,
        validate_template_source=lambda src, field, esc: rendering.validate(
            src, field, escape_html=esc),
    )


async def create(db: AsyncSession, project_id: str, f: AutomationFields) -> Automation:
    await _validate(db, project_id, f)
    automation = Automation(
        id=new_id("auto"), project_id=project_id, version=1,
        watch_events=sorted(watched_events(f.trigger_event, f.exit_event, f.steps)),
        **{k: getattr(f, k) for k in EDITABLE},
    )
    db.add(automation)
    await db.flush()
    await db.refresh(automation)
    return automation


async def get(db: AsyncSession, project_id: str, automation_id: str) -> Automation:
    automation = await db.scalar(select(Automation).where(
        Automation.project_id == project_id, Automation.id == automation_id))
    if automation is None:
        raise NotFound(f"No automation {automation_id} in this project")
    return automation


async def update(db: AsyncSession, project_id: str, automation_id: str,
                 changes: dict[str, Any]) -> Automation:
    """Apply `changes` (snake_case field -> value); the result is validated as a whole."""
    automation = await get(db, project_id, automation_id)
    merged = AutomationFields(**{k: getattr(automation, k) for k in EDITABLE})
    for key, value in changes.items():
        setattr(merged, key, value)
    await _validate(db, project_id, merged)
    if any(getattr(automation, k) != getattr(merged, k) for k in VERSIONED):
        automation.version += 1
    # Watched names only grow: runs of older versions still await their events.
    automation.watch_events = sorted(set(automation.watch_events or [])
                                     | watched_events(merged.trigger_event, merged.exit_event,
                                                      merged.steps))
    for key in EDITABLE:
        setattr(automation, key, getattr(merged, key))
    automation.updated_at = datetime.now(UTC)
    await db.flush()
    await db.refresh(automation)
    return automation


async def list_automations(db: AsyncSession, project_id: str, page: int, limit: int,
                           ) -> tuple[list[Automation], int]:
    query = select(Automation).where(Automation.project_id == project_id)
    total = await db.scalar(select(func.count()).select_from(query.subquery()))
    rows = await db.scalars(query.order_by(Automation.created_at.desc(), Automation.id)
                            .offset((page - 1) * limit).limit(limit))
    return list(rows), int(total or 0)


async def running_workflow_ids(db: AsyncSession, project_id: str, *,
                               automation_id: str | None = None,
                               user_id: str | None = None) -> list[str]:
    query = select(Enrollment.workflow_id).where(Enrollment.project_id == project_id,
                                                 Enrollment.status == "running")
    if automation_id is not None:
        query = query.where(Enrollment.automation_id == automation_id)
    if user_id is not None:
        query = query.where(Enrollment.user_id == user_id)
    return list(await db.scalars(query))


async def cancel_runs(db: AsyncSession, project_id: str, workflow_ids: list[str],
                      reason: str) -> None:
    """Signal `cancel` to running enrollments through the outbox (same transaction as the
    change that caused it, so it happens even if Temporal is down right now)."""
    if workflow_ids:
        db.add(OutboxEntry(project_id=project_id, kind="cancel",
                           payload={"workflowIds": workflow_ids, "reason": reason}))
        await db.flush()


async def delete(db: AsyncSession, project_id: str, automation_id: str) -> None:
    automation = await get(db, project_id, automation_id)
    await cancel_runs(db, project_id, await running_workflow_ids(
        db, project_id, automation_id=automation_id), "automation deleted")
    await db.delete(automation)
    await db.flush()


async def list_runs(db: AsyncSession, project_id: str, automation_id: str, *,
                    status: str | None, page: int, limit: int) -> tuple[list[Enrollment], int]:
    await get(db, project_id, automation_id)
    query = select(Enrollment).where(Enrollment.project_id == project_id,
                                     Enrollment.automation_id == automation_id)
    if status is not None:
        query = query.where(Enrollment.status == status)
    total = await db.scalar(select(func.count()).select_from(query.subquery()))
    rows = await db.scalars(query.order_by(Enrollment.started_at.desc(), Enrollment.id)
                            .offset((page - 1) * limit).limit(limit))
    return list(rows), int(total or 0)
