"""Automations: event- or segment-triggered drip sequences, one Temporal workflow per run."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import Field

from api.deps import SecretKey, SessionDep, StateDep
from api.pagination import PageDep
from api.responses import SECRET_ERRORS
from core.schemas import ApiModel, Deleted, ReadModel, UtcDatetime
from core.services import automations as automation_service
from core.temporal import workflow_ui_url

router = APIRouter(prefix="/automations", tags=["automations"])

STEPS_DOC = (
    "Steps: SEND_EMAIL | SEND_PUSH | SEND_SMS | SEND_IN_APP {templateId | subject/body | "
    "ai: {context, tone}}, WAIT {delay}, BRANCH {rules, then, else}, WAIT_FOR_EVENT {event, "
    "timeout, matchProperty?, then, else}; any step may carry `delay` (seconds before it)."
)


class AutomationCreate(ApiModel):
    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(None, max_length=2000)
    trigger_type: Literal["EVENT", "SEGMENT_ENTRY"]
    trigger_event: str | None = Field(None, min_length=1, max_length=200)
    trigger_filter: list[dict[str, Any]] | None = Field(
        None, description="attribute rules on the triggering event's properties")
    segment_id: str | None = None
    exit_event: str | None = Field(None, min_length=1, max_length=200)
    steps: list[dict[str, Any]] = Field(description=STEPS_DOC)
    active: bool = False


class AutomationUpdate(ApiModel):
    name: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = Field(None, max_length=2000)
    trigger_type: Literal["EVENT", "SEGMENT_ENTRY"] | None = None
    trigger_event: str | None = Field(None, min_length=1, max_length=200)
    trigger_filter: list[dict[str, Any]] | None = None
    segment_id: str | None = None
    exit_event: str | None = Field(None, min_length=1, max_length=200)
    steps: list[dict[str, Any]] | None = Field(None, description=STEPS_DOC)
    active: bool | None = None


class AutomationOut(ReadModel):
    id: str
    name: str
    description: str | None
    trigger_type: str
    trigger_event: str | None
    trigger_filter: list[dict[str, Any]] | None
    segment_id: str | None
    exit_event: str | None
    steps: list[dict[str, Any]]
    active: bool
    version: int
    created_at: UtcDatetime
    updated_at: UtcDatetime


class AutomationList(ReadModel):
    automations: list[AutomationOut]
    total: int
    page: int
    limit: int


class RunOut(ReadModel):
    id: str
    user_id: str
    status: str
    started_at: UtcDatetime
    ended_at: UtcDatetime | None
    current_step: str | None
    workflow_id: str
    automation_version: int
    temporal_url: str = Field(description="this run in the Temporal UI")


class RunList(ReadModel):
    runs: list[RunOut]
    total: int
    page: int
    limit: int


@router.get("", response_model=AutomationList, responses=SECRET_ERRORS)
async def list_automations(key: SecretKey, db: SessionDep, paging: PageDep) -> AutomationList:
    rows, total = await automation_service.list_automations(
        db, key.project_id, paging.page, paging.limit)
    return AutomationList(automations=[AutomationOut.model_validate(a) for a in rows],
                          total=total, page=paging.page, limit=paging.limit)


@router.post("", response_model=AutomationOut, status_code=201, responses=SECRET_ERRORS)
async def create_automation(body: AutomationCreate, key: SecretKey, db: SessionDep,
                            ) -> AutomationOut:
    """Validated as a whole: a bad step is a 400 whose `details` name its path
    (e.g. `steps[2].then[0].templateId`)."""
    fields = automation_service.AutomationFields(**body.model_dump())
    return AutomationOut.model_validate(await automation_service.create(
        db, key.project_id, fields))


@router.get("/{automation_id}", response_model=AutomationOut, responses=SECRET_ERRORS)
async def get_automation(automation_id: str, key: SecretKey, db: SessionDep) -> AutomationOut:
    return AutomationOut.model_validate(
        await automation_service.get(db, key.project_id, automation_id))


@router.patch("/{automation_id}", response_model=AutomationOut, responses=SECRET_ERRORS)
async def patch_automation(automation_id: str, body: AutomationUpdate, key: SecretKey,
                           db: SessionDep) -> AutomationOut:
    """Changes only the fields sent. New steps apply to new runs; runs under way keep the
    steps they started with. `active: false` stops new runs, and running ones send nothing
    more."""
    changes = body.model_dump(include=body.model_fields_set)
    return AutomationOut.model_validate(await automation_service.update(
        db, key.project_id, automation_id, changes))


@router.put("/{automation_id}", response_model=AutomationOut, responses=SECRET_ERRORS)
async def put_automation(automation_id: str, body: AutomationCreate, key: SecretKey,
                         db: SessionDep) -> AutomationOut:
    """Replaces the whole definition (same rules for runs under way as PATCH)."""
    return AutomationOut.model_validate(await automation_service.update(
        db, key.project_id, automation_id, body.model_dump()))


@router.delete("/{automation_id}", response_model=Deleted, responses=SECRET_ERRORS)
async def delete_automation(automation_id: str, key: SecretKey, db: SessionDep) -> Deleted:
    """Deletes it and cancels its running enrollments."""
    await automation_service.delete(db, key.project_id, automation_id)
    return Deleted()


@router.get("/{automation_id}/runs", response_model=RunList, responses=SECRET_ERRORS)
async def list_runs(
    automation_id: str, key: SecretKey, db: SessionDep, state: StateDep, paging: PageDep,
    status: Annotated[Literal["running", "completed", "exited", "cancelled", "failed"] | None,
                      Query()] = None,
) -> RunList:
    """Enrollments, newest first, each with a link to its workflow in the Temporal UI."""
    runs, total = await automation_service.list_runs(
        db, key.project_id, automation_id, status=status, page=paging.page, limit=paging.limit)
    settings = state.settings
    return RunList(
        runs=[RunOut(
            id=r.id, user_id=r.user_id, status=r.status, started_at=r.started_at,
            ended_at=r.ended_at, current_step=r.current_step, workflow_id=r.workflow_id,
            automation_version=r.automation_version,
            temporal_url=workflow_ui_url(settings.temporal_ui_url, settings.temporal_namespace,
                                         r.workflow_id, _temporal_run_id(r.id)),
        ) for r in runs],
        total=total, page=paging.page, limit=paging.limit,
    )


def _temporal_run_id(enrollment_id: str) -> str:
    """Enrollment ids are `run_` + the Temporal run id without dashes."""
    hex_id = enrollment_id.removeprefix("run_")
    if len(hex_id) != 32:
        return ""
    return f"{hex_id[:8]}-{hex_id[8:12]}-{hex_id[12:16]}-{hex_id[16:20]}-{hex_id[20:]}"
