"""Team members and invites (dashboard session; only an ADMIN invites)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import EmailStr

from api.deps import AdminSession, DashboardSession, SessionDep, StateDep
from api.responses import SESSION_ERRORS, errors
from core.schemas import ApiModel, ReadModel, UtcDatetime
from core.services import auth as auth_service

router = APIRouter(prefix="/team", tags=["team"])


class MemberRead(ReadModel):
    id: str
    email: str
    role: str
    joined_at: UtcDatetime


class InviteRead(ReadModel):
    id: str
    email: str
    role: str
    status: str
    expires_at: UtcDatetime


class InviteCreated(InviteRead):
    accept_url: str


class TeamResponse(ReadModel):
    members: list[MemberRead]
    invites: list[InviteRead]


class InviteBody(ApiModel):
    email: EmailStr
    role: Literal["ADMIN", "MEMBER"] = "MEMBER"


class InviteResponse(ReadModel):
    invite: InviteCreated


@router.get("", response_model=TeamResponse, responses=SESSION_ERRORS)
async def list_team(ctx: DashboardSession, db: SessionDep) -> TeamResponse:
    members = await auth_service.list_members(db, ctx.project_id)
    invites = await auth_service.list_pending_invites(db, ctx.project_id)
    return TeamResponse(
        members=[
            MemberRead(id=a.id, email=a.email, role=m.role, joined_at=m.created_at)
            for a, m in members
        ],
        invites=[InviteRead.model_validate(i) for i in invites],
    )


@router.post("/invites", response_model=InviteResponse, status_code=201,
             responses=errors(400, 401, 403, 409, 413, 429))
async def invite(body: InviteBody, ctx: AdminSession, db: SessionDep, state: StateDep,
                 ) -> InviteResponse:
    """Invite by email. `acceptUrl` carries the single-use token (only its hash is stored)."""
    inv, token = await auth_service.create_invite(
        db, project_id=ctx.project_id, email=body.email, role=body.role,
        invited_by=ctx.account_id, ttl_seconds=state.settings.invite_ttl_seconds,
    )
    accept_url = f"{state.settings.public_url.rstrip('/')}/accept-invite?token={token}"
    return InviteResponse(
        invite=InviteCreated(**InviteRead.model_validate(inv).model_dump(), accept_url=accept_url)
    )
