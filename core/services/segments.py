"""Segments: CRUD, exact estimates, and membership upkeep (segment_members, user_count).

Membership is kept by the worker, never by ingestion:

- `rebuild_membership` recomputes one whole segment in one statement (new or edited
  rules: `counted_at` is NULL until it has run; time-relative rules on a schedule);
- `refresh_users` re-evaluates a batch of users flagged `membership_stale` (set by
  ingestion, identify, profile edits, unsubscribes; cleared by `mark_evaluated`) against
  every built segment of their project.

Both write only differences: a user entering a segment gets a row (with its
`entered_at`) and, when an active SEGMENT_ENTRY automation watches that segment, an
`outbox` row (`kind="segment_entry"`) in the same transaction; a user leaving loses the
row. `user_count` moves by exactly what was inserted or deleted, so listing segments
never counts anything. Services flush; callers commit.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    String,
    cast,
    delete,
    exists,
    func,
    literal,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import JSONPATH, insert
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import BadRequest, Conflict, NotFound
from core.ids import new_id
from core.models import Automation, Campaign, EndUser, OutboxEntry, Segment, SegmentMember
from core.segments import (
    has_event_rules,
    is_time_dependent,
    rules_condition,
    validate_rules,
)

log = logging.getLogger("retenshun.segments")

EDITABLE = ("name", "description", "rules")
ACTIVE_CAMPAIGN = ("SCHEDULED", "SENDING")
# Hash tables for the rules' event sub-queries (one per event rule) stay in memory.
QUERY_WORK_MEM = "64MB"


@dataclass(slots=True)
class SegmentFields:
    name: str
    rules: list[Any]
    description: str | None = None


async def tune_for_rules(db: AsyncSession, rules: list[Any]) -> None:
    """For a whole-project rules query (this transaction only, one round trip): room to
    hash its event sub-queries, no JIT (compiling the expressions costs more than it
    saves here), and, when it counts events, no parallel workers (each would aggregate
    the events again)."""
    parallel = "0" if has_event_rules(rules) else None
    await db.execute(
        select(func.set_config("work_mem", QUERY_WORK_MEM, True),
               func.set_config("jit", "off", True),
               func.set_config("max_parallel_workers_per_gather",
                               parallel or func.current_setting(
                                   "max_parallel_workers_per_gather"), True)))


async def count_matching(db: AsyncSession, project_id: str, rules: list[Any],
                         now: datetime | None = None) -> int:
    """The exact number of the project's users matching `rules` (400 if malformed)."""
    condition = rules_condition(project_id, rules, now=now)
    await tune_for_rules(db, rules)
    return int(await db.scalar(select(func.count()).select_from(EndUser).where(condition))
               or 0)


async def estimate(db: AsyncSession, project_id: str, rules: list[Any]) -> int:
    return await count_matching(db, project_id, rules)


async def list_segments(db: AsyncSession, project_id: str, *, page: int, limit: int,
                        ) -> tuple[list[Segment], int]:
    query = select(Segment).where(Segment.project_id == project_id)
    total = await db.scalar(select(func.count()).select_from(query.subquery()))
    rows = await db.scalars(query.order_by(Segment.created_at.desc(), Segment.id.desc())
                            .offset((page - 1) * limit).limit(limit))
    return list(rows), int(total or 0)


async def get_segment(db: AsyncSession, project_id: str, segment_id: str) -> Segment:
    segment = await db.scalar(
        select(Segment).where(Segment.project_id == project_id, Segment.id == segment_id))
    if segment is None:
        raise NotFound(f"No segment {segment_id} in this project")
    return segment


async def create_segment(db: AsyncSession, project_id: str, fields: SegmentFields) -> Segment:
    """Stored with its exact count; its member rows are built by the worker within a
    second or two (counted_at stays NULL until then)."""
    validate_rules(fields.rules)
    segment = Segment(
        id=new_id("seg"), project_id=project_id, name=fields.name,
        description=fields.description, rules=fields.rules,
        user_count=await count_matching(db, project_id, fields.rules), counted_at=None,
    )
    db.add(segment)
    await db.flush()
    return segment


