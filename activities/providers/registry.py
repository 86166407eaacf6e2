"""The provider for a channel, from the project's resolved channel settings.

Built inside the send activity (which decrypts the settings itself); a channel that is
not configured is a permanent failure naming what to set. IN_APP has no provider: the
caller stores the message for the app to fetch."""

from __future__ import annotations

import httpx

from activities.providers.base import PermanentSendError, Provider
from activities.providers.postalynk import PostalynkProvider
from activities.providers.smtp import SmtpProvider
from activities.providers.twilio import TwilioProvider
from activities.providers.webhook_push import WebhookPushProvider
from activities.providers.webpush import WebPushProvider
from core.services.channels import ResolvedChannels

WHERE = "via PUT /api/v1/channels"

# channel → (setting naming the provider, {provider: settings it needs})
REQUIRED: dict[str, tuple[str, dict[str, tuple[str, ...]]]] = {
    "EMAIL": ("emailProvider", {
        "SMTP": ("smtpHost", "smtpPort", "smtpFromEmail"),
        "POSTALYNK": ("postalynkApiKey", "postalynkFromEmail"),
    }),
    "PUSH": ("pushProvider", {
        "WEBPUSH": ("webPushPublicKey", "webPushPrivateKey", "webPushSubject"),
        "WEBHOOK": ("pushWebhookUrl",),
    }),
    "SMS": ("smsProvider", {
        "TWILIO": ("twilioAccountSid", "twilioAuthToken", "twilioFromNumber"),
    }),
}


def missing_settings(channel: str, channels: ResolvedChannels) -> str | None:
    """Why `channel` cannot send (naming the settings to set, never their values), or
    None when it is configured."""
    selector, providers = REQUIRED[channel]
    provider = channels.get(selector)
    if provider not in providers:
        choices = " or ".join(providers)
        wanted = "; ".join(f"{name}: {'/'.join(fields)}" for name, fields in providers.items())
        return (f"{channel} channel is not configured: set {selector} ({choices}) and its "
                f"settings ({wanted}) {WHERE}")
    missing = [name for name in providers[provider] if not channels.get(name)]
    if missing:
        return (f"{channel} channel is not configured: {selector} is {provider}; set "
                f"{'/'.join(missing)} {WHERE}")
    return None


def build_provider(channel: str, channels: ResolvedChannels, *, http: httpx.AsyncClient,
                   webhook_secret: str | None) -> Provider:
    """The configured provider for EMAIL, PUSH or SMS. Raises PermanentSendError when the
    channel is not configured and ValueError for IN_APP or an unknown channel."""
    if channel == "IN_APP":
        raise ValueError("IN_APP has no delivery provider: the message is stored for the app")
    if channel not in REQUIRED:
        raise ValueError(f"unknown channel {channel!r}")
    reason = missing_settings(channel, channels)
    if reason is not None:
        raise PermanentSendError(reason)
    if channel == "EMAIL":
        if channels.get("emailProvider") == "SMTP":
            return SmtpProvider.from_channels(channels)
        return PostalynkProvider.from_channels(channels, http=http)
    if channel == "PUSH":
        if channels.get("pushProvider") == "WEBPUSH":
            return WebPushProvider.from_channels(channels)
        return WebhookPushProvider.from_channels(channels, http=http,
                                                 webhook_secret=webhook_secret)
    return TwilioProvider.from_channels(channels, http=http)
