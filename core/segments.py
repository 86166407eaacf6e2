"""Segment rules: one parser, one SQL compiler, one plain-Python evaluator, same semantics.

A segment's `rules` is a list, all of which must hold. A rule is one of

- attribute  `{"field": "plan", "operator": "eq", "value": "pro"}`. Built-in fields:
  `userId`, `email` (strings), `firstSeen`, `lastSeen` (dates), `eventCount`,
  `sessionCount` (numbers), `subscribed` (boolean). Any other name is a profile
  property; dots walk into nested objects (`address.city`). Arrays are never indexed.
- event      `{"event": "purchase", "operator": "gte", "value": 3, "withinDays": 30}`:
  how many times the user did that event (in the last N days, when given), compared
  with the operator (`eq neq gt gte lt lte`, or `exists` / `not_exists` without a value).
- group      `{"any": [rules]}` / `{"all": [rules]}`, nested to any depth
  (`{"any": []}` is false, `{"all": []}` is true).

Operators and how the value's type picks the comparison:

- `eq`, `neq`: a string, number or boolean (a date string for firstSeen/lastSeen):
  equal as JSON values (1 = 1.0; "1" != 1; true != 1).
- `gt gte lt lte`: a number, or an ISO 8601 date string: the field is a number
  (resp. a date) and compares so.
- `before`, `after`: an ISO 8601 date string: the field is an earlier (later) date.
- `within_last_days`: days > 0: the field is a date at or after now - N days.
- `contains`: a string: a string field contains it (case-sensitive), or an array
  field has an element equal to it; a number or boolean: an array field has it.
- `starts_with`: a string: a string field starts with it (case-sensitive).
- `in`: a non-empty list of scalars: the field equals one of them.
- `exists`: no value: the field is present and not null.
- `neq`, `not_contains`, `not_in`, `not_exists`: exactly when their positive does not
  hold (so a user without the property matches `neq`).

"A date" in a property is a JSON string in one of these ISO 8601 forms:
`YYYY-MM-DD`, optionally followed by `T` (or a space) and `HH:MM[:SS[.ffffff]]`, then
optionally `Z` or an offset `±HH[[:]MM]`; no offset means UTC. Anything else (another
type, or a string in another form or an impossible date) is simply not a date: the
rule does not hold and nothing raises. Likewise a number comparison only holds for a
JSON number (a string "42" is not a number). Numbers compare exactly (decimal).

The same rules compile to SQL (`rules_condition`) two ways: *set* mode (the default)
turns each event rule into `[NOT] users.id IN (SELECT user_id FROM events ... GROUP BY
user_id HAVING ...)`, which PostgreSQL evaluates once per query (a hash), right for
counting or listing a whole project; *correlated* mode counts each user's events with
an index lookup, right for one user or a page of users. Nothing from the rules is ever
spliced into SQL text: fields, paths and values are bound parameters, LIKE patterns
are escaped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    DateTime,
    Numeric,
    String,
    Text,
    and_,
    any_,
    case,
    cast,
    exists,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import BadRequest
from core.models import EndUser, Event

OPERATORS = (
    "eq", "neq", "gt", "gte", "lt", "lte", "contains", "not_contains", "starts_with", "in",
    "not_in", "exists", "not_exists", "before", "after", "within_last_days",
)
EVENT_OPERATORS = ("eq", "neq", "gt", "gte", "lt", "lte", "exists", "not_exists")
NEGATIONS = {"neq": "eq", "not_contains": "contains", "not_in": "in", "not_exists": "exists"}

# Built-in fields: name -> (type, column).
BUILTINS: dict[str, tuple[str, Any]] = {
    "userId": ("string", EndUser.id),
    "email": ("string", EndUser.email),
    "firstSeen": ("date", EndUser.first_seen),
    "lastSeen": ("date", EndUser.last_seen),
    "eventCount": ("number", EndUser.event_count),
    "sessionCount": ("number", EndUser.session_count),
    "subscribed": ("bool", EndUser.subscribed),
}
# The profile dict keys `evaluate` reads for the built-ins (camelCase, as the API shows).
_PROFILE_KEYS = {"userId": "userId", "email": "email", "firstSeen": "firstSeen",
                 "lastSeen": "lastSeen", "eventCount": "eventCount",
                 "sessionCount": "sessionCount", "subscribed": "subscribed"}

MAX_DEPTH = 32
MAX_NODES = 1000
MAX_LIST = 1000
MAX_STRING = 10_000
MAX_FIELD = 255
MAX_DAYS = 100_000
MAX_COUNT = 10**12
MAX_ABS_NUMBER = Decimal(10) ** 30

# ISO 8601 forms taken as dates: calendar-valid (leap years included) so that the cast in
# PostgreSQL can never fail on a string the pattern admits. Years 1000-9999.
_DAY = (
    r"(?:[1-9][0-9]{3}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    r"|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))"
    r"|(?:[1-9][0-9](?:0[48]|[2468][048]|[13579][26])|(?:1[26]|[2468][048]|[3579][26])00)"
    r"-02-29)"
)
_TIME = r"[T ](?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\.[0-9]{1,6})?)?"
_OFFSET = r"(?:Z|[+-](?:0[0-9]|1[0-4])(?::?[0-5][0-9])?)"
DATE_PATTERN = rf"^{_DAY}(?:{_TIME}{_OFFSET}?)?$"
# Among the strings DATE_PATTERN admits, those that carry their own offset.
OFFSET_PATTERN = rf"{_TIME}{_OFFSET}$"
_DATE_RE = re.compile(DATE_PATTERN)
_OFFSET_RE = re.compile(OFFSET_PATTERN)
_NUL = "\x00"
_TimestampTz = DateTime(timezone=True)
_Timestamp = DateTime(timezone=False)


# ------------------------------------------------------------------------------ the tree


@dataclass(frozen=True, slots=True)
class Group:
    kind: str  # any | all
    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Attribute:
    field: str
    builtin: str | None  # the built-in field's name, or None for a profile property
    path: tuple[str, ...]  # property path (empty for a built-in)
    operator: str  # positive operator (neq -> eq with negate=True)
    negate: bool
    kind: str  # how the value compares: string number date bool json list days none
    value: Any  # str | Decimal | datetime | bool | tuple | float | None


@dataclass(frozen=True, slots=True)
class EventRule:
    event: str
    operator: str
    count: int  # 0 for exists / not_exists
    within_days: float | None


Node = Group | Attribute | EventRule


def _fail(field: str, message: str) -> BadRequest:
    return BadRequest(f"Invalid segment rules: {field}: {message}",
                      details=[{"field": field, "message": message}])


def parse_date(value: Any) -> datetime | None:
    """A string in one of the accepted ISO 8601 forms, as an aware UTC datetime; else None."""
    if not isinstance(value, str) or not _DATE_RE.match(value):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:  # pragma: no cover - the pattern admits only valid dates
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _decimal(value: int | float) -> Decimal:
    # repr() is the shortest text that round-trips, i.e. what the JSON carried.
    return Decimal(value) if isinstance(value, int) else Decimal(repr(value))


class _Parser:
    def __init__(self, attributes_only: bool):
        self.nodes = 0
        self.attributes_only = attributes_only

    def rules(self, rules: Any, path: str) -> tuple[Node, ...]:
        if not isinstance(rules, list):
            raise _fail(path, "must be a list of rules")
        if len(rules) > MAX_LIST:
            raise _fail(path, f"at most {MAX_LIST} rules in one list")
        return tuple(self.rule(rule, f"{path}[{i}]", 1) for i, rule in enumerate(rules))

    def rule(self, rule: Any, path: str, depth: int) -> Node:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _fail(path, f"too many rules (at most {MAX_NODES} in all)")
        if depth > MAX_DEPTH:
            raise _fail(path, f"groups nested deeper than {MAX_DEPTH}")
        if not isinstance(rule, dict):
            raise _fail(path, "a rule must be an object: {field, operator, value}, "
                              "{event, operator, value, withinDays} or {any|all: [rules]}")
        keys = set(rule)
        if keys & {"any", "all"}:
            if len(keys) != 1:
                raise _fail(path, "a group has exactly one key, `any` or `all`")
            kind = next(iter(keys))
            children = rule[kind]
            if not isinstance(children, list):
                raise _fail(f"{path}.{kind}", "must be a list of rules")
            if len(children) > MAX_LIST:
                raise _fail(f"{path}.{kind}", f"at most {MAX_LIST} rules in one list")
            return Group(kind, tuple(self.rule(c, f"{path}.{kind}[{i}]", depth + 1)
                                     for i, c in enumerate(children)))
        if "event" in keys:
            if self.attributes_only:
                raise _fail(path, "only attribute rules ({field, operator, value}) are "
                                  "allowed here")
            return self.event(rule, path)
        if "field" in keys:
            return self.attribute(rule, path)
        raise _fail(path, "unknown rule: give `field` (attribute), `event` (event count) "
                          "or `any` / `all` (group)")

    @staticmethod
    def _string(value: Any, path: str, what: str, limit: int = MAX_STRING) -> str:
        if not isinstance(value, str):
            raise _fail(path, f"{what} must be a string")
        if _NUL in value:
            raise _fail(path, f"{what} may not contain NUL characters")
        if len(value) > limit:
            raise _fail(path, f"{what} is longer than {limit} characters")
        return value

    @staticmethod
    def _operator(rule: dict[str, Any], path: str, allowed: Sequence[str]) -> str:
        op = rule.get("operator")
        if "operator" not in rule:
            raise _fail(f"{path}.operator", "required")
        if not isinstance(op, str) or op not in OPERATORS:
            raise _fail(f"{path}.operator",
                        f"unknown operator {op!r}; one of: {', '.join(OPERATORS)}")
        if op not in allowed:
            raise _fail(f"{path}.operator", f"{op} does not apply here; one of: "
                                            f"{', '.join(allowed)}")
        return op

    def event(self, rule: dict[str, Any], path: str) -> EventRule:
        extra = set(rule) - {"event", "operator", "value", "withinDays"}
        if extra:
            raise _fail(f"{path}.{sorted(extra)[0]}", "unknown key in an event rule")
        name = self._string(rule["event"], f"{path}.event", "event", 200)
        if not name:
            raise _fail(f"{path}.event", "may not be empty")
        op = self._operator(rule, path, EVENT_OPERATORS)
        value = rule.get("value")
        count = 0
        if op in ("exists", "not_exists"):
            if value is not None:
                raise _fail(f"{path}.value", f"{op} takes no value")
        else:
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if not isinstance(value, int) or isinstance(value, bool) or not (
                    0 <= value <= MAX_COUNT):
                raise _fail(f"{path}.value", "an event count: a whole number >= 0")
            count = value
        within = rule.get("withinDays")
        if within is not None:
            if not _is_number(within) or not (0 < within <= MAX_DAYS) or (
                    isinstance(within, float) and not math.isfinite(within)):
                raise _fail(f"{path}.withinDays", f"a number of days > 0 (at most {MAX_DAYS})")
            within = float(within)
        return EventRule(name, op, count, within)

    def attribute(self, rule: dict[str, Any], path: str) -> Attribute:
        extra = set(rule) - {"field", "operator", "value"}
        if extra:
            raise _fail(f"{path}.{sorted(extra)[0]}", "unknown key in an attribute rule")
        field = self._string(rule["field"], f"{path}.field", "field", MAX_FIELD)
        builtin = field if field in BUILTINS else None
        segments: tuple[str, ...] = ()
        if builtin is None:
            segments = tuple(field.split("."))
            if not field or any(s == "" for s in segments):
                raise _fail(f"{path}.field", "a property name (dots for nested ones, "
                                             "no empty parts)")
        op = self._operator(rule, path, OPERATORS)
        positive = NEGATIONS.get(op, op)
        ftype = BUILTINS[builtin][0] if builtin else "property"
        kind, value = self._value(rule, f"{path}.value", positive, ftype)
        return Attribute(field, builtin, segments, positive, op in NEGATIONS, kind, value)

    def _value(self, rule: dict[str, Any], path: str, op: str, ftype: str) -> tuple[str, Any]:
        """(kind, typed value) for this operator on this field type, or a 400."""
        has = "value" in rule
        value = rule.get("value")
        if op == "exists":
            if value is not None:
                raise _fail(path, "exists / not_exists take no value")
            return "none", None
        if not has:
            raise _fail(path, "required for this operator")
        if op == "in":
            if not isinstance(value, list) or not value:
                raise _fail(path, "in / not_in take a non-empty list")
            if len(value) > MAX_LIST:
                raise _fail(path, f"at most {MAX_LIST} values")
            items = tuple(self._scalar(v, f"{path}[{i}]", ftype) for i, v in enumerate(value))
            return "list", items
        if op == "within_last_days":
            if ftype not in ("date", "property"):
                raise _fail(path.rsplit(".", 1)[0] + ".operator",
                            f"within_last_days needs a date field, not a {ftype} one")
            if not _is_number(value) or not (0 < value <= MAX_DAYS):
                raise _fail(path, f"a number of days > 0 (at most {MAX_DAYS})")
            return "days", float(value)
        if op in ("before", "after"):
            if ftype not in ("date", "property"):
                raise _fail(path.rsplit(".", 1)[0] + ".operator",
                            f"{op} needs a date field, not a {ftype} one")
            return "date", self._date(value, path)
        if op in ("gt", "gte", "lt", "lte"):
            if ftype == "number" or (ftype == "property" and _is_number(value)):
                return "number", self._number(value, path)
            if ftype in ("date", "property"):
                if ftype == "property" and not isinstance(value, str):
                    raise _fail(path, f"{op} compares numbers or ISO 8601 dates")
                return "date", self._date(value, path)
            raise _fail(path.rsplit(".", 1)[0] + ".operator",
                        f"{op} does not apply to a {ftype} field")
        if op in ("contains", "starts_with"):
            if ftype == "property":
                if op == "contains" and (_is_number(value) or isinstance(value, bool)):
                    return "json", self._scalar(value, path, ftype)
                return "string", self._string(value, path, "value")
            if ftype != "string":
                raise _fail(path.rsplit(".", 1)[0] + ".operator",
                            f"{op} does not apply to a {ftype} field")
            return "string", self._string(value, path, "value")
        # eq
        return ("json" if ftype == "property" else ftype), self._scalar(value, path, ftype)

    def _scalar(self, value: Any, path: str, ftype: str) -> Any:
        if ftype == "string":
            return self._string(value, path, "value")
        if ftype == "number":
            return self._number(value, path)
        if ftype == "bool":
            if not isinstance(value, bool):
                raise _fail(path, "must be true or false")
            return value
        if ftype == "date":
            return self._date(value, path)
        # a property: any JSON scalar
        if isinstance(value, bool):
            return value
        if _is_number(value):
            return self._number(value, path)
        if isinstance(value, str):
            return self._string(value, path, "value")
        raise _fail(path, "must be a string, a number or a boolean")

    @staticmethod
    def _number(value: Any, path: str) -> Decimal:
        if not _is_number(value) or (isinstance(value, float) and not math.isfinite(value)):
            raise _fail(path, "must be a number")
        number = _decimal(value)
        if abs(number) >= MAX_ABS_NUMBER:
            raise _fail(path, "number out of range")
        return number

    @staticmethod
    def _date(value: Any, path: str) -> datetime:
        parsed = parse_date(value)
        if parsed is None:
            raise _fail(path, "must be an ISO 8601 date, e.g. 2026-04-01 or "
                              "2026-04-01T10:00:00Z")
        return parsed


def parse_rules(rules: Any, path: str = "rules", *, attributes_only: bool = False,
                ) -> tuple[Node, ...]:
    """The rules as a typed tree, or BadRequest (400) naming the offending part."""
    return _Parser(attributes_only).rules(rules, path)


def validate_rules(rules: Any, path: str = "rules", *, attributes_only: bool = False) -> None:
    """Raise BadRequest (400, `details=[{"field": "rules[1].any[0].operator", ...}]`) for
    anything but well-formed rules. `attributes_only` refuses event rules (for an
    automation's `triggerFilter`)."""
    parse_rules(rules, path, attributes_only=attributes_only)


def has_event_rules(rules: Any) -> bool:
    """Whether any rule counts events (their set-mode sub-queries are worth planning for)."""

    def walk(node: Node) -> bool:
        if isinstance(node, Group):
            return any(walk(c) for c in node.children)
        return isinstance(node, EventRule)

    return any(walk(n) for n in parse_rules(rules))


def is_time_dependent(rules: Any) -> bool:
    """Whether membership can change with time alone (within_last_days, withinDays)."""

    def walk(node: Node) -> bool:
        if isinstance(node, Group):
            return any(walk(c) for c in node.children)
        if isinstance(node, EventRule):
            return node.within_days is not None
        return node.kind == "days"

    return any(walk(n) for n in parse_rules(rules))


# -------------------------------------------------------------------------------- to SQL


def _text_exact(value: Any) -> bool:
    """Whether `prop ->> 'k' = value` (text, cheap) is exactly JSON equality with the string
    `value`: true unless a number, boolean, object or array could print as that text."""
    return isinstance(value, str) and value not in ("true", "false") and not (
        value[:1] in ("{", "[", "-") or value[:1].isdigit())


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _json_path(path: tuple[str, ...]) -> tuple[ColumnElement[Any], ColumnElement[Any]]:
    """(jsonb value, its text) of a property path: properties -> 'a' -> 'b'."""
    parent: ColumnElement[Any] = EndUser.properties
    for segment in path[:-1]:
        parent = parent.op("->", return_type=JSONB)(literal(segment, String))
    last = literal(path[-1], String)
    return (parent.op("->", return_type=JSONB)(last),
            parent.op("->>", return_type=Text)(last))


def _sql_date(text_value: ColumnElement[Any]) -> ColumnElement[Any]:
    """A text that DATE_PATTERN admits, as timestamptz (no offset: UTC)."""
    return case(
        (text_value.op("~", return_type=Boolean)(literal(OFFSET_PATTERN, String)),
         cast(text_value, _TimestampTz)),
        else_=func.timezone("UTC", cast(text_value, _Timestamp)),
    )




def _typed(js: ColumnElement[Any], text_value: ColumnElement[Any], kind: str,
           ) -> ColumnElement[Any]:
    """The property as a number or date when it is one, else NULL (never a cast error)."""
    if kind == "number":
        return case((func.jsonb_typeof(js) == "number", cast(js, Numeric)))
    return case((and_(func.jsonb_typeof(js) == "string",
                      text_value.op("~", return_type=Boolean)(literal(DATE_PATTERN, String))),
                 _sql_date(text_value)))


_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "eq": lambda a, b: a == b, "gt": lambda a, b: a > b, "gte": lambda a, b: a >= b,
    "lt": lambda a, b: a < b, "lte": lambda a, b: a <= b,
    "before": lambda a, b: a < b, "after": lambda a, b: a > b,
}


