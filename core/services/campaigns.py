"""Campaigns: one message to every member of a segment, now or at `scheduledAt`.

Lifecycle (the database row is the truth; CampaignWorkflow only waits and sends):

    DRAFT --scheduledAt / POST /send--> SCHEDULED / SENDING --> SENT (or FAILED)
    SCHEDULED --scheduledAt: null--> DRAFT          SCHEDULED/SENDING --DELETE--> CANCELLED

Edits are refused (409) once sending has begun. The audience is resolved when sending
starts, page by page in user-id order, from the segment's rules at that moment (users
created after the send started are left out). Each recipient's message is keyed
`campaign:{id}:{userId}`, so a retried page or a restarted worker never sends twice.
`stats` are counted from those messages. Services flush; callers commit.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import String, func, literal, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from core import rendering
from core.errors import BadRequest, Conflict, NotFound
from core.ids import new_id
from core.models import Campaign, EndUser, Message, Project, Segment, Template
from core.segments import rules_condition
from core.services import messages as message_service

CHANNELS = rendering.CHANNELS
EDITABLE = ("name", "channel", "segment_id", "template_id", "subject", "body",
            "scheduled_at", "rate_limit")
EDITABLE_STATUSES = ("DRAFT", "SCHEDULED")
ACTIVE = ("SCHEDULED", "SENDING")
FINAL = ("SENT", "CANCELLED", "FAILED")
STAT_KEYS = ("recipients", "sent", "failed", "suppressed", "delivered", "opened", "clicked")
# Message status -> the stats it counts toward (besides `recipients`). Opened implies
# delivered, clicked implies opened; a bounce counts as failed.
_COUNTS = {
    "sent": ("sent",), "delivered": ("sent", "delivered"),
    "opened": ("sent", "delivered", "opened"), "clicked": ("sent", "delivered", "opened",
                                                         "clicked"),
    "failed": ("failed",), "bounced": ("failed",), "suppressed": ("suppressed",),
}
SEND_KEY_PREFIX = "campaign"


def send_key(campaign_id: str, user_id: str) -> str:
    return f"{SEND_KEY_PREFIX}:{campaign_id}:{user_id}"


@dataclass(slots=True)
class CampaignFields:
    name: str
    channel: str
    segment_id: str
    template_id: str | None = None
    subject: str | None = None
    body: str | None = None
    scheduled_at: datetime | None = None
    rate_limit: int | None = None


@dataclass(frozen=True, slots=True)
class ScheduleChange:
    """What the API must tell Temporal after committing (and undo if it cannot)."""

    campaign_id: str
    previous_status: str
    previous_scheduled_at: datetime | None
    status: str
    scheduled_at: datetime | None

    @property
    def starts(self) -> bool:
        """The workflow must be started or woken (scheduled, rescheduled, sent now)."""
        return self.status in ACTIVE and (
            self.status != self.previous_status or self.scheduled_at != self.previous_scheduled_at)

    @property
    def stops(self) -> bool:
        return self.previous_status in ACTIVE and self.status not in ACTIVE


def _now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- reading


def empty_stats() -> dict[str, int]:
    return dict.fromkeys(STAT_KEYS, 0)


async def stats_for(db: AsyncSession, project_id: str, campaign_ids: list[str],
                    ) -> dict[str, dict[str, int]]:
    """Counted from the campaign's messages (index on project_id, source, source_id)."""
    out: dict[str, dict[str, int]] = defaultdict(empty_stats)
    if not campaign_ids:
        return out
    rows = await db.execute(
        select(Message.source_id, Message.status, func.count())
        .where(Message.project_id == project_id, Message.source == "campaign",
               Message.source_id.in_(campaign_ids))
        .group_by(Message.source_id, Message.status))
    for campaign_id, status, n in rows:
        stats = out[campaign_id]
        stats["recipients"] += n
        for key in _COUNTS.get(status, ()):
            stats[key] += n
    return out


async def list_campaigns(db: AsyncSession, project_id: str, *, status: str | None,
                         page: int, limit: int) -> tuple[list[Campaign], int]:
    query = select(Campaign).where(Campaign.project_id == project_id)
    if status is not None:
        query = query.where(Campaign.status == status)
    total = await db.scalar(select(func.count()).select_from(query.subquery()))
    rows = await db.scalars(query.order_by(Campaign.created_at.desc(), Campaign.id.desc())
                            .offset((page - 1) * limit).limit(limit))
    return list(rows), int(total or 0)


async def get_campaign(db: AsyncSession, project_id: str, campaign_id: str,
                       *, lock: bool = False) -> Campaign:
    query = select(Campaign).where(Campaign.project_id == project_id, Campaign.id == campaign_id)
    if lock:
        query = query.with_for_update()
    campaign = await db.scalar(query)
    if campaign is None:
        raise NotFound(f"No campaign {campaign_id} in this project")
    return campaign


