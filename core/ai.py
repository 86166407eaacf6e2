"""AI copy: which server to call, the prompt, and whether an answer can be used.

Pure functions only (no I/O): activities/ai.py calls the model with what these build and
checks the answer with `parse_answer`. An answer is usable when it is one JSON object with
exactly the channel's keys as non-empty strings, each within its length limit, and each
a template that compiles in the sandbox (core.rendering) and uses only the variables the
prompt offered. Anything else raises `AnswerInvalid` with a reason meant to be shown to
the model on the one retry it gets.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateSyntaxError, meta, nodes
from jinja2.sandbox import SandboxedEnvironment

from core import rendering
from core.errors import RetenshunError, ServiceUnavailable

DEFAULT_BASE_URL = "https://api.openai.com/v1"

# Characters of each field, as generated (a `{{ name }}` placeholder counts as written).
# PUSH and SMS are the contract's; EMAIL and IN_APP are ours (docs/ai-and-reports.md).
LIMITS: dict[str, dict[str, int]] = {
    "EMAIL": {"subject": 100, "body": 5000},
    "PUSH": {"title": 50, "body": 150},
    "SMS": {"body": 160},
    "IN_APP": {"title": 100, "body": 500},
}
_CHANNEL_WORDS = {
    "EMAIL": "an email (the body is simple HTML: <p>, <strong>, <em>, <a>, <ul>/<li> only)",
    "PUSH": "a mobile/web push notification (plain text)",
    "SMS": "an SMS text message (plain text, no HTML)",
    "IN_APP": "an in-app message shown inside the product (plain text)",
}
# Names the template context always has (core.rendering.build_context).
RESERVED = ("user", "event", "company")
USER_FIELDS = frozenset({"id", "email", "properties"})
# Profile properties that are plumbing, not copy material.
HIDDEN_PROPERTIES = frozenset({"webPushSubscriptions"})
MAX_PROPERTY_VARIABLES = 30
_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)
_parser = SandboxedEnvironment()


# --- errors: RetenshunError subclasses, so an API caller maps them to a status ---


class AiNotConfigured(ServiceUnavailable):
    """No API key anywhere: 503, and no call is made."""


class AiAnswerRejected(RetenshunError):
    """The model's answer did not fit twice (after the one retry with the reason)."""

    status = 502


class AiProviderRefused(RetenshunError):
    """The AI server refused the request for good (bad key, unknown model, 400...)."""

    status = 502


class AnswerInvalid(ValueError):
    """One answer that does not fit; `reason` is told to the model on the retry."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# --- which server ---


@dataclass(frozen=True)
class AiConfig:
    """Where to call. Built only inside a request or an activity; never logged, never a
    workflow argument (`api_key` is a secret). `source` says which settings won."""

    api_key: str
    base_url: str
    model: str
    source: str  # "project" | "environment"

    def __repr__(self) -> str:  # keep the key out of any log line or traceback
        return (f"AiConfig(base_url={self.base_url!r}, model={self.model!r}, "
                f"source={self.source!r}, api_key=***)")


NOT_CONFIGURED = (
    "AI content generation is not configured: set OPENAI_API_KEY (and optionally "
    "OPENAI_BASE_URL for any OpenAI-compatible server, and OPENAI_MODEL) in the environment "
    "of the API and the worker, or configure this project with PUT /api/v1/channels "
    '{"openaiApiKey": "...", "openaiBaseUrl": "https://.../v1", "openaiModel": "..."}'
)


def resolve_config(project: Mapping[str, Any], *, env_api_key: str | None,
                   env_base_url: str | None, env_model: str) -> AiConfig:
    """The project's own settings when it set a key, else the environment's.

    The two are never mixed for the key and the URL: the server's OPENAI_API_KEY is not
    sent to a URL a project chose, nor a project's key to the server's OPENAI_BASE_URL.
    Only the model name falls back (project `openaiModel`, else OPENAI_MODEL)."""
    model = str(project.get("openaiModel") or env_model)
    key = project.get("openaiApiKey")
    if key:
        return AiConfig(str(key), str(project.get("openaiBaseUrl") or DEFAULT_BASE_URL),
                        model, "project")
    if project.get("openaiBaseUrl"):
        raise AiNotConfigured(
            "This project sets openaiBaseUrl but no openaiApiKey: set both with PUT "
            "/api/v1/channels (any non-empty key for a server that needs none); the "
            "server's own OPENAI_API_KEY is never sent to a project's URL"
        )
    if env_api_key:
        return AiConfig(env_api_key, env_base_url or DEFAULT_BASE_URL, model, "environment")
    raise AiNotConfigured(NOT_CONFIGURED)


# --- the variables a template may use ---


def template_variables(property_keys: Iterable[str]) -> list[str]:
    """What the prompt offers, in order: profile properties that can be written as
    `{{ name }}` (at most 30, as given: most common first), then the context's fixed names."""
    props: list[str] = []
    for key in property_keys:
        if (_IDENTIFIER.match(key) and key not in RESERVED and key not in HIDDEN_PROPERTIES
                and key not in props):
            props.append(key)
        if len(props) >= MAX_PROPERTY_VARIABLES:
            break
    return [*props, "user.id", "user.email", "company", "event.name", "event.properties.*"]