def _bind(value: Any, kind: str) -> Any:
    if kind == "number":
        return literal(value, Numeric)
    if kind == "date":
        return literal(value, _TimestampTz)
    if kind == "bool":
        return literal(value, Boolean)
    return literal(value, String)


class _SqlCompiler:
    def __init__(self, project_id: str, now: datetime, correlated: bool):
        self.project_id = project_id
        self.now = now
        self.correlated = correlated

    def all(self, nodes: Sequence[Node]) -> ColumnElement[bool]:
        return and_(true(), *(self.node(n, top=True) for n in nodes))

    def node(self, node: Node, top: bool = False) -> ColumnElement[bool]:
        """`top`: the node is a conjunct of the whole condition (not under an `any`)."""
        if isinstance(node, Group):
            if node.kind == "all":
                return and_(true(), *(self.node(c, top) for c in node.children))
            return or_(false(), *(self.node(c) for c in node.children))
        if isinstance(node, EventRule):
            return self.event(node, top)
        atom = self.attribute(node)
        # An atom may be NULL (a missing property), which WHERE reads as false and AND/OR
        # keep monotone; only a negation needs it made FALSE first.
        return not_(func.coalesce(atom, false())) if node.negate else atom

    # --- attributes: each returns TRUE/FALSE/NULL; the caller coalesces NULL to FALSE

    def attribute(self, a: Attribute) -> ColumnElement[Any]:
        if a.builtin is not None:
            return self.builtin(a, BUILTINS[a.builtin][1])
        js, text_value = _json_path(a.path)
        op, kind, value = a.operator, a.kind, a.value
        if op == "exists":
            return func.coalesce(func.jsonb_typeof(js), "null") != "null"
        if op == "in":
            if all(_text_exact(v) for v in value):
                return text_value.in_([literal(v, String) for v in value])
            return js.in_([literal(_json(v), JSONB) for v in value])
        if op == "eq":
            if _text_exact(value):
                return text_value == literal(value, String)
            return js == literal(_json(value), JSONB)
        if op == "contains":
            if kind == "string":
                return case(
                    (func.jsonb_typeof(js) == "string",
                     text_value.like(f"%{_escape_like(value)}%", escape="\\")),
                    (func.jsonb_typeof(js) == "array",
                     js.op("@>", return_type=Boolean)(literal([value], JSONB))),
                    else_=false(),
                )
            return and_(func.jsonb_typeof(js) == "array",
                        js.op("@>", return_type=Boolean)(literal([_json(value)], JSONB)))
        if op == "starts_with":
            return and_(func.jsonb_typeof(js) == "string",
                        text_value.like(f"{_escape_like(value)}%", escape="\\"))
        if op == "within_last_days":
            return _typed(js, text_value, "date") >= literal(
                self.now - timedelta(days=value), _TimestampTz)
        typed = _typed(js, text_value, kind)
        return _COMPARE[op](typed, _bind(value, kind))

    def builtin(self, a: Attribute, column: Any) -> ColumnElement[Any]:
        op, kind, value = a.operator, a.kind, a.value
        if op == "exists":
            return column.is_not(None)
        if op == "in":
            return column.in_([_bind(v, BUILTINS[a.builtin or ""][0]) for v in value])
        if op == "contains":
            return column.like(f"%{_escape_like(value)}%", escape="\\")
        if op == "starts_with":
            return column.like(f"{_escape_like(value)}%", escape="\\")
        if op == "within_last_days":
            return column >= literal(self.now - timedelta(days=value), _TimestampTz)
        return _COMPARE[op](column, _bind(value, kind))

    # --- events

    def _events(self, rule: EventRule, correlated: bool) -> list[ColumnElement[bool]]:
        where = [Event.event_name == literal(rule.event, String)]
        if correlated:
            where += [Event.project_id == EndUser.project_id, Event.user_id == EndUser.id]
        else:
            where.insert(0, Event.project_id == literal(self.project_id, String))
        if rule.within_days is not None:
            where.append(Event.timestamp >= literal(
                self.now - timedelta(days=rule.within_days), _TimestampTz))
        return where

    def event(self, rule: EventRule, top: bool = False) -> ColumnElement[bool]:
        op, n = _count_test(rule)
        if self.correlated:
            if (op, n) == ("gte", 1):
                return exists().where(*self._events(rule, True))
            if (op, n) == ("lt", 1):
                return not_(exists().where(*self._events(rule, True)))
            count = select(func.count()).where(*self._events(rule, True)).scalar_subquery()
            return _COUNT_OPS[op](count, n)
        # Set mode: the set of users with a count >= 1 that passes a test, computed once
        # per query; a test that a count of 0 passes is the complement of its negation.
        if _COUNT_OPS[op](0, n):
            users = self._users_counting(rule, _NEGATE_COUNT[op], n)
            return true() if users is None else not_(EndUser.id.in_(users))
        users = self._users_counting(rule, op, n)
        if users is None:
            return false()
        if top:
            # A conjunct of the whole condition: look the (usually few) users up by the
            # primary key, `id = ANY(ARRAY(...))`, computed once. PostgreSQL would hash-
            # join the whole users table instead, misjudging HAVING's selectivity.
            return EndUser.id == any_(func.array(users.scalar_subquery()))
        return EndUser.id.in_(users)

    def _users_counting(self, rule: EventRule, op: str, n: int) -> Any:
        """The user ids whose count of the event is >= 1 and passes `op n` (None: nobody)."""
        if (op == "lt" and n <= 1) or (op in ("lte", "eq") and n <= 0):
            return None
        sub = select(Event.user_id).where(*self._events(rule, False))
        every_positive = (op == "gte" and n <= 1) or (op in ("gt", "neq") and n <= 0)
        if not every_positive:
            sub = sub.group_by(Event.user_id).having(_COUNT_OPS[op](func.count(), n))
        return sub


