"""Processing a verified delivery receipt: message status, suppression, unsubscribe, and
an event on the user's timeline (`message.delivered`, ...) that automations can use."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity

from core.db import session_scope
from core.ids import new_id
from core.models import EndUser, Event, Message, Suppression, WebhookReceipt

# Engagement only moves forward: a late `delivered` never undoes an `opened`.
_RANK = {"queued": 0, "sending": 0, "sent": 1, "delivered": 2, "opened": 3, "clicked": 4}
_STATUS_FOR = {"message.delivered": "delivered", "message.opened": "opened",
               "message.clicked": "clicked"}


@dataclass
class ProcessReceiptInput:
    project_id: str
    receipt_id: str


@dataclass
class ProcessReceiptResult:
    outcome: str


def our_message_id(raw: str) -> str:
    """Accept `msg_x`, or the Message-ID header we set: `<msg_x@retenshun>`."""
    return raw.strip().removeprefix("<").removesuffix(">").split("@", 1)[0]


class ReceiptActivities:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]):
        self._sessions = sessions

    @activity.defn(name="process_receipt")
    async def process(self, input: ProcessReceiptInput) -> ProcessReceiptResult:
        async with session_scope(self._sessions) as db:
            receipt = await db.scalar(
                select(WebhookReceipt).where(WebhookReceipt.project_id == input.project_id,
                                             WebhookReceipt.id == input.receipt_id)
                .with_for_update())
            if receipt is None:
                return ProcessReceiptResult("receipt not found")
            if receipt.processed_at is not None:
                return ProcessReceiptResult(receipt.outcome or "already processed")
            outcome = await self._apply(db, receipt)
            receipt.processed_at = datetime.now(UTC)
            receipt.outcome = outcome
            return ProcessReceiptResult(outcome)

    async def _apply(self, db: AsyncSession, receipt: WebhookReceipt) -> str:
        data: dict[str, Any] = receipt.payload.get("data") or {}
        raw_id = str(data.get("messageId") or "")
        if not raw_id:
            return "ignored: no data.messageId"
        message = await db.scalar(
            select(Message).where(
                Message.project_id == receipt.project_id,
                or_(Message.id == our_message_id(raw_id), Message.provider_message_id == raw_id),
            ).with_for_update())
        if message is None:
            return f"ignored: no message {raw_id}"
        outcome = await self._update_message(db, receipt.event, data, message)
        await db.execute(
            insert(Event).values(
                id=new_id("evt"), project_id=receipt.project_id, user_id=message.user_id,
                event_name=receipt.event,
                properties={"messageId": message.id, "channel": message.channel,
                            **{k: v for k, v in data.items() if k != "messageId"}},
                timestamp=datetime.now(UTC), idempotency_key=f"receipt:{receipt.id}",
            ).on_conflict_do_nothing(
                index_elements=["project_id", "idempotency_key"],
                index_where=Event.idempotency_key.isnot(None),
            )
        )
        return outcome

    async def _update_message(self, db: AsyncSession, event: str, data: dict[str, Any],
                              message: Message) -> str:
        now = datetime.now(UTC)
        current_rank = _RANK.get(message.status, 99)
        if event in _STATUS_FOR:
            new = _STATUS_FOR[event]
            if _RANK[new] > current_rank:
                message.status, message.updated_at = new, now
            return f"{message.id} {message.status}"
        if event == "message.bounced":
            hard = str(data.get("bounceType") or "hard").lower() != "soft"
            if current_rank <= _RANK["delivered"]:
                message.status, message.updated_at = "bounced", now
                message.error = f"{'hard' if hard else 'soft'} bounce"
            if hard:
                await self._suppress(db, message, "bounced")
            return f"{message.id} bounced ({'hard' if hard else 'soft'})"
        if event == "message.failed":
            if current_rank <= _RANK["delivered"]:
                message.status, message.updated_at = "failed", now
                message.error = str(data.get("reason") or "provider reported failure")
            return f"{message.id} failed"
        if event == "message.complained":
            await self._suppress(db, message, "complained")
            return f"{message.id} complaint: address suppressed"
        if event == "message.unsubscribed":
            user = await db.get(EndUser, (message.project_id, message.user_id))
            if user is not None:
                user.subscribed, user.updated_at = False, now
            return f"{message.user_id} unsubscribed"
        return f"ignored: {event}"

    async def _suppress(self, db: AsyncSession, message: Message, reason: str) -> None:
        if not message.to_address:
            return
        await db.execute(
            insert(Suppression).values(
                project_id=message.project_id, address=message.to_address.lower(),
                reason=reason, message_id=message.id,
            ).on_conflict_do_nothing()
        )
