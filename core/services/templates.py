"""Message templates: CRUD, compile-checked on every save, and preview rendering."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from core import rendering
from core.errors import BadRequest, NotFound
from core.ids import new_id
from core.models import EndUser, Project, Template

EDITABLE = ("name", "channel", "subject", "body", "tags", "ai")


@dataclass(slots=True)
class TemplateFields:
    """Every editable field of a template: what POST and PUT send in full."""

    name: str
    channel: str
    body: str
    subject: str | None = None
    tags: list[str] = field(default_factory=list)
    ai: bool = False


@dataclass(frozen=True, slots=True)
class Preview:
    subject: str | None
    body: str


def check(fields: TemplateFields) -> None:
    """Refuse (400) a template that cannot be used: unknown channel, an EMAIL without a
    subject, or a subject/body that does not compile in the sandbox (names field and line)."""
    if fields.channel not in rendering.CHANNELS:
        raise BadRequest(f"channel must be one of {', '.join(rendering.CHANNELS)}")
    if fields.channel == "EMAIL" and not (fields.subject or "").strip():
        raise BadRequest("subject: an EMAIL template needs a subject",
                         details=[{"field": "subject", "message": "required for EMAIL"}])
    rendering.validate(fields.subject, "subject")
    rendering.validate(fields.body, "body", escape_html=fields.channel == "EMAIL")


def _dedupe(tags: list[str]) -> list[str]:
    return list(dict.fromkeys(tags))


async def list_templates(
    db: AsyncSession, project_id: str, *, channel: str | None, ai: bool | None,
    page: int, limit: int,
) -> tuple[list[Template], int]:
    query = select(Template).where(Template.project_id == project_id)
    if channel is not None:
        query = query.where(Template.channel == channel)
    if ai is not None:
        query = query.where(Template.ai.is_(ai))
    total = await db.scalar(select(func.count()).select_from(query.subquery()))
    rows = await db.scalars(
        query.order_by(Template.created_at.desc(), Template.id.desc())
        .offset((page - 1) * limit).limit(limit)
    )
    return list(rows), int(total or 0)


async def get_template(db: AsyncSession, project_id: str, template_id: str) -> Template:
    template = await db.scalar(
        select(Template).where(Template.project_id == project_id, Template.id == template_id)
    )
    if template is None:
        raise NotFound(f"No template {template_id} in this project")
    return template


async def create_template(db: AsyncSession, project_id: str, fields: TemplateFields) -> Template:
    check(fields)
    template = Template(
        id=new_id("tpl"), project_id=project_id, name=fields.name, channel=fields.channel,
        subject=fields.subject, body=fields.body, tags=_dedupe(fields.tags), ai=fields.ai,
    )
    db.add(template)
    await db.flush()
    await db.refresh(template)
    return template


async def _save(db: AsyncSession, template: Template, fields: TemplateFields) -> Template:
    check(fields)
    for name in EDITABLE:
        setattr(template, name, getattr(fields, name))
    template.tags = _dedupe(fields.tags)
    template.updated_at = datetime.now(UTC)
    await db.flush()
    await db.refresh(template)
    return template


async def replace_template(
    db: AsyncSession, project_id: str, template_id: str, fields: TemplateFields
) -> Template:
    """PUT: every editable field takes the given value (or its default)."""
    template = await get_template(db, project_id, template_id)
    return await _save(db, template, fields)


async def update_template(
    db: AsyncSession, project_id: str, template_id: str, changes: Mapping[str, Any]
) -> Template:
    """PATCH: the given fields over the stored ones; the result is checked as a whole
    (so turning a template into EMAIL without a subject is refused)."""
    unknown = set(changes) - set(EDITABLE)
    if unknown:
        raise BadRequest(f"Not editable: {', '.join(sorted(unknown))}")
    template = await get_template(db, project_id, template_id)
    current = TemplateFields(**{name: getattr(template, name) for name in EDITABLE})
    return await _save(db, template, dataclasses.replace(current, **changes))


async def delete_template(db: AsyncSession, project_id: str, template_id: str) -> None:
    template = await get_template(db, project_id, template_id)
    await db.execute(delete(Template).where(Template.id == template.id))


def user_profile(user: EndUser | None) -> dict[str, Any] | None:
    """What core.rendering.build_context expects of a user."""
    if user is None:
        return None
    return {"id": user.id, "email": user.email, "properties": dict(user.properties or {})}


async def preview_template(
    db: AsyncSession, project_id: str, template_id: str, *, user_id: str | None,
    data: Mapping[str, Any] | None,
) -> Preview:
    """Render the stored template for one user (or none) with `data`. A missing user is a
    404; a template that fails to render (unsafe access, 1/0, output too big) a 400."""
    template = await get_template(db, project_id, template_id)
    user = None
    if user_id is not None:
        user = await db.get(EndUser, (project_id, user_id))
        if user is None:
            raise NotFound(f"No user {user_id!r} in this project")
    project = await db.get(Project, project_id)
    assert project is not None, "a key always points at an existing project"
    context = rendering.build_context(
        user=user_profile(user), company=project.name, data=data
    )
    subject, body = rendering.render_message(
        template.channel, template.subject, template.body, context
    )
    return Preview(subject=subject, body=body)
