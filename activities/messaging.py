"""The send activity: exactly one delivery per message, whatever crashes or retries.

A send goes: lock the row -> checks (suppression, unsubscribe, channel) -> claim it
(`sending`, committed) -> call the provider -> record the outcome. A retry that finds
the claim of an attempt that died mid-call does not call the provider again: it cannot
know whether the provider accepted, and a duplicate is the worse failure for a user's
inbox. A transient provider error releases the claim before the retry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.providers.base import (
    OutboundMessage,
    PermanentSendError,
    ProviderResult,
    TransientSendError,
)
from activities.providers.registry import build_provider
from core.crypto import SecretBox
from core.db import session_scope
from core.models import Automation, EndUser, Message, Suppression
from core.rendering import html_to_text
from core.services import channels as channel_service
from core.services import messages as message_service
from core.services import webhooks as webhook_service
from core.settings import Settings

log = logging.getLogger("retenshun.activities.messaging")
INTERRUPTED_NOTE = (
    "a previous send attempt was interrupted after the provider call began; "
    "not sent again, to avoid a duplicate"
)


@dataclass
class DeliverInput:
    project_id: str
    message_id: str


@dataclass
class DeliverResult:
    status: str  # a contract status: sent, failed, suppressed, ...
    error: str | None = None


@dataclass
class MarkFailedInput:
    project_id: str
    message_id: str
    reason: str


def _now() -> datetime:
    return datetime.now(UTC)


class MessagingActivities:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], secrets: SecretBox,
                 settings: Settings, http: httpx.AsyncClient):
        self._sessions = sessions
        self._secrets = secrets
        self._settings = settings
        self._http = http
        self._signing_keys = message_service.signing_keys(settings.secret_key)

    @activity.defn(name="deliver_message")
    async def deliver(self, input: DeliverInput) -> DeliverResult:
        return await self.deliver_message(input.project_id, input.message_id)

    async def deliver_message(self, project_id: str, message_id: str) -> DeliverResult:
        """Deliver one stored message exactly once. Safe to call again for the same id
        (from a retry, or from a batch activity such as a campaign page)."""
        input = DeliverInput(project_id, message_id)
        prepared = await self._prepare(input)
        if isinstance(prepared, DeliverResult):
            return prepared
        provider, outbound = prepared
        try:
            result = await provider.send(outbound)
        except PermanentSendError as exc:
            await self._finish(input.message_id, status="failed", error=str(exc),
                               dropped=getattr(exc, "dropped_subscriptions", []))
            return DeliverResult("failed", str(exc))
        except BaseException as exc:
            # Transient (or unexpected): release the claim so the retry sends.
            await self._release(input.message_id)
            if isinstance(exc, TransientSendError):
                raise ApplicationError(str(exc), type="TransientSendError") from exc
            raise
        await self._record_sent(input, result)
        return DeliverResult("sent")

    @activity.defn(name="mark_message_failed")
    async def mark_failed(self, input: MarkFailedInput) -> None:
        async with session_scope(self._sessions) as db:
            await message_service.mark_failed(db, input.message_id, input.reason)

    async def _prepare(self, input: DeliverInput) -> DeliverResult | tuple[Any, OutboundMessage]:
        """Checks and the claim, in one committed transaction holding the row lock."""
        async with session_scope(self._sessions) as db:
            message = await db.scalar(
                select(Message)
                .where(Message.id == input.message_id, Message.project_id == input.project_id)
                .with_for_update()
            )
            if message is None:
                raise ApplicationError(f"message {input.message_id} does not exist (deleted?)",
                                       non_retryable=True)
            if message.status in message_service.FINAL:
                return DeliverResult(message_service.public_status(message.status),
                                     message.error)
            if message.status == "sending":
                log.warning("message %s: %s", message.id, INTERRUPTED_NOTE)
                self._set(message, status="sent", error=INTERRUPTED_NOTE, sent_at=_now())
                return DeliverResult("sent")
            user = await db.get(EndUser, (message.project_id, message.user_id))
            if user is None:
                self._set(message, status="failed", error="the user no longer exists")
                return DeliverResult("failed", message.error)
            reason = await self._suppression(db, message, user) or await self._stale_source(
                db, message)
            if reason:
                self._set(message, status="suppressed", error=reason)
                return DeliverResult("suppressed", reason)
            if message.channel == "IN_APP":  # the row is the inbox entry
                self._set(message, status="sent", provider="IN_APP", sent_at=_now())
                return DeliverResult("sent")
            try:
                provider = await self._provider(db, message)
            except PermanentSendError as exc:
                self._set(message, status="failed", error=str(exc))
                return DeliverResult("failed", str(exc))
            outbound = self._outbound(message, user)
            self._set(message, status="sending")
        return provider, outbound

    async def _suppression(self, db: AsyncSession, message: Message, user: EndUser) -> str | None:
        if message.channel == "EMAIL" and message.to_address:
            reason = await db.scalar(select(Suppression.reason).where(
                Suppression.project_id == message.project_id,
                Suppression.address == message.to_address.lower()))
            if reason:
                return f"address suppressed after a {reason} message"
        if not message.transactional and not user.subscribed:
            return "user unsubscribed"
        return None

    async def _stale_source(self, db: AsyncSession, message: Message) -> str | None:
        """An automation made inactive or deleted sends nothing more, even for a message
        already created by a running enrollment."""
        if message.source != "automation" or not message.source_id:
            return None
        active = await db.scalar(select(Automation.active).where(
            Automation.id == message.source_id, Automation.project_id == message.project_id))
        if active is None:
            return "automation deleted"
        return None if active else "automation inactive"

    async def _provider(self, db: AsyncSession, message: Message) -> Any:
        channels = await channel_service.load(db, self._secrets, message.project_id,
                                              self._settings.smtp_catcher)
        webhook_secret = None
        if message.channel == "PUSH" and channels.get("pushProvider") == "WEBHOOK":
            webhook_secret = await webhook_service.project_secret(
                db, self._secrets, message.project_id)
        return build_provider(message.channel, channels, http=self._http,
                              webhook_secret=webhook_secret)

    def _outbound(self, message: Message, user: EndUser) -> OutboundMessage:
        unsubscribe_url = None
        if message.channel == "EMAIL" and not message.transactional:
            token = message_service.unsubscribe_token(self._signing_keys, message.project_id,
                                                      message.user_id)
            unsubscribe_url = f"{self._settings.public_url.rstrip('/')}/api/v1/unsubscribe/{token}"
        return OutboundMessage(
            message_id=message.id, project_id=message.project_id, user_id=message.user_id,
            channel=message.channel, to=message.to_address, subject=message.subject,
            body=message.body,
            text=html_to_text(message.body) if message.channel == "EMAIL" else None,
            transactional=message.transactional, unsubscribe_url=unsubscribe_url,
            user_properties=dict(user.properties or {}),
        )

    @staticmethod
    def _set(message: Message, **values: Any) -> None:
        for name, value in values.items():
            setattr(message, name, value)
        message.updated_at = _now()

    async def _finish(self, message_id: str, *, dropped: list[str], **values: Any) -> None:
        async with session_scope(self._sessions) as db:
            await db.execute(update(Message).where(Message.id == message_id)
                             .values(**values, updated_at=_now()))
            if dropped:
                await self._drop_subscriptions(db, message_id, dropped)

    async def _release(self, message_id: str) -> None:
        async with session_scope(self._sessions) as db:
            await db.execute(update(Message)
                             .where(Message.id == message_id, Message.status == "sending")
                             .values(status="queued", updated_at=_now()))

    async def _record_sent(self, input: DeliverInput, result: ProviderResult) -> None:
        async with session_scope(self._sessions) as db:
            await db.execute(
                update(Message).where(Message.id == input.message_id)
                .values(status="sent", sent_at=_now(), provider=result.provider,
                        provider_message_id=result.provider_message_id, updated_at=_now())
            )
            if result.dropped_subscriptions:
                await self._drop_subscriptions(db, input.message_id,
                                               result.dropped_subscriptions)

    async def _drop_subscriptions(self, db: AsyncSession, message_id: str,
                                  endpoints: list[str]) -> None:
        """Web Push endpoints that answered 404/410 are gone for good: forget them."""
        message = await db.get(Message, message_id)
        assert message is not None
        user = await db.scalar(
            select(EndUser).where(EndUser.project_id == message.project_id,
                                  EndUser.id == message.user_id).with_for_update())
        if user is None:
            return
        subs = (user.properties or {}).get("webPushSubscriptions") or []
        kept = [s for s in subs if not (isinstance(s, dict) and s.get("endpoint") in endpoints)]
        user.properties = {**user.properties, "webPushSubscriptions": kept}
        user.updated_at = _now()
