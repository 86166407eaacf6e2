"""Activities of automation enrollments: begin/finish the run's row, record progress,
evaluate a BRANCH, and send a step's message exactly once (keyed by run and step).

Also the enrollment workflow's own input/signal/result types: the workflow imports this
module through the sandbox (`imports_passed_through`), so these dataclasses are created
once per process instead of once per run. No `from __future__ import annotations` here:
the payload converter calls `get_type_hints` on every dataclass it converts, and string
annotations would be evaluated each time."""

from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity

from activities.messaging import MessagingActivities
from core.db import session_scope
from core.errors import RetenshunError
from core.models import Automation, EndUser, Message
from core.segments import user_matches
from core.services import messages as message_service

# --- the workflow's types (workflows/enrollment.py re-exports them) ---


@dataclass
class EventSignal:
    event_id: str
    event_name: str
    properties: dict[str, Any] = field(default_factory=dict)
    timestamp: str | None = None


@dataclass
class CancelSignal:
    reason: str = "cancelled"


@dataclass
class EnrollmentInput:
    project_id: str
    automation_id: str
    user_id: str
    version: int
    steps: list[dict[str, Any]]
    exit_event: str | None = None
    trigger: EventSignal | None = None  # None for SEGMENT_ENTRY


@dataclass
class EnrollmentResult:
    status: str  # completed | exited | cancelled | skipped
    step: str | None = None
    reason: str | None = None


@dataclass
class EnrollmentState:
    status: str
    step: str | None
    reason: str | None


# --- activity inputs and results ---


@dataclass
class BeginInput:
    project_id: str
    automation_id: str
    user_id: str
    enrollment_id: str
    workflow_id: str
    version: int
    trigger_event_id: str | None = None
    step: str | None = None  # the first step, recorded with the row (local `begin`)


@dataclass
class BeginResult:
    ok: bool
    reason: str | None = None
    company: str = ""


@dataclass
class StepProgressInput:
    enrollment_id: str
    step: str


@dataclass
class FinishInput:
    enrollment_id: str
    status: str  # completed | exited | cancelled | failed
    step: str | None = None


@dataclass
class BranchInput:
    project_id: str
    user_id: str
    rules: list[Any]


@dataclass
class SendStepInput:
    project_id: str
    automation_id: str
    enrollment_id: str
    user_id: str
    step_path: str
    channel: str
    version: int
    template_id: str | None = None
    subject: str | None = None
    body: str | None = None
    ai: dict[str, Any] | None = None
    event: dict[str, Any] | None = None


@dataclass
class SendStepResult:
    status: str  # a message status, or "stopped" (automation inactive/deleted, user gone)
    message_id: str | None = None
    reason: str | None = None


class CachedGenerator(Protocol):
    async def generate_cached(self, project_id: str, cache_key: str, channel: str,
                              context: str, tone: str | None) -> dict[str, Any]: ...


@dataclass
class _Stop:
    reason: str
    extra: dict[str, Any] = field(default_factory=dict)


# `begin` in two plain statements (it runs once per enrollment, on the hot path of every
# trigger; through the ORM it was ~30% of the worker's Python time). The first reads the
# automation's state and, when it is active, closes a row left `running` by a run of this
# automation and user that was terminated from outside; the second records this run,
# idempotently by its id (a retried `begin` finds its row).
_BEGIN_CHECK = text("""
WITH a AS (
    SELECT active FROM automations WHERE id = :automation_id AND project_id = :project_id
), closed AS (
    UPDATE enrollments SET status = 'cancelled', ended_at = now()
    WHERE automation_id = :automation_id AND user_id = :user_id AND status = 'running'
      AND id <> :enrollment_id AND (SELECT active FROM a)
    RETURNING id
)
SELECT (SELECT active FROM a) AS active, (SELECT count(*) FROM closed) AS closed
""")
_BEGIN_INSERT = text("""
INSERT INTO enrollments (id, project_id, automation_id, user_id, workflow_id, status,
                         automation_version, trigger_event_id, current_step)
VALUES (:enrollment_id, :project_id, :automation_id, :user_id, :workflow_id, 'running',
        :version, :trigger_event_id, :step)
ON CONFLICT (id) DO NOTHING
""")
_RECORD_STEP = text("UPDATE enrollments SET current_step = :step WHERE id = :id")
_FINISH = text("""
UPDATE enrollments SET status = :status, ended_at = now(),
                       current_step = coalesce(CAST(:step AS text), current_step)
WHERE id = :id AND status = 'running'
""")


