"""Templates: list (filters channel, ai), create, get, update, delete, preview."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import Field, field_validator

from api.deps import SecretKey, SessionDep
from api.pagination import PageDep
from api.responses import SECRET_ERRORS
from core.schemas import ApiModel, Deleted, ReadModel, UtcDatetime
from core.services import templates as template_service

router = APIRouter(tags=["templates"])

Channel = Literal["EMAIL", "PUSH", "SMS", "IN_APP"]
Name = Annotated[str, Field(min_length=1, max_length=200)]
Tag = Annotated[str, Field(min_length=1, max_length=100)]
Tags = Annotated[list[Tag], Field(max_length=100, description="Free labels (duplicates dropped)")]
SUBJECT_DOC = (
    "Jinja2 (sandboxed, never HTML-escaped). Required for EMAIL; the title for PUSH and IN_APP"
)
BODY_DOC = "Jinja2 (sandboxed); HTML-autoescaped for EMAIL, plain text for the other channels"


class TemplateIn(ApiModel):
    """All editable fields: the body of POST and of PUT (which replaces them all)."""

    name: Name
    channel: Channel
    subject: str | None = Field(None, description=SUBJECT_DOC)
    body: str = Field(min_length=1, description=BODY_DOC)
    tags: Tags = Field(default_factory=list)
    ai: bool = Field(False, description="Made by /ai/generate")

    def to_fields(self) -> template_service.TemplateFields:
        return template_service.TemplateFields(
            name=self.name, channel=self.channel, subject=self.subject, body=self.body,
            tags=list(self.tags), ai=self.ai,
        )


class TemplatePatch(ApiModel):
    """Only the fields sent change; `subject: null` clears it (not allowed for EMAIL)."""

    name: Name | None = None
    channel: Channel | None = None
    subject: str | None = Field(None, description=SUBJECT_DOC)
    body: str | None = Field(None, min_length=1, description=BODY_DOC)
    tags: Tags | None = None
    ai: bool | None = None

    @field_validator("name", "channel", "body", "tags", "ai")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # Runs only on values actually sent: omitting a field keeps it, null is refused.
        if value is None:
            raise ValueError("may not be null")
        return value


class PreviewIn(ApiModel):
    user_id: str | None = Field(
        None, min_length=1, max_length=255,
        description="Render with this user's profile (404 if there is no such user)",
    )
    data: dict[str, Any] = Field(
        default_factory=dict, description="Extra variables, available at top level"
    )


class PreviewOut(ReadModel):
    subject: str | None
    body: str


class TemplateOut(ReadModel):
    id: str
    name: str
    channel: Channel
    subject: str | None
    body: str
    tags: list[str]
    ai: bool
    created_at: UtcDatetime
    updated_at: UtcDatetime


class TemplateList(ReadModel):
    templates: list[TemplateOut]
    total: int
    page: int
    limit: int


@router.get("/templates", response_model=TemplateList, status_code=200,
            responses=SECRET_ERRORS)
async def list_templates(
    key: SecretKey, db: SessionDep, paging: PageDep,
    channel: Annotated[Channel | None, Query()] = None,
    ai: Annotated[bool | None, Query(description="true: only AI-made; false: only the rest")]
    = None,
) -> TemplateList:
    """Newest first."""
    templates, total = await template_service.list_templates(
        db, key.project_id, channel=channel, ai=ai, page=paging.page, limit=paging.limit
    )
    return TemplateList(templates=[TemplateOut.model_validate(t) for t in templates],
                        total=total, page=paging.page, limit=paging.limit)


@router.post("/templates", response_model=TemplateOut, status_code=201,
             responses=SECRET_ERRORS)
async def create_template(body: TemplateIn, key: SecretKey, db: SessionDep) -> TemplateOut:
    """A subject or body that does not compile is refused with 400 naming the field and
    line; so is any reference to an underscore attribute (`''.__class__`)."""
    template = await template_service.create_template(db, key.project_id, body.to_fields())
    return TemplateOut.model_validate(template)


@router.get("/templates/{template_id}", response_model=TemplateOut, status_code=200,
            responses=SECRET_ERRORS)
async def get_template(template_id: str, key: SecretKey, db: SessionDep) -> TemplateOut:
    return TemplateOut.model_validate(
        await template_service.get_template(db, key.project_id, template_id)
    )


@router.patch("/templates/{template_id}", response_model=TemplateOut, status_code=200,
              responses=SECRET_ERRORS)
async def patch_template(
    template_id: str, body: TemplatePatch, key: SecretKey, db: SessionDep
) -> TemplateOut:
    """Merge: only the fields sent change; the result is compile-checked like a create."""
    template = await template_service.update_template(
        db, key.project_id, template_id, body.model_dump(exclude_unset=True)
    )
    return TemplateOut.model_validate(template)


@router.put("/templates/{template_id}", response_model=TemplateOut, status_code=200,
            responses=SECRET_ERRORS)
async def put_template(
    template_id: str, body: TemplateIn, key: SecretKey, db: SessionDep
) -> TemplateOut:
    """Replace every editable field (omitted optional ones take their defaults)."""
    template = await template_service.replace_template(
        db, key.project_id, template_id, body.to_fields()
    )
    return TemplateOut.model_validate(template)


@router.delete("/templates/{template_id}", response_model=Deleted, status_code=200,
               responses=SECRET_ERRORS)
async def delete_template(template_id: str, key: SecretKey, db: SessionDep) -> Deleted:
    await template_service.delete_template(db, key.project_id, template_id)
    return Deleted()


@router.post("/templates/{template_id}/preview", response_model=PreviewOut, status_code=200,
             responses=SECRET_ERRORS)
async def preview_template(
    template_id: str, body: PreviewIn, key: SecretKey, db: SessionDep
) -> PreviewOut:
    """Render with the context messages get: the user's profile properties at top level,
    `user` (id, email, properties), `company` (the project's name) and `data`. A missing
    variable renders empty. The EMAIL body is HTML-escaped; the subject is not. A render
    failure (unsafe access, `{{ 1/0 }}`, output over the size cap) is a 400."""
    preview = await template_service.preview_template(
        db, key.project_id, template_id, user_id=body.user_id, data=body.data
    )
    return PreviewOut(subject=preview.subject, body=preview.body)