# --------------------------------------------------------------------------- writing


def _bad(field: str, message: str) -> BadRequest:
    return BadRequest(f"{field}: {message}", details=[{"field": field, "message": message}])


async def _check(db: AsyncSession, project_id: str, c: Campaign) -> None:
    """A campaign that could be sent as it stands, or a 400 naming the field."""
    if c.channel not in CHANNELS:
        raise _bad("channel", f"one of {', '.join(CHANNELS)}")
    if c.rate_limit is not None and c.rate_limit < 1:
        raise _bad("rateLimit", "messages per second, at least 1")
    if c.segment_id is None:
        raise _bad("segmentId", "required (the campaign's segment was deleted)")
    if await db.scalar(select(Segment.id).where(Segment.project_id == project_id,
                                                Segment.id == c.segment_id)) is None:
        raise _bad("segmentId", f"no segment {c.segment_id} in this project")
    if c.template_id:
        if c.subject is not None or c.body is not None:
            raise _bad("templateId", "give either templateId or subject/body, not both")
        channel = await db.scalar(select(Template.channel).where(
            Template.project_id == project_id, Template.id == c.template_id))
        if channel is None:
            raise _bad("templateId", f"no template {c.template_id} in this project")
        if channel != c.channel:
            raise _bad("templateId", f"template {c.template_id} is for {channel}, "
                                     f"not {c.channel}")
        return
    if c.body is None or not c.body.strip():
        raise _bad("body", "a body (or a templateId) is required")
    if c.channel == "EMAIL" and not (c.subject or "").strip():
        raise _bad("subject", "an EMAIL needs a subject")
    rendering.validate(c.subject, "subject")
    rendering.validate(c.body, "body", escape_html=c.channel == "EMAIL")


async def create_campaign(db: AsyncSession, project_id: str, fields: CampaignFields,
                          ) -> tuple[Campaign, ScheduleChange]:
    """DRAFT without `scheduledAt`, SCHEDULED with it (a past time sends at once)."""
    status = "SCHEDULED" if fields.scheduled_at is not None else "DRAFT"
    campaign = Campaign(
        id=new_id("camp"), project_id=project_id, name=fields.name, channel=fields.channel,
        segment_id=fields.segment_id, template_id=fields.template_id, subject=fields.subject,
        body=fields.body, status=status, scheduled_at=fields.scheduled_at,
        rate_limit=fields.rate_limit,
    )
    await _check(db, project_id, campaign)
    db.add(campaign)
    await db.flush()
    return campaign, ScheduleChange(campaign.id, "DRAFT", None, status, fields.scheduled_at)


async def update_campaign(db: AsyncSession, project_id: str, campaign_id: str,
                          changes: dict[str, Any]) -> tuple[Campaign, ScheduleChange]:
    """Merge `changes`. 409 once sending has begun (or the campaign is over). Giving
    `templateId` drops inline subject/body and vice versa; `scheduledAt` (re)schedules,
    `scheduledAt: null` takes a scheduled campaign back to DRAFT."""
    campaign = await get_campaign(db, project_id, campaign_id, lock=True)
    if campaign.status not in EDITABLE_STATUSES:
        raise Conflict(f"Campaign {campaign_id} is {campaign.status}: it can no longer be "
                       "edited")
    before = (campaign.status, campaign.scheduled_at)
    changes = {k: v for k, v in changes.items() if k in EDITABLE}
    if changes.get("template_id"):
        changes.setdefault("subject", None)
        changes.setdefault("body", None)
    elif changes.get("body") is not None or changes.get("subject") is not None:
        changes.setdefault("template_id", None)
    for name, value in changes.items():
        setattr(campaign, name, value)
    if "scheduled_at" in changes:
        campaign.status = "SCHEDULED" if campaign.scheduled_at is not None else "DRAFT"
    await _check(db, project_id, campaign)
    campaign.updated_at = _now()
    await db.flush()
    return campaign, ScheduleChange(campaign.id, before[0], before[1], campaign.status,
                                    campaign.scheduled_at)


async def replace_campaign(db: AsyncSession, project_id: str, campaign_id: str,
                           fields: CampaignFields) -> tuple[Campaign, ScheduleChange]:
    return await update_campaign(db, project_id, campaign_id, {
        "name": fields.name, "channel": fields.channel, "segment_id": fields.segment_id,
        "template_id": fields.template_id, "subject": fields.subject, "body": fields.body,
        "scheduled_at": fields.scheduled_at, "rate_limit": fields.rate_limit,
    })


