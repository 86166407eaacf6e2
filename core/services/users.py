"""End-user profiles: identify, merge, search, erase."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ARRAY, Text, and_, delete, func, literal, or_, select
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import NotFound
from core.models import EndUser, Event, Message
from core.services import reports

ACTIVE_WINDOW = timedelta(days=30)
UNSET: Any = object()


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def upsert_profile(
    db: AsyncSession, project_id: str, user_id: str, *, email: str | None = UNSET,
    properties: dict[str, Any] | None = None, subscribed: bool | None = None,
    seen: bool = False,
) -> EndUser:
    """Create or merge in one atomic statement. A `None` property value removes that key
    (top level); `seen` (identify) also moves lastSeen, an admin edit does not."""
    now = datetime.now(UTC)
    props = properties or {}
    to_set = {k: v for k, v in props.items() if v is not None}
    to_remove = [k for k, v in props.items() if v is None]
    values: dict[str, Any] = {
        "project_id": project_id, "id": user_id, "properties": to_set,
        "first_seen": now, "last_seen": now, "updated_at": now, "membership_stale": True,
    }
    if email is not UNSET:
        values["email"] = email
    if subscribed is not None:
        values["subscribed"] = subscribed
    stmt = insert(EndUser).values(**values)
    merged = EndUser.properties.op("||")(literal(to_set, JSONB))
    if to_remove:
        merged = merged.op("-")(literal(to_remove, ARRAY(Text)))
    set_: dict[str, Any] = {"properties": merged, "updated_at": now, "membership_stale": True}
    if email is not UNSET:
        set_["email"] = stmt.excluded.email
    if subscribed is not None:
        set_["subscribed"] = subscribed
    if seen:
        set_["last_seen"] = func.greatest(EndUser.last_seen, now)
    stmt = stmt.on_conflict_do_update(index_elements=["project_id", "id"], set_=set_).returning(
        EndUser
    )
    user = (await db.scalars(stmt, execution_options={"populate_existing": True})).one()
    return user


async def get_user(db: AsyncSession, project_id: str, user_id: str) -> EndUser:
    user = await db.get(EndUser, (project_id, user_id))
    if user is None:
        raise NotFound(f"No user {user_id!r} in this project")
    return user


async def list_users(
    db: AsyncSession, project_id: str, *, search: str | None, active: bool | None,
    page: int, limit: int,
) -> tuple[list[EndUser], int]:
    query = select(EndUser).where(EndUser.project_id == project_id)
    if search:
        pattern = f"%{_escape_like(search)}%"
        query = query.where(
            or_(EndUser.id.ilike(pattern, escape="\\"), EndUser.email.ilike(pattern, escape="\\"))
        )
    if active is not None:
        cutoff = datetime.now(UTC) - ACTIVE_WINDOW
        # The day bound lets PostgreSQL use ix_users_project_last_seen_day (last_seen
        # itself is not indexed, see models.EndUser); the exact bound then decides.
        day = cutoff.date()
        query = query.where(
            and_(EndUser.last_seen_day >= day, EndUser.last_seen >= cutoff) if active
            else and_(EndUser.last_seen_day <= day, EndUser.last_seen < cutoff))
    total = await db.scalar(select(func.count()).select_from(query.subquery()))
    rows = await db.scalars(
        query.order_by(EndUser.last_seen_day.desc(), EndUser.last_seen.desc(), EndUser.id)
        .offset((page - 1) * limit).limit(limit)
    )
    return list(rows), int(total or 0)


async def delete_user(db: AsyncSession, project_id: str, user_id: str) -> None:
    """Erase the profile, its events and messages, and stop its running enrollments."""
    from core.services.automations import cancel_runs, running_workflow_ids

    user = await get_user(db, project_id, user_id)
    # Rolled-up report days from the user's first trace on counted them: recompute those.
    await reports.invalidate(db, project_id, min(
        t for t in (user.first_seen, user.created_at) if t is not None))
    await cancel_runs(db, project_id, await running_workflow_ids(
        db, project_id, user_id=user_id), "user deleted")
    await db.execute(
        delete(Message).where(Message.project_id == project_id, Message.user_id == user_id))
    await db.execute(delete(Event).where(Event.project_id == project_id, Event.user_id == user_id))
    await db.execute(
        delete(EndUser).where(EndUser.project_id == project_id, EndUser.id == user_id)
    )
