"""Accounts, projects, dashboard sessions, team invites. Services flush; callers commit."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pwdlib import PasswordHash
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from core.crypto import SecretBox, sha256_hex
from core.errors import BadRequest, Conflict, NotFound, Unauthorized
from core.ids import new_id, random_token
from core.models import Account, AuthSession, Invite, Membership, Project

_hasher = PasswordHash.recommended()  # argon2id
# A real hash to verify against when the email is unknown, so timing does not reveal accounts.
_DUMMY_HASH = _hasher.hash("not-a-real-password")


@dataclass(frozen=True, slots=True)
class SessionContext:
    account_id: str
    email: str
    project_id: str
    role: str
    csrf_token: str
    token_hash: str


@dataclass(frozen=True, slots=True)
class LoginResult:
    account: Account
    project: Project
    role: str
    session_token: str
    csrf_token: str


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(password: str, password_hash: str) -> bool:
    return await asyncio.to_thread(_hasher.verify, password, password_hash)


def _now() -> datetime:
    return datetime.now(UTC)


async def create_project(db: AsyncSession, secrets: SecretBox, name: str) -> Project:
    project = Project(
        id=new_id("proj"), name=name, identity_secret_enc=secrets.encrypt(random_token(32))
    )
    db.add(project)
    await db.flush()
    return project


async def _open_session(
    db: AsyncSession, account: Account, project: Project, role: str, ttl_seconds: int
) -> LoginResult:
    token, csrf = random_token(32), random_token(24)
    # Expired sessions are refused when presented but never come back to be removed:
    # each login sweeps its own account's, so the table does not grow without end.
    await db.execute(
        delete(AuthSession).where(
            AuthSession.account_id == account.id, AuthSession.expires_at <= _now()
        )
    )
    db.add(
        AuthSession(
            token_hash=sha256_hex(token),
            account_id=account.id,
            project_id=project.id,
            csrf_token=csrf,
            expires_at=_now() + timedelta(seconds=ttl_seconds),
        )
    )
    await db.flush()
    return LoginResult(account, project, role, token, csrf)


async def signup(
    db: AsyncSession, secrets: SecretBox, *, email: str, password: str, project_name: str,
    ttl_seconds: int,
) -> LoginResult:
    email = email.lower()
    if await db.scalar(select(Account.id).where(Account.email == email)):
        raise Conflict("An account with this email already exists: log in instead")
    account = Account(id=new_id("usr"), email=email, password_hash=await hash_password(password))
    db.add(account)
    try:
        # Two signups with one email can both pass the check above (hashing takes ~100 ms):
        # the unique index decides, and the loser gets the same 409, not a 500.
        await db.flush()
    except IntegrityError as exc:
        raise Conflict("An account with this email already exists: log in instead") from exc
    project = await create_project(db, secrets, project_name)
    db.add(Membership(account_id=account.id, project_id=project.id, role="ADMIN"))
    await db.flush()
    return await _open_session(db, account, project, "ADMIN", ttl_seconds)


async def login(db: AsyncSession, *, email: str, password: str, ttl_seconds: int) -> LoginResult:
    account = await db.scalar(select(Account).where(Account.email == email.lower()))
    if account is None:
        await verify_password(password, _DUMMY_HASH)
        raise Unauthorized("Wrong email or password")
    if not await verify_password(password, account.password_hash):
        raise Unauthorized("Wrong email or password")
    # The first project joined is the one a login opens.
    row = (
        await db.execute(
            select(Project, Membership.role)
            .join(Membership, Membership.project_id == Project.id)
            .where(Membership.account_id == account.id)
            .order_by(Membership.created_at)
            .limit(1)
        )
    ).first()
    if row is None:
        raise Unauthorized("This account belongs to no project")
    return await _open_session(db, account, row[0], row[1], ttl_seconds)


async def resolve_session(db: AsyncSession, token: str) -> SessionContext | None:
    token_hash = sha256_hex(token)
    row = (
        await db.execute(
            select(AuthSession, Account.email, Membership.role)
            .join(Account, Account.id == AuthSession.account_id)
            .join(
                Membership,
                (Membership.account_id == AuthSession.account_id)
                & (Membership.project_id == AuthSession.project_id),
            )
            .where(AuthSession.token_hash == token_hash)
        )
    ).first()
    if row is None:
        return None
    session, email, role = row
    if session.expires_at <= _now():
        return None  # removed at the account's next login (this request rolls back anyway)
    return SessionContext(
        session.account_id, email, session.project_id, role, session.csrf_token, token_hash
    )


async def logout(db: AsyncSession, token_hash: str) -> None:
    await db.execute(delete(AuthSession).where(AuthSession.token_hash == token_hash))


async def get_project(db: AsyncSession, project_id: str) -> Project:
    project = await db.get(Project, project_id)
    assert project is not None, "a session or key always points at an existing project"
    return project


async def list_members(db: AsyncSession, project_id: str) -> list[tuple[Account, Membership]]:
    rows = await db.execute(
        select(Account, Membership)
        .join(Membership, Membership.account_id == Account.id)
        .where(Membership.project_id == project_id)
        .order_by(Membership.created_at)
    )
    return [(a, m) for a, m in rows]


async def list_pending_invites(db: AsyncSession, project_id: str) -> list[Invite]:
    rows = await db.scalars(
        select(Invite)
        .where(Invite.project_id == project_id, Invite.status == "PENDING",
               Invite.expires_at > _now())
        .order_by(Invite.created_at)
    )
    return list(rows)


async def create_invite(
    db: AsyncSession, *, project_id: str, email: str, role: str, invited_by: str,
    ttl_seconds: int,
) -> tuple[Invite, str]:
    """Returns the invite and its token; only the token's hash is stored."""
    email = email.lower()
    member = await db.scalar(
        select(Account.id)
        .join(Membership, Membership.account_id == Account.id)
        .where(Account.email == email, Membership.project_id == project_id)
    )
    if member:
        raise Conflict(f"{email} is already a member of this project")
    token = random_token(32)
    invite = Invite(
        id=new_id("inv"), project_id=project_id, email=email, role=role,
        token_hash=sha256_hex(token), status="PENDING", invited_by=invited_by,
        expires_at=_now() + timedelta(seconds=ttl_seconds),
    )
    db.add(invite)
    await db.flush()
    await db.refresh(invite)
    return invite, token


