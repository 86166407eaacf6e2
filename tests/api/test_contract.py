"""The HTTP contract across endpoints: error bodies for every status, body limits, rate limits
(in memory and shared through Redis), the 500 that leaks nothing, health, OpenAPI."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from core.settings import Settings
from tests.conftest import make_settings
from tests.support import Tenant, assert_error, serve_api, signup

MIB = 1024 * 1024
REDIS_URL = "redis://127.0.0.1:6379/0"
RATE_HEADERS = ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")


def _client(base: str, key: str | None = None) -> httpx.Client:
    headers = {"x-api-key": key} if key else {}
    return httpx.Client(base_url=base + "/api/v1", headers=headers, timeout=30)


def _rate(r: httpx.Response) -> tuple[int, int, int]:
    missing = [h for h in RATE_HEADERS if h not in r.headers]
    assert not missing, (r.status_code, missing, dict(r.headers))
    return tuple(int(r.headers[h]) for h in RATE_HEADERS)  # type: ignore[return-value]


def _no_leak(r: httpx.Response) -> None:
    text = r.text
    for needle in ("Traceback", "File \"", ".py", "line ", "Error:", "sqlalchemy", "psycopg"):
        assert needle not in text, (needle, text)


@pytest.fixture(scope="module")
def shared(api_url: str) -> Tenant:
    """A tenant for the read-only checks of this module (signup costs an argon2 hash)."""
    return signup(api_url)


# --- error bodies for every status ---------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/nope", "/nope", "/api/v1/events/a/b/c", "/api"])
def test_unknown_route_is_a_404_error_body(api_url: str, path: str) -> None:
    r = httpx.get(api_url + path)
    body = assert_error(r, 404)
    assert body["error"] == "Not Found"
    assert path in body["message"]
    assert r.headers["content-type"].startswith("application/json")


def test_unknown_route_with_a_key_is_still_404(shared: Tenant) -> None:
    assert_error(shared.sk.get("/segmentz"), 404)


@pytest.mark.parametrize(
    ("method", "path"),
    [("PUT", "/events"), ("PATCH", "/events/batch"), ("GET", "/identify"),
     ("PATCH", "/api-keys"), ("DELETE", "/team"), ("GET", "/auth/login")],
)
def test_wrong_method_is_a_405_error_body(shared: Tenant, method: str, path: str) -> None:
    r = shared.sk.request(method, path, json={})
    body = assert_error(r, 405)
    assert body["error"] == "Method Not Allowed"
    assert method in body["message"]
    assert "allow" in r.headers
    assert method not in r.headers["allow"].split(", ")


@pytest.mark.parametrize("path", ["/events", "/events/batch", "/identify"])
def test_malformed_json_is_a_400_error_body(shared: Tenant, path: str) -> None:
    r = shared.sk.post(path, content=b'{"userId": "u1", "eventName": ',
                       headers={"content-type": "application/json"})
    body = assert_error(r, 400)
    assert body["error"] == "Bad Request"
    assert "json" in body["message"].lower()


def test_malformed_json_on_an_unauthenticated_route(api_url: str) -> None:
    with _client(api_url) as c:
        r = c.post("/auth/login", content=b"{not json}",
                   headers={"content-type": "application/json"})
    assert "json" in assert_error(r, 400)["message"].lower()


def test_non_object_and_empty_bodies_are_400(shared: Tenant) -> None:
    body = assert_error(shared.sk.post("/events", json=[1, 2]), 400)
    assert [d["field"] for d in body["details"]] == ["body"]
    body = assert_error(shared.sk.post("/events"), 400)
    assert [d["field"] for d in body["details"]] == ["body"]


def test_validation_details_use_camel_case_paths(shared: Tenant) -> None:
    events: list[dict[str, Any]] = [{"userId": f"u{i}", "eventName": "e"} for i in range(5)]
    events[3] = {"eventName": "no user"}
    events[1] = {"userId": "u1", "eventName": 42}
    events[4] = {"userId": "u4", "eventName": "e", "timestamp": "yesterday-ish"}
    r = shared.sk.post("/events/batch", json={"events": events})
    body = assert_error(r, 400)
    by_field = {d["field"]: d["message"] for d in body["details"]}
    assert set(by_field) == {"events[3].userId", "events[1].eventName", "events[4].timestamp"}
    assert by_field["events[3].userId"] == "Field required"
    assert "events[3].userId" in body["message"]
    # All or nothing: the valid events were not stored either.
    assert shared.sk.get("/events", params={"userId": "u0"}).json()["total"] == 0


def test_validation_of_single_event_and_unknown_fields(shared: Tenant) -> None:
    r = shared.pk.post("/events", json={"userId": "", "eventName": "e", "propertys": {}})
    body = assert_error(r, 400)
    by_field = {d["field"]: d["message"] for d in body["details"]}
    assert set(by_field) == {"userId", "propertys"}
    assert by_field["propertys"] == "Unknown field"
    assert "character" in by_field["userId"].lower()
    r = shared.pk.post("/events/batch", json={"events": [{"userId": "u", "eventName": "e",
                                                           "user_id": "x"}]})
    body = assert_error(r, 400)
    assert [(d["field"], d["message"]) for d in body["details"]] == [
        ("events[0].user_id", "Unknown field")
    ]


def test_query_validation_names_the_parameter(shared: Tenant) -> None:
    body = assert_error(shared.sk.get("/events", params={"limit": 5000}), 400)
    assert [d["field"] for d in body["details"]] == ["limit"]
    body = assert_error(shared.sk.get("/events", params={"from": "not a date"}), 400)
    assert [d["field"] for d in body["details"]] == ["from"]
    body = assert_error(shared.sk.get("/events", params={"page": 0}), 400)
    assert [d["field"] for d in body["details"]] == ["page"]


# --- body size ---------------------------------------------------------------------------------


def _event_of_size(size: int) -> bytes:
    head, tail = b'{"userId": "big", "eventName": "big", "properties": {"blob": "', b'"}}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def test_body_just_under_1_mib_is_accepted(shared: Tenant) -> None:
    body = _event_of_size(MIB - 16)
    r = shared.sk.post("/events", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 202, r.text[:300]


def test_body_over_1_mib_with_content_length_is_413(shared: Tenant) -> None:
    body = _event_of_size(MIB + 1)
    r = shared.sk.post("/events", content=body, headers={"content-type": "application/json"})
    assert r.request.headers["content-length"] == str(MIB + 1)
    err = assert_error(r, 413)
    assert err["error"] == "Content Too Large" or err["error"] == "Request Entity Too Large"
    assert shared.sk.get("/events", params={"userId": "big", "eventName": "big"}
                         ).json()["total"] <= 1  # only the one under the limit, if any


def _chunks(payload: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for i in range(0, len(payload), size):
        yield payload[i:i + size]


def test_chunked_body_over_1_mib_is_413(api_url: str) -> None:
    tenant = signup(api_url)
    body = _event_of_size(MIB + 10)
    with tenant.sk as c:
        r = c.post("/events/batch", content=_chunks(body),
                   headers={"content-type": "application/json"})
        assert "content-length" not in r.request.headers
        assert r.request.headers["transfer-encoding"] == "chunked"
        assert_error(r, 413)
        # The same way under the limit goes through.
        ok = c.post("/events", content=_chunks(_event_of_size(MIB // 2)),
                    headers={"content-type": "application/json"})
        assert "content-length" not in ok.request.headers
        assert ok.status_code == 202, ok.text[:300]
        assert c.get("/events").json()["total"] == 1


def test_413_comes_before_authentication(api_url: str) -> None:
    with _client(api_url) as c:
        r = c.post("/events", content=_event_of_size(MIB + 1),
                   headers={"content-type": "application/json"})
    assert_error(r, 413)


# --- rate limit headers on every response of authenticated routes -------------------------------


def test_rate_limit_headers_on_success_and_errors(shared: Tenant) -> None:
    sk, pk = shared.sk, shared.pk
    responses = {
        "GET ok": sk.get("/events"),
        "POST ok": pk.post("/events", json={"userId": "h", "eventName": "e"}),
        "identify ok": pk.post("/identify", json={"userId": "h"}),
        "404": sk.get("/events/evt_missing"),
        "400 validation": sk.get("/events", params={"limit": 0}),
        "400 body": pk.post("/events", json={"userId": "h"}),
        "403 scope": pk.get("/users"),
        "dashboard": shared.dashboard.get("/api-keys"),
        "dashboard 403 csrf": shared.dashboard.post("/api-keys", json={"name": "x",
                                                    "type": "public"},
                                                    headers={"X-CSRF-Token": "no"}),
    }
    with _client(shared.base) as anon:
        responses["401 no key"] = anon.get("/events")
        responses["401 no cookie"] = anon.get("/team")
        responses["401 login"] = anon.post("/auth/login", json={"email": "n@example.com",
                                                                "password": "nope"})
    with _client(shared.base, "sk_live_unknown") as bad:
        responses["401 unknown key"] = bad.get("/events")
        responses["403 key on session"] = bad.get("/api-keys")
    expected = {"GET ok": 200, "POST ok": 202, "identify ok": 200, "404": 404,
                "400 validation": 400, "400 body": 400, "403 scope": 403, "dashboard": 200,
                "dashboard 403 csrf": 403, "401 no key": 401, "401 no cookie": 401,
                "401 login": 401, "401 unknown key": 401, "403 key on session": 403}
    for name, r in responses.items():
        assert r.status_code == expected[name], (name, r.text)
        limit, remaining, reset = _rate(r)
        assert limit > 0 and 0 <= remaining <= limit and reset >= 0, name


def test_limits_are_the_settings(shared: Tenant, settings: Settings) -> None:
    """The general bucket says its limit; ingestion says its (burst) limit. Exact counting
    down is checked on the 3/second server below, where nothing else moves the count."""
    general = _rate(shared.sk.get("/events"))
    ingest = _rate(shared.pk.post("/events", json={"userId": "u", "eventName": "e"}))
    assert general[0] == int(settings.rate_limit_api.split("/")[0])
    assert ingest[0] == int(settings.rate_limit_ingest.split("/")[0])
    assert general[1] < general[0]


# --- rate limits -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited(database_url: str, temporal_address: str) -> Iterator[str]:
    """A second API on the same database whose general limit is 3 requests a second."""
    settings = make_settings(database_url, temporal_address, RETENSHUN_RATE_LIMIT_API="3/second")
    with serve_api(settings) as url:
        yield url


def _burst(send: Callable[[], list[httpx.Response]]) -> list[httpx.Response]:
    """Requests that must all land within one window (1 s). On a machine too busy for that,
    wait for the window to empty and try again, rather than assert on a wider spread."""
    for _ in range(3):
        started = time.monotonic()
        responses = send()
        if time.monotonic() - started < 0.9:
            return responses
        time.sleep(1.1)
    pytest.fail("could not send the burst within one second on this machine")


def test_fourth_request_in_a_second_is_429(limited: str, api_url: str) -> None:
    a = signup(api_url)  # signed up on the main server: the limited one allows 3/s per address
    with _client(limited, a.secret_key) as c:
        *seen, over = _burst(lambda: [c.get("/events") for _ in range(4)])
    for r in seen:
        assert r.status_code == 200, r.text
    assert [_rate(r)[:2] for r in seen] == [(3, 2), (3, 1), (3, 0)]
    body = assert_error(over, 429)
    assert body["error"] == "Too Many Requests"
    retry_after = int(over.headers["retry-after"])
    assert 1 <= retry_after <= 2
    limit, remaining, reset = _rate(over)
    assert (limit, remaining) == (3, 0) and 0 <= reset <= 2
    # Every key of the project shares the limit (the public key on a general route too).
    with _client(limited, a.public_key) as c:
        assert_error(c.get("/events"), 429)
    # Waiting as long as Retry-After says is enough.
    time.sleep(retry_after)
    with _client(limited, a.secret_key) as c:
        again = c.get("/events")
    assert again.status_code == 200, again.text


def test_rate_limits_are_per_project(limited: str, api_url: str) -> None:
    a, b = signup(api_url), signup(api_url)
    with _client(limited, a.secret_key) as ca, _client(limited, b.secret_key) as cb:
        *seen, over, fresh = _burst(lambda: [ca.get("/events") for _ in range(4)]
                                    + [cb.get("/events")])
        assert [r.status_code for r in seen] == [200, 200, 200]
        assert_error(over, 429)
        assert fresh.status_code == 200, fresh.text
        assert _rate(fresh)[:2] == (3, 2)


def test_ingestion_has_its_own_bucket(limited: str, api_url: str) -> None:
    a = signup(api_url)
    with _client(limited, a.secret_key) as c:
        *seen, over, r = _burst(lambda: [c.get("/events") for _ in range(4)]
                                + [c.post("/events", json={"userId": "u", "eventName": "e"})])
        assert [x.status_code for x in seen] == [200, 200, 200]
        assert_error(over, 429)
        assert r.status_code == 202, r.text
        assert _rate(r)[0] > 3


def _redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            return True
    except OSError:
        return False


def test_redis_shares_the_limit_across_api_processes(
    database_url: str, temporal_address: str, api_url: str
) -> None:
    if not _redis_up():
        pytest.skip("no Redis on 127.0.0.1:6379")
    settings = make_settings(database_url, temporal_address, RETENSHUN_RATE_LIMIT_API="3/second",
                             RETENSHUN_REDIS_URL=REDIS_URL)
    tenant, other = signup(api_url), signup(api_url)
    with serve_api(settings) as one, serve_api(settings) as two, \
            _client(one, tenant.secret_key) as c1, _client(two, tenant.secret_key) as c2:
        r1, r2, r3, over2, over1 = _burst(lambda: [
            c1.get("/events"), c2.get("/events"), c1.get("/events"),
            c2.get("/events"), c1.get("/events"),
        ])
        assert [r.status_code for r in (r1, r2, r3)] == [200, 200, 200]
        assert [_rate(r)[1] for r in (r1, r2, r3)] == [2, 1, 0]
        assert_error(over2, 429)
        assert_error(over1, 429)
        # Another project is not affected, on either server.
        with _client(two, other.secret_key) as o:
            assert o.get("/events").status_code == 200


def test_without_redis_each_process_counts_alone(
    database_url: str, temporal_address: str, api_url: str
) -> None:
    """The counterpart of the Redis test: in memory, two processes do not share."""
    settings = make_settings(database_url, temporal_address, RETENSHUN_RATE_LIMIT_API="3/second")
    tenant = signup(api_url)
    with serve_api(settings) as one, serve_api(settings) as two, \
            _client(one, tenant.secret_key) as c1, _client(two, tenant.secret_key) as c2:
        *first, second = _burst(lambda: [c1.get("/events") for _ in range(3)]
                                + [c2.get("/events")])
        assert [r.status_code for r in first] == [200] * 3
        assert second.status_code == 200
        assert _rate(second)[1] == 2  # its own count, not the other process's


def test_rate_limit_store_down_does_not_take_the_api_down(
    database_url: str, temporal_address: str, shared: Tenant
) -> None:
    settings = make_settings(database_url, temporal_address,
                             RETENSHUN_REDIS_URL="redis://127.0.0.1:1/0")
    with serve_api(settings) as url, _client(url, shared.secret_key) as c:
        started = time.monotonic()
        r = c.get("/events")
        ingest = c.post("/events", json={"userId": "no-redis", "eventName": "e"})
        elapsed = time.monotonic() - started
    assert r.status_code == 200, r.text
    assert ingest.status_code == 202, ingest.text
    assert elapsed < 5
    _rate(r)


# --- 500 ---------------------------------------------------------------------------------------


def test_500_is_the_contract_body_without_a_traceback(
    database_url: str, temporal_address: str, shared: Tenant
) -> None:
    """A real failure: an API started with another RETENSHUN_SECRET_KEY cannot decrypt the
    project's identity secret, so GET /api-keys fails inside the handler."""
    settings: Settings = make_settings(database_url, temporal_address,
                                       RETENSHUN_SECRET_KEY="a-different-secret-key")
    with serve_api(settings) as url, _client(url) as c:
        login = c.post("/auth/login", json={"email": shared.email, "password": shared.password})
        assert login.status_code == 200, login.text
        r = c.get("/api-keys")
        body = assert_error(r, 500)
        assert body == {"error": "Internal Server Error",
                        "message": "An internal error occurred; it has been logged.",
                        "status": 500}
        assert r.headers["content-type"].startswith("application/json")
        _no_leak(r)
        assert "decrypt" not in r.text and "RETENSHUN_SECRET_KEY" not in r.text
        _rate(r)  # a 500 carries the rate-limit headers too
        # The server is still fine for everything else.
        assert c.get("/auth/me").status_code == 200


