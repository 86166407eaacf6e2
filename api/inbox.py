"""In-app inbox: a user's IN_APP messages and their read state, for the app to show.

With a public key (a browser or mobile app) every request must carry `X-User-Hash`, the
lowercase hex HMAC-SHA256 of the userId keyed with the project's identity secret
(`identitySecret` in `GET /api-keys`), computed by the customer's own server. A missing
or wrong hash is a 401. With a secret key no hash is needed.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path
from pydantic import Field

from api.deps import AnyKey, KeyContext, SessionDep, StateDep
from api.pagination import PageDep
from api.responses import errors
from core.schemas import ReadModel, UtcDatetime
from core.services import inbox as inbox_service

router = APIRouter(tags=["inbox"])

UserIdPath = Annotated[str, Path(min_length=1, max_length=255)]
INBOX_ERRORS = errors(400, 401, 404, 413, 429)
INBOX_ERRORS[401] = {
    **INBOX_ERRORS[401],
    "description": "Missing, unknown or revoked API key; or, with a public key, a missing or "
                   "wrong X-User-Hash",
}


async def inbox_reader(
    user_id: UserIdPath, key: AnyKey, db: SessionDep, state: StateDep,
    x_user_hash: Annotated[str | None, Header(
        description="Required with a public key: hex HMAC-SHA256 of the userId keyed with "
                    "the project's identity secret",
    )] = None,
) -> KeyContext:
    """Any key; a public key also proves it speaks for this user with X-User-Hash."""
    if key.kind != "secret":
        await inbox_service.verify_user_hash(db, state.secrets, key.project_id, user_id,
                                             x_user_hash)
    return key


InboxReader = Annotated[KeyContext, Depends(inbox_reader)]


class InboxMessage(ReadModel):
    id: str
    title: str | None = Field(description="The message's subject")
    body: str
    read: bool
    read_at: UtcDatetime | None
    created_at: UtcDatetime


class Inbox(ReadModel):
    messages: list[InboxMessage]
    total: int
    page: int
    limit: int
    unread: int = Field(description="How many of all the user's inbox messages are unread")


class ReadOut(ReadModel):
    read: bool = True


@router.get("/inbox/{user_id}", response_model=Inbox, status_code=200,
            responses=INBOX_ERRORS)
async def get_inbox(user_id: UserIdPath, key: InboxReader, db: SessionDep,
                    paging: PageDep) -> Inbox:
    """The user's delivered IN_APP messages, newest first, with the unread count.
    Public key: needs `X-User-Hash` (401 when missing or wrong)."""
    inbox = await inbox_service.list_inbox(db, key.project_id, user_id, page=paging.page,
                                           limit=paging.limit)
    return Inbox(
        messages=[
            InboxMessage(id=m.id, title=m.subject, body=m.body, read=m.read_at is not None,
                         read_at=m.read_at, created_at=m.created_at)
            for m in inbox.messages
        ],
        total=inbox.total, page=paging.page, limit=paging.limit, unread=inbox.unread,
    )


@router.post("/inbox/{user_id}/{message_id}/read", response_model=ReadOut, status_code=200,
             responses=INBOX_ERRORS)
async def mark_read(user_id: UserIdPath, message_id: str, key: InboxReader,
                    db: SessionDep) -> ReadOut:
    """Mark one message read (idempotent: the first read time is kept). 404 when it is not
    in this user's inbox. Public key: needs `X-User-Hash` (401 when missing or wrong)."""
    await inbox_service.mark_read(db, key.project_id, user_id, message_id)
    return ReadOut()
