"""Local stand-ins for the delivery providers, real servers on 127.0.0.1 (no patching),
for provider, workflow and benchmark tests. Each runs in background threads and is a
context manager:

    with SmtpSink() as sink:                 # aiosmtpd; sink.host, sink.port
        ...; sink.messages[0].message["Subject"]
        sink.refuse("bad@example.com")       # RCPT answered "550 ..." (or any reply)
        sink.fail_data("451 4.3.0 try later")  # every DATA answered so, until None

    with FakePostalynk(api_key="k") as pl:   # POST /v1/messages → 200 {"id": "pl_1"}
    with FakeTwilio(account_sid="AC1", auth_token="t") as tw:  # → 201 {"sid": "SM…"}
    with FakePushWebhook(secret="whsec") as hook:  # verifies X-Signature → 200 {"id"}
    with FakePushService() as push:          # Web Push endpoints: push.endpoint("a")
        push.gone("b")                       # that endpoint answers 410 from now on
        push.answer("c", 503)                # or any status (None: back to 201)

    srv.url / srv.base_url; srv.calls (list[Call]: method, path, query, headers (lower-
    case names), body, .json(), .form(), .basic_auth(), plus `signature_valid` on
    FakePushWebhook); srv.reply_next(Reply(429), Reply(503)) answers the next requests in
    order, then the normal answer; srv.always(Reply(500)) answers every request so until
    srv.always(None); Reply(delay=…) answers late (timeouts). `await srv.wait_for(n)` /
    `sink.wait_for(n)` wait until n calls or messages arrived (`*_blocking` variants for
    sync code). FakeHttpProvider(responses=[...], handler=fn) is the generic base.
"""

from __future__ import annotations

import asyncio
import base64
import email
import itertools
import json
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import default as default_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from core.crypto import constant_time_equal, hmac_sha256_hex
from core.devstack import free_port


def _poll_blocking(ready: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.01)


async def _poll(ready: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


# --------------------------------------------------------------------------------- SMTP


@dataclass(frozen=True)
class CaughtMail:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes  # the raw RFC 5322 message as received

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.data, policy=default_policy)
        assert isinstance(parsed, EmailMessage)
        return parsed

    def part(self, content_type: str) -> str:
        """The decoded body of the first part of that type (e.g. "text/html"), "\\n" line ends."""
        for part in self.message.walk():
            if part.get_content_type() == content_type and not part.is_multipart():
                assert isinstance(part, EmailMessage)
                return str(part.get_content()).replace("\r\n", "\n")
        raise KeyError(content_type)


class _SinkHandler:
    def __init__(self, sink: SmtpSink):
        self.sink = sink

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        reply = self.sink._refused.get(address.lower())
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.sink._data_reply:
            return self.sink._data_reply
        data = envelope.original_content or envelope.content or b""
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        with self.sink._lock:
            self.sink.messages.append(
                CaughtMail(envelope.mail_from or "", list(envelope.rcpt_tos), data)
            )
        return "250 Message accepted for delivery"


class _QuietController(Controller):
    def factory(self) -> SMTP:
        with warnings.catch_warnings():  # AUTH without TLS is what a test sink wants
            warnings.simplefilter("ignore", UserWarning)
            return super().factory()


class SmtpSink:
    """An aiosmtpd server keeping every accepted message in `messages`. With
    `auth=(user, password)` it requires that login (AUTH PLAIN/LOGIN without TLS)."""

    def __init__(self, *, host: str = "127.0.0.1", port: int | None = None,
                 auth: tuple[str, str] | None = None):
        self.host = host
        self.port = port or free_port()
        self.messages: list[CaughtMail] = []
        self.logins: list[str] = []
        self._auth = auth
        self._refused: dict[str, str] = {}
        self._data_reply: str | None = None
        self._lock = threading.Lock()
        self._controller: _QuietController | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def refuse(self, address: str, reply: str = "550 5.1.1 No such user here") -> None:
        """Answer RCPT TO:<address> with `reply` (a 4xx defers, a 5xx refuses)."""
        self._refused[address.lower()] = reply

    def fail_data(self, reply: str | None) -> None:
        """Answer every DATA with `reply` (e.g. "451 4.3.0 Try again later"); None undoes."""
        self._data_reply = reply

    def _authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str,
                      auth_data: Any) -> AuthResult:
        assert self._auth is not None
        if isinstance(auth_data, LoginPassword):
            user, password = auth_data.login.decode(), auth_data.password.decode()
            if (user, password) == self._auth:
                self.logins.append(user)
                return AuthResult(success=True)
        return AuthResult(success=False, handled=False)

    def start(self) -> Self:
        kwargs: dict[str, Any] = {"enable_SMTPUTF8": True}
        if self._auth is not None:
            kwargs.update(authenticator=self._authenticate, auth_required=True,
                          auth_require_tls=False)
        self._controller = _QuietController(_SinkHandler(self), hostname=self.host, port=self.port,
                                      **kwargs)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    async def wait_for(self, count: int = 1, timeout: float = 10.0) -> list[CaughtMail]:
        await _poll(lambda: len(self.messages) >= count, timeout, f"{count} mail(s)")
        return list(self.messages)

    def wait_for_blocking(self, count: int = 1, timeout: float = 10.0) -> list[CaughtMail]:
        _poll_blocking(lambda: len(self.messages) >= count, timeout, f"{count} mail(s)")
        return list(self.messages)


