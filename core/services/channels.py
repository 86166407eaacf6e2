"""Channel (provider) settings per project. Secret fields are encrypted together as one
JSON document with the project's SecretBox and are never returned."""

from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from core.crypto import SecretBox
from core.models import ChannelConfig

SECRET_FIELDS = frozenset(
    {"smtpPassword", "postalynkApiKey", "webPushPrivateKey", "twilioAuthToken", "openaiApiKey"}
)
PLAIN_FIELDS = frozenset({
    "emailProvider", "smtpHost", "smtpPort", "smtpUsername", "smtpFromEmail", "smtpStartTls",
    "postalynkFromEmail", "postalynkBaseUrl",
    "pushProvider", "webPushPublicKey", "webPushSubject", "pushWebhookUrl",
    "smsProvider", "twilioAccountSid", "twilioFromNumber", "twilioBaseUrl",
    "openaiBaseUrl", "openaiModel",
})
DEFAULTS = {
    "postalynkBaseUrl": "https://api.postalynk.com",
    "twilioBaseUrl": "https://api.twilio.com",
    "smtpStartTls": False,
}
DEV_FROM_EMAIL = "no-reply@retenshun.localhost"


@dataclass(frozen=True)
class ResolvedChannels:
    """Plain and decrypted secret settings together: only ever built inside an activity
    or a request, never logged, never passed as a workflow argument."""

    values: dict[str, Any]

    def get(self, name: str) -> Any:
        return self.values.get(name, DEFAULTS.get(name))

    def email_configured(self) -> bool:
        provider = self.get("emailProvider")
        if provider == "SMTP":
            return bool(self.get("smtpHost") and self.get("smtpPort") and self.get("smtpFromEmail"))
        if provider == "POSTALYNK":
            return bool(self.get("postalynkApiKey") and self.get("postalynkFromEmail"))
        return False

    def push_configured(self) -> bool:
        provider = self.get("pushProvider")
        if provider == "WEBPUSH":
            return all(self.get(f) for f in ("webPushPublicKey", "webPushPrivateKey",
                                             "webPushSubject"))
        if provider == "WEBHOOK":
            return bool(self.get("pushWebhookUrl"))
        return False

    def sms_configured(self) -> bool:
        return self.get("smsProvider") == "TWILIO" and all(
            self.get(f) for f in ("twilioAccountSid", "twilioAuthToken", "twilioFromNumber")
        )


def _dev_default(smtp_catcher: str | None) -> dict[str, Any]:
    if not smtp_catcher:
        return {}
    host, _, port = smtp_catcher.rpartition(":")
    return {"emailProvider": "SMTP", "smtpHost": host, "smtpPort": int(port),
            "smtpFromEmail": DEV_FROM_EMAIL, "smtpStartTls": False}


# Decrypted secret documents, per SecretBox, keyed by the stored token itself: a token
# always decrypts to the same plaintext, so an entry never goes stale (a PUT/PATCH writes
# a new token), and the send path skips Fernet + JSON for every message of a project.
_DECRYPTED: weakref.WeakKeyDictionary[SecretBox, OrderedDict[str, dict[str, Any]]] = (
    weakref.WeakKeyDictionary())
DECRYPTED_CACHE_SIZE = 1024


def decrypt_secrets(secrets: SecretBox, token: str) -> dict[str, Any]:
    """The secret settings stored as `token` (memoised per SecretBox; a copy each call)."""
    memo = _DECRYPTED.setdefault(secrets, OrderedDict())
    values = memo.get(token)
    if values is None:
        values = orjson.loads(secrets.decrypt(token))
        memo[token] = values
        if len(memo) > DECRYPTED_CACHE_SIZE:
            memo.popitem(last=False)
    else:
        memo.move_to_end(token)
    return dict(values)


def resolve(settings: dict[str, Any] | None, secrets_enc: str | None, secrets: SecretBox,
            *, row_exists: bool, smtp_catcher: str | None = None) -> ResolvedChannels:
    """ResolvedChannels from a channel_configs row's columns (or its absence)."""
    if not row_exists:
        return ResolvedChannels(_dev_default(smtp_catcher))
    values = dict(settings or {})
    if secrets_enc:
        values.update(decrypt_secrets(secrets, secrets_enc))
    return ResolvedChannels(values)


async def load(db: AsyncSession, secrets: SecretBox, project_id: str,
               smtp_catcher: str | None = None) -> ResolvedChannels:
    """The project's settings with secrets decrypted. A project that never configured
    email in `retenshun dev` sends to the dev SMTP catcher."""
    row = await db.get(ChannelConfig, project_id)
    if row is None:
        return ResolvedChannels(_dev_default(smtp_catcher))
    return resolve(row.settings, row.secrets_enc, secrets, row_exists=True)


async def update(db: AsyncSession, secrets: SecretBox, project_id: str,
                 changes: dict[str, Any], smtp_catcher: str | None = None) -> None:
    """Merge `changes` (camelCase fields). A secret left out keeps the stored one; a field
    set to null is cleared."""
    current = await load(db, secrets, project_id, smtp_catcher)
    merged = dict(current.values)
    for name, value in changes.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    plain = {k: v for k, v in merged.items() if k in PLAIN_FIELDS}
    secret = {k: v for k, v in merged.items() if k in SECRET_FIELDS}
    row = await db.get(ChannelConfig, project_id)
    if row is None:
        row = ChannelConfig(project_id=project_id)
        db.add(row)
    row.settings = plain
    row.secrets_enc = secrets.encrypt(orjson.dumps(secret).decode()) if secret else None
    row.updated_at = datetime.now(UTC)
    await db.flush()


def public_view(channels: ResolvedChannels) -> dict[str, Any]:
    """What GET /channels shows: providers, `configured`, non-secret fields, and for each
    secret only whether it is set."""
    def plain(*names: str) -> dict[str, Any]:
        return {n: channels.get(n) for n in names if channels.get(n) is not None}

    def has(*names: str) -> dict[str, bool]:
        return {f"has{n[0].upper()}{n[1:]}": bool(channels.values.get(n)) for n in names}

    return {
        "email": {
            "provider": channels.get("emailProvider"),
            "configured": channels.email_configured(),
            **plain("smtpHost", "smtpPort", "smtpUsername", "smtpFromEmail", "smtpStartTls",
                    "postalynkFromEmail", "postalynkBaseUrl"),
            **has("smtpPassword", "postalynkApiKey"),
        },
        "push": {
            "provider": channels.get("pushProvider"),
            "configured": channels.push_configured(),
            **plain("webPushPublicKey", "webPushSubject", "pushWebhookUrl"),
            **has("webPushPrivateKey"),
        },
        "sms": {
            "provider": channels.get("smsProvider"),
            "configured": channels.sms_configured(),
            **plain("twilioAccountSid", "twilioFromNumber", "twilioBaseUrl"),
            **has("twilioAuthToken"),
        },
        "inApp": {"provider": "IN_APP", "configured": True},
        "ai": {
            "configured": bool(channels.values.get("openaiApiKey")),
            **plain("openaiBaseUrl", "openaiModel"),
            **has("openaiApiKey"),
        },
    }
