"""Message templates: Jinja2 in a sandbox.

- Autoescaped only where the output is HTML (an EMAIL body); subjects, push, SMS and
  in-app text are plain.
- A template is checked when it is saved: syntax errors name the line, and any
  reference to an underscore attribute (`''.__class__`) is refused outright.
- At render time unsafe access raises instead of rendering empty, a missing variable
  renders empty, and output is capped as it is produced.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from html.parser import HTMLParser
from typing import Any

from jinja2 import ChainableUndefined, Template, TemplateSyntaxError, nodes
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from core.errors import BadRequest

MAX_SOURCE_CHARS = 100_000
MAX_OUTPUT_CHARS = 512_000
CHANNELS = ("EMAIL", "PUSH", "SMS", "IN_APP")


MAX_EXPONENT = 64


class _StrictSandbox(ImmutableSandboxedEnvironment):
    # Intercepting these also stops Jinja from folding `'a' * 10**9` at compile time.
    intercepted_binops = frozenset({"*", "**"})

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        raise SecurityError(f"access to attribute {attribute!r} is not allowed in templates")

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        """Refuse arithmetic that would build huge values before the output cap can act."""
        if operator == "**":
            if (isinstance(right, int | float) and abs(right) > MAX_EXPONENT
                    and isinstance(left, int | float) and abs(left) > 1):
                raise SecurityError(f"exponents above {MAX_EXPONENT} are not allowed")
            return left**right
        for seq, times in ((left, right), (right, left)):
            if (isinstance(seq, str | list | tuple) and isinstance(times, int)
                    and len(seq) * times > MAX_OUTPUT_CHARS):
                raise SecurityError("a repetition that large is not allowed")
        return left * right


def _blank_none(value: Any) -> Any:
    """A missing or null value renders empty, never as the text "None"."""
    return "" if value is None else value


_plain = _StrictSandbox(undefined=ChainableUndefined, autoescape=False, finalize=_blank_none)
_html = _StrictSandbox(undefined=ChainableUndefined, autoescape=True, finalize=_blank_none)


class TemplateInvalid(BadRequest):
    pass


def _env(escape_html: bool) -> _StrictSandbox:
    return _html if escape_html else _plain


def _check_ast(tree: nodes.Template, field: str) -> None:
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getattr):
            name: object = node.attr
        else:
            name = getattr(node.arg, "value", None)
        if isinstance(name, str) and name.startswith("_"):
            raise TemplateInvalid(
                f"{field}: line {node.lineno}: access to {name!r} is not allowed in templates"
            )


def validate(source: str | None, field: str, *, escape_html: bool = False) -> None:
    """Raise TemplateInvalid (400) naming the field and line if `source` cannot be used."""
    if source is None:
        return
    if len(source) > MAX_SOURCE_CHARS:
        raise TemplateInvalid(f"{field}: template is longer than {MAX_SOURCE_CHARS} characters")
    env = _env(escape_html)
    try:
        tree = env.parse(source)
        env.compile(source)
    except TemplateSyntaxError as exc:
        raise TemplateInvalid(f"{field}: syntax error on line {exc.lineno}: {exc.message}") from exc
    _check_ast(tree, field)


@functools.lru_cache(maxsize=256)
def _compiled(source: str, field: str, escape_html: bool) -> Template:
    """A validated, compiled template. Compiling costs far more than rendering, and a
    campaign page or a drip step renders one source for many users; failures raise and
    so are never cached."""
    validate(source, field, escape_html=escape_html)
    return _env(escape_html).from_string(source)


def render(source: str, context: Mapping[str, Any], field: str, *,
           escape_html: bool = False) -> str:
    """Render with the output capped; any template failure is a clear 400, never a 500."""
    template = _compiled(source, field, escape_html)
    try:
        chunks: list[str] = []
        size = 0
        for chunk in template.generate(dict(context)):
            size += len(chunk)
            if size > MAX_OUTPUT_CHARS:
                raise TemplateInvalid(f"{field}: output is over {MAX_OUTPUT_CHARS} characters")
            chunks.append(chunk)
        return "".join(chunks)
    except TemplateInvalid:
        raise
    except SecurityError as exc:
        raise TemplateInvalid(f"{field}: {exc}") from exc
    except (TemplateError, ArithmeticError, TypeError, ValueError, LookupError,
            AttributeError, OverflowError, RecursionError) as exc:
        raise TemplateInvalid(f"{field}: rendering failed: {type(exc).__name__}: {exc}") from exc


def build_context(
    *, user: Mapping[str, Any] | None, company: str, event: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The contract's context: profile properties at top level, then `data`, then the
    reserved names `user`, `event` and `company`, which always win."""
    props = dict((user or {}).get("properties") or {})
    context: dict[str, Any] = {**props, **(data or {})}
    context["user"] = {
        "id": (user or {}).get("id"), "email": (user or {}).get("email"), "properties": props,
    }
    context["event"] = dict(event or {})
    context["company"] = company
    return context


def render_message(
    channel: str, subject: str | None, body: str, context: Mapping[str, Any]
) -> tuple[str | None, str]:
    rendered_subject = render(subject, context, "subject") if subject is not None else None
    rendered_body = render(body, context, "body", escape_html=channel == "EMAIL")
    return rendered_subject, rendered_body


class _TextExtractor(HTMLParser):
    _BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0
        self._href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in self._BLOCK:
            self.parts.append("\n")
        elif tag == "a":
            self._href = dict(attrs).get("href")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - 1)
        elif tag in self._BLOCK:
            self.parts.append("\n")
        elif tag == "a" and self._href:
            self.parts.append(f" ({self._href})")
            self._href = None

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    """The plain-text alternative of an HTML email."""
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    text = "".join(parser.parts)
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r"\n\s*\n+", "\n\n", text)
    return text.strip()  # char refs were already decoded by the parser
