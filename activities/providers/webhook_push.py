"""Push through the project's own webhook (`pushProvider` WEBHOOK): the message is POSTed
as JSON to `pushWebhookUrl`, signed the way our inbound webhooks are verified:

    X-Timestamp: <unix seconds>
    X-Signature: sha256=<hex HMAC-SHA256 of "{timestamp}.{raw body}" with the project's
                 webhook secret>
    X-Webhook-Id: <our message id>   (lets the receiver drop a retried duplicate)

The answer's JSON `id`, if any, is the provider id. A 4xx is permanent; 408/429/5xx and
network failures are transient. No retries here."""

from __future__ import annotations

import time

import httpx
import orjson

from activities.providers.base import OutboundMessage, PermanentSendError, ProviderResult
from activities.providers.postalynk import DEFAULT_TIMEOUT, json_field, post
from core.crypto import hmac_sha256_hex
from core.services.channels import ResolvedChannels

NO_SIGNING_KEY = (
    "push webhook needs a signing secret: set the project's webhook secret with "
    "POST /api/v1/channels/webhook-secret"
)


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    """The X-Signature value for `body` sent at `timestamp`."""
    return "sha256=" + hmac_sha256_hex(secret, f"{timestamp}.".encode() + body)


class WebhookPushProvider:
    name = "WEBHOOK"

    def __init__(self, *, http: httpx.AsyncClient, url: str, secret: str | None,
                 timeout: httpx.Timeout | float = DEFAULT_TIMEOUT):
        self._http = http
        self.timeout = timeout
        self.url = url
        self._secret = secret or None

    @classmethod
    def from_channels(cls, channels: ResolvedChannels, *, http: httpx.AsyncClient,
                      webhook_secret: str | None) -> WebhookPushProvider:
        return cls(http=http, url=str(channels.get("pushWebhookUrl")), secret=webhook_secret)

    async def send(self, message: OutboundMessage) -> ProviderResult:
        if self._secret is None:
            raise PermanentSendError(NO_SIGNING_KEY)
        body = orjson.dumps({
            "messageId": message.message_id,
            "userId": message.user_id,
            "title": message.subject,
            "body": message.body,
            "projectId": message.project_id,
        })
        timestamp = int(time.time())
        response = await post(
            self._http, "Push webhook", self.url, timeout=self.timeout,
            content=body,
            headers={
                "Content-Type": "application/json",
                "X-Timestamp": str(timestamp),
                "X-Signature": sign(self._secret, timestamp, body),
                "X-Webhook-Id": message.message_id,
            },
        )
        return ProviderResult(provider=self.name, provider_message_id=json_field(response, "id"))
