"""Browser push (Web Push with VAPID, through pywebpush).

The message goes to every subscription in the profile property `webPushSubscriptions`
(`[{"endpoint", "keys": {"p256dh", "auth"}}]`) as the encrypted (aes128gcm) payload
`{"title", "body", "messageId"}`. pywebpush is synchronous (requests), so each
subscription is pushed in a worker thread, all of them concurrently.

Outcomes, per subscription: 2xx delivered; 404/410 gone (listed in
`ProviderResult.dropped_subscriptions` so the caller prunes the profile; not an error);
408/429/5xx or a network failure transient; another 4xx permanent; malformed keys skip
it. For the message: delivered to at least one → success (a transient failure elsewhere
is not retried, which would push twice to the others); else any transient → retry; else
permanent. No subscription left at all → NoWebPushSubscription ("user has no web push
subscription"). Every error raised by send() carries `dropped_subscriptions` too, so the
caller can prune gone endpoints even when the message fails."""

from __future__ import annotations

import asyncio
import binascii
from dataclasses import dataclass
from typing import Any

import orjson
import requests
from py_vapid import Vapid, VapidException  # type: ignore[import-untyped]
from pywebpush import WebPushException, webpush  # type: ignore[import-untyped]

from activities.providers.base import (
    OutboundMessage,
    PermanentSendError,
    ProviderResult,
    TransientSendError,
    classify_http_status,
)
from core.services.channels import ResolvedChannels

DEFAULT_TIMEOUT = 10.0
DEFAULT_TTL = 24 * 3600  # how long a push service keeps the message for an offline device
NO_SUBSCRIPTION = "user has no web push subscription"


class NoWebPushSubscription(PermanentSendError):
    """Nothing to push to; `dropped_subscriptions` lists endpoints that answered 404/410."""

    def __init__(self, dropped_subscriptions: list[str] | None = None):
        super().__init__(NO_SUBSCRIPTION)
        self.dropped_subscriptions = list(dropped_subscriptions or [])


@dataclass(frozen=True)
class _Outcome:
    kind: str  # sent | gone | invalid | transient | permanent | config
    endpoint: str
    detail: str = ""
    location: str | None = None


def load_vapid_key(private_key: str) -> Vapid:
    """A VAPID signer from a base64url raw (32-byte) or DER key, or a PEM one."""
    try:
        if private_key.lstrip().startswith("-----BEGIN"):
            return Vapid.from_pem(private_key.encode())
        return Vapid.from_string(private_key)
    except (VapidException, ValueError, TypeError, binascii.Error) as exc:
        raise PermanentSendError(
            "webPushPrivateKey is not a valid VAPID private key (base64url raw, DER or PEM)"
        ) from exc


def _subject(value: str) -> str:
    value = value.strip()
    if "@" in value and not value.lower().startswith(("mailto:", "https:")):
        return f"mailto:{value}"
    return value


def subscriptions_of(properties: dict[str, Any]) -> list[dict[str, Any]]:
    """Well-formed subscriptions from a profile, without duplicate endpoints."""
    found: dict[str, dict[str, Any]] = {}
    for sub in properties.get("webPushSubscriptions") or []:
        if not isinstance(sub, dict):
            continue
        endpoint, keys = sub.get("endpoint"), sub.get("keys")
        if (isinstance(endpoint, str) and endpoint and isinstance(keys, dict)
                and keys.get("p256dh") and keys.get("auth")):
            found.setdefault(endpoint, {"endpoint": endpoint, "keys": {
                "p256dh": str(keys["p256dh"]), "auth": str(keys["auth"])}})
    return list(found.values())


class WebPushProvider:
    name = "WEBPUSH"

    def __init__(self, *, private_key: str, subject: str, timeout: float = DEFAULT_TIMEOUT,
                 ttl: int = DEFAULT_TTL, requests_session: requests.Session | None = None):
        self._vapid = load_vapid_key(private_key)
        self.subject = _subject(subject)
        self.timeout = timeout
        self.ttl = ttl
        self._session = requests_session

    @classmethod
    def from_channels(cls, channels: ResolvedChannels) -> WebPushProvider:
        return cls(private_key=str(channels.get("webPushPrivateKey")),
                   subject=str(channels.get("webPushSubject")))

    def _push_one(self, subscription: dict[str, Any], payload: str) -> _Outcome:
        endpoint = subscription["endpoint"]
        try:
            response = webpush(
                subscription_info=subscription,
                data=payload,
                vapid_private_key=self._vapid,
                vapid_claims={"sub": self.subject},  # a fresh dict: webpush() adds aud/exp
                timeout=self.timeout,
                ttl=self.ttl,
                requests_session=self._session,
            )
        except WebPushException as exc:
            if exc.response is None:  # missing or malformed keys
                return _Outcome("invalid", endpoint, str(exc))
            status = exc.response.status_code
            if status in (404, 410):
                return _Outcome("gone", endpoint)
            error = classify_http_status(status, exc.response.text, "Web push endpoint")
            kind = "transient" if isinstance(error, TransientSendError) else "permanent"
            return _Outcome(kind, endpoint, str(error))
        except VapidException as exc:
            return _Outcome("config", endpoint, f"VAPID: {exc}")
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                requests.exceptions.InvalidSchema) as exc:
            return _Outcome("invalid", endpoint, f"{type(exc).__name__}: {exc}")
        except requests.RequestException as exc:
            return _Outcome("transient", endpoint,
                            f"web push endpoint unreachable: {type(exc).__name__}: {exc}")
        except (ValueError, TypeError, binascii.Error) as exc:  # undecodable keys
            return _Outcome("invalid", endpoint, f"{type(exc).__name__}: {exc}")
        location = getattr(response, "headers", {}).get("Location")
        return _Outcome("sent", endpoint, location=location)

    async def send(self, message: OutboundMessage) -> ProviderResult:
        subscriptions = subscriptions_of(message.user_properties)
        if not subscriptions:
            raise NoWebPushSubscription()
        payload = orjson.dumps({
            "title": message.subject, "body": message.body, "messageId": message.message_id,
        }).decode()
        outcomes = await asyncio.gather(
            *(asyncio.to_thread(self._push_one, sub, payload) for sub in subscriptions)
        )
        by_kind: dict[str, list[_Outcome]] = {}
        for outcome in outcomes:
            by_kind.setdefault(outcome.kind, []).append(outcome)
        dropped = [o.endpoint for o in by_kind.get("gone", [])]
        if sent := by_kind.get("sent"):
            return ProviderResult(provider=self.name, provider_message_id=sent[0].location,
                                  dropped_subscriptions=dropped)
        errors: tuple[tuple[str, type[Exception]], ...] = (
            ("config", PermanentSendError), ("transient", TransientSendError),
            ("permanent", PermanentSendError))
        for kind, error in errors:
            if failed := by_kind.get(kind):
                exc = error(failed[0].detail)
                exc.dropped_subscriptions = dropped  # type: ignore[attr-defined]
                raise exc
        raise NoWebPushSubscription(dropped)
