"""Messages: create (render + store) for the API, list/get, unsubscribe tokens, and the
state changes the send activity makes. Services flush; callers commit."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from sqlalchemy import Select, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from core.crypto import constant_time_equal, hmac_sha256_hex
from core.errors import BadRequest, NotFound
from core.ids import new_id
from core.models import EndUser, Message, Project, Template
from core.rendering import build_context, render_message

# Contract statuses; `sending` (claimed by a send attempt) reads as `queued`.
PUBLIC_STATUS = {"sending": "queued"}
FINAL = frozenset({"sent", "delivered", "opened", "clicked", "bounced", "failed", "suppressed"})
# NOTIFY channel: the send activity announces each final outcome of an API message here
# (payload: the message id); POST /messages listens instead of polling Temporal.
OUTCOME_CHANNEL = "retenshun_message_outcome"


def public_status(status: str) -> str:
    return PUBLIC_STATUS.get(status, status)


@dataclass(frozen=True)
class MessageRequest:
    user_id: str
    channel: str
    subject: str | None
    body: str | None
    template_id: str | None
    data: dict[str, Any]
    transactional: bool


def user_context(user: EndUser | None) -> dict[str, Any] | None:
    if user is None:
        return None
    return {"id": user.id, "email": user.email, "properties": user.properties}


async def load_template(db: AsyncSession, project_id: str, template_id: str,
                        channel: str) -> Template:
    template = await db.scalar(
        select(Template).where(Template.project_id == project_id, Template.id == template_id)
    )
    if template is None:
        raise NotFound(f"No template {template_id} in this project")
    if template.channel != channel:
        raise BadRequest(
            f"Template {template_id} is for {template.channel}, not {channel}"
        )
    return template


def address_for(channel: str, user: EndUser) -> str | None:
    """The address a channel needs from the profile (email, or the `phone` property)."""
    return _address(channel, user.id, user.email, user.properties)


def _address(channel: str, user_id: str, email: str | None,
             properties: dict[str, Any] | None) -> str | None:
    if channel == "EMAIL":
        if not email:
            raise BadRequest(f"User {user_id!r} has no email address: set it with /identify")
        return email
    if channel == "SMS":
        phone = (properties or {}).get("phone")
        if not phone:
            raise BadRequest(f"User {user_id!r} has no `phone` property for SMS")
        return str(phone)
    return None


# What POST /messages answers (MessageOut's fields), as stored.
API_MESSAGE_COLUMNS = ("id, user_id, channel, subject, body, status, transactional, "
                       "template_id, source, error, created_at, sent_at, updated_at")


async def insert_api_message(conn: psycopg.AsyncConnection[Any], project_id: str,
                             req: MessageRequest) -> dict[str, Any]:
    """POST /messages' hot path on a raw autocommit connection: the user and the
    project's name in one statement, the template if any, render, then one INSERT that
    returns the stored row (a fresh id is its own send key, so no key check is needed).
    Same checks, order and errors as create_api_message."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT u.email, u.properties, p.name AS company FROM users u "
        "JOIN projects p ON p.id = u.project_id WHERE u.project_id = %s AND u.id = %s",
        (project_id, req.user_id))
    user = await cur.fetchone()
    if user is None:
        raise NotFound(f"No user {req.user_id!r} in this project: identify them first")
    subject, body, channel = req.subject, req.body, req.channel
    if req.template_id:
        await cur.execute("SELECT channel, subject, body FROM templates "
                          "WHERE project_id = %s AND id = %s", (project_id, req.template_id))
        template = await cur.fetchone()
        if template is None:
            raise NotFound(f"No template {req.template_id} in this project")
        if template["channel"] != channel:
            raise BadRequest(f"Template {req.template_id} is for {template['channel']}, "
                             f"not {channel}")
        subject, body = template["subject"], template["body"]
    if body is None:
        raise BadRequest("A message needs a body or a templateId")
    if channel == "EMAIL" and not subject:
        raise BadRequest("An EMAIL needs a subject (or a template with one)")
    context = build_context(
        user={"id": req.user_id, "email": user["email"], "properties": user["properties"]},
        company=user["company"] or "", event=None, data=req.data)
    rendered_subject, rendered_body = render_message(channel, subject, body, context)
    to_address = _address(channel, req.user_id, user["email"], user["properties"])
    message_id = new_id("msg")
    await cur.execute(
        "INSERT INTO messages (id, project_id, user_id, channel, subject, body, status, "
        "transactional, template_id, source, send_key, to_address) "
        "VALUES (%s, %s, %s, %s, %s, %s, 'queued', %s, %s, 'api', %s, %s) "
        f"RETURNING {API_MESSAGE_COLUMNS}",
        (message_id, project_id, req.user_id, channel, rendered_subject, rendered_body,
         req.transactional, req.template_id, message_id, to_address))
    row = await cur.fetchone()
    assert row is not None
    return row


async def create_api_message(db: AsyncSession, project_id: str, req: MessageRequest) -> Message:
    """Render (inline content is a template too) and store a queued message."""
    user = await db.get(EndUser, (project_id, req.user_id))
    if user is None:
        raise NotFound(f"No user {req.user_id!r} in this project: identify them first")
    message_id = new_id("msg")
    message = await create_keyed_message(
        db, project_id, user, channel=req.channel, subject=req.subject, body=req.body,
        template_id=req.template_id, data=req.data, transactional=req.transactional,
        source="api", source_id=None, send_key=message_id, message_id=message_id,
    )
    assert message is not None, "a fresh send key cannot exist yet"
    return message


