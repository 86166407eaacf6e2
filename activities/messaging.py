"""The send activity: exactly one delivery per message, whatever crashes or retries.

A send goes: lock the row -> checks (suppression, unsubscribe, channel) -> claim it
(`sending`, committed) -> call the provider -> record the outcome. A retry that finds
the claim of an attempt that died mid-call does not call the provider again: it cannot
know whether the provider accepted, and a duplicate is the worse failure for a user's
inbox. A transient provider error releases the claim before the retry.

The hot path is two autocommit statements (Core SQL, no ORM session): CLAIM_SQL loads
the message with everything the checks need and, when they all pass, claims it in the
same statement; after the provider call one UPDATE records `sent`. Every final outcome
of an API message is announced with NOTIFY (messages.OUTCOME_CHANNEL), which is what
POST /messages waits on instead of Temporal's result long-poll.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.providers.base import (
    OutboundMessage,
    PermanentSendError,
    ProviderResult,
    TransientSendError,
)
from activities.providers.registry import REQUIRED, build_provider, missing_settings
from core.crypto import SecretBox
from core.db import session_scope
from core.models import EndUser, Message
from core.rendering import html_to_text
from core.services import channels as channel_service
from core.services import messages as message_service
from core.services import webhooks as webhook_service
from core.settings import Settings

log = logging.getLogger("retenshun.activities.messaging")
INTERRUPTED_NOTE = (
    "a previous send attempt was interrupted after the provider call began; "
    "not sent again, to avoid a duplicate"
)


@dataclass
class DeliverInput:
    project_id: str
    message_id: str


@dataclass
class DeliverResult:
    status: str  # a contract status: sent, failed, suppressed, ...
    error: str | None = None


@dataclass
class MarkFailedInput:
    project_id: str
    message_id: str
    reason: str


def _now() -> datetime:
    return datetime.now(UTC)


# Load + checks + claim in one statement. `cur` locks the message row and gathers what
# the checks need; `claim` sets `sending` only when every check passes *and* the caller's
# cached channel settings are current (:cfg_updated_at is the channel_configs row's
# updated_at it resolved, NULL when the project has no row) and ready for the channel
# (:ready). Otherwise nothing is written and the caller decides in Python from the row
# (final state, interrupted claim, suppression, failure, or fresh channel settings).
CLAIM_SQL = text("""
WITH cur AS (
    SELECT m.id, m.project_id, m.user_id, m.channel, m.subject, m.body, m.status, m.error,
           m.transactional, m.source, m.source_id, m.to_address,
           u.id IS NOT NULL AS user_found,
           u.subscribed,
           CASE WHEN m.channel = 'PUSH' THEN u.properties END AS user_properties,
           CASE WHEN m.channel = 'EMAIL' AND coalesce(m.to_address, '') <> '' THEN
               (SELECT s.reason FROM suppressions s
                WHERE s.project_id = m.project_id AND s.address = lower(m.to_address))
           END AS suppressed_for,
           CASE WHEN m.source = 'automation' AND coalesce(m.source_id, '') <> '' THEN
               (SELECT a.active FROM automations a
                WHERE a.id = m.source_id AND a.project_id = m.project_id)
           END AS automation_active,
           c.project_id IS NOT NULL AS cfg_exists,
           c.updated_at AS cfg_updated_at,
           CASE WHEN c.updated_at IS DISTINCT FROM CAST(:cfg_updated_at AS timestamptz)
                THEN c.settings END AS cfg_settings,
           CASE WHEN c.updated_at IS DISTINCT FROM CAST(:cfg_updated_at AS timestamptz)
                THEN c.secrets_enc END AS cfg_secrets
    FROM messages m
    LEFT JOIN users u ON u.project_id = m.project_id AND u.id = m.user_id
    LEFT JOIN channel_configs c ON c.project_id = m.project_id
    WHERE m.id = :message_id AND m.project_id = :project_id
    FOR UPDATE OF m
), claim AS (
    UPDATE messages SET status = 'sending', updated_at = :now
    FROM cur
    WHERE messages.id = cur.id AND messages.status = 'queued' AND cur.status = 'queued'
      AND cur.user_found AND cur.suppressed_for IS NULL
      AND (cur.transactional OR cur.subscribed)
      AND (cur.source <> 'automation' OR coalesce(cur.source_id, '') = ''
           OR cur.automation_active)
      AND cur.channel = ANY(CAST(:ready AS text[]))
      AND cur.cfg_updated_at IS NOT DISTINCT FROM CAST(:cfg_updated_at AS timestamptz)
    RETURNING messages.id
)
SELECT cur.*, EXISTS (SELECT 1 FROM claim) AS claimed FROM cur
""")

RELEASE_SQL = text("UPDATE messages SET status = 'queued', updated_at = :now "
                   "WHERE id = :message_id AND status = 'sending'")


def _outcome_sql(columns: tuple[str, ...], expected: tuple[str, ...] | None) -> Any:
    """Sets a message's columns (when it is in an `expected` state, if given) and
    announces the outcome of an API message to the POST waiting for it. A row back means
    it updated."""
    sets = ", ".join(f"{c} = :{c}" for c in columns)
    where = "id = :message_id"
    if expected is not None:
        where += " AND status IN (" + ", ".join(f"'{s}'" for s in expected) + ")"
    return text(f"""