def test_error_handler_never_leaks_on_a_bare_app() -> None:
    """The generic handler itself, on a tiny app, with an exception carrying secrets."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from api.errors import install_error_handlers
    from api.middleware import RateLimitHeadersMiddleware

    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(RateLimitHeadersMiddleware)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("password=hunter2 at /srv/app/secret.py")

    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/boom")
    body = assert_error(r, 500)
    assert "hunter2" not in r.text and "RuntimeError" not in r.text
    assert body["message"] == "An internal error occurred; it has been logged."


# --- health ------------------------------------------------------------------------------------


def test_healthz_ok_with_database_and_temporal(api_url: str) -> None:
    r = httpx.get(api_url + "/api/v1/healthz", timeout=10)
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ok", "database": True, "temporal": True}


def test_healthz_503_without_temporal(database_url: str) -> None:
    settings = make_settings(database_url, "127.0.0.1:1")
    with serve_api(settings) as url:
        r = httpx.get(url + "/api/v1/healthz", timeout=15)
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["temporal"] is False
    assert body["database"] is True
    assert body["status"] != "ok"


# --- OpenAPI -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def openapi(api_url: str) -> dict[str, Any]:
    r = httpx.get(api_url + "/openapi.json", timeout=10)
    assert r.status_code == 200
    return r.json()  # type: ignore[no-any-return]


def _operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if method in {"get", "post", "put", "patch", "delete"}:
                yield method.upper(), path, op


def _schema_ref(response: dict[str, Any]) -> str | None:
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    return schema.get("$ref")


def test_openapi_documents_the_routes_this_suite_uses(openapi: dict[str, Any]) -> None:
    documented = {(m, p) for m, p, _ in _operations(openapi)}
    for route in [("POST", "/api/v1/auth/signup"), ("POST", "/api/v1/auth/login"),
                  ("POST", "/api/v1/auth/logout"), ("GET", "/api/v1/auth/me"),
                  ("POST", "/api/v1/auth/accept-invite"), ("GET", "/api/v1/api-keys"),
                  ("POST", "/api/v1/api-keys"), ("DELETE", "/api/v1/api-keys"),
                  ("GET", "/api/v1/team"), ("POST", "/api/v1/team/invites"),
                  ("POST", "/api/v1/events"), ("POST", "/api/v1/events/batch"),
                  ("GET", "/api/v1/events"), ("GET", "/api/v1/events/{event_id}"),
                  ("DELETE", "/api/v1/events/{event_id}"), ("POST", "/api/v1/identify"),
                  ("GET", "/api/v1/users"), ("GET", "/api/v1/healthz")]:
        assert route in documented, route


def test_every_api_operation_declares_its_errors(openapi: dict[str, Any]) -> None:
    schemas = openapi["components"]["schemas"]
    assert {"error", "message", "status"} <= set(schemas["ErrorBody"]["properties"])
    problems = []
    for method, path, op in _operations(openapi):
        if not path.startswith("/api/v1/"):
            continue
        responses = op["responses"]
        where = f"{method} {path}"
        if "422" in responses:
            problems.append(f"{where}: documents a 422 (validation is a 400)")
        if not op.get("summary") and not op.get("description"):
            problems.append(f"{where}: no summary")
        if not any(code.startswith("2") for code in responses):
            problems.append(f"{where}: no success response")
        errors = {c: r for c, r in responses.items() if c[0] in "45"}
        if path != "/api/v1/healthz" and not any(c.startswith("4") for c in errors):
            problems.append(f"{where}: no 4xx declared")
        for code, response in errors.items():
            if code != "503" or path != "/api/v1/healthz":
                if _schema_ref(response) != "#/components/schemas/ErrorBody":
                    problems.append(f"{where}: {code} is not the error body")
        if "requestBody" in op:
            for code in ("400", "413"):
                if code not in responses:
                    problems.append(f"{where}: takes a body but does not declare {code}")
    assert not problems, "\n".join(problems)
    assert "HTTPValidationError" not in schemas


def test_auth_routes_declare_their_auth_errors(openapi: dict[str, Any]) -> None:
    paths = openapi["paths"]
    expect = {
        ("post", "/api/v1/auth/signup"): {"400", "409", "429"},
        ("post", "/api/v1/auth/login"): {"400", "401", "429"},
        ("post", "/api/v1/auth/logout"): {"401", "403"},
        ("get", "/api/v1/auth/me"): {"401", "403"},
        ("post", "/api/v1/auth/accept-invite"): {"400", "401"},
        ("get", "/api/v1/api-keys"): {"401", "403", "429"},
        ("post", "/api/v1/api-keys"): {"400", "401", "403", "429"},
        ("delete", "/api/v1/api-keys"): {"400", "401", "403", "404", "429"},
        ("get", "/api/v1/team"): {"401", "403", "429"},
        ("post", "/api/v1/team/invites"): {"400", "401", "403", "409", "429"},
        ("post", "/api/v1/events"): {"400", "401", "403", "413", "429"},
        ("get", "/api/v1/events"): {"400", "401", "403", "429"},
        ("get", "/api/v1/events/{event_id}"): {"401", "403", "404", "429"},
        ("get", "/api/v1/users"): {"401", "403", "429"},
    }
    for (method, path), codes in expect.items():
        declared = set(paths[path][method]["responses"])
        assert codes <= declared, (method, path, codes - declared)
    # The documented success bodies are the real ones.
    created = paths["/api/v1/api-keys"]["post"]["responses"]["201"]
    assert _schema_ref(created) == "#/components/schemas/KeyCreated"
    assert "key" in openapi["components"]["schemas"]["KeyCreated"]["properties"]
    assert "key" not in openapi["components"]["schemas"]["KeyRead"]["properties"]


def test_docs_page_is_served(api_url: str) -> None:
    r = httpx.get(api_url + "/docs", timeout=10)
    assert r.status_code == 200
    assert "openapi.json" in r.text
    json.loads(httpx.get(api_url + "/openapi.json", timeout=10).text)