def _allowed_top_level(variables: Sequence[str]) -> set[str]:
    return {v.split(".", 1)[0] for v in variables}


# --- the prompt ---


def _shape(channel: str) -> str:
    return "{" + ", ".join(f'"{k}": "..."' for k in LIMITS[channel]) + "}"


def _limits_text(channel: str) -> str:
    return ", ".join(f"{k} at most {n} characters" for k, n in LIMITS[channel].items())


def build_messages(*, channel: str, context: str, tone: str | None, company: str,
                   variables: Sequence[str]) -> list[dict[str, str]]:
    """The chat conversation for one generation (system rules, then the brief)."""
    listed = "\n".join(
        "- {{ event.properties.NAME }}: a property of the event that triggered an automation "
        "(only if the brief names it)" if v == "event.properties.*" else
        f"- {{{{ {v} }}}}" + {
            "user.id": ": the user's id",
            "user.email": ": the user's email address",
            "company": f": the sender's name ({company})",
            "event.name": ": the name of the event that triggered an automation",
        }.get(v, ": a profile property (may be missing for some users)")
        for v in variables
    )
    system = (
        f"You write {_CHANNEL_WORDS[channel]} for {company}, sent to its users through "
        "Retenshun.\n"
        f"Answer with one JSON object and nothing else, exactly of this shape: {_shape(channel)}\n"
        f"Limits: {_limits_text(channel)}. Every character counts, including any "
        "{{ ... }} placeholder as written.\n"
        "You may personalise with Jinja2 placeholders, but only with these variables, "
        "written exactly as shown:\n"
        f"{listed}\n"
        "Use no other variable and no {% %} tags. A value may be missing for some users, so "
        'prefer a fallback such as {{ firstName | default("there") }}. Do not invent facts, '
        "prices, discount codes, links or names that the brief does not give."
    )
    user = f"Brief: {context.strip()}\nTone: {(tone or 'clear and friendly').strip()}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def retry_messages(messages: Sequence[Mapping[str, str]], answer: str,
                   reason: str, channel: str) -> list[dict[str, str]]:
    """The conversation for the one retry: the rejected answer and why it was rejected."""
    return [
        *(dict(m) for m in messages),
        {"role": "assistant", "content": answer},
        {"role": "user", "content": (
            f"That answer cannot be used: {reason}. Reply again with only the JSON object "
            f"{_shape(channel)}, within the limits ({_limits_text(channel)}), using only "
            "the listed variables."
        )},
    ]


# --- checking an answer ---


def _check_variables(source: str, field: str, allowed: set[str]) -> None:
    try:
        tree = _parser.parse(source)
    except TemplateSyntaxError as exc:  # validate() already caught these; belt and braces
        raise AnswerInvalid(f"{field} is not a valid template: {exc.message}") from exc
    unknown = sorted(meta.find_undeclared_variables(tree) - allowed)
    if unknown:
        raise AnswerInvalid(
            f"{field} uses {', '.join('{{ ' + u + ' }}' for u in unknown)}, which is not in "
            "the list of variables"
        )
    for node in tree.find_all(nodes.Getattr):
        if isinstance(node.node, nodes.Name) and node.node.name == "user" and (
                node.attr not in USER_FIELDS):
            raise AnswerInvalid(
                f"{field} uses {{{{ user.{node.attr} }}}}; user has only id, email and "
                "properties (profile properties are top-level variables)"
            )


def parse_answer(channel: str, text: str | None, variables: Sequence[str]) -> dict[str, str]:
    """The answer as {field: text} in the channel's shape, or AnswerInvalid saying why not."""
    limits = LIMITS[channel]
    raw = (text or "").strip()
    if not raw:
        raise AnswerInvalid("the answer was empty")
    fenced = _FENCE.match(raw)
    if fenced:
        raw = fenced.group(1)
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise AnswerInvalid(f"the answer is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise AnswerInvalid(f"the answer must be a JSON object {_shape(channel)}")
    missing = [k for k in limits if k not in data]
    if missing:
        raise AnswerInvalid(f"the JSON object has no {', '.join(repr(k) for k in missing)}")
    allowed = _allowed_top_level(variables) | set(RESERVED)
    out: dict[str, str] = {}
    for field, limit in limits.items():
        value = data[field]
        if not isinstance(value, str) or not value.strip():
            raise AnswerInvalid(f"{field!r} must be a non-empty string")
        value = value.strip()
        if len(value) > limit:
            raise AnswerInvalid(
                f"{field} is {len(value)} characters long; the limit is {limit}"
            )
        try:
            rendering.validate(value, field, escape_html=channel == "EMAIL" and field == "body")
        except rendering.TemplateInvalid as exc:
            raise AnswerInvalid(f"it does not compile as a template: {exc.message}") from exc
        _check_variables(value, field, allowed)
        out[field] = value
    return out


def template_fields(channel: str, content: Mapping[str, str]) -> tuple[str | None, str]:
    """(subject, body) as a Template stores them: the title goes in `subject` for PUSH and
    IN_APP, an SMS has none."""
    return content.get("subject") or content.get("title"), content["body"]