WITH u AS (
    UPDATE messages SET {sets}, updated_at = :now WHERE {where} RETURNING id, source
)
SELECT u.id, CASE WHEN u.source = 'api'
                  THEN pg_notify('{message_service.OUTCOME_CHANNEL}', u.id)::text END
FROM u
""")


_SQL_CACHE: dict[tuple[tuple[str, ...], tuple[str, ...] | None], Any] = {}


def outcome_sql(columns: tuple[str, ...], expected: tuple[str, ...] | None) -> Any:
    key = (columns, expected)
    stmt = _SQL_CACHE.get(key)
    if stmt is None:
        stmt = _SQL_CACHE[key] = _outcome_sql(columns, expected)
    return stmt


@dataclass
class _Channels:
    """A project's resolved channel settings as of its channel_configs row's updated_at."""

    updated_at: datetime | None
    channels: channel_service.ResolvedChannels
    ready: list[str]  # channels whose provider is configured (claimable in CLAIM_SQL)


CHANNEL_CACHE_SIZE = 4096


class MessagingActivities:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], secrets: SecretBox,
                 settings: Settings, http: httpx.AsyncClient):
        self._sessions = sessions
        self._secrets = secrets
        self._settings = settings
        self._http = http
        self._signing_keys = message_service.signing_keys(settings.secret_key)
        engine: AsyncEngine = sessions.kw["bind"]
        # One statement per round trip, each its own transaction (the claim is atomic).
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        # Statements wait here rather than open overflow connections that the pool then
        # closes again (tens of concurrent sends churned connections: PostgreSQL forks a
        # backend for each).
        size = getattr(engine.pool, "size", lambda: 10)()
        self._db_slots = asyncio.Semaphore(max(2, int(size)))
        # project_id -> channel settings, checked against the row's updated_at by every
        # claim (never stale: a PUT/PATCH in any process changes updated_at).
        self._channels: dict[str, _Channels] = {}

    @activity.defn(name="deliver_message")
    async def deliver(self, input: DeliverInput) -> DeliverResult:
        return await self.deliver_message(input.project_id, input.message_id)

    async def deliver_message(self, project_id: str, message_id: str) -> DeliverResult:
        """Deliver one stored message exactly once. Safe to call again for the same id
        (from a retry, or from a batch activity such as a campaign page)."""
        prepared = await self._prepare(project_id, message_id)
        if isinstance(prepared, DeliverResult):
            return prepared
        provider, outbound = prepared
        try:
            result = await provider.send(outbound)
        except PermanentSendError as exc:
            await self._finish(message_id, status="failed", error=str(exc),
                               dropped=getattr(exc, "dropped_subscriptions", []))
            return DeliverResult("failed", str(exc))
        except BaseException as exc:
            # Transient (or unexpected): release the claim so the retry sends.
            await self._release(message_id)
            if isinstance(exc, TransientSendError):
                raise ApplicationError(str(exc), type="TransientSendError") from exc
            raise
        await self._record_sent(message_id, result)
        return DeliverResult("sent")

    @activity.defn(name="mark_message_failed")
    async def mark_failed(self, input: MarkFailedInput) -> None:
        await self._outcome(input.message_id, ("queued", "sending"),
                            status="failed", error=input.reason)

    async def _outcome(self, message_id: str, expected: tuple[str, ...] | None,
                       **values: Any) -> bool:
        """Set `values` if the message is in an `expected` state (any state for None);
        True when it was updated."""
        stmt = outcome_sql(tuple(values), expected)
        async with self._db_slots, self._autocommit.connect() as conn:
            row = (await conn.execute(stmt, {**values, "now": _now(),
                                             "message_id": message_id})).first()
        return row is not None

    def _remember_channels(self, project_id: str, row: Any) -> _Channels:
        channels = channel_service.resolve(
            row.cfg_settings, row.cfg_secrets, self._secrets, row_exists=row.cfg_exists,
            smtp_catcher=self._settings.smtp_catcher)
        ready = [c for c in REQUIRED if missing_settings(c, channels) is None]
        entry = _Channels(row.cfg_updated_at if row.cfg_exists else None, channels, ready)
        if len(self._channels) >= CHANNEL_CACHE_SIZE:
            self._channels.clear()
        self._channels[project_id] = entry
        return entry

    async def _prepare(self, project_id: str, message_id: str,
                       ) -> DeliverResult | tuple[Any, OutboundMessage]:
        """Checks and the claim (committed before the provider is called)."""
        for _ in range(5):
            cached = self._channels.get(project_id)
            async with self._db_slots, self._autocommit.connect() as conn:
                row = (await conn.execute(CLAIM_SQL, {
                    "message_id": message_id, "project_id": project_id, "now": _now(),
                    "cfg_updated_at": cached.updated_at if cached else None,
                    "ready": cached.ready if cached else [],
                })).first()
            if row is None:
                raise ApplicationError(f"message {message_id} does not exist (deleted?)",
                                       non_retryable=True)
            if row.claimed:
                assert cached is not None
                try:
                    provider = await self._provider(row, cached.channels)
                except PermanentSendError as exc:
                    # The settings were checked before the claim, so only a provider
                    # refusing their values (a malformed key) gets here.
                    await self._outcome(message_id, ("sending",), status="failed",
                                        error=str(exc))
                    return DeliverResult("failed", str(exc))
                return provider, self._outbound(row)
            decided = await self._decide(row, cached)
            if decided is not None:
                return decided
            # Raced with another attempt, or the channel settings changed: look again.
        raise ApplicationError(f"message {message_id}: could not claim it (contended)")

    async def _decide(self, row: Any, cached: _Channels | None) -> DeliverResult | None:
        """Why an unclaimed message is not sent, recorded; None to try the claim again."""
        if row.status in message_service.FINAL:
            return DeliverResult(message_service.public_status(row.status), row.error)
        if row.status == "sending":
            log.warning("message %s: %s", row.id, INTERRUPTED_NOTE)
            await self._outcome(row.id, ("sending",), status="sent", error=INTERRUPTED_NOTE,
                                sent_at=_now())
            return DeliverResult("sent")
        reason: str | None
        if not row.user_found:
            reason = "the user no longer exists"
            return (DeliverResult("failed", reason) if await self._outcome(
                row.id, ("queued",), status="failed", error=reason) else None)
        reason = self._suppression(row)
        if reason:
            return (DeliverResult("suppressed", reason) if await self._outcome(
                row.id, ("queued",), status="suppressed", error=reason) else None)
        if row.channel == "IN_APP":  # the row is the inbox entry
            return (DeliverResult("sent") if await self._outcome(
                row.id, ("queued",), status="sent", provider="IN_APP", sent_at=_now())
                else None)
        current = (cached if cached is not None and row.cfg_settings is None
                   and row.cfg_secrets is None and cached.updated_at == (
                       row.cfg_updated_at if row.cfg_exists else None)
                   else self._remember_channels(row.project_id, row))
        reason = missing_settings(row.channel, current.channels) if row.channel in REQUIRED \
            else f"unknown channel {row.channel!r}"
        if reason:
            return (DeliverResult("failed", reason) if await self._outcome(
                row.id, ("queued",), status="failed", error=reason) else None)
        return None  # configured after all: the settings were just refreshed, claim again

    @staticmethod
    def _suppression(row: Any) -> str | None:
        if row.suppressed_for:
            return f"address suppressed after a {row.suppressed_for} message"
        if not row.transactional and not row.subscribed:
            return "user unsubscribed"
        if row.source == "automation" and row.source_id:
            # An automation made inactive or deleted sends nothing more, even for a
            # message already created by a running enrollment.
            if row.automation_active is None:
                return "automation deleted"
            if not row.automation_active:
                return "automation inactive"
        return None

    async def _provider(self, row: Any, channels: channel_service.ResolvedChannels) -> Any:
        webhook_secret = None
        if row.channel == "PUSH" and channels.get("pushProvider") == "WEBHOOK":
            async with self._sessions() as db:
                webhook_secret = await webhook_service.project_secret(
                    db, self._secrets, row.project_id)
        return build_provider(row.channel, channels, http=self._http,
                              webhook_secret=webhook_secret)

    def _outbound(self, row: Any) -> OutboundMessage:
        unsubscribe_url = None
        if row.channel == "EMAIL" and not row.transactional:
            token = message_service.unsubscribe_token(self._signing_keys, row.project_id,
                                                      row.user_id)
            unsubscribe_url = f"{self._settings.public_url.rstrip('/')}/api/v1/unsubscribe/{token}"
        return OutboundMessage(
            message_id=row.id, project_id=row.project_id, user_id=row.user_id,
            channel=row.channel, to=row.to_address, subject=row.subject,
            body=row.body,
            text=html_to_text(row.body) if row.channel == "EMAIL" else None,
            transactional=row.transactional, unsubscribe_url=unsubscribe_url,
            user_properties=dict(row.user_properties or {}),
        )

    async def _finish(self, message_id: str, *, dropped: list[str], **values: Any) -> None:
        await self._outcome(message_id, None, **values)
        if dropped:
            async with session_scope(self._sessions) as db:
                await self._drop_subscriptions(db, message_id, dropped)

    async def _release(self, message_id: str) -> None:
        async with self._db_slots, self._autocommit.connect() as conn:
            await conn.execute(RELEASE_SQL, {"message_id": message_id, "now": _now()})

    async def _record_sent(self, message_id: str, result: ProviderResult) -> None:
        await self._outcome(message_id, None, status="sent", sent_at=_now(),
                            provider=result.provider,
                            provider_message_id=result.provider_message_id)
        if result.dropped_subscriptions:
            async with session_scope(self._sessions) as db:
                await self._drop_subscriptions(db, message_id, result.dropped_subscriptions)

    async def _drop_subscriptions(self, db: AsyncSession, message_id: str,
                                  endpoints: list[str]) -> None:
        """Web Push endpoints that answered 404/410 are gone for good: forget them."""
        message = await db.get(Message, message_id)
        assert message is not None
        user = await db.scalar(
            select(EndUser).where(EndUser.project_id == message.project_id,
                                  EndUser.id == message.user_id).with_for_update())
        if user is None:
            return
        subs = (user.properties or {}).get("webPushSubscriptions") or []
        kept = [s for s in subs if not (isinstance(s, dict) and s.get("endpoint") in endpoints)]
        user.properties = {**user.properties, "webPushSubscriptions": kept}
        user.updated_at = _now()
