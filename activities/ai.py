"""AI copy generation: the only place that calls the model.

The activity loads the project's AI settings itself and decrypts the key here: workflow
arguments (recorded in Temporal's history) carry only ids and the brief. The `openai`
client runs with its own retries off (`max_retries=0`) and a timeout: Temporal retries
the activity on transient failures (timeouts, connection errors, 429, 5xx). An answer
that does not fit the channel is retried once, in the same conversation with the reason,
then rejected for good (non-retryable).

`generate_cached` serves automations: the copy of an AI step is generated once per cache
key (automation version and step) and stored in `ai_generations`, not once per user.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import openai
from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from core import ai
from core.crypto import SecretBox
from core.db import session_scope
from core.errors import RetenshunError
from core.models import AiGeneration, Project
from core.services import channels as channel_service
from core.settings import Settings

log = logging.getLogger("retenshun.activities.ai")

# One model call; Temporal's AI preset bounds the whole attempt (two calls at most).
CALL_TIMEOUT_SECONDS = 45.0
# The most recently seen users whose property names are offered as template variables.
PROPERTY_SAMPLE_USERS = 1000
# A cache miss waits this long for another worker generating the same key.
CACHE_WAIT_SECONDS = 120.0
TRANSIENT = "AiTransientError"

_PROPERTY_KEYS = text("""
SELECT k
FROM (SELECT properties FROM users WHERE project_id = :project_id
      ORDER BY last_seen DESC LIMIT :sample) AS u
CROSS JOIN LATERAL jsonb_object_keys(
    CASE WHEN jsonb_typeof(u.properties) = 'object' THEN u.properties ELSE '{}'::jsonb END) AS k
