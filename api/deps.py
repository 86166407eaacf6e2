"""Dependencies: the DB unit of work, API-key and session auth, rate limits, CSRF."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from api.state import AppState
from core.crypto import constant_time_equal, sha256_hex
from core.errors import Forbidden, TooManyRequests, Unauthorized
from core.services import auth as auth_service

SESSION_COOKIE = "retenshun_session"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


async def get_state(request: Request) -> AppState:
    # async on purpose: FastAPI runs a plain `def` dependency in a thread, on every request.
    return request.app.state.retenshun  # type: ignore[no-any-return]


StateDep = Annotated[AppState, Depends(get_state)]


async def get_db(state: StateDep) -> AsyncIterator[AsyncSession]:
    """One transaction per request: services flush, this commits (or rolls back on error)."""
    async with state.sessions() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


# scope="function": commit before the response leaves. With FastAPI's default ("request")
# the commit would run after the client already has its 201, so a read right after could
# miss the write, and a failed commit would still have answered success.
SessionDep = Annotated[AsyncSession, Depends(get_db, scope="function")]


@dataclass(frozen=True, slots=True)
class KeyContext:
    project_id: str
    key_id: str
    kind: str  # public | secret


def _presented_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


async def _rate_limit(request: Request, state: AppState, kind: str, key: str) -> None:
    result = await state.limiter.hit(kind, key)
    request.state.ratelimit = result
    if not result.allowed:
        raise TooManyRequests(
            f"Rate limit of {result.limit} requests per window exceeded for this project; "
            f"retry in {max(1, result.reset_seconds)} s",
            retry_after=max(1, result.reset_seconds),
        )


async def _rate_limit_client(request: Request, state: AppState) -> None:
    """Requests with no (valid) credentials count against the caller's address: they get
    the RateLimit-* headers too, and guessing keys or passwords is throttled."""
    client = request.client.host if request.client else "unknown"
    await _rate_limit(request, state, "api", f"ip:{client}")


async def _authenticate_key(request: Request, state: AppState) -> KeyContext:
    key = _presented_key(request)
    if not key:
        await _rate_limit_client(request, state)
        raise Unauthorized("Missing API key: send it in the x-api-key header")
    key_hash = sha256_hex(key)
    cached: KeyContext | None = state.key_cache.get(key_hash)
    if cached is not None:
        return cached
    generation = state.key_cache.generation
    async with state.raw_pool.connection() as conn:
        cur = await conn.execute(
            "SELECT id, project_id, kind FROM api_keys "
            "WHERE key_hash = %s AND revoked_at IS NULL",
            (key_hash,),
        )
        row = await cur.fetchone()
    if row is None:
        await _rate_limit_client(request, state)
        raise Unauthorized("Invalid or revoked API key")
    ctx = KeyContext(project_id=row[1], key_id=row[0], kind=row[2])
    state.key_cache.put(key_hash, ctx, generation)
    return ctx


async def ingest_key(request: Request, state: StateDep) -> KeyContext:
    """Public or secret key, on the ingestion rate-limit bucket."""
    ctx = await _authenticate_key(request, state)
    await _rate_limit(request, state, "ingest", ctx.project_id)
    return ctx


async def any_key(request: Request, state: StateDep) -> KeyContext:
    """Public or secret key, on the general bucket (news feed, inbox)."""
    ctx = await _authenticate_key(request, state)
    await _rate_limit(request, state, "api", ctx.project_id)
    return ctx


async def secret_key(request: Request, state: StateDep) -> KeyContext:
    ctx = await _authenticate_key(request, state)
    # Counted (and headed) before the scope check: a refused call is still a call.
    await _rate_limit(request, state, "api", ctx.project_id)
    if ctx.kind != "secret":
        raise Forbidden("This endpoint needs a secret key (sk_live_…); public keys may only track")
    return ctx


IngestKey = Annotated[KeyContext, Depends(ingest_key)]
AnyKey = Annotated[KeyContext, Depends(any_key)]
SecretKey = Annotated[KeyContext, Depends(secret_key)]


async def dashboard_session(
    request: Request, state: StateDep, db: SessionDep
) -> auth_service.SessionContext:
    """The dashboard's cookie session. API keys are refused here; writes need X-CSRF-Token."""
    if _presented_key(request):
        await _rate_limit_client(request, state)
        raise Forbidden("This endpoint takes the dashboard session cookie, not an API key")
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        await _rate_limit_client(request, state)
        raise Unauthorized("Not logged in: POST /api/v1/auth/login first")
    ctx = await auth_service.resolve_session(db, token)
    if ctx is None:
        await _rate_limit_client(request, state)
        raise Unauthorized("Session expired or logged out: log in again")
    await _rate_limit(request, state, "api", ctx.project_id)
    if request.method in UNSAFE_METHODS:
        sent = request.headers.get("x-csrf-token", "")
        if not sent or not constant_time_equal(sent, ctx.csrf_token):
            raise Forbidden("Missing or wrong X-CSRF-Token (the csrfToken returned at login)")
    return ctx


async def admin_session(
    ctx: Annotated[auth_service.SessionContext, Depends(dashboard_session)],
) -> auth_service.SessionContext:
    if ctx.role != "ADMIN":
        raise Forbidden("Only a project ADMIN can do this")
    return ctx


DashboardSession = Annotated[auth_service.SessionContext, Depends(dashboard_session)]
AdminSession = Annotated[auth_service.SessionContext, Depends(admin_session)]


async def anonymous(request: Request, state: StateDep) -> None:
    """Unauthenticated routes (signup, login) are rate limited per client address."""
    await _rate_limit_client(request, state)


Anonymous = Depends(anonymous)