_COUNT_OPS: dict[str, Callable[[Any, int], Any]] = {
    "eq": lambda c, n: c == n, "neq": lambda c, n: c != n, "gt": lambda c, n: c > n,
    "gte": lambda c, n: c >= n, "lt": lambda c, n: c < n, "lte": lambda c, n: c <= n,
}
_NEGATE_COUNT = {"eq": "neq", "neq": "eq", "gt": "lte", "lte": "gt", "gte": "lt", "lt": "gte"}


def _count_test(rule: EventRule) -> tuple[str, int]:
    if rule.operator == "exists":
        return "gte", 1
    if rule.operator == "not_exists":
        return "lt", 1
    return rule.operator, rule.count


def _json(value: Any) -> Any:
    """A typed rule value back to what the JSONB literal should hold."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() and abs(value) < 2**63 else (
            float(value))
    return value


def rules_condition(project_id: str, rules: list[Any], *, now: datetime | None = None,
                    correlated: bool = False) -> ColumnElement[bool]:
    """A boolean SQL expression over `EndUser` (the `users` table) that holds exactly for
    the users of `project_id` matching `rules` (it includes `users.project_id = :p`).

        select(func.count()).select_from(EndUser).where(rules_condition(pid, rules))

    Like SQL itself it may be NULL for a user whose property is missing, which WHERE
    reads as false; wrap it in `coalesce(..., false)` before negating it.
    `now` fixes "now" for the time-relative operators (default: the current time).
    `correlated=True` counts events per user row (index lookups) instead of once per
    query: use it when the query touches one user or a page of users. Raises BadRequest
    (400) for malformed rules."""
    nodes = parse_rules(rules)
    compiler = _SqlCompiler(project_id, now or datetime.now(UTC), correlated)
    return and_(EndUser.project_id == literal(project_id, String), compiler.all(nodes))


async def user_matches(db: AsyncSession, project_id: str, user_id: str, rules: list[Any],
                       *, now: datetime | None = None) -> bool:
    """Whether that user (of that project) matches the rules now; False if no such user.
    One indexed query (event rules are counted for this user only)."""
    condition = rules_condition(project_id, rules, now=now, correlated=True)
    found = await db.scalar(
        select(literal(True)).select_from(EndUser)
        .where(EndUser.id == user_id, condition).limit(1)
    )
    return bool(found)


# -------------------------------------------------------------------- plain-Python twin


def json_equal(a: Any, b: Any) -> bool:
    """JSON value equality as PostgreSQL's jsonb sees it for scalars (1 = 1.0, true != 1)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if _is_number(a) or isinstance(a, Decimal):
        if not (_is_number(b) or isinstance(b, Decimal)):
            return False
        if isinstance(a, float) and not math.isfinite(a):
            return False
        if isinstance(b, float) and not math.isfinite(b):
            return False
        da = a if isinstance(a, Decimal) else _decimal(a)
        db = b if isinstance(b, Decimal) else _decimal(b)
        return da == db
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    return False