async def update_segment(db: AsyncSession, project_id: str, segment_id: str,
                         changes: dict[str, Any]) -> Segment:
    """Merge `changes` (any of name, description, rules). New rules are recounted at once
    and the members rebuilt by the worker."""
    segment = await get_segment(db, project_id, segment_id)
    changes = {k: v for k, v in changes.items() if k in EDITABLE}
    if "rules" in changes:
        validate_rules(changes["rules"])
    for name, value in changes.items():
        setattr(segment, name, value)
    if "rules" in changes:
        segment.user_count = await count_matching(db, project_id, segment.rules)
        segment.counted_at = None
    segment.updated_at = datetime.now(UTC)
    await db.flush()
    return segment


async def replace_segment(db: AsyncSession, project_id: str, segment_id: str,
                          fields: SegmentFields) -> Segment:
    return await update_segment(db, project_id, segment_id, {
        "name": fields.name, "description": fields.description, "rules": fields.rules})


async def users_of(db: AsyncSession, project_id: str, segment_id: str,
                   ) -> tuple[list[str], list[str]]:
    """(active campaigns, active automations) that use the segment, as "name (id)"."""
    campaigns = await db.execute(select(Campaign.id, Campaign.name).where(
        Campaign.project_id == project_id, Campaign.segment_id == segment_id,
        Campaign.status.in_(ACTIVE_CAMPAIGN)))
    # An automation uses it as its trigger, or names it anywhere in its steps.
    mentions = func.jsonb_path_exists(
        Automation.steps, cast(literal("$.** ? (@ == $id)", String), JSONPATH),
        func.jsonb_build_object("id", literal(segment_id, String)))
    automations = await db.execute(select(Automation.id, Automation.name).where(
        Automation.project_id == project_id, Automation.active.is_(True),
        (Automation.segment_id == segment_id) | mentions))
    return ([f"{name} ({cid})" for cid, name in campaigns],
            [f"{name} ({aid})" for aid, name in automations])


async def delete_segment(db: AsyncSession, project_id: str, segment_id: str) -> None:
    """409 while a scheduled or sending campaign, or an active automation, uses it. Drafts,
    finished campaigns and inactive automations keep their rows with no segment."""
    segment = await get_segment(db, project_id, segment_id)
    # Lock it: a campaign scheduled (or automation activated) concurrently waits for us.
    await db.execute(select(Segment.id).where(Segment.id == segment.id).with_for_update())
    campaigns, automations = await users_of(db, project_id, segment_id)
    if campaigns or automations:
        users = [f"campaign {c}" for c in campaigns] + [f"automation {a}" for a in automations]
        raise Conflict(f"Segment {segment_id} is in use by {', '.join(users)}: cancel or "
                       "deactivate them (or point them at another segment) first")
    await db.delete(segment)
    await db.flush()


# ------------------------------------------------------------------- membership upkeep


@dataclass
class MembershipChange:
    entered: int = 0
    left: int = 0
    outbox: int = 0
    segments: set[str] = field(default_factory=set)


async def entry_watched(db: AsyncSession, project_id: str, segment_ids: list[str]) -> set[str]:
    """The segments some active SEGMENT_ENTRY automation starts on."""
    if not segment_ids:
        return set()
    rows = await db.scalars(select(Automation.segment_id).distinct().where(
        Automation.project_id == project_id, Automation.active.is_(True),
        Automation.trigger_type == "SEGMENT_ENTRY", Automation.segment_id.in_(segment_ids)))
    return {r for r in rows if r}


