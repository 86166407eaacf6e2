"""Messages: send one (POST waits briefly for the outcome), list, get."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Annotated, Any, Literal

import psycopg
from fastapi import APIRouter, Query, Request
from pydantic import Field, model_validator

from api.deps import SecretKey, SessionDep, StateDep
from api.pagination import PageDep
from api.responses import SECRET_ERRORS, errors
from core.db import libpq_url
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
        """From a Message or a row mapping of API_MESSAGE_COLUMNS."""
        out = cls.model_validate(message)
        out.status = message_service.public_status(out.status)
        return out


class MessageList(ReadModel):
    messages: list[MessageOut]
    total: int
    page: int
    limit: int


class OutcomeListener:
    """One LISTEN connection per API process: POST /messages waits here for the send
    activity's NOTIFY (payload: the message id) instead of long-polling Temporal for the
    workflow's result, which costs the Temporal server a history read per send."""

    RETRY_AFTER = 5.0  # after a failed connect, callers fall back to Temporal this long

    def __init__(self, database_url: str):
        self._url = libpq_url(database_url)
        self._waiters: dict[str, asyncio.Future[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._failed_at = 0.0

    async def register(self, message_id: str) -> asyncio.Future[None] | None:
        """A future set when `message_id` has an outcome; None if not listening (the
        caller then waits on Temporal)."""
        if not self._listening.is_set():
            if time.monotonic() - self._failed_at < self.RETRY_AFTER:
                return None
            if self._task is None or self._task.done():
                self._task = asyncio.create_task(self._run(), name="message-outcomes")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._listening.wait(), 2.0)
            if not self._listening.is_set():
                return None
        future = asyncio.get_running_loop().create_future()
        self._waiters[message_id] = future
        return future

    def discard(self, message_id: str) -> None:
        self._waiters.pop(message_id, None)

    async def _run(self) -> None:
        try:
            async with await psycopg.AsyncConnection.connect(self._url,
                                                             autocommit=True) as conn:
                await conn.execute(f"LISTEN {message_service.OUTCOME_CHANNEL}")
                self._listening.set()
                async for note in conn.notifies():
                    future = self._waiters.get(note.payload)
                    if future is not None and not future.done():
                        future.set_result(None)
        except Exception as exc:
            log.warning("message outcome listener stopped: %s", exc)
            self._failed_at = time.monotonic()
        finally:
            self._listening.clear()
            for future in self._waiters.values():  # their POSTs read the row now
                if not future.done():
                    future.set_result(None)


def _outcomes(request: Request, state: Any) -> OutcomeListener:
    listener: OutcomeListener | None = getattr(request.app.state, "message_outcomes", None)
    if listener is None:
        listener = OutcomeListener(state.settings.database_url)
        request.app.state.message_outcomes = listener
    return listener


@router.post("", response_model=MessageOut, status_code=201,
             responses=errors(400, 401, 403, 404, 413, 429, 503))
async def send_message(body: MessageCreate, key: SecretKey, state: StateDep,
                       request: Request) -> MessageOut:
    """Render and send one message. Answers `sent` (or `failed` / `suppressed`) when the
    send finishes within a few seconds, else `queued`: poll GET /messages/{id}."""
    req = message_service.MessageRequest(
        user_id=body.user_id, channel=body.channel, subject=body.subject, body=body.body,
        template_id=body.template_id, data=body.data, transactional=body.transactional,
    )
    # Stored (committed: autocommit) before the workflow starts, so the worker sees it.
    async with state.raw_pool.connection() as conn:
        message = await message_service.insert_api_message(conn, key.project_id, req)
    message_id = message["id"]
    outcomes = _outcomes(request, state)
    outcome = await outcomes.register(message_id)  # before the start: no NOTIFY missed
    try:
        try:
            handle = await start_send_message(
                await state.temporal.client(), state.settings.temporal_task_queue,
                project_id=key.project_id, message_id=message_id)
        except Exception as exc:
            log.error("cannot start the send of %s: %s", message_id, exc)
            async with state.sessions() as db:
                await message_service.mark_failed(db, message_id, "Temporal was unavailable")
                await db.commit()
            raise ServiceUnavailable(
                "The workflow engine (Temporal) is unavailable; the message was not sent"
            ) from exc
        try:
            await asyncio.wait_for(outcome if outcome is not None else handle.result(),
                                   state.settings.message_wait_seconds)
        except TimeoutError:
            pass  # still going: answer `queued`
        except Exception as exc:
            log.warning("send workflow of %s ended abnormally: %s", message_id, exc)
    finally:
        outcomes.discard(message_id)
    async with state.raw_pool.connection() as conn:
        cur = await conn.execute(
            "SELECT status, error, sent_at, updated_at FROM messages WHERE id = %s",
            (message_id,))
        row = await cur.fetchone()
    if row is not None:
        message.update(status=row[0], error=row[1], sent_at=row[2], updated_at=row[3])
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
