"""News feed: items managed with the secret key; the published feed for the app."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import Field, field_validator

from api.deps import AnyKey, SecretKey, SessionDep
from api.pagination import PageDep
from api.responses import SECRET_ERRORS, errors
from core.schemas import ApiModel, Deleted, ReadModel, UtcDatetime
from core.services import news as news_service

router = APIRouter(tags=["news"])

Title = Annotated[str, Field(min_length=1, max_length=300)]
Body = Annotated[str, Field(min_length=1, max_length=100_000)]
Url = Annotated[str, Field(
    min_length=1, max_length=2000,
    description="Where the item leads: an absolute URL, a path or an app deep link "
                "(javascript:, data: and vbscript: are refused)",
)]
PUBLISHED_DOC = "true shows it in /news/feed (and sets publishedAt); false makes it a draft"
_UNSAFE_SCHEMES = ("javascript:", "data:", "vbscript:")


def _safe_url(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    compact = "".join(ch for ch in value.lower() if not ch.isspace() and ch.isprintable())
    if compact.startswith(_UNSAFE_SCHEMES):
        raise ValueError("javascript:, data: and vbscript: URLs are not allowed")
    if not value:
        raise ValueError("may not be blank")
    return value


class NewsIn(ApiModel):
    """All editable fields: the body of POST and of PUT (which replaces them all)."""

    title: Title
    body: Body
    url: Url | None = None
    published: bool = Field(False, description=PUBLISHED_DOC)

    @field_validator("url")
    @classmethod
    def _url_is_safe(cls, value: str | None) -> str | None:
        return _safe_url(value)

    def to_fields(self) -> news_service.NewsFields:
        return news_service.NewsFields(
            title=self.title, body=self.body, url=self.url, published=self.published
        )


class NewsPatch(ApiModel):
    """Only the fields sent change; `url: null` clears the link."""

    title: Title | None = None
    body: Body | None = None
    url: Url | None = None
    published: bool | None = Field(None, description=PUBLISHED_DOC)

    @field_validator("url")
    @classmethod
    def _url_is_safe(cls, value: str | None) -> str | None:
        return _safe_url(value)

    @field_validator("title", "body", "published")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # Runs only on values actually sent: omitting a field keeps it, null is refused.
        if value is None:
            raise ValueError("may not be null")
        return value


class NewsOut(ReadModel):
    id: str
    title: str
    body: str
    url: str | None
    published: bool
    published_at: UtcDatetime | None
    created_at: UtcDatetime
    updated_at: UtcDatetime


class NewsList(ReadModel):
    items: list[NewsOut]
    total: int
    page: int
    limit: int


class FeedItem(ReadModel):
    id: str
    title: str
    body: str
    url: str | None
    published_at: UtcDatetime


class Feed(ReadModel):
    items: list[FeedItem]
    total: int
    page: int
    limit: int


# Declared before /news/{item_id}, which would otherwise take "feed" for an id.
@router.get("/news/feed", response_model=Feed, status_code=200,
            responses=errors(400, 401, 429))
async def news_feed(key: AnyKey, db: SessionDep, paging: PageDep) -> Feed:
    """Published items only, newest published first: what the app shows. Public or
    secret key."""
    items, total = await news_service.feed(db, key.project_id, page=paging.page,
                                           limit=paging.limit)
    return Feed(items=[FeedItem.model_validate(i) for i in items], total=total,
                page=paging.page, limit=paging.limit)


@router.get("/news", response_model=NewsList, status_code=200, responses=SECRET_ERRORS)
async def list_news(key: SecretKey, db: SessionDep, paging: PageDep) -> NewsList:
    """Every item, drafts included, newest first."""
    items, total = await news_service.list_items(db, key.project_id, page=paging.page,
                                                 limit=paging.limit)
    return NewsList(items=[NewsOut.model_validate(i) for i in items], total=total,
                    page=paging.page, limit=paging.limit)


@router.post("/news", response_model=NewsOut, status_code=201, responses=SECRET_ERRORS)
async def create_news(body: NewsIn, key: SecretKey, db: SessionDep) -> NewsOut:
    """A draft unless `published` is true."""
    return NewsOut.model_validate(
        await news_service.create_item(db, key.project_id, body.to_fields())
    )


@router.get("/news/{item_id}", response_model=NewsOut, status_code=200,
            responses=SECRET_ERRORS)
async def get_news(item_id: str, key: SecretKey, db: SessionDep) -> NewsOut:
    return NewsOut.model_validate(await news_service.get_item(db, key.project_id, item_id))


@router.patch("/news/{item_id}", response_model=NewsOut, status_code=200,
              responses=SECRET_ERRORS)
async def patch_news(item_id: str, body: NewsPatch, key: SecretKey, db: SessionDep) -> NewsOut:
    """Merge: only the fields sent change. Publishing sets `publishedAt` (kept while the
    item stays published); unpublishing clears it."""
    item = await news_service.update_item(
        db, key.project_id, item_id, body.model_dump(exclude_unset=True)
    )
    return NewsOut.model_validate(item)


@router.put("/news/{item_id}", response_model=NewsOut, status_code=200,
            responses=SECRET_ERRORS)
async def put_news(item_id: str, body: NewsIn, key: SecretKey, db: SessionDep) -> NewsOut:
    """Replace every editable field (omitted `url` clears it, omitted `published` makes
    a draft)."""
    item = await news_service.replace_item(db, key.project_id, item_id, body.to_fields())
    return NewsOut.model_validate(item)


@router.delete("/news/{item_id}", response_model=Deleted, status_code=200,
               responses=SECRET_ERRORS)
async def delete_news(item_id: str, key: SecretKey, db: SessionDep) -> Deleted:
    await news_service.delete_item(db, key.project_id, item_id)
    return Deleted()
