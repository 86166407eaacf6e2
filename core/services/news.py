"""News feed items: drafts and published items, and the public feed."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import BadRequest, NotFound
from core.ids import new_id
from core.models import NewsItem

EDITABLE = ("title", "body", "url", "published")


@dataclass(slots=True)
class NewsFields:
    """Every editable field of an item: what POST and PUT send in full."""

    title: str
    body: str
    url: str | None = None
    published: bool = False


def _apply(item: NewsItem, fields: NewsFields, now: datetime) -> None:
    """`publishedAt` is set when the item becomes published, kept while it stays
    published, and cleared when it is unpublished."""
    if fields.published and not item.published:
        item.published_at = now
    elif not fields.published:
        item.published_at = None
    item.title = fields.title
    item.body = fields.body
    item.url = fields.url
    item.published = fields.published


async def _paged(
    db: AsyncSession, query: Any, order: tuple[Any, ...], page: int, limit: int
) -> tuple[list[NewsItem], int]:
    total = await db.scalar(select(func.count()).select_from(query.subquery()))
    rows = await db.scalars(query.order_by(*order).offset((page - 1) * limit).limit(limit))
    return list(rows), int(total or 0)


async def list_items(
    db: AsyncSession, project_id: str, *, page: int, limit: int
) -> tuple[list[NewsItem], int]:
    """Every item, drafts included, newest created first."""
    query = select(NewsItem).where(NewsItem.project_id == project_id)
    return await _paged(db, query, (NewsItem.created_at.desc(), NewsItem.id.desc()), page, limit)


async def feed(
    db: AsyncSession, project_id: str, *, page: int, limit: int
) -> tuple[list[NewsItem], int]:
    """Published items only, newest published first."""
    query = select(NewsItem).where(NewsItem.project_id == project_id,
                                   NewsItem.published.is_(True))
    return await _paged(
        db, query, (NewsItem.published_at.desc(), NewsItem.id.desc()), page, limit
    )


async def get_item(db: AsyncSession, project_id: str, item_id: str) -> NewsItem:
    item = await db.scalar(
        select(NewsItem).where(NewsItem.project_id == project_id, NewsItem.id == item_id)
    )
    if item is None:
        raise NotFound(f"No news item {item_id} in this project")
    return item


async def create_item(db: AsyncSession, project_id: str, fields: NewsFields) -> NewsItem:
    now = datetime.now(UTC)
    item = NewsItem(id=new_id("news"), project_id=project_id, published=False,
                    created_at=now, updated_at=now)
    _apply(item, fields, now)
    db.add(item)
    await db.flush()
    await db.refresh(item)
    return item


async def _save(db: AsyncSession, item: NewsItem, fields: NewsFields) -> NewsItem:
    now = datetime.now(UTC)
    _apply(item, fields, now)
    item.updated_at = now
    await db.flush()
    await db.refresh(item)
    return item


async def replace_item(
    db: AsyncSession, project_id: str, item_id: str, fields: NewsFields
) -> NewsItem:
    """PUT: every editable field takes the given value (or its default)."""
    return await _save(db, await get_item(db, project_id, item_id), fields)


async def update_item(
    db: AsyncSession, project_id: str, item_id: str, changes: Mapping[str, Any]
) -> NewsItem:
    """PATCH: the given fields over the stored ones."""
    unknown = set(changes) - set(EDITABLE)
    if unknown:
        raise BadRequest(f"Not editable: {', '.join(sorted(unknown))}")
    item = await get_item(db, project_id, item_id)
    current = NewsFields(**{name: getattr(item, name) for name in EDITABLE})
    return await _save(db, item, dataclasses.replace(current, **changes))


async def delete_item(db: AsyncSession, project_id: str, item_id: str) -> None:
    item = await get_item(db, project_id, item_id)
    await db.execute(delete(NewsItem).where(NewsItem.id == item.id))