_MISSING = object()


def _lookup(properties: Any, path: tuple[str, ...]) -> Any:
    current = properties
    for segment in path:
        if not isinstance(current, Mapping) or segment not in current:
            return _MISSING
        current = current[segment]
    return current


def _as_datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return parse_date(value)


EventCounts = Callable[[str, float | None], int] | Mapping[str, Any] | None


def _count(event_counts: EventCounts, rule: EventRule, now: datetime) -> int:
    if event_counts is None:
        return 0
    if callable(event_counts):
        return int(event_counts(rule.event, rule.within_days))
    entry = event_counts.get(rule.event, 0)
    if isinstance(entry, int):
        if rule.within_days is not None and entry:
            raise ValueError(f"event_counts[{rule.event!r}] is a total; a withinDays rule "
                             "needs the events' timestamps")
        return entry
    if rule.within_days is None:
        return len(entry)
    cutoff = now - timedelta(days=rule.within_days)
    return sum(1 for ts in entry if (_as_datetime(ts) or datetime.min.replace(tzinfo=UTC))
               >= cutoff)


class _Evaluator:
    def __init__(self, profile: Mapping[str, Any], event_counts: EventCounts, now: datetime,
                 properties_only: bool):
        self.profile = profile
        self.properties = profile.get("properties") or {}
        self.event_counts = event_counts
        self.now = now
        self.properties_only = properties_only

    def node(self, node: Node) -> bool:
        if isinstance(node, Group):
            results = (self.node(c) for c in node.children)
            return all(results) if node.kind == "all" else any(results)
        if isinstance(node, EventRule):
            op, n = _count_test(node)
            return bool(_COUNT_OPS[op](_count(self.event_counts, node, self.now), n))
        result = self.attribute(node)
        return not result if node.negate else result

    def attribute(self, a: Attribute) -> bool:
        if a.builtin is not None and not self.properties_only:
            return self.builtin(a)
        path = a.path or (a.field,)
        value = _lookup(self.properties, path)
        op, kind, expected = a.operator, a.kind, a.value
        if op == "exists":
            return value is not _MISSING and value is not None
        if value is _MISSING:
            return False
        if op == "in":
            return any(json_equal(value, v) for v in expected)
        if op == "eq":
            return json_equal(value, expected)
        if op == "contains":
            if kind == "string" and isinstance(value, str):
                return expected in value
            if isinstance(value, list):
                return any(json_equal(item, expected) for item in value)
            return False
        if op == "starts_with":
            return isinstance(value, str) and value.startswith(expected)
        if op == "within_last_days":
            when = parse_date(value)
            return when is not None and when >= self.now - timedelta(days=expected)
        if kind == "number":
            if not _is_number(value) or (isinstance(value, float)
                                         and not math.isfinite(value)):
                return False
            return bool(_COMPARE[op](_decimal(value), expected))
        when = parse_date(value)
        return when is not None and bool(_COMPARE[op](when, expected))

    def builtin(self, a: Attribute) -> bool:
        ftype = BUILTINS[a.builtin or ""][0]
        value = self.profile.get(_PROFILE_KEYS[a.builtin or ""])
        if ftype == "date":
            value = _as_datetime(value)
        op, expected = a.operator, a.value
        if op == "exists":
            return value is not None
        if value is None:
            return False
        if op == "in":
            return any(_builtin_equal(value, v, ftype) for v in expected)
        if op == "eq":
            return _builtin_equal(value, expected, ftype)
        if op == "contains":
            return expected in value
        if op == "starts_with":
            return bool(value.startswith(expected))
        if op == "within_last_days":
            return bool(value >= self.now - timedelta(days=expected))
        if ftype == "number":
            value = Decimal(value)
        return bool(_COMPARE[op](value, expected))