class AutomationActivities:
    def __init__(self, sessions: async_sessionmaker[AsyncSession],
                 messaging: MessagingActivities, ai: CachedGenerator | None = None):
        self._sessions = sessions
        self._messaging = messaging
        self._ai = ai

    @activity.defn(name="begin_enrollment")
    async def begin(self, input: BeginInput) -> BeginResult:
        """Record the run (idempotent by its id), with its first step when given. A run
        whose automation was made inactive or deleted since the trigger does not start.
        Runs as a local activity (and as a regular one in runs older than that)."""
        params = {"automation_id": input.automation_id, "project_id": input.project_id,
                  "user_id": input.user_id, "enrollment_id": input.enrollment_id,
                  "workflow_id": input.workflow_id, "version": input.version,
                  "trigger_event_id": input.trigger_event_id, "step": input.step}
        async with session_scope(self._sessions) as db:
            active = (await db.execute(_BEGIN_CHECK, params)).scalar()
            if active is None:
                return BeginResult(False, "automation deleted")
            if not active:
                return BeginResult(False, "automation inactive")
            await db.execute(_BEGIN_INSERT, params)
            return BeginResult(True)

    @activity.defn(name="record_enrollment_step")
    async def record_step(self, input: StepProgressInput) -> None:
        async with session_scope(self._sessions) as db:
            await db.execute(_RECORD_STEP, {"id": input.enrollment_id, "step": input.step})

    @activity.defn(name="finish_enrollment")
    async def finish(self, input: FinishInput) -> None:
        async with session_scope(self._sessions) as db:
            await db.execute(_FINISH, {"id": input.enrollment_id, "status": input.status,
                                       "step": input.step})

    @activity.defn(name="evaluate_branch")
    async def evaluate_branch(self, input: BranchInput) -> bool:
        async with session_scope(self._sessions) as db:
            return await user_matches(db, input.project_id, input.user_id, input.rules)

    @activity.defn(name="send_automation_step")
    async def send_step(self, input: SendStepInput) -> SendStepResult:
        """Create the step's message once (send key `{enrollmentId}:{stepPath}`), then
        deliver it exactly once. The automation is re-checked here: inactive or deleted
        automations send nothing more."""
        send_key = f"{input.enrollment_id}:{input.step_path}"
        async with session_scope(self._sessions) as db:
            message_id = await db.scalar(select(Message.id).where(
                Message.project_id == input.project_id, Message.send_key == send_key))
            if message_id is None:
                try:
                    created = await self._create(db, input, send_key)
                except RetenshunError as exc:
                    # Not retryable: e.g. the user has no email, or the copy does not render.
                    return SendStepResult("failed", reason=exc.message)
                if isinstance(created, _Stop):
                    return SendStepResult("stopped", reason=created.reason)
                message_id = created
        result = await self._messaging.deliver_message(input.project_id, message_id)
        return SendStepResult(result.status, message_id, result.error)

    async def _create(self, db: AsyncSession, input: SendStepInput,
                      send_key: str) -> str | _Stop:
        active = await db.scalar(select(Automation.active).where(
            Automation.id == input.automation_id, Automation.project_id == input.project_id))
        if active is None:
            return _Stop("automation deleted")
        if not active:
            return _Stop("automation inactive")
        user = await db.get(EndUser, (input.project_id, input.user_id))
        if user is None:
            return _Stop("user deleted")
        subject, body = input.subject, input.body
        if input.ai is not None:
            if self._ai is None:
                raise RuntimeError("AI steps need the AI activities in this worker")
            content = await self._ai.generate_cached(
                input.project_id, f"automation:{input.automation_id}:v{input.version}:"
                f"{input.step_path}", input.channel, input.ai["context"], input.ai.get("tone"))
            subject = content.get("subject") or content.get("title")
            body = content["body"]
        message = await message_service.create_keyed_message(
            db, input.project_id, user, channel=input.channel, subject=subject, body=body,
            template_id=input.template_id, send_key=send_key, source="automation",
            source_id=input.automation_id, transactional=False, event=input.event,
        )
        if message is None:  # a concurrent attempt stored it first
            existing = await db.scalar(select(Message.id).where(
                Message.project_id == input.project_id, Message.send_key == send_key))
            assert existing is not None
            return existing
        return message.id