async def rebuild_membership(db: AsyncSession, segment_id: str,
                             now: datetime | None = None) -> MembershipChange | None:
    """Recompute one segment's members in a single statement (diff only) and set its
    exact user_count. None when the segment is gone. Holds the segment's row lock, so
    concurrent refreshes and edits of it wait."""
    segment = await db.scalar(select(Segment).where(Segment.id == segment_id)
                              .with_for_update())
    if segment is None:
        return None
    project_id = segment.project_id
    try:
        condition = rules_condition(project_id, segment.rules, now=now)
    except BadRequest as exc:
        log.error("segment %s has rules that no longer compile (%s); left as is",
                  segment_id, exc.message)
        return None
    await tune_for_rules(db, segment.rules)
    seg = literal(segment_id, String)
    matching = select(EndUser.id.label("user_id")).where(condition).cte("matching")
    inserted = (
        insert(SegmentMember)
        .from_select(["segment_id", "user_id", "project_id"],
                     select(seg, matching.c.user_id, literal(project_id, String)))
        .on_conflict_do_nothing(index_elements=["segment_id", "user_id"])
        .returning(SegmentMember.user_id)
        .cte("inserted")
    )
    removed = (
        delete(SegmentMember)
        .where(SegmentMember.segment_id == seg,
               ~exists().where(matching.c.user_id == SegmentMember.user_id))
        .returning(SegmentMember.user_id)
        .cte("removed")
    )
    query = select(select(func.count()).select_from(inserted).scalar_subquery(),
                   select(func.count()).select_from(removed).scalar_subquery())
    watched = bool(await entry_watched(db, project_id, [segment_id]))
    if watched:
        outbox = (
            insert(OutboxEntry)
            .from_select(["project_id", "kind", "payload"], select(
                literal(project_id, String), literal("segment_entry", String),
                func.jsonb_build_object("segmentId", seg, "userId", inserted.c.user_id)))
            .returning(OutboxEntry.id)
            .cte("outbox")
        )
        query = query.add_columns(select(func.count()).select_from(outbox).scalar_subquery())
    row = (await db.execute(query)).one()
    change = MembershipChange(entered=int(row[0]), left=int(row[1]),
                              outbox=int(row[2]) if watched else 0, segments={segment_id})
    await db.execute(
        update(Segment).where(Segment.id == segment_id).values(
            user_count=select(func.count()).where(
                SegmentMember.segment_id == segment_id).scalar_subquery(),
            counted_at=func.now()))
    return change


async def pending_segments(db: AsyncSession, limit: int = 100) -> list[str]:
    """Segments whose members were never built for their current rules."""
    rows = await db.scalars(select(Segment.id).where(Segment.counted_at.is_(None))
                            .order_by(Segment.updated_at).limit(limit))
    return list(rows)


async def segments_to_recompute(db: AsyncSession, stale_before: datetime) -> list[str]:
    """Segments whose rules move with time alone, and any not rebuilt since
    `stale_before` (repairs drift such as erased users)."""
    rows = (await db.execute(select(Segment.id, Segment.rules, Segment.counted_at))).all()
    out = []
    for segment_id, rules, counted_at in rows:
        try:
            timed = is_time_dependent(rules)
        except BadRequest:
            continue
        if timed or counted_at is None or counted_at < stale_before:
            out.append(segment_id)
    return out


