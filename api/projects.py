"""Projects (workspaces): list yours, create another, switch the dashboard session."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import Field

from api.deps import DashboardSession, SessionDep, StateDep
from api.responses import SESSION_ERRORS, errors
from core.models import Project
from core.schemas import ApiModel, ReadModel, UtcDatetime
from core.services import auth as auth_service

router = APIRouter(prefix="/projects", tags=["projects"])


class ProjectCreate(ApiModel):
    name: str = Field(min_length=1, max_length=200)


class ProjectOut(ReadModel):
    id: str
    name: str
    role: str
    current: bool
    created_at: UtcDatetime


class ProjectList(ReadModel):
    projects: list[ProjectOut]


def _out(project: Project, role: str, current_id: str) -> ProjectOut:
    return ProjectOut(id=project.id, name=project.name, role=role,
                      current=project.id == current_id, created_at=project.created_at)


@router.get("", response_model=ProjectList, responses=SESSION_ERRORS)
async def list_projects(ctx: DashboardSession, db: SessionDep) -> ProjectList:
    """Every project you belong to, with your role; `current` is the session's."""
    rows = await auth_service.list_projects(db, ctx.account_id)
    return ProjectList(projects=[_out(p, role, ctx.project_id) for p, role in rows])


@router.post("", response_model=ProjectOut, status_code=201, responses=SESSION_ERRORS)
async def create_project(body: ProjectCreate, ctx: DashboardSession, db: SessionDep,
                         state: StateDep) -> ProjectOut:
    """A new project with you as ADMIN; the session switches to it. Its API keys, users
    and data are separate from every other project's."""
    project = await auth_service.create_project_for(db, state.secrets, ctx.account_id,
                                                    body.name)
    await auth_service.switch_project(db, ctx.token_hash, ctx.account_id, project.id)
    return _out(project, "ADMIN", project.id)


@router.post("/{project_id}/switch", response_model=ProjectOut,
             responses=errors(401, 403, 404, 429))
async def switch_project(project_id: str, ctx: DashboardSession, db: SessionDep,
                         ) -> ProjectOut:
    """Make `project_id` the session's project (GET /auth/me, keys and team follow)."""
    project, role = await auth_service.switch_project(db, ctx.token_hash, ctx.account_id,
                                                      project_id)
    return _out(project, role, project.id)