async def send_now(db: AsyncSession, project_id: str, campaign_id: str,
                   ) -> tuple[Campaign, ScheduleChange]:
    """A DRAFT (or SCHEDULED) campaign starts sending now; 409 otherwise."""
    campaign = await get_campaign(db, project_id, campaign_id, lock=True)
    if campaign.status not in EDITABLE_STATUSES:
        raise Conflict(f"Campaign {campaign_id} is {campaign.status}: only a DRAFT or "
                       "SCHEDULED campaign can be sent")
    await _check(db, project_id, campaign)
    before = (campaign.status, campaign.scheduled_at)
    now = _now()
    campaign.status, campaign.scheduled_at = "SENDING", now
    campaign.started_at = now
    campaign.updated_at = now
    await db.flush()
    return campaign, ScheduleChange(campaign.id, before[0], before[1], "SENDING", now)


async def undo_schedule(db: AsyncSession, project_id: str, change: ScheduleChange,
                        reason: str) -> None:
    """Temporal could not be told: put status and time back as they were."""
    await db.execute(
        update(Campaign).where(Campaign.project_id == project_id,
                               Campaign.id == change.campaign_id)
        .values(status=change.previous_status, scheduled_at=change.previous_scheduled_at,
                started_at=None if change.previous_status == "DRAFT" else Campaign.started_at,
                error=reason, updated_at=_now()))


async def delete_campaign(db: AsyncSession, project_id: str, campaign_id: str) -> bool:
    """A SCHEDULED or SENDING campaign is cancelled (kept, status CANCELLED: True, the
    workflow must be cancelled); any other is deleted (its messages stay)."""
    campaign = await get_campaign(db, project_id, campaign_id, lock=True)
    if campaign.status in ACTIVE:
        now = _now()
        campaign.status, campaign.completed_at, campaign.updated_at = "CANCELLED", now, now
        await db.flush()
        return True
    await db.delete(campaign)
    await db.flush()
    return False


# ------------------------------------------------------------------- sending (worker)


@dataclass(frozen=True, slots=True)
class Begin:
    action: str  # send | wait | stop
    status: str
    scheduled_at: datetime | None = None


async def begin_send(db: AsyncSession, project_id: str, campaign_id: str,
                     now: datetime | None = None) -> Begin:
    """The workflow's wake-up check: SCHEDULED and due -> SENDING (send); SCHEDULED for
    later -> wait until then; SENDING -> send (resumed or sent now); else stop."""
    now = now or _now()
    campaign = await db.scalar(select(Campaign).where(
        Campaign.project_id == project_id, Campaign.id == campaign_id).with_for_update())
    if campaign is None:
        return Begin("stop", "DELETED")
    if campaign.status == "SCHEDULED":
        if campaign.scheduled_at is not None and campaign.scheduled_at > now + timedelta(
                seconds=0.5):
            return Begin("wait", campaign.status, campaign.scheduled_at)
        if campaign.segment_id is None:
            await finish(db, project_id, campaign_id, "FAILED", "its segment was deleted")
            return Begin("stop", "FAILED")
        campaign.status, campaign.started_at, campaign.updated_at = "SENDING", now, now
        return Begin("send", "SENDING")
    if campaign.status == "SENDING":
        if campaign.started_at is None:
            campaign.started_at = now
        return Begin("send", "SENDING")
    return Begin("stop", campaign.status)


@dataclass
class Audience:
    """What one page of sending needs, loaded once per page."""

    status: str
    channel: str
    user_ids: list[str]
    template_id: str | None
    subject: str | None
    body: str | None
    company: str
    rate_limit: int | None


async def _audience_query(db: AsyncSession, project_id: str, campaign: Campaign) -> Any:
    """Members of the campaign's segment as its rules stand now, among the users that
    existed when sending started, in user-id order (event rules counted per user)."""
    if campaign.segment_id is None:
        raise BadRequest("the campaign's segment was deleted")
    rules = await db.scalar(select(Segment.rules).where(Segment.id == campaign.segment_id))
    if rules is None:
        raise BadRequest("the campaign's segment was deleted")
    query = select(EndUser.id).where(rules_condition(project_id, rules, correlated=True))
    if campaign.started_at is not None:
        query = query.where(EndUser.created_at <= campaign.started_at)
    return query.order_by(EndUser.id)


async def plan_pages(db: AsyncSession, project_id: str, campaign_id: str, after: str | None,
                     page_size: int, max_pages: int) -> tuple[str, list[tuple[str | None, str]]]:
    """(status, ranges): the next `max_pages` pages of members after `after`, as
    (after, up to) user-id ranges of `page_size` members each; fewer than `max_pages`
    (or none) means the audience ends there."""
    campaign = await get_campaign(db, project_id, campaign_id)
    if campaign.status != "SENDING":
        return campaign.status, []
    query = await _audience_query(db, project_id, campaign)
    if after is not None:
        query = query.where(EndUser.id > literal(after, String))
    ids = list(await db.scalars(query.limit(page_size * max_pages)))
    ranges: list[tuple[str | None, str]] = []
    start = after
    for i in range(0, len(ids), page_size):
        end = ids[min(i + page_size, len(ids)) - 1]
        ranges.append((start, end))
        start = end
    return campaign.status, ranges


