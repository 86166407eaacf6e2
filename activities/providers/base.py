"""The one small Protocol every delivery provider implements, and its failure types.

Providers are plain async classes: they never retry on their own (Temporal owns retries)
and say whether a failure is permanent (a 4xx, an invalid address: the message is marked
failed) or transient (429, 5xx, a dropped connection: the activity is retried)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class OutboundMessage:
    message_id: str  # ours; also the email Message-ID and the provider's metadata
    project_id: str
    user_id: str
    channel: str  # EMAIL | PUSH | SMS | IN_APP
    to: str | None  # email address or phone number; None for push and in-app
    subject: str | None  # email subject, or the push title
    body: str  # rendered; HTML for email
    text: str | None = None  # plain-text alternative of an email
    transactional: bool = True
    unsubscribe_url: str | None = None  # set on non-transactional email
    user_properties: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProviderResult:
    provider: str
    provider_message_id: str | None = None
    # Web Push subscriptions that answered 404/410 and must be dropped from the profile.
    dropped_subscriptions: list[str] = field(default_factory=list)


class PermanentSendError(Exception):
    """Retrying cannot help: mark the message failed with this reason."""


class TransientSendError(Exception):
    """Worth retrying under Temporal's policy (429, 5xx, network)."""


class Provider(Protocol):
    name: str

    async def send(self, message: OutboundMessage) -> ProviderResult: ...


def classify_http_status(status: int, body: str, provider: str) -> Exception | None:
    """None for 2xx; a permanent error for other 4xx; a transient one for 408/429/5xx."""
    if 200 <= status < 300:
        return None
    detail = f"{provider} answered HTTP {status}: {body[:300]}"
    if status in (408, 425, 429) or status >= 500:
        return TransientSendError(detail)
    return PermanentSendError(detail)