# --------------------------------------------------------------------------------- HTTP


@dataclass
class Reply:
    """One scripted HTTP answer: `json` (serialized) or `body`, after `delay` seconds."""

    status: int = 200
    json: Any = None
    body: bytes | str = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0

    def encoded(self) -> tuple[bytes, dict[str, str]]:
        headers = dict(self.headers)
        if self.json is not None:
            headers.setdefault("Content-Type", "application/json")
            return json.dumps(self.json).encode(), headers
        body = self.body.encode() if isinstance(self.body, str) else self.body
        return body, headers


@dataclass
class Call:
    """One request as received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes
    reply_status: int = 0
    signature_valid: bool | None = None  # FakePushWebhook only

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        """A form-encoded body, one value per field."""
        return {k: v[0] for k, v in parse_qs(self.body.decode(), keep_blank_values=True).items()}

    def basic_auth(self) -> tuple[str, str] | None:
        value = self.headers.get("authorization", "")
        if not value.lower().startswith("basic "):
            return None
        user, _, password = base64.b64decode(value[6:]).decode().partition(":")
        return user, password


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, so clients can reuse connections
    timeout = 30

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        call = Call(method=self.command, path=parts.path, query=parse_qs(parts.query),
                    headers={k.lower(): v for k, v in self.headers.items()}, body=body)
        reply = self.server.owner._reply(call)
        call.reply_status = reply.status
        self.server.owner._record(call)
        if reply.delay:
            time.sleep(reply.delay)
        payload, headers = reply.encoded()
        try:
            self.send_response(reply.status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout)
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: FakeHttpProvider


class FakeHttpProvider:
    """A small HTTP server recording every request. The answer to a request is, in order:
    the next scripted reply (`responses=` / reply_next), the `always` reply if set, then
    `handler(call)` if given, else `default_reply(call)` (subclasses speak a provider's
    API there; the base answers 200 {})."""

    def __init__(self, *, responses: Iterable[Reply] = (),
                 handler: Callable[[Call], Reply] | None = None, host: str = "127.0.0.1"):
        self.host = host
        self.calls: list[Call] = []
        self._queue: list[Reply] = list(responses)
        self._always: Reply | None = None
        self._handler = handler
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    base_url = url

    def reply_next(self, *replies: Reply) -> None:
        with self._lock:
            self._queue.extend(replies)

    def always(self, reply: Reply | None) -> None:
        self._always = reply

    def default_reply(self, call: Call) -> Reply:
        return Reply(200, json={})

    def _reply(self, call: Call) -> Reply:
        with self._lock:
            scripted = self._queue.pop(0) if self._queue else None
        if scripted is not None:
            return scripted
        if self._always is not None:
            return self._always
        if self._handler is not None:
            return self._handler(call)
        return self.default_reply(call)

    def _record(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)

    def start(self) -> Self:
        self._server = _Server((self.host, 0), _Handler)
        self._server.owner = self
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    async def wait_for(self, count: int = 1, timeout: float = 10.0) -> list[Call]:
        await _poll(lambda: len(self.calls) >= count, timeout, f"{count} request(s)")
        return list(self.calls)

    def wait_for_blocking(self, count: int = 1, timeout: float = 10.0) -> list[Call]:
        _poll_blocking(lambda: len(self.calls) >= count, timeout, f"{count} request(s)")
        return list(self.calls)


class FakePostalynk(FakeHttpProvider):
    """`POST /v1/messages` with `Authorization: Bearer <api_key>` (any key when None) →
    200 {"id": "pl_<n>"}; a wrong key → 401; another path → 404."""

    def __init__(self, *, api_key: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.api_key = api_key
        self._ids = itertools.count(1)

    def default_reply(self, call: Call) -> Reply:
        if call.method != "POST" or call.path != "/v1/messages":
            return Reply(404, json={"error": "not found"})
        auth = call.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or (
                self.api_key is not None and auth != f"Bearer {self.api_key}"):
            return Reply(401, json={"error": "invalid api key"})
        return Reply(200, json={"id": f"pl_{next(self._ids)}"})


class FakeTwilio(FakeHttpProvider):
    """`POST /2010-04-01/Accounts/{sid}/Messages.json`, basic auth (sid, token) → 201
    {"sid": "SM…", "status": "queued"}; bad credentials → 401; no To/Body → 400."""

    def __init__(self, *, account_sid: str | None = None, auth_token: str | None = None,
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.account_sid = account_sid
        self.auth_token = auth_token
        self._ids = itertools.count(1)

    def default_reply(self, call: Call) -> Reply:
        parts = call.path.split("/")
        # ['', '2010-04-01', 'Accounts', sid, 'Messages.json']
        if (call.method != "POST" or len(parts) != 5 or parts[1:3] != ["2010-04-01", "Accounts"]
                or parts[4] != "Messages.json"):
            return Reply(404, json={"code": 20404, "message": "not found", "status": 404})
        auth = call.basic_auth()
        if auth is None or auth[0] != parts[3] or (
                self.account_sid is not None and auth != (self.account_sid, self.auth_token)):
            return Reply(401, json={"code": 20003, "message": "Authenticate", "status": 401})
        form = call.form()
        if not form.get("To") or not form.get("Body"):
            return Reply(400, json={"code": 21604, "message": "A 'To' phone number and a "
                                    "Body are required.", "status": 400})
        return Reply(201, json={"sid": f"SM{next(self._ids):032x}", "status": "queued",
                                "to": form["To"], "from": form.get("From")})


class FakePushWebhook(FakeHttpProvider):
    """A `pushWebhookUrl` receiver. With `secret`, it checks X-Signature (`sha256=` hex
    HMAC-SHA256 of "{X-Timestamp}.{body}") into `call.signature_valid` and answers 401 on
    a mismatch; otherwise 200 {"id": "wh_<n>"}."""

    def __init__(self, *, secret: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.secret = secret
        self._ids = itertools.count(1)

    def verify(self, call: Call) -> bool:
        if self.secret is None:
            return False
        timestamp = call.headers.get("x-timestamp", "")
        given = call.headers.get("x-signature", "").removeprefix("sha256=")
        expected = hmac_sha256_hex(self.secret, f"{timestamp}.".encode() + call.body)
        return bool(timestamp) and constant_time_equal(given, expected)

    def _reply(self, call: Call) -> Reply:
        if self.secret is not None:
            call.signature_valid = self.verify(call)
        return super()._reply(call)

    def default_reply(self, call: Call) -> Reply:
        if self.secret is not None and not call.signature_valid:
            return Reply(401, json={"error": "bad signature"})
        return Reply(200, json={"id": f"wh_{next(self._ids)}"})


class FakePushService(FakeHttpProvider):
    """Web Push endpoints at `endpoint(name)` (`/push/<name>`): a POST answers 201 with a
    Location, 410 once `gone(name)` was called, or the status set by `answer(name, …)`.
    The encrypted body and the headers (Authorization: vapid …, Content-Encoding:
    aes128gcm, TTL) are kept in `calls`; calls_to(name) filters them."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._status: dict[str, int] = {}
        self._ids = itertools.count(1)

    def endpoint(self, name: str) -> str:
        return f"{self.url}/push/{name}"

    def gone(self, name: str) -> None:
        """The subscription expired: its endpoint answers 410 from now on."""
        self.answer(name, 410)

    def answer(self, name: str, status: int | None) -> None:
        """That endpoint answers `status` (None: back to 201)."""
        if status is None:
            self._status.pop(name, None)
        else:
            self._status[name] = status

    def calls_to(self, name: str) -> list[Call]:
        return [c for c in self.calls if c.path == f"/push/{name}"]

    def default_reply(self, call: Call) -> Reply:
        name = call.path.removeprefix("/push/")
        if call.method != "POST" or not call.path.startswith("/push/"):
            return Reply(404)
        status = self._status.get(name)
        if status == 410:
            return Reply(410, body="push subscription has unsubscribed or expired.")
        if status is not None:
            return Reply(status, body=f"endpoint answered {status}")
        return Reply(201, headers={"Location": f"{self.url}/m/{next(self._ids)}"})