GROUP BY k
ORDER BY count(*) DESC, k
LIMIT 100
""")
_TRY_LOCK = text("SELECT pg_try_advisory_lock(hashtextextended(:k, 0))")
_UNLOCK = text("SELECT pg_advisory_unlock(hashtextextended(:k, 0))")


@dataclass
class GenerateInput:
    project_id: str
    channel: str  # EMAIL | PUSH | SMS | IN_APP
    context: str
    tone: str | None = None


@dataclass
class GeneratedContent:
    content: dict[str, str]  # {"subject"|"title"?, "body"}
    model: str
    calls: int  # model calls made (2 when the first answer did not fit)


@dataclass
class CachedContentInput:
    project_id: str
    cache_key: str  # e.g. automation:{id}:v{version}:{stepPath}
    channel: str
    context: str
    tone: str | None = None


@dataclass
class _Project:
    name: str
    config: ai.AiConfig
    variables: list[str]


class AiActivities:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], secrets: SecretBox,
                 settings: Settings):
        self._sessions = sessions
        self._secrets = secrets
        self._settings = settings

    @activity.defn(name="generate_content")
    async def generate(self, input: GenerateInput) -> GeneratedContent:
        """Generate and validate copy for one channel (POST /ai/generate)."""
        try:
            return await self.generate_content(input.project_id, input.channel, input.context,
                                               input.tone)
        except RetenshunError as exc:
            raise _permanent(exc) from None

    @activity.defn(name="generate_cached_content")
    async def generate_cached_content(self, input: CachedContentInput) -> dict[str, str]:
        """`generate_cached` as an activity of its own."""
        try:
            return await self.generate_cached(input.project_id, input.cache_key, input.channel,
                                              input.context, input.tone)
        except RetenshunError as exc:
            raise _permanent(exc) from None

    # --- callable from other activities (automation steps) ---

    async def generate_content(self, project_id: str, channel: str, context: str,
                               tone: str | None) -> GeneratedContent:
        """Raises core.ai errors (RetenshunError: not configured 503, rejected or refused
        502) for permanent failures, a retryable ApplicationError for transient ones."""
        if channel not in ai.LIMITS:
            raise RetenshunError(f"channel must be one of {', '.join(ai.LIMITS)}", status=400)
        project = await self._project(project_id)
        messages = ai.build_messages(channel=channel, context=context, tone=tone,
                                     company=project.name, variables=project.variables)
        answer = await self._call(project.config, messages)
        try:
            content = ai.parse_answer(channel, answer, project.variables)
            return GeneratedContent(content, project.config.model, 1)
        except ai.AnswerInvalid as invalid:
            first = invalid.reason
            log.info("project %s: %s answer did not fit (%s); retrying once with the reason",
                     project_id, channel, first)
            retry = ai.retry_messages(messages, answer or "", first, channel)
        answer = await self._call(project.config, retry)
        try:
            content = ai.parse_answer(channel, answer, project.variables)
        except ai.AnswerInvalid as second:
            raise ai.AiAnswerRejected(
                f"The AI model's answer did not fit the {channel} format twice: first "
                f"{first}; then, after being told, {second.reason}"
            ) from None
        return GeneratedContent(content, project.config.model, 2)

    async def generate_cached(self, project_id: str, cache_key: str, channel: str,
                              context: str, tone: str | None) -> dict[str, Any]:
        """The copy stored under (project_id, cache_key), generated and stored on the first
        call. Concurrent first calls (a segment entering an automation at once) generate
        once: one holds a PostgreSQL advisory lock while the others poll the cache."""
        cached = await self._cached(project_id, cache_key)
        if cached is not None:
            return cached
        lock = f"ai-cache:{project_id}:{cache_key}"
        deadline = time.monotonic() + CACHE_WAIT_SECONDS
        engine = self._sessions.kw["bind"]
        while True:
            # Session-level lock on a connection of our own in autocommit: no transaction
            # stays open during the model call, and a crash drops the lock with the socket.
            async with engine.connect() as raw:
                conn = await raw.execution_options(isolation_level="AUTOCOMMIT")
                if await conn.scalar(_TRY_LOCK, {"k": lock}):
                    try:
                        cached = await self._cached(project_id, cache_key)
                        if cached is not None:
                            return cached
                        generated = await self.generate_content(project_id, channel, context,
                                                                tone)
                        return await self._store(project_id, cache_key, channel,
                                                 generated.content)
                    finally:
                        await conn.execute(_UNLOCK, {"k": lock})
            await asyncio.sleep(0.5)
            cached = await self._cached(project_id, cache_key)
            if cached is not None:
                return cached
            if time.monotonic() > deadline:
                raise ApplicationError(
                    f"AI copy for {cache_key} is still being generated elsewhere; retry",
                    type=TRANSIENT)

    # --- internals ---

    async def _cached(self, project_id: str, cache_key: str) -> dict[str, Any] | None:
        async with session_scope(self._sessions) as db:
            content = await db.scalar(select(AiGeneration.content).where(
                AiGeneration.project_id == project_id, AiGeneration.cache_key == cache_key))
        return dict(content) if content is not None else None

    async def _store(self, project_id: str, cache_key: str, channel: str,
                     content: dict[str, str]) -> dict[str, Any]:
        async with session_scope(self._sessions) as db:
            await db.execute(pg_insert(AiGeneration).values(
                project_id=project_id, cache_key=cache_key, channel=channel, content=content,
            ).on_conflict_do_nothing(index_elements=["project_id", "cache_key"]))
            stored = await db.scalar(select(AiGeneration.content).where(
                AiGeneration.project_id == project_id, AiGeneration.cache_key == cache_key))
        assert stored is not None
        return dict(stored)

    async def _project(self, project_id: str) -> _Project:
        async with session_scope(self._sessions) as db:
            name = await db.scalar(select(Project.name).where(Project.id == project_id))
            if name is None:
                raise RetenshunError(f"project {project_id} does not exist", status=404)
            channels = await channel_service.load(db, self._secrets, project_id)
            config = ai.resolve_config(
                channels.values, env_api_key=self._settings.openai_api_key,
                env_base_url=self._settings.openai_base_url,
                env_model=self._settings.openai_model,
            )
            keys = (await db.scalars(_PROPERTY_KEYS, {
                "project_id": project_id, "sample": PROPERTY_SAMPLE_USERS})).all()
        return _Project(name, config, ai.template_variables(keys))

    async def _call(self, config: ai.AiConfig, messages: list[dict[str, str]]) -> str | None:
        """One chat completion in JSON mode; errors classified as permanent or transient,
        with the key scrubbed from any message."""
        started = time.monotonic()
        try:
            async with openai.AsyncOpenAI(
                api_key=config.api_key, base_url=config.base_url, max_retries=0,
                timeout=CALL_TIMEOUT_SECONDS,
            ) as client:
                response = await client.chat.completions.create(
                    model=config.model, messages=messages,  # type: ignore[arg-type]
                    response_format={"type": "json_object"},
                )
        except (openai.APITimeoutError, openai.APIConnectionError) as exc:
            raise ApplicationError(
                f"the AI server at {config.base_url} did not answer: {_scrub(exc, config)}",
                type=TRANSIENT) from None
        except openai.APIStatusError as exc:
            detail = _scrub(exc, config)
            if exc.status_code in (408, 409, 429) or exc.status_code >= 500:
                raise ApplicationError(
                    f"the AI server answered {exc.status_code}: {detail}", type=TRANSIENT,
                ) from None
            raise ai.AiProviderRefused(
                f"The AI server at {config.base_url} refused the request "
                f"({exc.status_code}): {detail}"
            ) from None
        except openai.OpenAIError as exc:
            raise ai.AiProviderRefused(
                f"The AI server at {config.base_url} gave an unusable response: "
                f"{_scrub(exc, config)}") from None
        log.info("AI call to %s (model %s, %s settings) answered in %.0f ms",
                 config.base_url, config.model, config.source,
                 (time.monotonic() - started) * 1000)
        if not response.choices:
            return None
        return response.choices[0].message.content


def _scrub(exc: BaseException, config: ai.AiConfig, limit: int = 300) -> str:
    message = str(exc).replace(config.api_key, "***") if config.api_key else str(exc)
    return message if len(message) <= limit else message[: limit - 1] + "…"


def _permanent(exc: RetenshunError) -> ApplicationError:
    """A failure retrying cannot fix; its type names the core.ai error (mapped to a status
    by the API), its message is the user-facing one."""
    return ApplicationError(exc.message, exc.status, type=type(exc).__name__,
                            non_retryable=True)
