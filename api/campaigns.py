"""Campaigns: one message to every member of a segment, now or at `scheduledAt`.

Each campaign has one Temporal workflow, `campaign:{id}` (see workflows/campaign.py)."""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import Field, field_validator, model_validator
from sqlalchemy.ext.asyncio import AsyncSession

from api.deps import SecretKey, SessionDep, StateDep
from api.pagination import PageDep
from api.responses import errors
from api.state import AppState
from core.errors import ServiceUnavailable
from core.schemas import ApiModel, Deleted, ReadModel, UtcDatetime
from core.services import campaigns as campaign_service
from workflows.starts import cancel_campaign, schedule_campaign, unschedule_campaign

router = APIRouter(tags=["campaigns"])
log = logging.getLogger("retenshun.api.campaigns")

Channel = Literal["EMAIL", "PUSH", "SMS", "IN_APP"]
Status = Literal["DRAFT", "SCHEDULED", "SENDING", "SENT", "CANCELLED", "FAILED"]
Name = Annotated[str, Field(min_length=1, max_length=200)]
RateLimit = Annotated[int | None, Field(ge=1, le=100_000,
                                        description="At most this many messages per second")]
SCHEDULED_AT_DOC = ("When to send (any ISO 8601 offset). Without it the campaign is a DRAFT "
                    "until POST /campaigns/{id}/send; a past time sends at once")
CONTENT_DOC = "Inline content (Jinja2, like templates) instead of a templateId"
EDIT_ERRORS = errors(400, 401, 403, 404, 409, 413, 429, 503)


class CampaignIn(ApiModel):
    """POST and PUT (which replaces every editable field)."""

    name: Name
    channel: Channel
    segment_id: str = Field(min_length=1, max_length=40)
    template_id: str | None = Field(None, max_length=40,
                                    description="Its channel must be the campaign's")
    subject: str | None = Field(None, max_length=2000, description=CONTENT_DOC)
    body: str | None = Field(None, max_length=500_000, description=CONTENT_DOC)
    scheduled_at: UtcDatetime | None = Field(None, description=SCHEDULED_AT_DOC)
    rate_limit: RateLimit = None

    @model_validator(mode="after")
    def _content(self) -> CampaignIn:
        if self.template_id and (self.subject is not None or self.body is not None):
            raise ValueError("give either templateId or subject/body, not both")
        if not self.template_id and self.body is None:
            raise ValueError("body (or templateId) is required")
        return self

    def to_fields(self) -> campaign_service.CampaignFields:
        return campaign_service.CampaignFields(
            name=self.name, channel=self.channel, segment_id=self.segment_id,
            template_id=self.template_id, subject=self.subject, body=self.body,
            scheduled_at=self.scheduled_at, rate_limit=self.rate_limit)


class CampaignPatch(ApiModel):
    """Only the fields sent change. `scheduledAt` reschedules (null: back to DRAFT);
    `templateId` replaces inline subject/body and vice versa."""

    name: Name | None = None
    channel: Channel | None = None
    segment_id: str | None = Field(None, min_length=1, max_length=40)
    template_id: str | None = Field(None, max_length=40)
    subject: str | None = Field(None, max_length=2000)
    body: str | None = Field(None, max_length=500_000)
    scheduled_at: UtcDatetime | None = Field(None, description=SCHEDULED_AT_DOC)
    rate_limit: RateLimit = None

    @field_validator("name", "channel", "segment_id")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("may not be null")
        return value


class CampaignStats(ReadModel):
    recipients: int = Field(description="Messages made for the campaign so far")
    sent: int = Field(description="Accepted by the provider (incl. delivered/opened/clicked)")
    failed: int = Field(description="Could not be sent, or bounced")
    suppressed: int = Field(description="Unsubscribed or suppressed addresses: not sent")
    delivered: int
    opened: int
    clicked: int


class CampaignOut(ReadModel):
    id: str
    name: str
    channel: str
    segment_id: str | None = Field(description="null once its segment was deleted")
    template_id: str | None
    subject: str | None
    body: str | None
    status: Status
    scheduled_at: UtcDatetime | None
    rate_limit: int | None
    stats: CampaignStats
    started_at: UtcDatetime | None
    completed_at: UtcDatetime | None
    error: str | None
    created_at: UtcDatetime
    updated_at: UtcDatetime

    @classmethod
    def of(cls, campaign: Any, stats: dict[str, int]) -> CampaignOut:
        data = {c: getattr(campaign, c) for c in (
            "id", "name", "channel", "segment_id", "template_id", "subject", "body", "status",
            "scheduled_at", "rate_limit", "started_at", "completed_at", "error", "created_at",
            "updated_at")}
        return cls(**data, stats=CampaignStats(**stats))


class CampaignList(ReadModel):
    campaigns: list[CampaignOut]
    total: int
    page: int
    limit: int


async def _one(db: AsyncSession, project_id: str, campaign: Any) -> CampaignOut:
    stats = await campaign_service.stats_for(db, project_id, [campaign.id])
    return CampaignOut.of(campaign, stats[campaign.id])


