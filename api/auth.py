"""Dashboard accounts: signup, login, logout, me, accept-invite."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import EmailStr, Field

from api.deps import SESSION_COOKIE, Anonymous, DashboardSession, SessionDep, StateDep
from api.responses import errors
from core.schemas import ApiModel, ReadModel, UtcDatetime
from core.services import auth as auth_service

router = APIRouter(prefix="/auth", tags=["auth"])


class SignupBody(ApiModel):
    email: EmailStr
    password: str = Field(min_length=8, max_length=256)
    project_name: str = Field(min_length=1, max_length=200)


class LoginBody(ApiModel):
    email: EmailStr
    password: str = Field(min_length=1, max_length=256)


class AcceptInviteBody(ApiModel):
    token: str = Field(min_length=1, max_length=200)
    password: str = Field(min_length=8, max_length=256)


class AccountRead(ReadModel):
    id: str
    email: str
    role: str


class ProjectRead(ReadModel):
    id: str
    name: str
    created_at: UtcDatetime


class LoginResponse(ReadModel):
    user: AccountRead
    project: ProjectRead
    csrf_token: str


class MeResponse(ReadModel):
    user: AccountRead
    project: ProjectRead


class LoggedOut(ReadModel):
    logged_out: bool = True


def _secure_cookie(state: StateDep) -> bool:
    """Secure when asked to, and whenever the product is served over https."""
    return state.settings.cookie_secure or state.settings.public_url.startswith("https://")


def _login_response(response: Response, result: auth_service.LoginResult, state: StateDep,
                    ) -> LoginResponse:
    response.set_cookie(
        SESSION_COOKIE, result.session_token, max_age=state.settings.session_ttl_seconds,
        httponly=True, samesite="lax", secure=_secure_cookie(state), path="/",
    )
    return LoginResponse(
        user=AccountRead(id=result.account.id, email=result.account.email, role=result.role),
        project=ProjectRead.model_validate(result.project),
        csrf_token=result.csrf_token,
    )


@router.post("/signup", response_model=LoginResponse, status_code=201,
             responses=errors(400, 409, 413, 429), dependencies=[Anonymous])
async def signup(body: SignupBody, response: Response, db: SessionDep, state: StateDep,
                 ) -> LoginResponse:
    """Create an account, its first project and an ADMIN membership; log in (sets the cookie)."""
    result = await auth_service.signup(
        db, state.secrets, email=body.email, password=body.password,
        project_name=body.project_name, ttl_seconds=state.settings.session_ttl_seconds,
    )
    return _login_response(response, result, state)


@router.post("/login", response_model=LoginResponse, responses=errors(400, 401, 413, 429),
             dependencies=[Anonymous])
async def login(body: LoginBody, response: Response, db: SessionDep, state: StateDep,
                ) -> LoginResponse:
    """Sets the HttpOnly session cookie; send `csrfToken` as X-CSRF-Token on writes."""
    result = await auth_service.login(
        db, email=body.email, password=body.password,
        ttl_seconds=state.settings.session_ttl_seconds,
    )
    return _login_response(response, result, state)


@router.post("/logout", response_model=LoggedOut, responses=errors(401, 403, 429))
async def logout(ctx: DashboardSession, response: Response, db: SessionDep, state: StateDep,
                 ) -> LoggedOut:
    await auth_service.logout(db, ctx.token_hash)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax",
                           secure=_secure_cookie(state))
    return LoggedOut()


@router.get("/me", response_model=MeResponse, responses=errors(401, 403, 429))
async def me(ctx: DashboardSession, db: SessionDep) -> MeResponse:
    project = await auth_service.get_project(db, ctx.project_id)
    return MeResponse(
        user=AccountRead(id=ctx.account_id, email=ctx.email, role=ctx.role),
        project=ProjectRead.model_validate(project),
    )


@router.post("/accept-invite", response_model=LoginResponse,
             responses=errors(400, 401, 409, 413, 429), dependencies=[Anonymous])
async def accept_invite(body: AcceptInviteBody, request: Request, response: Response,
                        db: SessionDep, state: StateDep) -> LoginResponse:
    """Join the inviting project with the invite's token (single use, expires) and log in."""
    result = await auth_service.accept_invite(
        db, token=body.token, password=body.password,
        ttl_seconds=state.settings.session_ttl_seconds,
    )
    return _login_response(response, result, state)
