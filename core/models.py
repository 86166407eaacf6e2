"""ORM tables. Schema changes go through Alembic (migrations/), never create_all."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Computed,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base

Timestamp = DateTime(timezone=True)


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # HMAC secret for X-User-Hash on public inbox reads; encrypted at rest (core.crypto).
    identity_secret_enc: Mapped[str] = mapped_column(Text)
    # Verifies inbound delivery receipts; rotated by POST /channels/webhook-secret.
    webhook_secret_enc: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())


class Account(Base):
    """A team member who logs into the dashboard (ids `usr_`)."""

    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)  # stored lower-cased
    password_hash: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())


class Membership(Base):
    __tablename__ = "memberships"

    account_id: Mapped[str] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    role: Mapped[str] = mapped_column(String(10))  # ADMIN | MEMBER
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())


class AuthSession(Base):
    """A dashboard login. Only the SHA-256 of the cookie value is stored."""

    __tablename__ = "auth_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(Timestamp)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(10))  # public | secret
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # SHA-256 hex
    prefix: Mapped[str] = mapped_column(String(32))
    created_by: Mapped[str | None] = mapped_column(
        ForeignKey("accounts.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)


class Invite(Base):
    __tablename__ = "invites"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    email: Mapped[str] = mapped_column(String(320))
    role: Mapped[str] = mapped_column(String(10))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(10), server_default="PENDING")
    invited_by: Mapped[str | None] = mapped_column(
        ForeignKey("accounts.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(Timestamp)
    accepted_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)


class EndUser(Base):
    """A tracked user of the customer's product, keyed by the client's own userId."""

    __tablename__ = "users"

    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    email: Mapped[str | None] = mapped_column(String(320), nullable=True)
    properties: Mapped[dict[str, Any]] = mapped_column(
        JSONB, server_default=text("'{}'::jsonb")
    )
    subscribed: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    first_seen: Mapped[datetime] = mapped_column(Timestamp)
    last_seen: Mapped[datetime] = mapped_column(Timestamp)
    # Time of the newest event: a gap of 30 minutes or more from it opens a new session.
    last_event_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    event_count: Mapped[int] = mapped_column(BigInteger, server_default="0")
    session_count: Mapped[int] = mapped_column(Integer, server_default="0")
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    # Indexed instead of last_seen and updated_at, so that an event's upsert changes no
    # indexed value and is a HOT update (migration 0006): the UTC day of last_seen, and
    # "segment memberships need re-evaluating" (set by changes, cleared by the refresher).
    last_seen_day: Mapped[date | None] = mapped_column(
        Date, Computed("(last_seen AT TIME ZONE 'UTC')::date", persisted=True))
    membership_stale: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))

    __table_args__ = (
        Index("ix_users_project_last_seen_day", "project_id", "last_seen_day"),
        Index("ix_users_membership_stale", "project_id", "id",
              postgresql_where=text("membership_stale")),
    )


class Event(Base):
    __tablename__ = "events"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(String(255))
    event_name: Mapped[str] = mapped_column(String(200))
    properties: Mapped[dict[str, Any]] = mapped_column(
        JSONB, server_default=text("'{}'::jsonb")
    )
    timestamp: Mapped[datetime] = mapped_column(Timestamp)
    received_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)

    __table_args__ = (
        Index("ix_events_project_ts", "project_id", text("timestamp DESC")),
        Index("ix_events_project_user_ts", "project_id", "user_id", text("timestamp DESC")),
        Index("ix_events_project_name_ts", "project_id", "event_name", text("timestamp DESC")),
        Index(
            "uq_events_project_idempotency",
            "project_id",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
    )


class Template(Base):
    __tablename__ = "templates"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    channel: Mapped[str] = mapped_column(String(10))  # EMAIL | PUSH | SMS | IN_APP
    subject: Mapped[str | None] = mapped_column(Text, nullable=True)  # title for PUSH/IN_APP
    body: Mapped[str] = mapped_column(Text)
    tags: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'"))
    ai: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())

    __table_args__ = (Index("ix_templates_project_created", "project_id", "created_at"),)


class ChannelConfig(Base):
    """A project's provider settings: plain fields in `settings`, secrets encrypted apart."""

    __tablename__ = "channel_configs"

    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    settings: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    secrets_enc: Mapped[str | None] = mapped_column(Text, nullable=True)  # encrypted JSON
    updated_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())


class Message(Base):
    """One message to one user on one channel. `send_key` makes every send exactly-once:
    the row exists before the provider is called, and a retry finds it."""

    __tablename__ = "messages"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(String(255))
    channel: Mapped[str] = mapped_column(String(10))
    subject: Mapped[str | None] = mapped_column(Text, nullable=True)
    body: Mapped[str] = mapped_column(Text)
    # queued -> sending (claimed by a send attempt) -> sent -> delivered/opened/clicked,
    # or failed / bounced / suppressed.
    status: Mapped[str] = mapped_column(String(12), server_default="queued")
    transactional: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    template_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    source: Mapped[str] = mapped_column(String(12), server_default="api")  # api|automation|campaign
    source_id: Mapped[str | None] = mapped_column(String(80), nullable=True)
    send_key: Mapped[str] = mapped_column(String(300))
    to_address: Mapped[str | None] = mapped_column(String(320), nullable=True)
    provider: Mapped[str | None] = mapped_column(String(20), nullable=True)
    provider_message_id: Mapped[str | None] = mapped_column(String(300), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    sent_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    read_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)

    __table_args__ = (
        Index("uq_messages_project_send_key", "project_id", "send_key", unique=True),
        Index("ix_messages_project_created", "project_id", text("created_at DESC")),
        Index("ix_messages_project_user_created", "project_id", "user_id",
              text("created_at DESC")),
        Index("ix_messages_provider_message_id", "provider_message_id"),
        Index("ix_messages_project_source", "project_id", "source", "source_id"),
    )


