"""POST /ai/generate through the whole product: HTTP -> GenerateContentWorkflow on the real
Temporal server -> the worker's activity -> the `openai` client -> a local server on
127.0.0.1 speaking the chat-completions API, which answers good, oversize and malformed
copy. Plus the cache that automations use (generate_cached)."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import psycopg
import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from activities.ai import AiActivities
from core import ai
from core.crypto import SecretBox
from core.db import make_async_engine, make_sessionmaker
from core.settings import Settings
from tests.activities.fakes import Call, FakeHttpProvider, Reply
from tests.conftest import make_settings
from tests.support import Tenant, assert_error, serve_api, signup

pytestmark = pytest.mark.usefixtures("worker")

API_KEY = "sk-test-openai-key-never-leaks-1234"
GOOD_PUSH = {"title": "Forgot something, {{ firstName }}?",
             "body": "Your cart is waiting: complete your order today!"}


class FakeOpenAI(FakeHttpProvider):
    """`POST /v1/chat/completions` with `Authorization: Bearer <key>` → a chat.completion
    whose message content is the next of `answers` (a dict is sent as its JSON text, a
    str as is); the last answer repeats. Wrong key → 401, another path → 404."""

    def __init__(self, *answers: dict[str, Any] | str, key: str = API_KEY, **kwargs: Any):
        super().__init__(**kwargs)
        self.key = key
        self.answers = list(answers) or [GOOD_PUSH]
        self._ids = itertools.count(1)
        self._answer_lock = threading.Lock()

    @property
    def base(self) -> str:
        return self.url + "/v1"

    def completions(self) -> list[dict[str, Any]]:
        return [c.json() for c in self.calls if c.path == "/v1/chat/completions"]

    def default_reply(self, call: Call) -> Reply:
        if call.method != "POST" or call.path != "/v1/chat/completions":
            return Reply(404, json={"error": {"message": "not found"}})
        if call.headers.get("authorization") != f"Bearer {self.key}":
            return Reply(401, json={"error": {"message": "Incorrect API key provided: "
                                              + call.headers.get("authorization", ""),
                                              "type": "invalid_request_error"}})
        with self._answer_lock:
            answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        content = answer if isinstance(answer, str) else json.dumps(answer)
        return Reply(200, json={
            "id": f"chatcmpl-{next(self._ids)}", "object": "chat.completion",
            "created": int(time.time()), "model": call.json().get("model", "fake"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 20, "total_tokens": 70},
        })


@pytest.fixture(scope="module")
def shared_llm() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def llm(shared_llm: FakeOpenAI) -> FakeOpenAI:
    """The module's fake server, reset: no calls, the good answer, the right key."""
    shared_llm.calls.clear()
    shared_llm.answers = [GOOD_PUSH]
    shared_llm.key = API_KEY
    shared_llm.always(None)
    return shared_llm


@pytest.fixture(scope="module")
def writer(api_url: str, shared_llm: FakeOpenAI) -> Tenant:
    """A tenant configured with the fake server, with users whose profiles give variables
    (one per module: signing up costs an argon2 hash)."""
    tenant = signup(api_url)
    r = tenant.sk.put("/channels", json={"openaiApiKey": API_KEY,
                                         "openaiBaseUrl": shared_llm.base,
                                         "openaiModel": "test-model"})
    assert r.status_code == 200, r.text
    for n, props in enumerate([{"firstName": "Ann", "plan": "pro"}, {"firstName": "Bob"},
                               {"plan": "free", "bad-key": 1}]):
        r = tenant.pk.post("/identify", json={"userId": f"u{n}", "email": f"u{n}@example.com",
                                              "properties": props})
        assert r.status_code == 200, r.text
    return tenant


def _generate(t: Tenant, **body: Any) -> httpx.Response:
    payload = {"channel": "PUSH", "context": "Remind users about their abandoned cart",
               "tone": "friendly", **body}
    return t.sk.post("/ai/generate", json=payload, timeout=120)