async def create_keyed_message(
    db: AsyncSession, project_id: str, user: EndUser, *, channel: str, subject: str | None,
    body: str | None, template_id: str | None, send_key: str, source: str,
    source_id: str | None, transactional: bool, data: dict[str, Any] | None = None,
    event: dict[str, Any] | None = None, company: str | None = None,
    message_id: str | None = None,
) -> Message | None:
    """Render for `user` and store a queued message under `send_key` (unique per project):
    None when that key already has a message, so a retried caller never makes two.
    Used by API sends, automation steps (`{workflowId}:{step}`) and campaigns
    (`campaign:{id}:{userId}`)."""
    existing = await db.scalar(select(Message.id).where(
        Message.project_id == project_id, Message.send_key == send_key))
    if existing is not None:
        return None
    if template_id:
        template = await load_template(db, project_id, template_id, channel)
        subject, body = template.subject, template.body
    if body is None:
        raise BadRequest("A message needs a body or a templateId")
    if channel == "EMAIL" and not subject:
        raise BadRequest("An EMAIL needs a subject (or a template with one)")
    if company is None:
        company = await db.scalar(select(Project.name).where(Project.id == project_id)) or ""
    context = build_context(user=user_context(user), company=company, event=event, data=data)
    rendered_subject, rendered_body = render_message(channel, subject, body, context)
    message = Message(
        id=message_id or new_id("msg"), project_id=project_id, user_id=user.id,
        channel=channel, subject=rendered_subject, body=rendered_body, status="queued",
        transactional=transactional, template_id=template_id, source=source,
        source_id=source_id, send_key=send_key, to_address=address_for(channel, user),
    )
    # ON CONFLICT: two concurrent callers with one key still store a single message.
    inserted = await db.scalar(
        pg_insert(Message).values(
            {c.key: getattr(message, c.key) for c in Message.__table__.columns
             if getattr(message, c.key) is not None}
        ).on_conflict_do_nothing(index_elements=["project_id", "send_key"])
        .returning(Message.id)
    )
    if inserted is None:
        return None
    return await db.get(Message, inserted)


def _filtered(project_id: str, user_id: str | None, channel: str | None,
              status: str | None) -> Select[tuple[Message]]:
    query = select(Message).where(Message.project_id == project_id)
    if user_id is not None:
        query = query.where(Message.user_id == user_id)
    if channel is not None:
        query = query.where(Message.channel == channel)
    if status is not None:
        statuses = ["queued", "sending"] if status == "queued" else [status]
        query = query.where(Message.status.in_(statuses))
    return query


async def list_messages(db: AsyncSession, project_id: str, *, user_id: str | None,
                        channel: str | None, status: str | None, page: int, limit: int,
                        ) -> tuple[list[Message], int]:
    query = _filtered(project_id, user_id, channel, status)
    total = await db.scalar(select(func.count()).select_from(query.subquery()))
    rows = await db.scalars(query.order_by(Message.created_at.desc(), Message.id.desc())
                            .offset((page - 1) * limit).limit(limit))
    return list(rows), int(total or 0)


async def get_message(db: AsyncSession, project_id: str, message_id: str) -> Message:
    message = await db.scalar(
        select(Message).where(Message.project_id == project_id, Message.id == message_id)
    )
    if message is None:
        raise NotFound(f"No message {message_id} in this project")
    return message


async def mark_failed(db: AsyncSession, message_id: str, reason: str) -> None:
    await db.execute(
        update(Message)
        .where(Message.id == message_id, Message.status.in_(("queued", "sending")))
        .values(status="failed", error=reason, updated_at=datetime.now(UTC))
    )


# --- one-click unsubscribe (RFC 8058) tokens: no login, signed with the server secret ---


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsubscribe_token(signing_keys: list[str], project_id: str, user_id: str) -> str:
    payload = _b64(f"{project_id}\n{user_id}".encode())
    return f"{payload}.{hmac_sha256_hex(signing_keys[0], payload.encode())}"


def read_unsubscribe_token(signing_keys: list[str], token: str) -> tuple[str, str]:
    payload, _, signature = token.partition(".")
    if not any(constant_time_equal(signature, hmac_sha256_hex(k, payload.encode()))
               for k in signing_keys):
        raise BadRequest("This unsubscribe link is invalid")
    try:
        project_id, _, user_id = base64.urlsafe_b64decode(payload + "==").decode().partition("\n")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise BadRequest("This unsubscribe link is invalid") from exc
    return project_id, user_id


def signing_keys(secret_key: str) -> list[str]:
    """Unsubscribe links are signed with the first RETENSHUN_SECRET_KEY and checked against
    all of them, so rotation does not break links already sent."""
    return ["unsubscribe:" + k.strip() for k in secret_key.split(",") if k.strip()]


async def unsubscribe(db: AsyncSession, project_id: str, user_id: str) -> bool:
    result = await db.execute(
        update(EndUser).where(EndUser.project_id == project_id, EndUser.id == user_id)
        .values(subscribed=False, updated_at=datetime.now(UTC), membership_stale=True)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
