"""Shared schema building blocks: camelCase, unknown fields refused, UTC `Z` times."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer
from pydantic.alias_generators import to_camel


def to_utc(value: datetime) -> datetime:
    """Inputs accept any ISO 8601 offset; a naive time is taken as UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def iso_z(value: datetime) -> str:
    return to_utc(value).isoformat().replace("+00:00", "Z")


UtcDatetime = Annotated[
    datetime, AfterValidator(to_utc), PlainSerializer(iso_z, return_type=str, when_used="json")
]


class ApiModel(BaseModel):
    """Request bodies: camelCase on the wire, and a typo is an error, not a silent no-op."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", from_attributes=True
    )


class ReadModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, from_attributes=True)


class ErrorDetail(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    error: str = Field(examples=["Bad Request"])
    message: str = Field(examples=["What went wrong and why"])
    status: int = Field(examples=[400])
    details: list[ErrorDetail] | None = None


class Deleted(BaseModel):
    deleted: bool = True


def page_fields(total: int, page: int, limit: int) -> dict[str, Any]:
    return {"total": total, "page": page, "limit": limit}
