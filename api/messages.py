"""Messages: send one (POST waits briefly for the outcome), list, get."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import Field, model_validator

from api.deps import SecretKey, SessionDep, StateDep
from api.pagination import PageDep
from api.responses import SECRET_ERRORS, errors
from core.errors import ServiceUnavailable
from core.schemas import ApiModel, ReadModel, UtcDatetime
from core.services import messages as message_service
from workflows.starts import start_send_message

router = APIRouter(prefix="/messages", tags=["messages"])
log = logging.getLogger("retenshun.api.messages")

Channel = Literal["EMAIL", "PUSH", "SMS", "IN_APP"]
Status = Literal["queued", "sent", "delivered", "opened", "clicked", "bounced", "failed",
                 "suppressed"]


class MessageCreate(ApiModel):
    user_id: str = Field(min_length=1, max_length=255)
    channel: Channel
    subject: str | None = Field(None, max_length=2000, description="title for PUSH / IN_APP")
    body: str | None = Field(None, max_length=500_000)
    template_id: str | None = Field(None, description="instead of subject/body")
    data: dict[str, Any] = Field(default_factory=dict, description="extra template variables")
    transactional: bool = Field(
        True, description="true ignores the user's unsubscribe (never a bounce or complaint)"
    )

    @model_validator(mode="after")
    def _content(self) -> MessageCreate:
        if self.template_id and (self.subject is not None or self.body is not None):
            raise ValueError("give either templateId or subject/body, not both")
        if not self.template_id and self.body is None:
            raise ValueError("body (or templateId) is required")
        return self


class MessageOut(ReadModel):
    id: str
    user_id: str
    channel: str
    subject: str | None
    body: str
    status: str
    transactional: bool
    template_id: str | None
    source: str
    error: str | None
    created_at: UtcDatetime
    sent_at: UtcDatetime | None
    updated_at: UtcDatetime

    @classmethod
    def of(cls, message: Any) -> MessageOut:
        out = cls.model_validate(message)
        out.status = message_service.public_status(out.status)
        return out


class MessageList(ReadModel):
    messages: list[MessageOut]
    total: int
    page: int
    limit: int


@router.post("", response_model=MessageOut, status_code=201,
             responses=errors(400, 401, 403, 404, 413, 429, 503))
async def send_message(body: MessageCreate, key: SecretKey, db: SessionDep, state: StateDep,
                       ) -> MessageOut:
    """Render and send one message. Answers `sent` (or `failed` / `suppressed`) when the
    send finishes within a few seconds, else `queued`: poll GET /messages/{id}."""
    message = await message_service.create_api_message(
        db, key.project_id,
        message_service.MessageRequest(
            user_id=body.user_id, channel=body.channel, subject=body.subject, body=body.body,
            template_id=body.template_id, data=body.data, transactional=body.transactional,
        ),
    )
    await db.commit()  # the worker must see the row before the workflow runs
    try:
        client = await state.temporal.client()
        handle = await start_send_message(
            client, state.settings.temporal_task_queue, project_id=key.project_id,
            message_id=message.id, user_id=message.user_id, channel=message.channel,
        )
    except Exception as exc:
        log.error("cannot start the send of %s: %s", message.id, exc)
        await message_service.mark_failed(db, message.id, "Temporal was unavailable")
        await db.commit()
        raise ServiceUnavailable(
            "The workflow engine (Temporal) is unavailable; the message was not sent"
        ) from exc
    try:
        await asyncio.wait_for(handle.result(), state.settings.message_wait_seconds)
    except TimeoutError:
        pass  # still going: answer `queued`
    except Exception as exc:
        log.warning("send workflow of %s ended abnormally: %s", message.id, exc)
    await db.refresh(message)
    return MessageOut.of(message)


@router.get("", response_model=MessageList, responses=SECRET_ERRORS)
async def list_messages(
    key: SecretKey, db: SessionDep, paging: PageDep,
    user_id: Annotated[str | None, Query(alias="userId")] = None,
    channel: Channel | None = None,
    status: Status | None = None,
) -> MessageList:
    """Newest first."""
    messages, total = await message_service.list_messages(
        db, key.project_id, user_id=user_id, channel=channel, status=status,
        page=paging.page, limit=paging.limit,
    )
    return MessageList(messages=[MessageOut.of(m) for m in messages], total=total,
                       page=paging.page, limit=paging.limit)


@router.get("/{message_id}", response_model=MessageOut, responses=SECRET_ERRORS)
async def get_message(message_id: str, key: SecretKey, db: SessionDep) -> MessageOut:
    return MessageOut.of(await message_service.get_message(db, key.project_id, message_id))