def test_reference_example_returns_title_and_body_within_limits(
        writer: Tenant, llm: FakeOpenAI) -> None:
    r = _generate(writer)
    assert r.status_code == 200, r.text
    assert r.json() == GOOD_PUSH
    assert len(r.json()["title"]) <= 50 and len(r.json()["body"]) <= 150
    (call,) = [c for c in llm.calls]
    assert call.headers["authorization"] == f"Bearer {API_KEY}"
    sent = call.json()
    assert sent["model"] == "test-model"
    assert sent["response_format"] == {"type": "json_object"}
    system, user = sent["messages"]
    assert system["role"] == "system" and user["role"] == "user"
    assert "push notification" in system["content"]
    assert "Acme" in system["content"]  # the project's name
    assert '{"title": "...", "body": "..."}' in system["content"]
    assert "title at most 50 characters, body at most 150 characters" in system["content"]
    for variable in ("{{ firstName }}", "{{ plan }}", "{{ user.email }}", "{{ company }}",
                     "{{ event.name }}"):
        assert variable in system["content"], variable
    assert "bad-key" not in system["content"]  # not a usable variable name
    assert "abandoned cart" in user["content"] and "friendly" in user["content"]


def test_oversize_answer_is_retried_once_with_the_reason(
        writer: Tenant, llm: FakeOpenAI) -> None:
    long_title = {"title": "Hey there! " * 6, "body": "Your cart misses you."}
    llm.answers = [long_title, GOOD_PUSH]
    r = _generate(writer)
    assert r.status_code == 200, r.text
    assert r.json() == GOOD_PUSH
    first, second = llm.completions()
    assert len(second["messages"]) == len(first["messages"]) + 2
    assert second["messages"][-2] == {"role": "assistant", "content": json.dumps(long_title)}
    reason = second["messages"][-1]["content"]
    assert second["messages"][-1]["role"] == "user"
    assert f"title is {len(long_title['title'].strip())} characters long; the limit is 50" \
        in reason


def test_oversize_twice_is_a_502(writer: Tenant, llm: FakeOpenAI) -> None:
    llm.answers = [{"title": "t", "body": "x" * 151}]
    body = assert_error(_generate(writer), 502)
    assert "did not fit" in body["message"] and "the limit is 150" in body["message"]
    assert len(llm.completions()) == 2


def test_malformed_twice_is_a_502(writer: Tenant, llm: FakeOpenAI) -> None:
    llm.answers = ['{"title": "Hi", "body": ', "Sure! Here is your notification: Hi"]
    body = assert_error(_generate(writer), 502)
    assert "not valid JSON" in body["message"]
    assert len(llm.completions()) == 2


def test_missing_key_then_good(writer: Tenant, llm: FakeOpenAI) -> None:
    llm.answers = [{"headline": "Hi", "body": "b"}, GOOD_PUSH]
    r = _generate(writer)
    assert r.status_code == 200, r.text
    assert "has no 'title'" in llm.completions()[1]["messages"][-1]["content"]


def test_template_variables_are_checked(writer: Tenant, llm: FakeOpenAI) -> None:
    llm.answers = [{"title": "Use {{ couponCode }} today", "body": "b"},
                   {"title": "Hi {{ firstName", "body": "b"}]
    body = assert_error(_generate(writer), 502)
    _, second = llm.completions()
    assert "{{ couponCode }}, which is not in the list of variables" in \
        second["messages"][-1]["content"]
    assert "does not compile" in body["message"]
    llm.answers = [{"title": "Hi {{ user.plan }}", "body": "b"},
                   {"title": "Hi {{ plan }}", "body": "On {{ company }} since {{ user.email }}"}]
    r = _generate(writer)
    assert r.status_code == 200, r.text
    assert r.json()["body"] == "On {{ company }} since {{ user.email }}"
    assert "user has only id, email and properties" in llm.completions()[3]["messages"][-1][
        "content"]


def test_each_channel_has_its_shape(writer: Tenant, llm: FakeOpenAI) -> None:
    llm.answers = [{"body": "Your cart is waiting. Reply STOP to opt out.", "title": "extra"}]
    r = _generate(writer, channel="SMS")
    assert r.status_code == 200 and r.json() == {"body": llm.answers[0]["body"]}
    assert "SMS" in llm.completions()[-1]["messages"][0]["content"]
    llm.answers = [{"title": "Welcome back", "body": "New this week: dark mode."}]
    r = _generate(writer, channel="IN_APP", tone=None)
    assert r.status_code == 200 and r.json() == llm.answers[0]
    assert "Tone: clear and friendly" in llm.completions()[-1]["messages"][1]["content"]
    email = {"subject": "Your cart misses you", "body": "<p>Hi {{ firstName }}, come back!</p>"}
    llm.answers = [email]
    r = _generate(writer, channel="EMAIL")
    assert r.status_code == 200 and r.json() == email