async def _tell_temporal(state: AppState, db: AsyncSession, project_id: str,
                         change: campaign_service.ScheduleChange) -> None:
    """After the commit: start or wake the workflow (undone with a 503 if Temporal is
    down), or tell it the campaign is a draft again (the row already says so)."""
    try:
        client = await state.temporal.client()
        if change.starts:
            assert change.scheduled_at is not None
            await schedule_campaign(client, state.settings.temporal_task_queue,
                                    project_id=project_id, campaign_id=change.campaign_id,
                                    scheduled_at=change.scheduled_at)
        elif change.stops:
            await unschedule_campaign(client, change.campaign_id)
    except Exception as exc:
        if not change.starts:  # the sleeping run re-reads the row when it wakes
            log.warning("campaign %s: could not signal its workflow: %s",
                        change.campaign_id, exc)
            return
        log.error("campaign %s: cannot start its workflow: %s", change.campaign_id, exc)
        await campaign_service.undo_schedule(
            db, project_id, change, "not scheduled: Temporal was unavailable")
        await db.commit()
        raise ServiceUnavailable("The workflow engine (Temporal) is unavailable; the "
                                 "campaign was not scheduled") from exc


@router.get("/campaigns", response_model=CampaignList, status_code=200,
            responses=errors(400, 401, 403, 413, 429))
async def list_campaigns(key: SecretKey, db: SessionDep, paging: PageDep,
                         status: Annotated[Status | None, Query()] = None) -> CampaignList:
    """Newest first, each with its current `stats`."""
    campaigns, total = await campaign_service.list_campaigns(
        db, key.project_id, status=status, page=paging.page, limit=paging.limit)
    stats = await campaign_service.stats_for(db, key.project_id, [c.id for c in campaigns])
    return CampaignList(campaigns=[CampaignOut.of(c, stats[c.id]) for c in campaigns],
                        total=total, page=paging.page, limit=paging.limit)


@router.post("/campaigns", response_model=CampaignOut, status_code=201,
             responses=errors(400, 401, 403, 413, 429, 503))
async def create_campaign(body: CampaignIn, key: SecretKey, db: SessionDep,
                          state: StateDep) -> CampaignOut:
    """With `scheduledAt`: SCHEDULED (the workflow sleeps until then); without: DRAFT.
    An unknown segment or template, or a template of another channel, is a 400."""
    campaign, change = await campaign_service.create_campaign(db, key.project_id,
                                                              body.to_fields())
    await db.commit()  # the worker must see the row before the workflow runs
    await _tell_temporal(state, db, key.project_id, change)
    await db.refresh(campaign)
    return await _one(db, key.project_id, campaign)


@router.get("/campaigns/{campaign_id}", response_model=CampaignOut, status_code=200,
            responses=errors(400, 401, 403, 404, 413, 429))
async def get_campaign(campaign_id: str, key: SecretKey, db: SessionDep) -> CampaignOut:
    campaign = await campaign_service.get_campaign(db, key.project_id, campaign_id)
    return await _one(db, key.project_id, campaign)


@router.patch("/campaigns/{campaign_id}", response_model=CampaignOut, status_code=200,
              responses=EDIT_ERRORS)
async def patch_campaign(campaign_id: str, body: CampaignPatch, key: SecretKey,
                         db: SessionDep, state: StateDep) -> CampaignOut:
    """Merge. Changing `scheduledAt` reschedules; 409 once sending has begun."""
    campaign, change = await campaign_service.update_campaign(
        db, key.project_id, campaign_id, body.model_dump(exclude_unset=True))
    await db.commit()
    await _tell_temporal(state, db, key.project_id, change)
    await db.refresh(campaign)
    return await _one(db, key.project_id, campaign)


@router.put("/campaigns/{campaign_id}", response_model=CampaignOut, status_code=200,
            responses=EDIT_ERRORS)
async def put_campaign(campaign_id: str, body: CampaignIn, key: SecretKey, db: SessionDep,
                       state: StateDep) -> CampaignOut:
    """Replace every editable field; 409 once sending has begun."""
    campaign, change = await campaign_service.replace_campaign(
        db, key.project_id, campaign_id, body.to_fields())
    await db.commit()
    await _tell_temporal(state, db, key.project_id, change)
    await db.refresh(campaign)
    return await _one(db, key.project_id, campaign)


@router.delete("/campaigns/{campaign_id}", response_model=Deleted, status_code=200,
               responses=errors(400, 401, 403, 404, 413, 429))
async def delete_campaign(campaign_id: str, key: SecretKey, db: SessionDep,
                          state: StateDep) -> Deleted:
    """A SCHEDULED or SENDING campaign is cancelled: it stays, as CANCELLED, with its
    stats (members not yet sent get nothing). Any other campaign is deleted."""
    cancelled = await campaign_service.delete_campaign(db, key.project_id, campaign_id)
    await db.commit()
    if cancelled:
        try:
            await cancel_campaign(await state.temporal.client(), campaign_id)
        except Exception as exc:  # the run stops at its next check of the row
            log.warning("campaign %s: could not cancel its workflow: %s", campaign_id, exc)
    return Deleted()


@router.post("/campaigns/{campaign_id}/send", response_model=CampaignOut, status_code=202,
             responses=EDIT_ERRORS)
async def send_campaign(campaign_id: str, key: SecretKey, db: SessionDep,
                        state: StateDep) -> CampaignOut:
    """Send a DRAFT (or SCHEDULED) campaign now: answers SENDING at once; follow
    `stats` with GET. 409 if it is already sending or over."""
    campaign, change = await campaign_service.send_now(db, key.project_id, campaign_id)
    await db.commit()
    await _tell_temporal(state, db, key.project_id, change)
    await db.refresh(campaign)
    return await _one(db, key.project_id, campaign)
