"""AI content: POST /ai/generate writes copy for a channel, optionally saved as a template."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import Field, model_validator

from api.deps import SecretKey, SessionDep, StateDep
from api.responses import errors
from core import ai
from core.errors import ServiceUnavailable
from core.schemas import ApiModel, ErrorBody, ReadModel
from core.services import channels as channel_service
from core.services import templates as template_service
from workflows.starts import generate_content

router = APIRouter(prefix="/ai", tags=["ai"])

Channel = Literal["EMAIL", "PUSH", "SMS", "IN_APP"]
_LIMITS = "; ".join(
    f"{c}: " + ", ".join(f"{k} ≤ {n}" for k, n in fields.items())
    for c, fields in ai.LIMITS.items()
)
AI_ERRORS: dict[int | str, dict[str, Any]] = {
    **errors(400, 401, 403, 413, 429),
    502: {"model": ErrorBody, "description": "The AI server's answer did not fit the channel "
          "twice (too long, not JSON, a missing key, a template that does not compile or "
          "uses unknown variables), or the server refused the request or kept failing"},
    503: {"model": ErrorBody, "description": "AI is not configured (the message says how), "
          "or Temporal is unavailable"},
    504: {"model": ErrorBody, "description": "No usable answer within the time budget"},
}


class GenerateRequest(ApiModel):
    channel: Channel
    context: str = Field(min_length=1, max_length=4000,
                         description="What the message is about (the brief)",
                         examples=["Remind users about their abandoned cart"])
    tone: str | None = Field(None, min_length=1, max_length=100, examples=["friendly"])
    save_as_template: bool = Field(
        False, description="Also store the result as a template with `ai: true`")
    name: str | None = Field(None, min_length=1, max_length=200,
                             description="The template's name (with saveAsTemplate); "
                             "default: from the context")

    @model_validator(mode="after")
    def _check(self) -> GenerateRequest:
        if not self.context.strip():
            raise ValueError("context must not be blank")
        if self.name is not None and not self.save_as_template:
            raise ValueError("name is only used with saveAsTemplate: true")
        return self


class GeneratedContent(ReadModel):
    """`{subject, body}` for EMAIL, `{title, body}` for PUSH and IN_APP, `{body}` for SMS;
    Jinja placeholders only from the project's variables; `templateId` when saved."""

    subject: str | None = Field(None, description="EMAIL only")
    title: str | None = Field(None, description="PUSH and IN_APP only")
    body: str
    template_id: str | None = Field(None, description="With saveAsTemplate: the new template")


GENERATE_DESCRIPTION = (
    "Write copy for one channel with the configured OpenAI-compatible model (the project's "
    "`openaiApiKey`/`openaiBaseUrl`/`openaiModel` channel settings, else the server's "
    "`OPENAI_API_KEY`/`OPENAI_BASE_URL`/`OPENAI_MODEL`), within the channel's limits in "
    f"characters as generated ({_LIMITS}). The answer is checked: JSON of the channel's "
    "shape, within the limits, each field a template that compiles in the sandbox and uses "
    "only the project's variables (its users' profile property names, `user.id`, "
    "`user.email`, `company`, `event.*`). One that does not fit is retried once with the "
    "reason, then this answers 502. Runs as a Temporal activity (retried on timeouts, "
    "429 and 5xx). Not configured: 503."
)


@router.post("/generate", response_model=GeneratedContent, response_model_exclude_none=True,
             responses=AI_ERRORS, description=GENERATE_DESCRIPTION)
async def generate(body: GenerateRequest, key: SecretKey, db: SessionDep,
                   state: StateDep) -> GeneratedContent:
    channels = await channel_service.load(db, state.secrets, key.project_id)
    ai.resolve_config(  # 503 saying how to configure it, before any call
        channels.values, env_api_key=state.settings.openai_api_key,
        env_base_url=state.settings.openai_base_url, env_model=state.settings.openai_model)
    try:
        client = await state.temporal.client()
    except Exception as exc:
        raise ServiceUnavailable(
            "The workflow engine (Temporal) is unavailable; no content was generated"
        ) from exc
    result = await generate_content(
        client, state.settings.temporal_task_queue, project_id=key.project_id,
        channel=body.channel, context=body.context, tone=body.tone,
    )
    out = GeneratedContent.model_validate(result.content)
    if body.save_as_template:
        subject, text = ai.template_fields(body.channel, result.content)
        template = await template_service.create_template(
            db, key.project_id, template_service.TemplateFields(
                name=body.name or _default_name(body.channel, body.context),
                channel=body.channel, subject=subject, body=text, ai=True,
            ))
        out.template_id = template.id
    return out


def _default_name(channel: str, context: str) -> str:
    first_line = " ".join(context.split())
    name = f"AI {channel}: {first_line}"
    return name if len(name) <= 80 else name[:79] + "…"
