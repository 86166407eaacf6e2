"""A user's in-app inbox: the IN_APP messages delivered to them, read state, and the
X-User-Hash check that lets a browser (public key) read only its own user's inbox."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, case, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.crypto import SecretBox, constant_time_equal, hmac_sha256_hex
from core.errors import NotFound, Unauthorized
from core.models import Message, Project

CHANNEL = "IN_APP"
# A message is in the inbox once it was handed over: queued, failed or suppressed ones
# are not shown.
VISIBLE_STATUSES = ("sent", "delivered", "opened", "clicked")


@dataclass(frozen=True, slots=True)
class InboxPage:
    messages: list[Message]
    total: int
    unread: int


def user_hash(identity_secret: str, user_id: str) -> str:
    """Lowercase hex HMAC-SHA256 of the userId keyed with the project's identity secret."""
    return hmac_sha256_hex(identity_secret, user_id.encode())


async def verify_user_hash(
    db: AsyncSession, secrets: SecretBox, project_id: str, user_id: str,
    presented: str | None,
) -> None:
    """Raise Unauthorized (401) unless `presented` is this user's X-User-Hash."""
    if not presented or not presented.strip():
        raise Unauthorized(
            "Missing X-User-Hash: with a public key the inbox needs the hex HMAC-SHA256 of "
            "the userId keyed with the project's identity secret"
        )
    project = await db.get(Project, project_id)
    assert project is not None, "a key always points at an existing project"
    expected = user_hash(secrets.decrypt(project.identity_secret_enc), user_id)
    if not constant_time_equal(presented.strip().lower(), expected):
        raise Unauthorized("X-User-Hash does not match this userId")


def _visible(project_id: str, user_id: str) -> list[ColumnElement[bool]]:
    return [
        Message.project_id == project_id, Message.user_id == user_id,
        Message.channel == CHANNEL, Message.status.in_(VISIBLE_STATUSES),
    ]


async def list_inbox(
    db: AsyncSession, project_id: str, user_id: str, *, page: int, limit: int
) -> InboxPage:
    """Newest first, with the total and the number still unread."""
    where = _visible(project_id, user_id)
    counts = (await db.execute(
        select(func.count(), func.count().filter(Message.read_at.is_(None))).where(*where)
    )).one()
    rows = await db.scalars(
        select(Message).where(*where)
        .order_by(Message.created_at.desc(), Message.id.desc())
        .offset((page - 1) * limit).limit(limit)
    )
    return InboxPage(messages=list(rows), total=int(counts[0]), unread=int(counts[1]))


async def mark_read(db: AsyncSession, project_id: str, user_id: str, message_id: str) -> None:
    """Idempotent: the first read time is kept. 404 unless the message is in this user's
    inbox."""
    now = datetime.now(UTC)
    result = await db.execute(
        update(Message)
        .where(Message.id == message_id, *_visible(project_id, user_id))
        .values(read_at=func.coalesce(Message.read_at, now),
                updated_at=case((Message.read_at.is_(None), now), else_=Message.updated_at))
        .returning(Message.id)
    )
    if result.first() is None:
        raise NotFound(f"No message {message_id} in the inbox of user {user_id!r}")