def _builtin_equal(value: Any, expected: Any, ftype: str) -> bool:
    if ftype == "number":
        return Decimal(value) == expected
    return bool(value == expected)


def evaluate(rules: list[Any], profile: Mapping[str, Any], event_counts: EventCounts = None,
             now: datetime | None = None, *, properties_only: bool = False) -> bool:
    """The same semantics as `rules_condition`, in plain Python.

    `profile` is a dict with the built-in fields under their API names (`userId`,
    `email`, `firstSeen`, `lastSeen` (datetime or ISO string), `eventCount`,
    `sessionCount`, `subscribed`) and the profile properties under `properties`
    (`profile_of(user)` builds it from an EndUser row). `event_counts` answers event
    rules: a callable `(event_name, within_days_or_None) -> count`, or a dict
    `{event_name: [timestamps]}` (or `{event_name: total}` when no rule uses
    withinDays); None means no events. `now` defaults to the current time.

    An automation's `triggerFilter` (attribute rules on the triggering event's
    properties, checked with `validate_rules(rules, "triggerFilter",
    attributes_only=True)`) is evaluated with

        evaluate(trigger_filter, {"properties": event_properties}, properties_only=True)

    (or `evaluate_properties(trigger_filter, event_properties)`): with
    `properties_only`, every field, even `email` or `userId`, names a key of
    `properties` (dots for nested ones)."""
    nodes = parse_rules(rules)
    evaluator = _Evaluator(profile, event_counts, now or datetime.now(UTC), properties_only)
    return all(evaluator.node(n) for n in nodes)


def evaluate_properties(rules: list[Any], properties: Mapping[str, Any],
                        now: datetime | None = None) -> bool:
    """Attribute rules applied to a plain properties dict (an event's `triggerFilter`)."""
    return evaluate(rules, {"properties": properties}, None, now, properties_only=True)


def profile_of(user: EndUser) -> dict[str, Any]:
    """The `profile` dict `evaluate` takes, from a users row."""
    return {
        "userId": user.id, "email": user.email, "firstSeen": user.first_seen,
        "lastSeen": user.last_seen, "eventCount": user.event_count,
        "sessionCount": user.session_count, "subscribed": user.subscribed,
        "properties": user.properties or {},
    }
