"""Inbound delivery receipts: the project's signing secret, signature checks, storage."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from core.crypto import SecretBox, constant_time_equal, hmac_sha256_hex
from core.errors import Unauthorized
from core.ids import random_token
from core.models import Project, WebhookReceipt

TOLERANCE_SECONDS = 300
RECEIPT_EVENTS = frozenset({
    "message.delivered", "message.opened", "message.clicked", "message.bounced",
    "message.complained", "message.failed", "message.unsubscribed",
})


async def has_secret(db: AsyncSession, project_id: str) -> bool:
    return bool(await db.scalar(select(Project.webhook_secret_enc).where(Project.id == project_id)))


async def rotate_secret(db: AsyncSession, secrets: SecretBox, project_id: str) -> str:
    secret = "whsec_" + random_token(32)
    project = await db.get(Project, project_id)
    assert project is not None
    project.webhook_secret_enc = secrets.encrypt(secret)
    await db.flush()
    return secret


async def project_secret(db: AsyncSession, secrets: SecretBox, project_id: str) -> str | None:
    enc = await db.scalar(select(Project.webhook_secret_enc).where(Project.id == project_id))
    return secrets.decrypt(enc) if enc else None


def verify_signature(secret: str, body: bytes, signature: str | None,
                     timestamp: str | None, now: float | None = None) -> None:
    """X-Signature = hex HMAC-SHA256 of the raw body, or of "{timestamp}.{body}" when
    X-Timestamp is sent (which must then be within 5 minutes). Constant-time compare."""
    if not signature:
        raise Unauthorized("Missing X-Signature header")
    sent = signature.strip().removeprefix("sha256=").lower()
    if timestamp is not None:
        try:
            ts = int(timestamp)
        except ValueError as exc:
            raise Unauthorized("X-Timestamp must be Unix seconds") from exc
        if abs((now or time.time()) - ts) > TOLERANCE_SECONDS:
            raise Unauthorized("X-Timestamp is more than 5 minutes away from now")
        payload = f"{ts}.".encode() + body
    else:
        payload = body
    if not constant_time_equal(sent, hmac_sha256_hex(secret, payload)):
        raise Unauthorized("Invalid webhook signature")


def receipt_id(body: bytes, parsed: dict[str, Any], header_id: str | None) -> str:
    """The body's `id`, else X-Webhook-Id, else a hash of the body (so exact replays dedupe)."""
    given = parsed.get("id") or header_id
    if given:
        return str(given)[:200]
    return "sha256:" + hashlib.sha256(body).hexdigest()


@dataclass(frozen=True)
class StoredReceipt:
    id: str
    new: bool
    processed: bool


async def store_receipt(db: AsyncSession, project_id: str, rid: str, event: str,
                        payload: dict[str, Any]) -> StoredReceipt:
    inserted = await db.scalar(
        insert(WebhookReceipt)
        .values(project_id=project_id, id=rid, event=event, payload=payload)
        .on_conflict_do_nothing()
        .returning(WebhookReceipt.id)
    )
    if inserted is not None:
        return StoredReceipt(rid, new=True, processed=False)
    processed_at = await db.scalar(
        select(WebhookReceipt.processed_at).where(
            WebhookReceipt.project_id == project_id, WebhookReceipt.id == rid)
    )
    return StoredReceipt(rid, new=False, processed=processed_at is not None)
