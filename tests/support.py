"""Test plumbing: a real API served over HTTP by uvicorn, and a dashboard client."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn

from api.app import create_app
from core.devstack import free_port
from core.settings import Settings


@contextmanager
def serve_api(settings: Settings, port: int | None = None) -> Iterator[str]:
    """Run create_app(settings) in uvicorn on a free port in a thread; yields the base URL."""
    port = port or free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test API server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


@dataclass
class Tenant:
    """A freshly signed-up account with its project, session and a key of each kind."""

    base: str
    dashboard: httpx.Client  # carries the session cookie and X-CSRF-Token
    csrf: str
    email: str
    password: str
    project_id: str
    secret_key: str
    public_key: str

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"x-api-key": key} if key else {}
        return httpx.Client(base_url=self.base + "/api/v1", headers=headers, timeout=30)

    @property
    def sk(self) -> httpx.Client:
        return self.client(self.secret_key)

    @property
    def pk(self) -> httpx.Client:
        return self.client(self.public_key)


def signup(base: str, **overrides: Any) -> Tenant:
    email = overrides.pop("email", f"owner-{uuid.uuid4().hex[:10]}@example.com")
    password = overrides.pop("password", "correct horse battery")
    dash = httpx.Client(base_url=base + "/api/v1", timeout=30)
    r = dash.post("/auth/signup", json={"email": email, "password": password,
                                        "projectName": overrides.pop("project", "Acme")})
    assert r.status_code == 201, r.text
    body = r.json()
    csrf = body["csrfToken"]
    dash.headers["X-CSRF-Token"] = csrf
    keys = {}
    for kind in ("secret", "public"):
        k = dash.post("/api-keys", json={"name": f"{kind} key", "type": kind})
        assert k.status_code == 201, k.text
        keys[kind] = k.json()["key"]
    return Tenant(base, dash, csrf, email, password, body["project"]["id"],
                  keys["secret"], keys["public"])


def assert_error(response: httpx.Response, status: int) -> dict[str, Any]:
    """The contract's error body: {error, message, status} with the right status."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert body["status"] == status
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["message"], str) and body["message"]
    return body
