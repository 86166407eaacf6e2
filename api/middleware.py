"""Pure ASGI middleware (BaseHTTPMiddleware would cost ~20% on the ingestion path)."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY_BYTES = 1024 * 1024
log = logging.getLogger("retenshun.api")


class BodyTooLarge(HTTPException):
    """An HTTPException on purpose: FastAPI re-raises those from its body reader (any other
    exception there becomes a 400 "error parsing the body"), and the handler makes the 413."""

    def __init__(self, message: str):
        super().__init__(status_code=413, detail=message)


class BodyLimitMiddleware:
    """413 for a body over 1 MiB, by Content-Length or by counting a chunked stream."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._reject(send)
                return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self._message())
            return message

        await self.app(scope, counting_receive, send)

    def _message(self) -> str:
        return f"Request body is larger than {self.max_bytes} bytes"

    async def _reject(self, send: Send) -> None:
        from api.errors import error_response

        response = error_response(413, self._message())
        await send(
            {"type": "http.response.start", "status": 413, "headers": response.raw_headers}
        )
        await send({"type": "http.response.body", "body": response.body})


class RateLimitHeadersMiddleware:
    """Copies the rate-limit state that the auth dependency left in scope["state"] to headers.

    It also answers an unhandled exception itself (the contract's 500 body) and logs it.
    Starlette's own 500 is made outside every middleware, so it would lose these headers,
    and it re-raises to the server, which then drops the keep-alive connection without
    saying so: a client's next request on it fails with a connection reset.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                state = scope.get("state", {}).get("ratelimit")
                if state is not None:
                    headers = list(message.get("headers", []))
                    headers += [
                        (b"ratelimit-limit", str(state.limit).encode()),
                        (b"ratelimit-remaining", str(state.remaining).encode()),
                        (b"ratelimit-reset", str(state.reset_seconds).encode()),
                    ]
                    message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            if started:
                raise
            from api.errors import internal_error_response

            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            await internal_error_response()(scope, receive, send_with_headers)
