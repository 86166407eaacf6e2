"""Email through Postalynk's HTTP API (the contract's "Channels" section).

`POST {base}/v1/messages` with `Authorization: Bearer <key>` and
`{"from", "to", "subject", "html", "headers", "metadata": {"messageId"}}`; the answer's
`id` is the provider's message id. A 4xx is permanent; 408/429/5xx and network failures
are transient. The shared httpx client is passed in; nothing here retries."""

from __future__ import annotations

from typing import Any

import httpx

from activities.providers.base import (
    OutboundMessage,
    PermanentSendError,
    ProviderResult,
    TransientSendError,
    classify_http_status,
)
from core.services.channels import ResolvedChannels

DEFAULT_TIMEOUT = httpx.Timeout(15.0, connect=5.0)


def unsubscribe_headers(message: OutboundMessage) -> dict[str, str]:
    """RFC 8058 one-click unsubscribe headers, for non-transactional mail only."""
    if message.transactional or not message.unsubscribe_url:
        return {}
    return {
        "List-Unsubscribe": f"<{' '.join(message.unsubscribe_url.split())}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }


def json_field(response: httpx.Response, name: str) -> str | None:
    """`name` from a JSON object answer, or None when the answer is not one."""
    try:
        data: Any = response.json()
    except ValueError:
        return None
    value = data.get(name) if isinstance(data, dict) else None
    return str(value) if value not in (None, "") else None


async def post(http: httpx.AsyncClient, provider: str, url: str, *,
               timeout: httpx.Timeout | float = DEFAULT_TIMEOUT, **kwargs: Any) -> httpx.Response:
    """One POST, its outcome classified: PermanentSendError / TransientSendError or the
    2xx response. Error texts carry the status and the provider's answer, never the
    request's credentials."""
    try:
        response = await http.post(url, timeout=timeout, **kwargs)
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        raise PermanentSendError(f"{provider}: invalid URL: {exc}") from exc
    except httpx.TransportError as exc:
        raise TransientSendError(
            f"{provider} unreachable: {type(exc).__name__}: {exc}"
        ) from exc
    error = classify_http_status(response.status_code, response.text, provider)
    if error is not None:
        raise error
    return response


class PostalynkProvider:
    name = "POSTALYNK"

    def __init__(self, *, http: httpx.AsyncClient, api_key: str, from_email: str,
                 base_url: str = "https://api.postalynk.com",
                 timeout: httpx.Timeout | float = DEFAULT_TIMEOUT):
        self._http = http
        self.timeout = timeout
        self._api_key = api_key
        self.from_email = from_email
        self.base_url = base_url.rstrip("/")

    @classmethod
    def from_channels(cls, channels: ResolvedChannels, *,
                      http: httpx.AsyncClient) -> PostalynkProvider:
        return cls(
            http=http,
            api_key=str(channels.get("postalynkApiKey")),
            from_email=str(channels.get("postalynkFromEmail")),
            base_url=str(channels.get("postalynkBaseUrl")),
        )

    async def send(self, message: OutboundMessage) -> ProviderResult:
        if not message.to:
            raise PermanentSendError("the user has no email address")
        payload = {
            "from": self.from_email,
            "to": message.to,
            "subject": " ".join((message.subject or "").split()),
            "html": message.body,
            "headers": unsubscribe_headers(message),
            "metadata": {"messageId": message.message_id},
        }
        response = await post(
            self._http, "Postalynk", f"{self.base_url}/v1/messages",
            timeout=self.timeout,
            json=payload,
            headers={
                "Authorization": f"Bearer {self._api_key}",
                # Harmless where unsupported; lets Postalynk drop a retried duplicate.
                "Idempotency-Key": message.message_id,
            },
        )
        return ProviderResult(provider=self.name,
                              provider_message_id=json_field(response, "id"))