def test_save_as_template_stores_an_ai_template(writer: Tenant, llm: FakeOpenAI,
                                                db: psycopg.Connection[Any]) -> None:
    r = _generate(writer, saveAsTemplate=True, name="Cart reminder")
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) == {"title", "body", "templateId"} and out["templateId"].startswith("tpl_")
    row = db.execute("SELECT name, channel, subject, body, ai FROM templates WHERE id = %s "
                     "AND project_id = %s", (out["templateId"], writer.project_id)).fetchone()
    assert row == ("Cart reminder", "PUSH", GOOD_PUSH["title"], GOOD_PUSH["body"], True)
    listed = writer.sk.get("/templates", params={"ai": "true"})
    if listed.status_code == 200:  # /templates is another issue's; the row is what counts
        assert [t["id"] for t in listed.json()["templates"]] == [out["templateId"]]
    # The saved template renders per user.
    preview = writer.sk.post(f"/templates/{out['templateId']}/preview", json={"userId": "u0"})
    if preview.status_code == 200:
        assert preview.json()["subject"] == "Forgot something, Ann?"
    email = {"subject": "Come back", "body": "<p>Hi</p>"}
    llm.answers = [email]
    r = _generate(writer, channel="EMAIL", saveAsTemplate=True)
    assert r.status_code == 200, r.text
    name, subject = db.execute("SELECT name, subject FROM templates WHERE id = %s",
                               (r.json()["templateId"],)).fetchone() or (None, None)
    assert name == "AI EMAIL: Remind users about their abandoned cart" and subject == "Come back"


def test_unconfigured_is_a_503_that_says_how(tenant: Tenant, settings: Settings) -> None:
    if settings.openai_api_key:
        pytest.skip("OPENAI_API_KEY is set in this environment")
    body = assert_error(_generate(tenant), 503)
    for hint in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "/api/v1/channels", "openaiApiKey"):
        assert hint in body["message"], hint
    r = tenant.sk.put("/channels", json={"openaiBaseUrl": "http://127.0.0.1:9/v1"})
    assert r.status_code == 200
    assert "openaiApiKey" in assert_error(_generate(tenant), 503)["message"]


def test_transient_failures_are_retried_by_temporal(writer: Tenant, llm: FakeOpenAI) -> None:
    llm.reply_next(Reply(500, json={"error": {"message": "overloaded"}}))
    r = _generate(writer)
    assert r.status_code == 200, r.text
    assert [c.reply_status for c in llm.calls] == [500, 200]  # max_retries=0: Temporal's retry


def test_refused_key_is_a_502_without_the_key(writer: Tenant, llm: FakeOpenAI) -> None:
    llm.key = "another-key"
    body = assert_error(_generate(writer), 502)
    assert "401" in body["message"]
    assert API_KEY not in json.dumps(body)
    assert len(llm.calls) == 1  # a refusal is not retried


async def test_secrets_stay_out_of_the_workflow_history(
        writer: Tenant, llm: FakeOpenAI, settings: Settings) -> None:
    r = _generate(writer)
    assert r.status_code == 200
    client = await Client.connect(settings.temporal_address)
    found = 0
    async for wf in client.list_workflows("WorkflowType = 'GenerateContentWorkflow'"):
        if wf.id.startswith(f"ai-generate:{writer.project_id}:"):
            history = (await client.get_workflow_handle(wf.id).fetch_history()).to_json()
            text = history + "".join(_payloads(json.loads(history)))
            assert "abandoned cart" in text  # the payloads were decoded
            assert API_KEY not in text and "openaiApiKey" not in text
            found += 1
    assert found >= 1


def _payloads(node: Any) -> Iterator[str]:
    """Every payload of a history (JSON-encoded, base64 in to_json), decoded."""
    if isinstance(node, dict):
        if "data" in node and "metadata" in node:
            yield base64.b64decode(node["data"]).decode(errors="replace")
        for value in node.values():
            yield from _payloads(value)
    elif isinstance(node, list):
        for value in node:
            yield from _payloads(value)