class Suppression(Base):
    """An address that must not be mailed again (hard bounce, complaint)."""

    __tablename__ = "suppressions"

    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    address: Mapped[str] = mapped_column(String(320), primary_key=True)  # lower-cased
    reason: Mapped[str] = mapped_column(String(20))  # bounced | complained
    message_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())


class WebhookReceipt(Base):
    """A verified inbound delivery receipt, stored once per id before it is processed."""

    __tablename__ = "webhook_receipts"

    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    event: Mapped[str] = mapped_column(String(40))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    received_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    processed_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    outcome: Mapped[str | None] = mapped_column(Text, nullable=True)


class NewsItem(Base):
    __tablename__ = "news_items"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(300))
    body: Mapped[str] = mapped_column(Text)
    url: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    published: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    published_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())

    __table_args__ = (
        Index("ix_news_project_published", "project_id", "published",
              text("published_at DESC")),
    )


class Segment(Base):
    __tablename__ = "segments"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    rules: Mapped[list[Any]] = mapped_column(JSONB)
    # Kept fresh by membership evaluation, so listing never recounts every segment.
    user_count: Mapped[int] = mapped_column(Integer, server_default="0")
    counted_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())

    __table_args__ = (Index("ix_segments_project_created", "project_id", "created_at"),)


class SegmentMember(Base):
    __tablename__ = "segment_members"

    segment_id: Mapped[str] = mapped_column(
        ForeignKey("segments.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(40))
    entered_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())

    __table_args__ = (Index("ix_segment_members_project_user", "project_id", "user_id"),)


class Automation(Base):
    __tablename__ = "automations"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    trigger_type: Mapped[str] = mapped_column(String(20))  # EVENT | SEGMENT_ENTRY
    trigger_event: Mapped[str | None] = mapped_column(String(200), nullable=True)
    trigger_filter: Mapped[list[Any] | None] = mapped_column(JSONB, nullable=True)
    segment_id: Mapped[str | None] = mapped_column(
        ForeignKey("segments.id", ondelete="RESTRICT"), nullable=True
    )
    exit_event: Mapped[str | None] = mapped_column(String(200), nullable=True)
    steps: Mapped[list[Any]] = mapped_column(JSONB)
    # Event names this automation reacts to (trigger, exit, every WAIT_FOR_EVENT of every
    # version): ingestion writes an outbox row only for these, so other events stay cheap.
    watch_events: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'"))
    active: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    # Bumped on every edit of steps: runs keep the snapshot they started with.
    version: Mapped[int] = mapped_column(Integer, server_default="1")
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())

    __table_args__ = (
        Index("ix_automations_project_trigger", "project_id", "active", "trigger_event"),
    )


class Enrollment(Base):
    """One run of an automation for one user (ids `run_`), mirrored from its workflow."""

    __tablename__ = "enrollments"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    automation_id: Mapped[str] = mapped_column(
        ForeignKey("automations.id", ondelete="CASCADE")
    )
    user_id: Mapped[str] = mapped_column(String(255))
    workflow_id: Mapped[str] = mapped_column(String(400))
    # running | completed | exited | cancelled | failed
    status: Mapped[str] = mapped_column(String(12), server_default="running")
    current_step: Mapped[str | None] = mapped_column(String(100), nullable=True)
    automation_version: Mapped[int] = mapped_column(Integer)
    trigger_event_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    started_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    ended_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)

    __table_args__ = (
        Index("ix_enrollments_automation_started", "automation_id", text("started_at DESC")),
        Index("ix_enrollments_project_user", "project_id", "user_id"),
        # A user is in at most one running enrollment of an automation at a time.
        Index("uq_enrollments_running", "automation_id", "user_id", unique=True,
              postgresql_where=text("status = 'running'")),
    )


class OutboxEntry(Base):
    """Written in the same transaction as the event it comes from; the dispatcher in the
    worker turns it into a Temporal signal-with-start and deletes it."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    project_id: Mapped[str] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(20))  # event | segment_entry | ...
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    available_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (Index("ix_outbox_available", "available_at", "id"),)


class Campaign(Base):
    __tablename__ = "campaigns"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    channel: Mapped[str] = mapped_column(String(10))
    segment_id: Mapped[str] = mapped_column(ForeignKey("segments.id", ondelete="RESTRICT"))
    template_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    subject: Mapped[str | None] = mapped_column(Text, nullable=True)
    body: Mapped[str | None] = mapped_column(Text, nullable=True)
    # DRAFT | SCHEDULED | SENDING | SENT | CANCELLED | FAILED
    status: Mapped[str] = mapped_column(String(10), server_default="DRAFT")
    scheduled_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    rate_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)  # messages/s
    recipients: Mapped[int] = mapped_column(Integer, server_default="0")
    started_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())

    __table_args__ = (Index("ix_campaigns_project_created", "project_id", "created_at"),)


class AiGeneration(Base):
    """Generated copy cached by key (e.g. one per automation version and step), so an AI
    step costs one generation, not one per user."""

    __tablename__ = "ai_generations"

    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    cache_key: Mapped[str] = mapped_column(String(300), primary_key=True)
    channel: Mapped[str] = mapped_column(String(10))
    content: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())


class DailyRollup(Base):
    """Per-day counts for reports (events, active users, messages by channel and status)."""

    __tablename__ = "daily_rollups"

    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    metric: Mapped[str] = mapped_column(String(80), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
