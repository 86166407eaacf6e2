"""The rules compiler against a real PostgreSQL: every operator and rule kind on a small
hand-checked population, then hypothesis comparing the SQL (set and correlated modes)
with the plain-Python evaluator over random profiles, events and rules."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, insert, select, text
from sqlalchemy.engine import Engine

from core.db import make_sync_engine
from core.errors import BadRequest
from core.models import EndUser, Event
from core.segments import evaluate, evaluate_properties, rules_condition, validate_rules

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


def days_ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


@pytest.fixture(scope="module")
def engine(database_url: str) -> Iterator[Engine]:
    eng = make_sync_engine(database_url)
    yield eng
    eng.dispose()


def _project(conn: Connection) -> str:
    pid = f"proj_seg{uuid.uuid4().hex[:16]}"
    conn.execute(text("INSERT INTO projects (id, name, identity_secret_enc) "
                      "VALUES (:id, 'Segments', 'x')"), {"id": pid})
    return pid


def _insert(conn: Connection, pid: str, users: list[dict[str, Any]]) -> None:
    rows, events = [], []
    for u in users:
        rows.append({"project_id": pid, "id": u["userId"], "email": u.get("email"),
                     "properties": u.get("properties", {}),
                     "subscribed": u.get("subscribed", True),
                     "first_seen": u.get("firstSeen", days_ago(10)),
                     "last_seen": u.get("lastSeen", days_ago(1)),
                     "event_count": u.get("eventCount", 0),
                     "session_count": u.get("sessionCount", 0)})
        for i, (name, ts) in enumerate(u.get("events", [])):
            events.append({"id": f"evt_{uuid.uuid4().hex}{i}", "project_id": pid,
                           "user_id": u["userId"], "event_name": name, "properties": {},
                           "timestamp": ts})
    conn.execute(insert(EndUser), rows)
    if events:
        conn.execute(insert(Event), events)


def _counts(user: dict[str, Any]) -> dict[str, list[datetime]]:
    out: dict[str, list[datetime]] = {}
    for name, ts in user.get("events", []):
        out.setdefault(name, []).append(ts)
    return out


def _sql_members(conn: Connection, pid: str, rules: list[Any], correlated: bool) -> set[str]:
    cond = rules_condition(pid, rules, now=NOW, correlated=correlated)
    return set(conn.scalars(select(EndUser.id).where(cond)))


# ------------------------------------------------------------------ hand-checked members

POPULATION: list[dict[str, Any]] = [
    {"userId": "ann", "email": "ann@example.com", "subscribed": True,
     "firstSeen": datetime(2025, 6, 1, tzinfo=UTC), "lastSeen": days_ago(1),
     "eventCount": 5, "sessionCount": 12,
     "properties": {"plan": "pro", "age": 34, "score": 9.5, "tags": ["vip", "beta"],
                    "address": {"city": "Paris", "zip": "75001"},
                    "signup": "2025-12-20T10:00:00Z"},
     "events": [("purchase", days_ago(1)), ("purchase", days_ago(2)),
                ("purchase", days_ago(3)), ("view", days_ago(60)), ("view", days_ago(61))]},
    {"userId": "bob", "email": "bob@corp.test", "subscribed": False,
     "firstSeen": datetime(2025, 1, 1, tzinfo=UTC), "lastSeen": days_ago(40),
     "eventCount": 1, "sessionCount": 1,
     "properties": {"plan": "free", "age": "34", "score": 3, "tags": ["beta"],
                    "address": {"city": "Berlin"}, "signup": "2024-02-29"},
     "events": [("purchase", days_ago(45))]},
    {"userId": "cat", "email": None, "subscribed": True,
     "firstSeen": days_ago(2), "lastSeen": days_ago(2), "eventCount": 0, "sessionCount": 0,
     "properties": {"plan": "pro", "age": 20, "tags": "vip", "address": "Paris",
                    "signup": "not a date"}},
    {"userId": "dan", "email": "dan_100%@example.com", "subscribed": True,
     "firstSeen": datetime(2025, 3, 1, tzinfo=UTC), "lastSeen": days_ago(5),
     "eventCount": 10, "sessionCount": 3,
     "properties": {"plan": None, "age": 51.0, "score": -1, "signup": "2023-02-29",
                    "address": {"city": None}},
     "events": [("view", days_ago(i / 24)) for i in range(1, 11)]},
    {"userId": "eve", "email": "eve@example.com", "subscribed": True,
     "firstSeen": datetime(2024, 12, 31, tzinfo=UTC), "lastSeen": days_ago(3),
     "eventCount": 5, "sessionCount": 2, "properties": {},
     "events": [("purchase", days_ago(d)) for d in (1, 2, 3, 40, 41)]},
]
EVERYONE = {"ann", "bob", "cat", "dan", "eve"}


def attr(field: str, operator: str, value: Any = ...) -> dict[str, Any]:
    rule = {"field": field, "operator": operator}
    if value is not ...:
        rule["value"] = value
    return rule


def ev(event: str, operator: str, value: Any = ..., within: float | None = None,
       ) -> dict[str, Any]:
    rule: dict[str, Any] = {"event": event, "operator": operator}
    if value is not ...:
        rule["value"] = value
    if within is not None:
        rule["withinDays"] = within
    return rule


CASES: list[tuple[list[Any], set[str]]] = [
    # built-in strings
    ([attr("userId", "eq", "ann")], {"ann"}),
    ([attr("userId", "neq", "ann")], EVERYONE - {"ann"}),
    ([attr("userId", "in", ["ann", "eve", "zed"])], {"ann", "eve"}),
    ([attr("userId", "not_in", ["ann", "eve"])], {"bob", "cat", "dan"}),
    ([attr("userId", "starts_with", "d")], {"dan"}),
    ([attr("email", "contains", "@example.com")], {"ann", "dan", "eve"}),
    ([attr("email", "not_contains", "@example.com")], {"bob", "cat"}),
    ([attr("email", "contains", "%")], {"dan"}),  # LIKE wildcards are escaped
    ([attr("email", "contains", "_100%")], {"dan"}),
    ([attr("email", "starts_with", "_")], set()),
    ([attr("email", "starts_with", "bob@")], {"bob"}),
    ([attr("email", "exists")], EVERYONE - {"cat"}),
    ([attr("email", "not_exists")], {"cat"}),
    # built-in numbers and boolean
    ([attr("eventCount", "gte", 5)], {"ann", "dan", "eve"}),
    ([attr("eventCount", "lt", 1)], {"cat"}),
    ([attr("eventCount", "eq", 5)], {"ann", "eve"}),
    ([attr("eventCount", "neq", 5)], {"bob", "cat", "dan"}),
    ([attr("eventCount", "in", [0, 1])], {"bob", "cat"}),
    ([attr("sessionCount", "gt", 2)], {"ann", "dan"}),
    ([attr("sessionCount", "lte", 1)], {"bob", "cat"}),
    ([attr("subscribed", "eq", False)], {"bob"}),
    ([attr("subscribed", "neq", False)], EVERYONE - {"bob"}),
    # built-in dates
    ([attr("lastSeen", "within_last_days", 7)], {"ann", "cat", "dan", "eve"}),
    ([attr("lastSeen", "before", "2025-12-31")], {"bob"}),
    ([attr("lastSeen", "after", "2026-01-12T00:00:00Z")], {"ann", "cat", "eve"}),
    ([attr("firstSeen", "gte", "2025-01-01")], {"ann", "bob", "cat", "dan"}),
    ([attr("firstSeen", "lt", "2025-01-01T00:00:00+01:00")], {"eve"}),
    ([attr("firstSeen", "eq", "2025-01-01T00:00:00Z")], {"bob"}),
    # properties: equality, presence, lists
    ([attr("plan", "eq", "pro")], {"ann", "cat"}),
    ([attr("plan", "neq", "pro")], {"bob", "dan", "eve"}),
    ([attr("plan", "exists")], {"ann", "bob", "cat"}),
    ([attr("plan", "not_exists")], {"dan", "eve"}),
    ([attr("plan", "in", ["free", "pro"])], {"ann", "bob", "cat"}),
    ([attr("plan", "not_in", ["free", "pro"])], {"dan", "eve"}),
    # properties: typed numbers ("34" is a string, 51.0 = 51)
    ([attr("age", "gt", 30)], {"ann", "dan"}),
    ([attr("age", "eq", 51)], {"dan"}),
    ([attr("age", "eq", "34")], {"bob"}),
    ([attr("age", "gte", 20)], {"ann", "cat", "dan"}),
    ([attr("age", "lte", 20)], {"cat"}),
    ([attr("score", "lt", 0)], {"dan"}),
    ([attr("score", "gte", 9.5)], {"ann"}),
    # properties: strings and arrays
    ([attr("tags", "contains", "vip")], {"ann", "cat"}),
    ([attr("tags", "contains", "bet")], set()),
    ([attr("tags", "not_contains", "vip")], {"bob", "dan", "eve"}),
    ([attr("plan", "starts_with", "pr")], {"ann", "cat"}),
    ([attr("plan", "starts_with", "Pr")], set()),  # case-sensitive
    ([attr("plan", "contains", "RO")], set()),
    ([attr("plan", "contains", "ro")], {"ann", "cat"}),
    # nested properties
    ([attr("address.city", "eq", "Paris")], {"ann"}),
    ([attr("address.city", "exists")], {"ann", "bob"}),
    ([attr("address.city", "not_exists")], {"cat", "dan", "eve"}),
    ([attr("address.zip", "starts_with", "75")], {"ann"}),
    # properties: typed dates (2023-02-29 and "not a date" are not dates)
    ([attr("signup", "after", "2025-01-01")], {"ann"}),
    ([attr("signup", "before", "2025-01-01")], {"bob"}),
    ([attr("signup", "within_last_days", 30)], {"ann"}),
    ([attr("signup", "gt", "2024-01-01")], {"ann", "bob"}),
    ([attr("nobody", "eq", "x")], set()),
    # events
    ([ev("purchase", "gte", 3)], {"ann", "eve"}),
    ([ev("purchase", "gte", 3, within=30)], {"ann", "eve"}),
    ([ev("purchase", "gte", 4, within=30)], set()),
    ([ev("purchase", "eq", 5)], {"eve"}),
    ([ev("purchase", "exists")], {"ann", "bob", "eve"}),
    ([ev("purchase", "not_exists")], {"cat", "dan"}),
    ([ev("purchase", "lt", 2)], {"bob", "cat", "dan"}),
    ([ev("purchase", "eq", 0)], {"cat", "dan"}),
    ([ev("purchase", "neq", 3)], {"bob", "cat", "dan", "eve"}),
    ([ev("purchase", "lte", 1, within=30)], {"bob", "cat", "dan"}),
    ([ev("purchase", "gt", 0, within=44)], {"ann", "eve"}),
    ([ev("view", "exists", within=30)], {"dan"}),
    ([ev("view", "gte", 0)], EVERYONE),
    ([ev("view", "lt", 0)], set()),
    # groups
    ([{"any": [attr("plan", "eq", "free"), attr("age", "gt", 40)]}], {"bob", "dan"}),
    ([{"all": [attr("plan", "eq", "pro"),
               {"any": [attr("tags", "contains", "vip"), attr("age", "lt", 10)]}]}],
     {"ann", "cat"}),
    ([{"any": [{"all": [ev("purchase", "gte", 1), attr("subscribed", "eq", False)]},
               {"all": [attr("address.city", "eq", "Paris")]}]}], {"ann", "bob"}),
    ([{"any": [ev("purchase", "lt", 1), ev("view", "gte", 10, within=1)]}], {"cat", "dan"}),
    ([{"any": []}], set()),
    ([{"all": []}], EVERYONE),
    ([], EVERYONE),
    ([attr("plan", "eq", "pro"), attr("email", "exists")], {"ann"}),
]


@pytest.fixture(scope="module")
def population(engine: Engine) -> str:
    with engine.begin() as conn:
        pid = _project(conn)
        _insert(conn, pid, POPULATION)
    return pid


@pytest.mark.parametrize(("rules", "expected"), CASES, ids=[str(i) for i in range(len(CASES))])
def test_hand_checked_members(engine: Engine, population: str, rules: list[Any],
                              expected: set[str]) -> None:
    with engine.connect() as conn:
        assert _sql_members(conn, population, rules, correlated=False) == expected
        assert _sql_members(conn, population, rules, correlated=True) == expected
    python = {u["userId"] for u in POPULATION
              if evaluate(rules, u, _counts(u), now=NOW)}
    assert python == expected


INJECTIONS = [
    "plan'; DROP TABLE users; --",
    "x\") OR 1=1 --",
    "address.city' OR '1'='1",
    "properties->>'plan'",
    "a.b.c.d.e",
    "%",
    "\\",
]


@pytest.mark.parametrize("payload", INJECTIONS)
def test_injection_attempts_are_just_names_and_values(engine: Engine, population: str,
                                                      payload: str) -> None:
    rules = [{"any": [attr(payload, "eq", payload), attr(payload, "contains", payload),
                      attr("plan", "eq", payload), attr("email", "starts_with", payload),
                      attr("userId", "in", [payload]), ev(payload, "gte", 1)]}]
    with engine.connect() as conn:
        assert _sql_members(conn, population, rules, correlated=False) == set()
        assert _sql_members(conn, population, rules, correlated=True) == set()
        assert conn.scalar(text("SELECT count(*) FROM users WHERE project_id = :p"),
                           {"p": population}) == 5


@pytest.mark.parametrize(("rules", "field"), [
    ({"field": "plan"}, "rules"),
    ([{"field": "plan", "operator": "like", "value": "x"}], "rules[0].operator"),
    ([attr("a", "eq", 1), {"any": [{"field": "plan", "operator": "matches", "value": 1}]}],
     "rules[1].any[0].operator"),
    ([{"field": "plan", "value": "x"}], "rules[0].operator"),
    ([{"field": "plan", "operator": "eq"}], "rules[0].value"),
    (["plan = pro"], "rules[0]"),
    ([{"fieldd": "plan", "operator": "eq", "value": "x"}], "rules[0]"),
    ([{"field": "plan", "operator": "eq", "value": "x", "extra": 1}], "rules[0].extra"),
    ([{"any": [], "all": []}], "rules[0]"),
    ([{"any": "x"}], "rules[0].any"),
    ([attr("plan", "eq", {"a": 1})], "rules[0].value"),
    ([attr("plan", "eq", None)], "rules[0].value"),
    ([attr("plan", "in", [])], "rules[0].value"),
    ([attr("plan", "in", "pro")], "rules[0].value"),
    ([attr("plan", "in", [["x"]])], "rules[0].value[0]"),
    ([attr("age", "gt", "forty")], "rules[0].value"),
    ([attr("age", "gt", True)], "rules[0].value"),
    ([attr("signup", "before", "yesterday")], "rules[0].value"),
    ([attr("signup", "before", "2023-02-29")], "rules[0].value"),
    ([attr("signup", "within_last_days", 0)], "rules[0].value"),
    ([attr("signup", "within_last_days", "7")], "rules[0].value"),
    ([attr("plan", "exists", "yes")], "rules[0].value"),
    ([attr("plan", "starts_with", 3)], "rules[0].value"),
    ([attr("eventCount", "contains", "1")], "rules[0].operator"),
    ([attr("eventCount", "eq", "5")], "rules[0].value"),
    ([attr("email", "gt", 3)], "rules[0].operator"),
    ([attr("subscribed", "eq", "true")], "rules[0].value"),
    ([attr("subscribed", "before", "2024-01-01")], "rules[0].operator"),
    ([attr("userId", "within_last_days", 3)], "rules[0].operator"),
    ([attr("lastSeen", "eq", 5)], "rules[0].value"),
    ([attr("", "eq", 1)], "rules[0].field"),
    ([attr("a..b", "eq", 1)], "rules[0].field"),
    ([attr(5, "eq", 1)], "rules[0].field"),
    ([attr("plan", "eq", "nul\x00byte")], "rules[0].value"),
    ([attr("plan", "eq", float("nan"))], "rules[0].value"),
    ([attr("plan", "eq", 10**40)], "rules[0].value"),
    ([ev("purchase", "contains", 1)], "rules[0].operator"),
    ([ev("purchase", "gte", -1)], "rules[0].value"),
    ([ev("purchase", "gte", 1.5)], "rules[0].value"),
    ([ev("purchase", "gte", "3")], "rules[0].value"),
    ([ev("purchase", "gte", 1, within=-3)], "rules[0].withinDays"),
    ([ev("", "gte", 1)], "rules[0].event"),
    ([ev("purchase", "exists", 2)], "rules[0].value"),
    ([{"event": "purchase", "operator": "gte", "value": 1, "within": 3}], "rules[0].within"),
])
def test_malformed_rules_are_400_naming_the_part(rules: Any, field: str) -> None:
    with pytest.raises(BadRequest) as err:
        validate_rules(rules)
    assert err.value.status == 400
    assert err.value.details[0]["field"] == field, err.value.details


def test_nesting_and_size_limits() -> None:
    deep: Any = attr("a", "eq", 1)
    for _ in range(40):
        deep = {"all": [deep]}
    with pytest.raises(BadRequest):
        validate_rules([deep])
    validate_rules([{"all": [{"any": [{"all": [attr("a", "eq", 1)]}]}]}])
    with pytest.raises(BadRequest):
        validate_rules([attr("a", "eq", 1)] * 1001)


def test_trigger_filter_helpers() -> None:
    props = {"email": "x@y.z", "amount": 30, "cart": {"id": "c1"}}
    assert evaluate_properties([attr("email", "contains", "@y"), attr("amount", "gte", 20),
                                attr("cart.id", "eq", "c1")], props)
    assert evaluate([attr("email", "exists")], {"properties": props}, properties_only=True)
    assert not evaluate_properties([attr("amount", "gt", 30)], props)
    with pytest.raises(BadRequest):
        validate_rules([ev("purchase", "exists")], "triggerFilter", attributes_only=True)


# ----------------------------------------------------------- SQL == Python, by hypothesis

KEYS = ["plan", "age", "tags", "address"]
_text = st.one_of(st.sampled_from(["a", "A", "ab", "aB", "Ab", "%", "_", "a%b", "é", "É", ""]),
                  st.text(alphabet="aA%_\\'é", min_size=1, max_size=3))
_dates = st.sampled_from([
    "2026-01-10", "2026-01-15T11:00:00Z", "2025-12-01T10:00", "2026-01-14 23:00:00.5",
    "2026-01-15T10:00:00+05", "2026-01-15T10:00:00-0530", "2024-02-29", "2023-02-29",
    "2026-13-01", "2026-01-15T24:00:00", "yesterday", "2026-01-1",
])
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 3),
                     st.sampled_from([0.5, 2.0, -1.25, 1e20]), _text, _dates)
_values = st.one_of(
    _text, _text, _dates, _scalars,
    st.lists(st.one_of(st.booleans(), st.integers(-2, 2), _text), max_size=3),
    st.fixed_dictionaries({}, optional={"city": _scalars, "zip": _scalars}),
)


@st.composite
def profiles(draw: st.DrawFn, user_id: str) -> dict[str, Any]:
    props = draw(st.dictionaries(st.sampled_from(KEYS), _values, min_size=1, max_size=4))
    first = NOW - timedelta(days=draw(st.integers(0, 60)), hours=draw(st.integers(0, 23)))
    events = draw(st.lists(st.tuples(st.sampled_from(["buy", "view"]),
                                     st.integers(0, 45 * 24)), max_size=6))
    return {
        "userId": user_id, "properties": props,
        "email": draw(st.sampled_from([None, "a@x.io", "b_%@x.io", "ab@y.io"])),
        "subscribed": draw(st.booleans()), "eventCount": draw(st.integers(0, 4)),
        "sessionCount": draw(st.integers(0, 3)), "firstSeen": first,
        "lastSeen": first + timedelta(hours=draw(st.integers(0, 200))),
        "events": [(name, NOW - timedelta(hours=h)) for name, h in events],
    }


_valid_dates = st.sampled_from(["2026-01-10", "2026-01-15T11:00:00Z", "2025-12-01T10:00",
                                "2026-01-14 23:00:00.5", "2026-01-15T10:00:00+05",
                                "2024-02-29"])
_numbers = st.one_of(st.integers(-3, 3), st.sampled_from([0.5, 2.0, -1.25, 1e20]))
_json_scalars = st.one_of(st.booleans(), _numbers, _text, _valid_dates)
PROPERTY_FIELDS = [*KEYS, "address.city", "address.zip"]
BUILTIN_TYPES = {"userId": "string", "email": "string", "firstSeen": "date",
                 "lastSeen": "date", "eventCount": "number", "sessionCount": "number",
                 "subscribed": "bool"}
_OPS_BY_TYPE = {
    "property": ["eq", "neq", "gt", "gte", "lt", "lte", "contains", "not_contains",
                 "starts_with", "in", "not_in", "exists", "not_exists", "before", "after",
                 "within_last_days"],
    "string": ["eq", "neq", "contains", "not_contains", "starts_with", "in", "not_in",
               "exists", "not_exists"],
    "number": ["eq", "neq", "gt", "gte", "lt", "lte", "in", "not_in", "exists"],
    "date": ["eq", "gt", "gte", "lt", "lte", "before", "after", "within_last_days",
             "not_exists"],
    "bool": ["eq", "neq", "in", "not_in"],
}
_BY_TYPE = {"string": st.one_of(_text, st.sampled_from(["u1", "u2", "a@x.io", "@x.io"])),
            "number": _numbers, "date": _valid_dates, "bool": st.booleans(),
            "property": _json_scalars}


@st.composite
def attribute_rules(draw: st.DrawFn) -> dict[str, Any]:
    """Well-formed attribute rules only, values typed for their operator."""
    field = draw(st.sampled_from(PROPERTY_FIELDS * 3 + sorted(BUILTIN_TYPES)))
    ftype = BUILTIN_TYPES.get(field, "property")
    op = draw(st.sampled_from(_OPS_BY_TYPE[ftype]))
    rule: dict[str, Any] = {"field": field, "operator": op}
    if op in ("exists", "not_exists"):
        return rule
    if op in ("in", "not_in"):
        rule["value"] = draw(st.lists(_BY_TYPE[ftype], min_size=1, max_size=3))
    elif op in ("before", "after"):
        rule["value"] = draw(_valid_dates)
    elif op == "within_last_days":
        rule["value"] = draw(st.sampled_from([0.5, 1, 7, 30]))
    elif op in ("gt", "gte", "lt", "lte"):
        rule["value"] = draw(_numbers if ftype == "number" else _valid_dates
                             if ftype == "date" else st.one_of(_numbers, _valid_dates))
    elif op in ("contains", "not_contains", "starts_with"):
        rule["value"] = draw(_BY_TYPE["string"] if op == "starts_with" or ftype == "string"
                             else st.one_of(_text, _text, _numbers, st.booleans()))
    else:
        rule["value"] = draw(_BY_TYPE[ftype])
    return rule


@st.composite
def event_rules(draw: st.DrawFn) -> dict[str, Any]:
    op = draw(st.sampled_from(["eq", "neq", "gt", "gte", "lt", "lte", "exists",
                               "not_exists"]))
    rule: dict[str, Any] = {"event": draw(st.sampled_from(["buy", "view", "none"])),
                            "operator": op}
    if op not in ("exists", "not_exists"):
        rule["value"] = draw(st.integers(0, 3))
    if draw(st.booleans()):
        rule["withinDays"] = draw(st.sampled_from([1, 7, 30, 0.5]))
    return rule


_leaf = st.one_of(attribute_rules(), attribute_rules(), event_rules())
_rules = st.lists(
    st.recursive(_leaf, lambda children: st.one_of(
        st.builds(lambda c: {"any": c}, st.lists(children, max_size=3)),
        st.builds(lambda c: {"all": c}, st.lists(children, max_size=3)),
    ), max_leaves=6),
    max_size=3,
)


@st.composite
def populations(draw: st.DrawFn) -> list[dict[str, Any]]:
    n = draw(st.integers(1, 12))
    return [draw(profiles(f"u{i}")) for i in range(n)]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(users=populations(), rule_sets=st.lists(_rules, min_size=1, max_size=10))
def test_sql_agrees_with_python(engine: Engine, users: list[dict[str, Any]],
                                rule_sets: list[list[Any]]) -> None:
    for rules in rule_sets:
        validate_rules(rules)  # the strategies only make well-formed rules
    with engine.connect() as conn, conn.begin() as tx:
        pid = _project(conn)
        _insert(conn, pid, users)
        # One query answers every rule list, in both modes, for every user.
        columns = [rules_condition(pid, r, now=NOW, correlated=c)
                   for r in rule_sets for c in (False, True)]
        rows = {row[0]: row[1:] for row in conn.execute(
            select(EndUser.id, *columns).where(EndUser.project_id == pid))}
        tx.rollback()
    for u in users:
        expected = [evaluate(r, u, _counts(u), now=NOW) for r in rule_sets]
        got = rows[u["userId"]]
        for i, rules in enumerate(rule_sets):
            # NULL (a missing property) counts as no match, as it does in WHERE.
            assert (bool(got[2 * i]), bool(got[2 * i + 1])) == (expected[i], expected[i]), (
                u, rules)