async def accept_invite(
    db: AsyncSession, *, token: str, password: str, ttl_seconds: int
) -> LoginResult:
    invite = await db.scalar(
        select(Invite).where(Invite.token_hash == sha256_hex(token)).with_for_update()
    )
    if invite is None or invite.status != "PENDING":
        raise BadRequest("This invite is unknown or has already been used")
    if invite.expires_at <= _now():
        raise BadRequest("This invite has expired: ask an admin for a new one")
    account = await db.scalar(select(Account).where(Account.email == invite.email))
    if account is None:
        account = Account(
            id=new_id("usr"), email=invite.email, password_hash=await hash_password(password)
        )
        db.add(account)
    elif not await verify_password(password, account.password_hash):
        raise Unauthorized("This email already has an account: give its password to join")
    # Already a member (e.g. a second invite to the same address, the first one accepted):
    # the link still logs in, with the role the member has; the invite is used up.
    role = await db.scalar(
        select(Membership.role).where(
            Membership.account_id == account.id, Membership.project_id == invite.project_id
        )
    )
    if role is None:
        role = invite.role
        db.add(Membership(account_id=account.id, project_id=invite.project_id, role=role))
    invite.status = "ACCEPTED"
    invite.accepted_at = _now()
    try:
        await db.flush()
    except IntegrityError as exc:  # the same email accepting two invites at the same instant
        raise Conflict("This account was just created or joined: log in instead") from exc
    project = await get_project(db, invite.project_id)
    return await _open_session(db, account, project, role, ttl_seconds)


async def list_projects(db: AsyncSession, account_id: str) -> list[tuple[Project, str]]:
    """The account's projects with its role in each, oldest membership first."""
    rows = await db.execute(
        select(Project, Membership.role)
        .join(Membership, Membership.project_id == Project.id)
        .where(Membership.account_id == account_id)
        .order_by(Membership.created_at, Project.id)
    )
    return [(project, role) for project, role in rows]


async def create_project_for(db: AsyncSession, secrets: SecretBox, account_id: str,
                             name: str) -> Project:
    """A new project with the caller as its ADMIN."""
    project = await create_project(db, secrets, name)
    db.add(Membership(account_id=account_id, project_id=project.id, role="ADMIN"))
    await db.flush()
    return project


async def switch_project(db: AsyncSession, token_hash: str, account_id: str,
                         project_id: str) -> tuple[Project, str]:
    """Point the dashboard session at another project the account belongs to."""
    row = (await db.execute(
        select(Project, Membership.role)
        .join(Membership, Membership.project_id == Project.id)
        .where(Membership.account_id == account_id, Project.id == project_id)
    )).first()
    if row is None:
        raise NotFound(f"No project {project_id} among yours")
    session = await db.get(AuthSession, token_hash)
    assert session is not None, "the session was resolved by this request"
    session.project_id = project_id
    await db.flush()
    return row[0], row[1]
