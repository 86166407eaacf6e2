"""API keys (dashboard session only; only an ADMIN creates or revokes)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import Field

from api.deps import AdminSession, DashboardSession, SessionDep, StateDep
from api.responses import SESSION_ERRORS, errors
from core.schemas import ApiModel, Deleted, ReadModel, UtcDatetime
from core.services import api_keys as key_service
from core.services import auth as auth_service

router = APIRouter(prefix="/api-keys", tags=["api-keys"])


class KeyCreate(ApiModel):
    name: str = Field(min_length=1, max_length=200)
    type: Literal["public", "secret"]


class KeyRevoke(ApiModel):
    id: str


class KeyRead(ReadModel):
    id: str
    name: str
    type: str = Field(validation_alias="kind")
    prefix: str
    created_at: UtcDatetime


class KeyCreated(KeyRead):
    key: str = Field(description="The full key. Shown only in this response: store it now.")


class KeyList(ReadModel):
    keys: list[KeyRead]
    identity_secret: str = Field(
        description="HMAC-SHA256 secret for X-User-Hash on public-key inbox reads"
    )


@router.get("", response_model=KeyList, responses=SESSION_ERRORS)
async def list_keys(ctx: DashboardSession, db: SessionDep, state: StateDep) -> KeyList:
    keys = await key_service.list_keys(db, ctx.project_id)
    project = await auth_service.get_project(db, ctx.project_id)
    return KeyList(
        keys=[KeyRead.model_validate(k) for k in keys],
        identity_secret=state.secrets.decrypt(project.identity_secret_enc),
    )


@router.post("", response_model=KeyCreated, status_code=201, responses=SESSION_ERRORS)
async def create_key(body: KeyCreate, ctx: AdminSession, db: SessionDep) -> KeyCreated:
    key, full = await key_service.create_key(
        db, project_id=ctx.project_id, name=body.name, kind=body.type, created_by=ctx.account_id
    )
    return KeyCreated(**KeyRead.model_validate(key).model_dump(), key=full)


@router.delete("", response_model=Deleted, responses=errors(400, 401, 403, 404, 413, 429))
async def revoke_key(body: KeyRevoke, ctx: AdminSession, db: SessionDep,
                     state: StateDep) -> Deleted:
    """Revoke by id: the key answers 401 from the next request on."""
    await key_service.revoke_key(db, project_id=ctx.project_id, key_id=body.id)
    # Committed before the answer, and this process's key cache emptied after the commit;
    # the others empty theirs on the NOTIFY the revocation sent (api/keycache.py).
    await db.commit()
    state.key_cache.invalidate()
    return Deleted()