async def refresh_users(db: AsyncSession, project_id: str, user_ids: list[str],
                        now: datetime | None = None) -> MembershipChange:
    """Re-evaluate these users of one project against its built segments and write the
    differences (one evaluation query for all segments, event rules per user)."""
    change = MembershipChange()
    segments = list(await db.execute(select(Segment.id, Segment.rules).where(
        Segment.project_id == project_id, Segment.counted_at.is_not(None))))
    if not segments or not user_ids:
        return change
    columns, ids = [], []
    for segment_id, rules in segments:
        try:
            columns.append(rules_condition(project_id, rules, now=now, correlated=True))
        except BadRequest:
            continue
        ids.append(segment_id)
    if not ids:
        return change
    wanted: set[tuple[str, str]] = set()
    for row in await db.execute(select(EndUser.id, *columns).where(
            EndUser.project_id == project_id, EndUser.id.in_(user_ids))):
        wanted.update((ids[i], row[0]) for i, hit in enumerate(row[1:]) if hit)
    current = {(s, u) for s, u in await db.execute(
        select(SegmentMember.segment_id, SegmentMember.user_id).where(
            SegmentMember.project_id == project_id, SegmentMember.user_id.in_(user_ids),
            SegmentMember.segment_id.in_(ids)))}
    to_add, to_remove = wanted - current, current - wanted
    if not to_add and not to_remove:
        return change
    affected = sorted({s for s, _ in to_add | to_remove})
    # Lock in id order (rebuilds lock their one segment first too): no deadlock, and a
    # segment being rebuilt or re-edited meanwhile is left to its rebuild.
    locked = set(await db.scalars(select(Segment.id).where(
        Segment.id.in_(affected), Segment.counted_at.is_not(None))
        .order_by(Segment.id).with_for_update()))
    to_add = {p for p in to_add if p[0] in locked}
    to_remove = {p for p in to_remove if p[0] in locked}
    delta: dict[str, int] = defaultdict(int)
    entered: list[tuple[str, str]] = []
    if to_add:
        entered = [(s, u) for s, u in await db.execute(
            insert(SegmentMember).values([
                {"segment_id": s, "user_id": u, "project_id": project_id}
                for s, u in sorted(to_add)])
            .on_conflict_do_nothing(index_elements=["segment_id", "user_id"])
            .returning(SegmentMember.segment_id, SegmentMember.user_id))]
        for s, _ in entered:
            delta[s] += 1
    if to_remove:
        left = (await db.execute(
            delete(SegmentMember)
            .where(tuple_(SegmentMember.segment_id, SegmentMember.user_id).in_(
                sorted(to_remove)))
            .returning(SegmentMember.segment_id))).scalars()
        for s in left:
            delta[s] -= 1
            change.left += 1
    change.entered = len(entered)
    watched = await entry_watched(db, project_id, sorted({s for s, _ in entered}))
    entries = [{"project_id": project_id, "kind": "segment_entry",
                "payload": {"segmentId": s, "userId": u}} for s, u in entered if s in watched]
    if entries:
        await db.execute(insert(OutboxEntry).values(entries))
        change.outbox = len(entries)
    for segment_id, d in sorted(delta.items()):
        if d:
            await db.execute(update(Segment).where(Segment.id == segment_id)
                             .values(user_count=Segment.user_count + d))
    change.segments = {s for s, d in delta.items() if d}
    return change


@dataclass(frozen=True)
class StaleUser:
    user_id: str
    updated_at: datetime  # as read: the flag is cleared only if it has not moved since


async def projects_with_built_segments(db: AsyncSession) -> list[str]:
    return list(await db.scalars(select(Segment.project_id).distinct()
                                 .where(Segment.counted_at.is_not(None))
                                 .order_by(Segment.project_id)))


async def stale_users(db: AsyncSession, project_id: str, after: str, limit: int,
                      ) -> list[StaleUser]:
    """Users of the project flagged `membership_stale`, by id after `after` (a range scan
    of the partial index ix_users_membership_stale)."""
    rows = await db.execute(
        select(EndUser.id, EndUser.updated_at)
        .where(EndUser.project_id == project_id, EndUser.membership_stale, EndUser.id > after)
        .order_by(EndUser.id).limit(limit))
    return [StaleUser(u, t) for u, t in rows]


# Clears the flags of the users just evaluated, unless a change moved `updated_at` since
# they were read (that change is evaluated on the next pass). SKIP LOCKED: a user being
# written right now stays stale rather than make us wait; and since the refresher never
# waits on a user row, it cannot deadlock with ingestion, which locks users in id order.
_MARK_EVALUATED = text("""
UPDATE users AS u SET membership_stale = false
FROM (SELECT id FROM users
      WHERE project_id = :project_id AND id = ANY(:ids) AND membership_stale
      ORDER BY id FOR UPDATE SKIP LOCKED) AS locked,
     unnest(CAST(:ids AS text[]), CAST(:seen AS timestamptz[])) AS s(id, updated_at)
WHERE u.project_id = :project_id AND u.id = locked.id AND s.id = u.id
  AND u.updated_at = s.updated_at
""")


async def mark_evaluated(db: AsyncSession, project_id: str, users: list[StaleUser]) -> int:
    """Clear `membership_stale` of these users (run it last in the transaction that wrote
    their memberships). Returns how many were cleared."""
    result = await db.execute(_MARK_EVALUATED, {
        "project_id": project_id, "ids": [u.user_id for u in users],
        "seen": [u.updated_at for u in users]})
    return int(result.rowcount)  # type: ignore[attr-defined]
