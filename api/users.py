"""End users: identify (public or secret key), list, get, update, delete."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import EmailStr, Field

from api.deps import IngestKey, SecretKey, SessionDep
from api.pagination import PageDep
from api.responses import KEY_ERRORS, SECRET_ERRORS
from core.schemas import ApiModel, Deleted, ReadModel, UtcDatetime
from core.services import users as user_service

router = APIRouter(tags=["users"])


class IdentifyIn(ApiModel):
    user_id: str = Field(min_length=1, max_length=255)
    email: EmailStr | None = None
    properties: dict[str, Any] = Field(
        default_factory=dict, description="Merged into the profile; a null value removes a key"
    )


class UserUpdate(ApiModel):
    email: EmailStr | None = None
    properties: dict[str, Any] = Field(
        default_factory=dict, description="Merged into the profile; a null value removes a key"
    )
    subscribed: bool | None = Field(None, description="false unsubscribes from marketing sends")


class UserOut(ReadModel):
    id: str
    email: str | None
    properties: dict[str, Any]
    first_seen: UtcDatetime
    last_seen: UtcDatetime
    event_count: int
    session_count: int
    subscribed: bool
    created_at: UtcDatetime
    updated_at: UtcDatetime


class UserList(ReadModel):
    users: list[UserOut]
    total: int
    page: int
    limit: int


@router.post("/identify", response_model=UserOut, responses=KEY_ERRORS)
async def identify(body: IdentifyIn, key: IngestKey, db: SessionDep) -> UserOut:
    """Create the user or merge into it; returns the profile."""
    email = body.email if "email" in body.model_fields_set else user_service.UNSET
    user = await user_service.upsert_profile(
        db, key.project_id, body.user_id, email=email, properties=body.properties, seen=True
    )
    return UserOut.model_validate(user)


@router.get("/users", response_model=UserList, responses=SECRET_ERRORS)
async def list_users(
    key: SecretKey, db: SessionDep, paging: PageDep,
    search: Annotated[str | None, Query(max_length=255,
                                        description="substring of id or email")] = None,
    filter: Annotated[Literal["active", "inactive"] | None,
                      Query(description="active: seen in the last 30 days")] = None,
) -> UserList:
    users, total = await user_service.list_users(
        db, key.project_id, search=search,
        active=None if filter is None else filter == "active",
        page=paging.page, limit=paging.limit,
    )
    return UserList(users=[UserOut.model_validate(u) for u in users], total=total,
                    page=paging.page, limit=paging.limit)


@router.get("/users/{user_id}", response_model=UserOut, responses=SECRET_ERRORS)
async def get_user(user_id: str, key: SecretKey, db: SessionDep) -> UserOut:
    return UserOut.model_validate(await user_service.get_user(db, key.project_id, user_id))


async def _update(user_id: str, body: UserUpdate, key: SecretKey, db: SessionDep) -> UserOut:
    email = body.email if "email" in body.model_fields_set else user_service.UNSET
    user = await user_service.upsert_profile(
        db, key.project_id, user_id, email=email, properties=body.properties,
        subscribed=body.subscribed,
    )
    return UserOut.model_validate(user)


@router.patch("/users/{user_id}", response_model=UserOut, responses=SECRET_ERRORS)
async def patch_user(user_id: str, body: UserUpdate, key: SecretKey, db: SessionDep) -> UserOut:
    """Merge properties (null removes a key), set email; creates the user if absent."""
    return await _update(user_id, body, key, db)


@router.put("/users/{user_id}", response_model=UserOut, responses=SECRET_ERRORS)
async def put_user(user_id: str, body: UserUpdate, key: SecretKey, db: SessionDep) -> UserOut:
    """Same as PATCH (the contract merges on both)."""
    return await _update(user_id, body, key, db)


@router.delete("/users/{user_id}", response_model=Deleted, responses=SECRET_ERRORS)
async def delete_user(user_id: str, key: SecretKey, db: SessionDep) -> Deleted:
    """Erase the profile and its events."""
    await user_service.delete_user(db, key.project_id, user_id)
    return Deleted()