async def audience_page(db: AsyncSession, project_id: str, campaign_id: str,
                        after: str | None, upto: str) -> Audience:
    """The members with `after` < user id <= `upto`, and what their message needs."""
    campaign = await get_campaign(db, project_id, campaign_id)
    page = Audience(campaign.status, campaign.channel, [], campaign.template_id,
                    campaign.subject, campaign.body, "", campaign.rate_limit)
    if campaign.status != "SENDING":
        return page
    query = await _audience_query(db, project_id, campaign)
    if campaign.template_id:
        template = await message_service.load_template(db, project_id, campaign.template_id,
                                                       campaign.channel)
        page.subject, page.body = template.subject, template.body
    if after is not None:
        query = query.where(EndUser.id > literal(after, String))
    page.user_ids = list(await db.scalars(query.where(EndUser.id <= literal(upto, String))))
    page.company = await db.scalar(select(Project.name).where(Project.id == project_id)) or ""
    return page


async def page_messages(db: AsyncSession, project_id: str, campaign_id: str,
                        page: Audience) -> list[tuple[str, str]]:
    """(user id, message id) for every member of the page: each member's message is
    rendered and stored (queued) under `campaign:{id}:{userId}` on the first call, and
    the same id comes back on every later call (a retried page, a restarted worker).
    A member who cannot get one (no email address, a template that fails on their
    profile) gets a `failed` message saying why. Members erased meanwhile are left out.
    Three statements for the whole page, whatever its size."""
    keys = {send_key(campaign_id, u): u for u in page.user_ids}
    found = {k: m for k, m in await db.execute(select(Message.send_key, Message.id).where(
        Message.project_id == project_id, Message.send_key.in_(list(keys))))}
    todo = [u for k, u in keys.items() if k not in found]
    if todo:
        users = await db.scalars(select(EndUser).where(EndUser.project_id == project_id,
                                                       EndUser.id.in_(todo)))
        rows = [_message_row(project_id, campaign_id, page, user) for user in users]
        if rows:
            await db.execute(pg_insert(Message).values(rows).on_conflict_do_nothing(
                index_elements=["project_id", "send_key"]))
            found.update({k: m for k, m in await db.execute(
                select(Message.send_key, Message.id).where(
                    Message.project_id == project_id,
                    Message.send_key.in_([r["send_key"] for r in rows])))})
    return [(u, found[k]) for k, u in keys.items() if k in found]


def _message_row(project_id: str, campaign_id: str, page: Audience, user: EndUser,
                 ) -> dict[str, Any]:
    """What create_keyed_message stores, for one member (or a failed row saying why)."""
    row: dict[str, Any] = {
        "id": new_id("msg"), "project_id": project_id, "user_id": user.id,
        "channel": page.channel, "transactional": False, "template_id": page.template_id,
        "source": "campaign", "source_id": campaign_id,
        "send_key": send_key(campaign_id, user.id),
    }
    try:
        if page.body is None:
            raise BadRequest("the campaign has no body")
        context = rendering.build_context(user=message_service.user_context(user),
                                          company=page.company)
        subject, body = rendering.render_message(page.channel, page.subject, page.body,
                                                 context)
        to_address = message_service.address_for(page.channel, user)
    except BadRequest as exc:
        return {**row, "subject": None, "body": "", "status": "failed",
                "error": exc.message[:1000], "to_address": None}
    return {**row, "subject": subject, "body": body, "status": "queued", "error": None,
            "to_address": to_address}


async def finish(db: AsyncSession, project_id: str, campaign_id: str, status: str,
                 error: str | None = None) -> str:
    """Close the campaign (SENT, FAILED or CANCELLED) unless it already is closed; a
    cancelled one's recipients not yet sent are marked failed. Returns the final status."""
    campaign = await db.scalar(select(Campaign).where(
        Campaign.project_id == project_id, Campaign.id == campaign_id).with_for_update())
    if campaign is None:
        return "DELETED"
    if campaign.status not in FINAL:
        now = _now()
        campaign.status, campaign.error = status, error
        campaign.completed_at = campaign.updated_at = now
    if campaign.status in ("CANCELLED", "FAILED"):
        await db.execute(
            update(Message).where(Message.project_id == project_id,
                                  Message.source == "campaign",
                                  Message.source_id == campaign_id,
                                  Message.status == "queued")
            .values(status="failed", error=f"campaign {campaign.status.lower()} before "
                                           "this message was sent", updated_at=_now()))
    campaign.recipients = (await stats_for(db, project_id, [campaign_id]))[campaign_id][
        "recipients"]
    return campaign.status