def test_validation(writer: Tenant) -> None:
    assert_error(writer.pk.post("/ai/generate", json={"channel": "PUSH", "context": "x"}), 403)
    for body, field in [({"channel": "FAX", "context": "x"}, "channel"),
                        ({"channel": "PUSH"}, "context"),
                        ({"channel": "PUSH", "context": "x", "temperature": 1}, "temperature"),
                        ({"channel": "PUSH", "context": "x", "tone": ""}, "tone")]:
        details = assert_error(writer.sk.post("/ai/generate", json=body), 400)["details"]
        assert [d["field"] for d in details] == [field]
    assert_error(writer.sk.post("/ai/generate", json={"channel": "PUSH", "context": "  "}), 400)
    assert_error(writer.sk.post("/ai/generate", json={"channel": "PUSH", "context": "x",
                                                      "name": "n"}), 400)


# --- configured by the environment: a second API and worker with OPENAI_* settings ---


@pytest.fixture
def env_configured(database_url: str, temporal_address: str,
                   llm: FakeOpenAI) -> Iterator[str]:
    queue = f"ai-env-{uuid.uuid4().hex[:8]}"
    settings = make_settings(database_url, temporal_address, TEMPORAL_TASK_QUEUE=queue,
                             OPENAI_API_KEY=API_KEY, OPENAI_BASE_URL=llm.base,
                             OPENAI_MODEL="env-model")
    stop = threading.Event()

    def run() -> None:
        async def main() -> None:
            from worker import WORKFLOWS, WorkerDeps, build_activities

            engine = make_async_engine(settings.database_url, 2)
            client = await Client.connect(temporal_address)
            async with httpx.AsyncClient() as http:
                deps = WorkerDeps(settings=settings, engine=engine,
                                  sessions=make_sessionmaker(engine),
                                  secrets=SecretBox(settings.secret_key), http=http)
                async with Worker(client, task_queue=queue, workflows=WORKFLOWS,
                                  activities=build_activities(deps)):
                    while not stop.is_set():
                        await asyncio.sleep(0.05)
            await engine.dispose()

        asyncio.run(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        with serve_api(settings) as url:
            yield url
    finally:
        stop.set()
        thread.join(15)


def test_environment_configuration(env_configured: str, llm: FakeOpenAI) -> None:
    t = signup(env_configured)
    t.pk.post("/identify", json={"userId": "u1", "properties": {"firstName": "Ann"}})
    r = _generate(t)
    assert r.status_code == 200, r.text
    assert r.json() == GOOD_PUSH
    (call,) = llm.calls
    assert call.headers["authorization"] == f"Bearer {API_KEY}"
    assert call.json()["model"] == "env-model"
    # A project's own settings win over the environment, and are never mixed with it.
    with FakeOpenAI(key="project-key") as own:
        t.sk.put("/channels", json={"openaiApiKey": "project-key", "openaiBaseUrl": own.base})
        assert _generate(t).status_code == 200
        assert len(own.calls) == 1 and len(llm.calls) == 1
        assert own.calls[0].json()["model"] == "env-model"  # only the model falls back


# --- the cache automations use ---


@pytest.fixture
async def activities(settings: Settings) -> AsyncIterator[AiActivities]:
    engine = make_async_engine(settings.database_url, 10)
    yield AiActivities(make_sessionmaker(engine), SecretBox(settings.secret_key), settings)
    await engine.dispose()


async def test_generate_cached_generates_once(writer: Tenant, llm: FakeOpenAI,
                                              activities: AiActivities,
                                              db: psycopg.Connection[Any]) -> None:
    key = "automation:auto_1:v1:steps[0]"
    results = await asyncio.gather(*(
        activities.generate_cached(writer.project_id, key, "PUSH", "Abandoned cart", "playful")
        for _ in range(5)))
    assert all(r == GOOD_PUSH for r in results)
    assert len(llm.completions()) == 1
    assert await activities.generate_cached(writer.project_id, key, "PUSH", "ignored",
                                            None) == GOOD_PUSH
    assert len(llm.completions()) == 1
    rows = db.execute("SELECT channel, content FROM ai_generations WHERE project_id = %s",
                      (writer.project_id,)).fetchall()
    assert rows == [("PUSH", GOOD_PUSH)]
    # Another version of the automation is another key: generated again.
    await activities.generate_cached(writer.project_id, "automation:auto_1:v2:steps[0]",
                                     "PUSH", "Abandoned cart", None)
    assert len(llm.completions()) == 2


async def test_generate_cached_errors(tenant: Tenant, activities: AiActivities,
                                      settings: Settings) -> None:
    if settings.openai_api_key:
        pytest.skip("OPENAI_API_KEY is set in this environment")
    with pytest.raises(ai.AiNotConfigured):
        await activities.generate_cached(tenant.project_id, "k", "SMS", "x", None)
    with FakeOpenAI({"body": "y" * 200}) as llm:
        tenant.sk.put("/channels", json={"openaiApiKey": API_KEY, "openaiBaseUrl": llm.base})
        with pytest.raises(ai.AiAnswerRejected) as err:
            await activities.generate_cached(tenant.project_id, "k", "SMS", "x", None)
        assert err.value.status == 502 and "the limit is 160" in err.value.message


# --- the pure parts (core/ai.py) ---


@pytest.mark.parametrize(("answer", "reason"), [
    ("", "the answer was empty"),
    ("[]", "must be a JSON object"),
    ('{"title": "a"}', "has no 'body'"),
    ('{"title": 5, "body": "b"}', "'title' must be a non-empty string"),
    ('{"title": "  ", "body": "b"}', "'title' must be a non-empty string"),
    ('{"title": "a", "body": "' + "b" * 151 + '"}', "body is 151 characters long"),
    ('{"title": "{{ x.__class__ }}", "body": "b"}', "does not compile"),
    ('{"title": "{% for %}", "body": "b"}', "does not compile"),
    ('{"title": "{{ secret }}", "body": "b"}', "{{ secret }}, which is not in the list"),
])
def test_parse_answer_rejections(answer: str, reason: str) -> None:
    with pytest.raises(ai.AnswerInvalid) as err:
        ai.parse_answer("PUSH", answer, ai.template_variables(["plan"]))
    assert reason in err.value.reason


def test_parse_answer_accepts_fences_and_drops_extra_keys() -> None:
    variables = ai.template_variables(["plan"])
    fenced = '```json\n{"body": "Hi {{ plan | upper }} {{ event.properties.cartId }}", "x": 1}\n```'
    assert ai.parse_answer("SMS", fenced, variables) == {
        "body": "Hi {{ plan | upper }} {{ event.properties.cartId }}"}
    email = json.dumps({"subject": " Welcome ", "body": "<p>{{ user.email }}</p>"})
    assert ai.parse_answer("EMAIL", email, variables) == {
        "subject": "Welcome", "body": "<p>{{ user.email }}</p>"}


def test_resolve_config_never_mixes_project_and_environment() -> None:
    env = {"env_api_key": "env-key", "env_base_url": "http://env/v1", "env_model": "m"}
    mine = ai.resolve_config({"openaiApiKey": "k"}, **env)
    assert (mine.api_key, mine.base_url, mine.model) == ("k", ai.DEFAULT_BASE_URL, "m")
    server = ai.resolve_config({"openaiModel": "mine"}, **env)
    assert (server.api_key, server.base_url, server.model) == ("env-key", "http://env/v1",
                                                                "mine")
    with pytest.raises(ai.AiNotConfigured):
        ai.resolve_config({"openaiBaseUrl": "http://mine/v1"}, **env)
    with pytest.raises(ai.AiNotConfigured):
        ai.resolve_config({}, env_api_key=None, env_base_url="http://env/v1", env_model="m")
    assert "env-key" not in repr(server)


def test_template_variables() -> None:
    keys = ["plan", "first-name", "user", "webPushSubscriptions", "_x", "plan", "ok_2"]
    assert ai.template_variables(keys) == ["plan", "ok_2", "user.id", "user.email", "company",
                                           "event.name", "event.properties.*"]
    assert len(ai.template_variables(f"p{i}" for i in range(100))) == 30 + 5
