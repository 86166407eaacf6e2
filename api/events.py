"""Events: track (single and batch, public or secret key), list, get, delete."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Header, Query, Response
from pydantic import Field

from api.deps import IngestKey, SecretKey, SessionDep, StateDep
from api.pagination import PageDep
from api.responses import KEY_ERRORS, SECRET_ERRORS
from core.schemas import ApiModel, Deleted, ReadModel, UtcDatetime
from core.services import events as event_service

router = APIRouter(tags=["events"])

UserId = Annotated[str, Field(min_length=1, max_length=255)]
EventName = Annotated[str, Field(min_length=1, max_length=200)]


class EventIn(ApiModel):
    user_id: UserId
    event_name: EventName
    properties: dict[str, Any] = Field(default_factory=dict)
    timestamp: UtcDatetime | None = Field(
        None, description="When it happened (any ISO 8601 offset); default: when it arrived"
    )
    message_id: str | None = Field(
        None, min_length=1, max_length=255,
        description="Idempotency key: a repeat within the project is stored once",
    )

    def to_new(self, idempotency_key: str | None = None) -> event_service.NewEvent:
        return event_service.NewEvent(
            user_id=self.user_id, event_name=self.event_name, properties=self.properties,
            timestamp=self.timestamp, idempotency_key=self.message_id or idempotency_key,
        )


class BatchIn(ApiModel):
    events: list[EventIn] = Field(min_length=1, max_length=1000)


class TrackOut(ReadModel):
    id: str
    status: Literal["ok", "duplicate"]


class BatchOut(ReadModel):
    accepted: int
    duplicates: int
    ids: list[str]


class EventOut(ReadModel):
    id: str
    user_id: str
    event_name: str
    properties: dict[str, Any]
    timestamp: UtcDatetime
    received_at: UtcDatetime


class EventList(ReadModel):
    events: list[EventOut]
    total: int
    page: int
    limit: int


@router.post(
    "/events", response_model=TrackOut, status_code=202,
    responses={200: {"model": TrackOut, "description": "Duplicate: the first event's id"},
               **KEY_ERRORS},
)
async def track_event(
    body: EventIn, key: IngestKey, state: StateDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> Response:
    """Track one event and upsert its user. `messageId` or `Idempotency-Key` make it idempotent."""
    async with state.raw_pool.connection() as conn:
        result = await event_service.track(conn, key.project_id, body.to_new(idempotency_key))
    if result.queued:
        state.outbox_waker.poke()
    # The hot path answers with bytes of its own: the response model is for the docs, and
    # validating and serialising it again cost more than the answer is worth.
    return _json(
        {"id": result.id, "status": "duplicate" if result.duplicate else "ok"},
        200 if result.duplicate else 202,
    )


def _json(content: dict[str, Any], status: int) -> Response:
    return Response(orjson.dumps(content), status, media_type="application/json")


@router.post("/events/batch", response_model=BatchOut, status_code=202, responses=KEY_ERRORS)
async def track_batch(body: BatchIn, key: IngestKey, state: StateDep) -> Response:
    """Up to 1,000 events, validated all-or-nothing and written in one transaction."""
    async with state.raw_pool.connection() as conn:
        result = await event_service.track_batch(
            conn, key.project_id, [e.to_new() for e in body.events]
        )
    if result.queued:
        state.outbox_waker.poke()
    return _json({"accepted": result.accepted, "duplicates": result.duplicates,
                  "ids": result.ids}, 202)


@router.get("/events", response_model=EventList, responses=SECRET_ERRORS)
async def list_events(
    key: SecretKey, db: SessionDep, paging: PageDep,
    user_id: Annotated[str | None, Query(alias="userId")] = None,
    event_name: Annotated[str | None, Query(alias="eventName")] = None,
    start: Annotated[UtcDatetime | None, Query(alias="from")] = None,
    end: Annotated[UtcDatetime | None, Query(alias="to")] = None,
) -> EventList:
    """Newest first. `from`/`to` bound the event's timestamp (inclusive)."""
    events, total = await event_service.list_events(
        db, key.project_id, user_id=user_id, event_name=event_name, start=start, end=end,
        page=paging.page, limit=paging.limit,
    )
    return EventList(
        events=[EventOut.model_validate(e) for e in events], total=total,
        page=paging.page, limit=paging.limit,
    )


@router.get("/events/{event_id}", response_model=EventOut, responses=SECRET_ERRORS)
async def get_event(event_id: str, key: SecretKey, db: SessionDep) -> EventOut:
    return EventOut.model_validate(await event_service.get_event(db, key.project_id, event_id))


@router.delete("/events/{event_id}", response_model=Deleted, responses=SECRET_ERRORS)
async def delete_event(event_id: str, key: SecretKey, db: SessionDep) -> Deleted:
    await event_service.delete_event(db, key.project_id, event_id)
    return Deleted()
