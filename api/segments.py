"""Segments: rules over profiles and events; list (with userCount), CRUD, exact estimate."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import Field, field_validator

from api.deps import SecretKey, SessionDep
from api.pagination import PageDep
from api.responses import SECRET_ERRORS, errors
from core.schemas import ApiModel, Deleted, ReadModel, UtcDatetime
from core.services import segments as segment_service

router = APIRouter(tags=["segments"])

Name = Annotated[str, Field(min_length=1, max_length=200)]
Description = Annotated[str | None, Field(max_length=2000)]
RULES_DOC = (
    "All must hold. A rule is `{field, operator, value}` (a built-in field: userId, email, "
    "firstSeen, lastSeen, eventCount, sessionCount, subscribed; any other name is a "
    "profile property, dots for nested ones), `{event, operator, value, withinDays?}` "
    "(how many times the user did that event) or `{any: [...]}` / `{all: [...]}`. "
    "Operators: eq neq gt gte lt lte contains not_contains starts_with in not_in exists "
    "not_exists before after within_last_days. See docs/segments-and-campaigns.md."
)
Rules = Annotated[list[Any], Field(description=RULES_DOC, examples=[
    [{"field": "sessionCount", "operator": "gte", "value": 10}]])]


class SegmentIn(ApiModel):
    """POST and PUT (which replaces every editable field)."""

    name: Name
    description: Description = None
    rules: Rules

    def to_fields(self) -> segment_service.SegmentFields:
        return segment_service.SegmentFields(name=self.name, description=self.description,
                                             rules=self.rules)


class SegmentPatch(ApiModel):
    """Only the fields sent change."""

    name: Name | None = None
    description: Description = None
    rules: Rules | None = None

    @field_validator("name", "rules")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("may not be null")
        return value


class EstimateIn(ApiModel):
    rules: Rules


class EstimateOut(ReadModel):
    estimated_count: int = Field(description="Exact number of matching users right now")


class SegmentOut(ReadModel):
    id: str
    name: str
    description: str | None
    rules: list[Any]
    user_count: int = Field(description="Members; kept current by the worker within seconds "
                                        "of a profile change or event")
    counted_at: UtcDatetime | None = Field(
        description="When the members were last rebuilt in full (null: being built)")
    created_at: UtcDatetime
    updated_at: UtcDatetime


class SegmentList(ReadModel):
    segments: list[SegmentOut]
    total: int
    page: int
    limit: int


@router.get("/segments", response_model=SegmentList, status_code=200, responses=SECRET_ERRORS)
async def list_segments(key: SecretKey, db: SessionDep, paging: PageDep) -> SegmentList:
    """Newest first, each with its `userCount` (maintained, not recounted per call)."""
    segments, total = await segment_service.list_segments(
        db, key.project_id, page=paging.page, limit=paging.limit)
    return SegmentList(segments=[SegmentOut.model_validate(s) for s in segments], total=total,
                       page=paging.page, limit=paging.limit)


@router.post("/segments", response_model=SegmentOut, status_code=201, responses=SECRET_ERRORS)
async def create_segment(body: SegmentIn, key: SecretKey, db: SessionDep) -> SegmentOut:
    """Malformed rules (unknown operator, a value of the wrong type) are a 400 whose
    `details[].field` names the part, e.g. `rules[1].any[0].operator`."""
    segment = await segment_service.create_segment(db, key.project_id, body.to_fields())
    return SegmentOut.model_validate(segment)


@router.post("/segments/estimate", response_model=EstimateOut, status_code=200,
             responses=SECRET_ERRORS)
async def estimate_segment(body: EstimateIn, key: SecretKey, db: SessionDep) -> EstimateOut:
    """The exact number of users matching `rules` now (nothing is stored)."""
    return EstimateOut(estimated_count=await segment_service.estimate(
        db, key.project_id, body.rules))


@router.get("/segments/{segment_id}", response_model=SegmentOut, status_code=200,
            responses=SECRET_ERRORS)
async def get_segment(segment_id: str, key: SecretKey, db: SessionDep) -> SegmentOut:
    return SegmentOut.model_validate(
        await segment_service.get_segment(db, key.project_id, segment_id))


@router.patch("/segments/{segment_id}", response_model=SegmentOut, status_code=200,
              responses=SECRET_ERRORS)
async def patch_segment(segment_id: str, body: SegmentPatch, key: SecretKey,
                        db: SessionDep) -> SegmentOut:
    """Merge. New rules are counted at once; members are rebuilt by the worker."""
    segment = await segment_service.update_segment(
        db, key.project_id, segment_id, body.model_dump(exclude_unset=True))
    return SegmentOut.model_validate(segment)


@router.put("/segments/{segment_id}", response_model=SegmentOut, status_code=200,
            responses=SECRET_ERRORS)
async def put_segment(segment_id: str, body: SegmentIn, key: SecretKey,
                      db: SessionDep) -> SegmentOut:
    """Replace every editable field (an omitted description is cleared)."""
    segment = await segment_service.replace_segment(db, key.project_id, segment_id,
                                                    body.to_fields())
    return SegmentOut.model_validate(segment)


@router.delete("/segments/{segment_id}", response_model=Deleted, status_code=200,
               responses=errors(400, 401, 403, 404, 409, 413, 429))
async def delete_segment(segment_id: str, key: SecretKey, db: SessionDep) -> Deleted:
    """409 while a SCHEDULED or SENDING campaign, or an active automation, uses it.
    Draft and finished campaigns and inactive automations lose their segment."""
    await segment_service.delete_segment(db, key.project_id, segment_id)
    return Deleted()
