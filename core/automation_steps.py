"""The step language of automations: validation (400 naming the path of the bad step),
the event names an automation watches, and human-readable step paths.

    SEND_EMAIL | SEND_PUSH | SEND_SMS | SEND_IN_APP  {templateId | subject/body | ai}
    WAIT            {delay}
    BRANCH          {rules, then: [...], else: [...]}
    WAIT_FOR_EVENT  {event, timeout, matchProperty?, then: [...], else: [...]}
    any step        {delay?}: seconds to wait before it
Paths read like `steps[2].then[0]`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from core.errors import BadRequest

SEND_CHANNELS = {"SEND_EMAIL": "EMAIL", "SEND_PUSH": "PUSH", "SEND_SMS": "SMS",
                 "SEND_IN_APP": "IN_APP"}
STEP_TYPES = (*SEND_CHANNELS, "WAIT", "BRANCH", "WAIT_FOR_EVENT")
MAX_DELAY_SECONDS = 366 * 24 * 3600
MAX_STEPS = 200
_COMMON = {"type", "delay", "name"}
_ALLOWED = {
    **{t: _COMMON | {"templateId", "subject", "body", "ai"} for t in SEND_CHANNELS},
    "WAIT": _COMMON,
    "BRANCH": _COMMON | {"rules", "then", "else"},
    "WAIT_FOR_EVENT": _COMMON | {"event", "timeout", "matchProperty", "then", "else"},
}


class StepError(BadRequest):
    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}", details=[{"field": path, "message": message}])


def _number(step: dict[str, Any], key: str, path: str, *, required: bool) -> None:
    if key not in step or step[key] is None:
        if required:
            raise StepError(f"{path}.{key}", "is required (seconds)")
        return
    value = step[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise StepError(f"{path}.{key}", "must be a number of seconds")
    if value < 0:
        raise StepError(f"{path}.{key}", "must not be negative")
    if value > MAX_DELAY_SECONDS:
        raise StepError(f"{path}.{key}", f"must be at most {MAX_DELAY_SECONDS} seconds")


def _text(step: dict[str, Any], key: str, path: str, *, required: bool, limit: int = 200) -> None:
    value = step.get(key)
    if value is None:
        if required:
            raise StepError(f"{path}.{key}", "is required")
        return
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise StepError(f"{path}.{key}", f"must be a non-empty string of at most {limit} chars")


def validate_steps(
    steps: Any, *, path: str = "steps",
    template_channel: Callable[[str], str | None],
    validate_rules: Callable[[Any, str], None],
    validate_template_source: Callable[[str | None, str, bool], None],
) -> None:
    """Raise StepError for the first bad step. `template_channel(id)` gives a template's
    channel (None when it does not exist in the project)."""
    if not isinstance(steps, list):
        raise StepError(path, "must be a list of steps")
    if len(list(walk(steps))) > MAX_STEPS:
        raise StepError(path, f"an automation has at most {MAX_STEPS} steps")
    for i, step in enumerate(steps):
        _validate_step(step, f"{path}[{i}]", template_channel, validate_rules,
                       validate_template_source)


def _validate_step(step: Any, path: str, template_channel: Callable[[str], str | None],
                   validate_rules: Callable[[Any, str], None],
                   validate_template_source: Callable[[str | None, str, bool], None]) -> None:
    if not isinstance(step, dict):
        raise StepError(path, "must be an object")
    kind = step.get("type")
    if kind not in STEP_TYPES:
        raise StepError(f"{path}.type", f"unknown step type {kind!r}; one of "
                        + ", ".join(STEP_TYPES))
    unknown = sorted(set(step) - _ALLOWED[kind])
    if unknown:
        raise StepError(f"{path}.{unknown[0]}", f"unknown field for a {kind} step")
    _number(step, "delay", path, required=kind == "WAIT")
    if kind in SEND_CHANNELS:
        _validate_send(step, path, SEND_CHANNELS[kind], template_channel,
                       validate_template_source)
    elif kind == "BRANCH":
        if "rules" not in step:
            raise StepError(f"{path}.rules", "is required")
        validate_rules(step["rules"], f"{path}.rules")
        _validate_arms(step, path, template_channel, validate_rules, validate_template_source)
    elif kind == "WAIT_FOR_EVENT":
        _text(step, "event", path, required=True)
        _number(step, "timeout", path, required=True)
        if not step["timeout"]:
            raise StepError(f"{path}.timeout", "must be more than 0 seconds")
        _text(step, "matchProperty", path, required=False)
        _validate_arms(step, path, template_channel, validate_rules, validate_template_source)


def _validate_arms(step: dict[str, Any], path: str, *args: Any) -> None:
    for arm in ("then", "else"):
        if step.get(arm) is not None and not isinstance(step[arm], list):
            raise StepError(f"{path}.{arm}", "must be a list of steps")
    if not step.get("then") and not step.get("else"):
        raise StepError(path, f"a {step['type']} needs steps in `then` or `else`")
    for arm in ("then", "else"):
        for i, child in enumerate(step.get(arm) or []):
            _validate_step(child, f"{path}.{arm}[{i}]", *args)


def _validate_send(step: dict[str, Any], path: str, channel: str,
                   template_channel: Callable[[str], str | None],
                   validate_template_source: Callable[[str | None, str, bool], None]) -> None:
    sources = [k for k in ("templateId", "ai") if step.get(k) is not None]
    inline = step.get("body") is not None or step.get("subject") is not None
    if len(sources) + inline != 1:
        raise StepError(path, "give exactly one of templateId, subject/body, or ai")
    if step.get("templateId") is not None:
        template_id = step["templateId"]
        found = template_channel(template_id) if isinstance(template_id, str) else None
        if found is None:
            raise StepError(f"{path}.templateId", f"no template {template_id!r} in this project")
        if found != channel:
            raise StepError(f"{path}.templateId",
                            f"template {template_id} is for {found}; this step sends {channel}")
    elif step.get("ai") is not None:
        ai = step["ai"]
        if not isinstance(ai, dict) or set(ai) - {"context", "tone"} or not isinstance(
                ai.get("context"), str) or not ai["context"].strip():
            raise StepError(f"{path}.ai", "must be {context, tone?} with a non-empty context")
    else:
        if step.get("body") is None:
            raise StepError(f"{path}.body", "is required with inline content")
        if channel == "EMAIL" and not step.get("subject"):
            raise StepError(f"{path}.subject", "an email needs a subject")
        for key in ("subject", "body"):
            if step.get(key) is not None and not isinstance(step[key], str):
                raise StepError(f"{path}.{key}", "must be a string")
        for key in ("subject", "body"):
            try:
                validate_template_source(step.get(key), f"{path}.{key}",
                                         key == "body" and channel == "EMAIL")
            except BadRequest as exc:
                raise StepError(f"{path}.{key}", exc.message.split(": ", 1)[-1]) from exc


def walk(steps: list[Any], path: str = "steps") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every step with its path, depth first."""
    for i, step in enumerate(steps):
        here = f"{path}[{i}]"
        if isinstance(step, dict):
            yield here, step
            for arm in ("then", "else"):
                if isinstance(step.get(arm), list):
                    yield from walk(step[arm], f"{here}.{arm}")


def watched_events(trigger_event: str | None, exit_event: str | None,
                   steps: list[Any]) -> set[str]:
    names = {n for n in (trigger_event, exit_event) if n}
    names |= {s["event"] for _, s in walk(steps) if s.get("type") == "WAIT_FOR_EVENT"}
    return names
