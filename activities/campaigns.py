"""Campaign activities: the wake-up check, one page of sends, and the close.

A page is up to `limit` members in user-id order, sent with bounded concurrency (and
paced to the campaign's `rateLimit`). Each recipient's message is stored once under
`campaign:{id}:{userId}` and delivered by MessagingActivities.deliver_message, which is
exactly-once per message: a page retried after a crash or a transient provider error
finds the messages already sent and sends only the rest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.messaging import MessagingActivities
from core.db import session_scope
from core.errors import RetenshunError
from core.services import campaigns as campaign_service

log = logging.getLogger("retenshun.activities.campaigns")

# A rate-limited page holds about this many seconds of sending, so it heartbeats and
# finishes well inside its timeout whatever the rate.
PAGE_SECONDS_AT_RATE = 30


@dataclass
class CampaignRef:
    project_id: str
    campaign_id: str


@dataclass
class BeginInput:
    project_id: str
    campaign_id: str
    now: str | None = None  # the workflow's clock (ISO); None: this machine's


@dataclass
class BeginResult:
    action: str  # send | wait | stop
    status: str
    scheduled_at: str | None = None  # ISO, with action "wait"


@dataclass
class PlanInput:
    project_id: str
    campaign_id: str
    after: str | None = None  # the last user id already covered
    page_size: int = 500
    max_pages: int = 20
    parallel_pages: int = 1  # pages sent at once (shares the campaign's rateLimit)


@dataclass
class PageRange:
    after: str | None
    upto: str


@dataclass
class PlanResult:
    ranges: list[PageRange]
    stopped: bool = False  # the campaign is no longer SENDING (cancelled)


@dataclass
class PageInput:
    project_id: str
    campaign_id: str
    after: str | None  # members with after < user id <= upto
    upto: str
    concurrency: int = 16
    rate_share: int = 1  # this page sends at rateLimit / rate_share


@dataclass
class PageResult:
    last_user_id: str | None = None
    count: int = 0
    done: bool = False
    stopped: bool = False  # the campaign is no longer SENDING (cancelled)
    sent: int = 0
    failed: int = 0
    suppressed: int = 0


@dataclass
class FinishInput:
    project_id: str
    campaign_id: str
    status: str  # SENT | FAILED | CANCELLED
    error: str | None = None


class _Pacer:
    """At most `rate` starts per second across the page's concurrent sends."""

    def __init__(self, rate: float):
        self.interval = 1.0 / rate
        self.next = time.monotonic()

    async def wait(self) -> None:
        now = time.monotonic()
        slot = max(self.next, now)
        self.next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


class CampaignActivities:
    def __init__(self, sessions: async_sessionmaker[AsyncSession],
                 messaging: MessagingActivities):
        self._sessions = sessions
        self._messaging = messaging

    @activity.defn(name="begin_campaign")
    async def begin(self, input: BeginInput) -> BeginResult:
        now = datetime.fromisoformat(input.now) if input.now else None
        async with session_scope(self._sessions) as db:
            begin = await campaign_service.begin_send(db, input.project_id, input.campaign_id,
                                                      now)
        return BeginResult(begin.action, begin.status,
                           begin.scheduled_at.isoformat() if begin.scheduled_at else None)

    @activity.defn(name="plan_campaign_pages")
    async def plan(self, input: PlanInput) -> PlanResult:
        """The next pages of the audience as user-id ranges (one indexed scan)."""
        try:
            async with session_scope(self._sessions) as db:
                rate = (await campaign_service.get_campaign(
                    db, input.project_id, input.campaign_id)).rate_limit
                page_size = input.page_size
                if rate:  # a page holds ~PAGE_SECONDS_AT_RATE seconds of its share
                    share = rate / max(1, input.parallel_pages)
                    page_size = max(1, min(page_size, int(share * PAGE_SECONDS_AT_RATE)))
                status, ranges = await campaign_service.plan_pages(
                    db, input.project_id, input.campaign_id, input.after, page_size,
                    input.max_pages)
        except RetenshunError as exc:  # deleted campaign/segment: give up
            raise ApplicationError(exc.message, type="CampaignUnsendable",
                                   non_retryable=True) from exc
        return PlanResult([PageRange(a, b) for a, b in ranges], stopped=status != "SENDING")

    @activity.defn(name="send_campaign_page")
    async def send_page(self, input: PageInput) -> PageResult:
        try:
            async with session_scope(self._sessions) as db:
                page = await campaign_service.audience_page(
                    db, input.project_id, input.campaign_id, input.after, input.upto)
        except RetenshunError as exc:  # deleted campaign/segment/template: give up
            raise ApplicationError(exc.message, type="CampaignUnsendable",
                                   non_retryable=True) from exc
        if page.status != "SENDING":
            return PageResult(stopped=True)
        result = PageResult(count=len(page.user_ids), done=False, last_user_id=input.upto)
        async with session_scope(self._sessions) as db:
            recipients = await campaign_service.page_messages(
                db, input.project_id, input.campaign_id, page)
        semaphore = asyncio.Semaphore(max(1, input.concurrency))
        pacer = (_Pacer(page.rate_limit / max(1, input.rate_share)) if page.rate_limit
                 else None)
        deferred: list[str] = []

        async def one(user_id: str, message_id: str) -> None:
            async with semaphore:
                if pacer is not None:
                    await pacer.wait()
                try:
                    outcome = await self._messaging.deliver_message(input.project_id,
                                                                    message_id)
                except ApplicationError as exc:  # transient: the page is retried
                    deferred.append(f"{user_id}: {exc.message}")
                    return
                if outcome.status == "suppressed":
                    result.suppressed += 1
                elif outcome.status == "failed":
                    result.failed += 1
                else:
                    result.sent += 1
                activity.heartbeat(user_id)

        outcomes = await asyncio.gather(*(one(u, m) for u, m in recipients),
                                        return_exceptions=True)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if errors:  # every send of the page has ended; the retry redoes only the unsent
            raise errors[0]
        if deferred:
            raise ApplicationError(
                f"{len(deferred)} of {len(page.user_ids)} sends deferred by the provider; "
                f"retrying the page (sent ones are not sent again). First: {deferred[0]}",
                type="TransientSendError")
        return result

    @activity.defn(name="finish_campaign")
    async def finish(self, input: FinishInput) -> str:
        async with session_scope(self._sessions) as db:
            return await campaign_service.finish(db, input.project_id, input.campaign_id,
                                                 input.status, input.error)
