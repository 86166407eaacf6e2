"""Pure ASGI middleware (BaseHTTPMiddleware would cost ~20% on the ingestion path)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import RetenshunError

MAX_BODY_BYTES = 1024 * 1024


class BodyTooLarge(RetenshunError):
    status = 413


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
    """Copies the rate-limit state that the auth dependency left in scope["state"] to headers."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
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

        await self.app(scope, receive, send_with_headers)
