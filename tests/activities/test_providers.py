"""Delivery providers against real local servers (tests/activities/fakes.py): an aiosmtpd
sink for SMTP and small HTTP servers for Postalynk, Twilio, the push webhook and Web Push
endpoints. No database, no patched clients."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import http_ece  # type: ignore[import-untyped]
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid  # type: ignore[import-untyped]

from activities.providers.base import (
    OutboundMessage,
    PermanentSendError,
    ProviderResult,
    TransientSendError,
)
from activities.providers.postalynk import PostalynkProvider
from activities.providers.registry import build_provider
from activities.providers.smtp import SmtpProvider
from activities.providers.twilio import TwilioProvider
from activities.providers.webhook_push import WebhookPushProvider
from activities.providers.webpush import NoWebPushSubscription, WebPushProvider
from core.crypto import hmac_sha256_hex
from core.devstack import free_port
from core.services.channels import ResolvedChannels
from tests.activities.fakes import (
    FakePostalynk,
    FakePushService,
    FakePushWebhook,
    FakeTwilio,
    Reply,
    SmtpSink,
)

HTML = '<h1>Hi Ann</h1><p>Tom &amp; Jerry &lt;3 <a href="https://x.test/a?b=1&amp;c=2">go</a></p>'
UNSUBSCRIBE = "https://app.retenshun.test/u/tok_123"


def email_message(**changes: Any) -> OutboundMessage:
    base = OutboundMessage(
        message_id="msg_abc123", project_id="prj_1", user_id="user-1", channel="EMAIL",
        to="ann@example.com", subject="Welcome, Ann", body=HTML,
    )
    return replace(base, **changes)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


# ------------------------------------------------------------------------------ SMTP


def smtp_provider(sink_or_port: SmtpSink | int, **kwargs: Any) -> SmtpProvider:
    port = sink_or_port.port if isinstance(sink_or_port, SmtpSink) else sink_or_port
    values: dict[str, Any] = {"host": "127.0.0.1", "port": port,
                              "from_email": "Retenshun <news@retenshun.test>", "timeout": 5}
    values.update(kwargs)
    return SmtpProvider(**values)


async def test_smtp_sends_multipart_with_our_message_id() -> None:
    with SmtpSink() as sink:
        result = await smtp_provider(sink).send(email_message())
        [mail] = sink.messages
    assert result == ProviderResult(provider="SMTP", provider_message_id="<msg_abc123@retenshun>")
    msg = mail.message
    assert mail.mail_from == "news@retenshun.test"
    assert mail.rcpt_tos == ["ann@example.com"]
    assert msg["From"] == "Retenshun <news@retenshun.test>"
    assert msg["To"] == "ann@example.com"
    assert msg["Subject"] == "Welcome, Ann"
    assert msg["Message-ID"] == "<msg_abc123@retenshun>"
    assert msg["Date"]
    assert msg.get_content_type() == "multipart/alternative"
    assert mail.part("text/html").rstrip("\n") == HTML  # escaping kept as given
    text = mail.part("text/plain")
    assert "Tom & Jerry <3" in text and "(https://x.test/a?b=1&c=2)" in text
    assert "<h1>" not in text
    # transactional: no unsubscribe headers
    assert msg["List-Unsubscribe"] is None and msg["List-Unsubscribe-Post"] is None


async def test_smtp_marketing_mail_has_one_click_unsubscribe_and_given_text() -> None:
    message = email_message(transactional=False, unsubscribe_url=UNSUBSCRIBE,
                            text="Hi Ann, plain version", subject="Big\nnews  today")
    with SmtpSink() as sink:
        await smtp_provider(sink).send(message)
        # non-transactional without an unsubscribe URL: nothing to point at
        await smtp_provider(sink).send(email_message(transactional=False))
        marketing, no_url = sink.messages
    assert marketing.message["List-Unsubscribe"] == f"<{UNSUBSCRIBE}>"
    assert marketing.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert marketing.message["Subject"] == "Big news today"  # no header injection
    assert marketing.part("text/plain").strip() == "Hi Ann, plain version"
    assert no_url.message["List-Unsubscribe"] is None


async def test_smtp_refused_recipient_is_permanent() -> None:
    with SmtpSink() as sink:
        sink.refuse("gone@example.com")
        with pytest.raises(PermanentSendError, match="550"):
            await smtp_provider(sink).send(email_message(to="gone@example.com"))
        assert sink.messages == []


@pytest.mark.parametrize(("rcpt_reply", "data_reply", "expected"), [
    ("451 4.7.1 Greylisted, try again", None, TransientSendError),
    (None, "451 4.3.0 Mail server temporarily rejected message", TransientSendError),
    (None, "554 5.7.1 Message rejected as spam", PermanentSendError),
])
async def test_smtp_reply_codes_decide_retry(rcpt_reply: str | None, data_reply: str | None,
                                             expected: type[Exception]) -> None:
    with SmtpSink() as sink:
        if rcpt_reply:
            sink.refuse("ann@example.com", rcpt_reply)
        sink.fail_data(data_reply)
        with pytest.raises(expected, match=(rcpt_reply or data_reply or "")[:3]):
            await smtp_provider(sink).send(email_message())
        assert sink.messages == []


async def test_smtp_server_not_listening_is_transient() -> None:
    with pytest.raises(TransientSendError, match="unreachable"):
        await smtp_provider(free_port()).send(email_message())


@pytest.mark.parametrize("to", [None, "", "not-an-address", "a@b.test\r\nBcc: x@y.test",
                                "two@a.test, three@b.test"])
async def test_smtp_invalid_address_is_permanent_without_connecting(to: str | None) -> None:
    # Nothing listens: reaching the network would be a TransientSendError.
    with pytest.raises(PermanentSendError, match="invalid email address"):
        await smtp_provider(free_port()).send(email_message(to=to))


async def test_smtp_login_and_wrong_password() -> None:
    with SmtpSink(auth=("mailer", "s3cret-pw")) as sink:
        await smtp_provider(sink, username="mailer", password="s3cret-pw").send(email_message())
        assert sink.logins == ["mailer"] and len(sink.messages) == 1
        with pytest.raises(PermanentSendError, match="535") as caught:
            await smtp_provider(sink, username="mailer", password="wrong-pw").send(
                email_message())
        assert "wrong-pw" not in str(caught.value)
        # no login at all: the sink demands one (530)
        with pytest.raises(PermanentSendError, match="530"):
            await smtp_provider(sink).send(email_message())
        assert len(sink.messages) == 1


async def test_smtp_starttls_required_but_not_offered_is_permanent() -> None:
    with SmtpSink() as sink:
        with pytest.raises(PermanentSendError, match="STARTTLS"):
            await smtp_provider(sink, start_tls=True).send(email_message())
        assert sink.messages == []


# ------------------------------------------------------------------------------ Postalynk


async def test_postalynk_sends_the_contract_request(http: httpx.AsyncClient) -> None:
    with FakePostalynk(api_key="pk_live_key") as srv:
        provider = PostalynkProvider(http=http, api_key="pk_live_key",
                                     from_email="news@retenshun.test", base_url=srv.url + "/")
        result = await provider.send(email_message())
        marketing = await provider.send(
            email_message(message_id="msg_2", transactional=False, unsubscribe_url=UNSUBSCRIBE))
    assert result == ProviderResult(provider="POSTALYNK", provider_message_id="pl_1")
    assert marketing.provider_message_id == "pl_2"
    first, second = srv.calls
    assert (first.method, first.path) == ("POST", "/v1/messages")
    assert first.headers["authorization"] == "Bearer pk_live_key"
    assert first.json() == {
        "from": "news@retenshun.test", "to": "ann@example.com", "subject": "Welcome, Ann",
        "html": HTML, "headers": {}, "metadata": {"messageId": "msg_abc123"},
    }
    assert second.json()["headers"] == {
        "List-Unsubscribe": f"<{UNSUBSCRIBE}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    assert second.json()["metadata"] == {"messageId": "msg_2"}


@pytest.mark.parametrize(("status", "expected"), [
    (400, PermanentSendError), (401, PermanentSendError), (422, PermanentSendError),
    (429, TransientSendError), (500, TransientSendError), (503, TransientSendError),
])
async def test_postalynk_errors_are_classified(http: httpx.AsyncClient, status: int,
                                               expected: type[Exception]) -> None:
    with FakePostalynk(responses=[Reply(status, json={"error": "nope"})]) as srv:
        provider = PostalynkProvider(http=http, api_key="pk_live_key",
                                     from_email="news@retenshun.test", base_url=srv.url)
        with pytest.raises(expected, match=f"HTTP {status}") as caught:
            await provider.send(email_message())
        assert "pk_live_key" not in str(caught.value)
        assert len(srv.calls) == 1  # no client-side retry
        # the next call gets the normal answer
        assert (await provider.send(email_message())).provider_message_id == "pl_1"


async def test_postalynk_unreachable_is_transient(http: httpx.AsyncClient) -> None:
    provider = PostalynkProvider(http=http, api_key="k", from_email="news@retenshun.test",
                                 base_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(TransientSendError, match="unreachable"):
        await provider.send(email_message())


async def test_postalynk_timeout_is_transient(http: httpx.AsyncClient) -> None:
    with FakePostalynk(responses=[Reply(200, json={"id": "late"}, delay=1.0)]) as srv:
        provider = PostalynkProvider(http=http, api_key="k", from_email="news@retenshun.test",
                                     base_url=srv.url, timeout=0.2)
        with pytest.raises(TransientSendError, match="Timeout"):
            await provider.send(email_message())


# ------------------------------------------------------------------------------ Twilio


def sms(**changes: Any) -> OutboundMessage:
    return replace(email_message(channel="SMS", to="+15551230000", subject=None,
                                 body="Your code is 1234 & more"), **changes)


async def test_twilio_sends_form_with_basic_auth(http: httpx.AsyncClient) -> None:
    with FakeTwilio(account_sid="AC123", auth_token="tw-token") as srv:
        provider = TwilioProvider(http=http, account_sid="AC123", auth_token="tw-token",
                                  from_number="+15550000000", base_url=srv.url)
        result = await provider.send(sms())
    [call] = srv.calls
    assert (call.method, call.path) == ("POST", "/2010-04-01/Accounts/AC123/Messages.json")
    assert call.basic_auth() == ("AC123", "tw-token")
    assert call.headers["content-type"].startswith("application/x-www-form-urlencoded")
    assert call.form() == {"To": "+15551230000", "From": "+15550000000",
                           "Body": "Your code is 1234 & more"}
    assert result.provider == "TWILIO"
    assert result.provider_message_id == f"SM{1:032x}"


@pytest.mark.parametrize(("status", "expected"), [
    (400, PermanentSendError), (404, PermanentSendError),
    (429, TransientSendError), (500, TransientSendError),
])
async def test_twilio_errors_are_classified(http: httpx.AsyncClient, status: int,
                                            expected: type[Exception]) -> None:
    with FakeTwilio(responses=[Reply(status, json={"code": 21211, "message": "x"})]) as srv:
        provider = TwilioProvider(http=http, account_sid="AC123", auth_token="tw-token",
                                  from_number="+15550000000", base_url=srv.url)
        with pytest.raises(expected, match=f"HTTP {status}") as caught:
            await provider.send(sms())
    assert "tw-token" not in str(caught.value)


async def test_twilio_bad_credentials_and_no_number_are_permanent(
        http: httpx.AsyncClient) -> None:
    with FakeTwilio(account_sid="AC123", auth_token="right") as srv:
        provider = TwilioProvider(http=http, account_sid="AC123", auth_token="wrong",
                                  from_number="+15550000000", base_url=srv.url)
        with pytest.raises(PermanentSendError, match="HTTP 401"):
            await provider.send(sms())
        with pytest.raises(PermanentSendError, match="no phone number"):
            await provider.send(sms(to=None))
        assert len(srv.calls) == 1


# ------------------------------------------------------------------------------ push webhook


def push(**changes: Any) -> OutboundMessage:
    return replace(email_message(channel="PUSH", to=None, subject="Sale starts",
                                 body="50% off <today>"), **changes)


async def test_webhook_push_is_signed_like_our_webhooks(http: httpx.AsyncClient) -> None:
    with FakePushWebhook(secret="whsec_project") as srv:
        provider = WebhookPushProvider(http=http, url=srv.url + "/hooks/push",
                                       secret="whsec_project")
        result = await provider.send(push())
    assert result == ProviderResult(provider="WEBHOOK", provider_message_id="wh_1")
    [call] = srv.calls
    assert (call.method, call.path) == ("POST", "/hooks/push")
    assert call.signature_valid is True
    assert call.json() == {"messageId": "msg_abc123", "userId": "user-1",
                           "title": "Sale starts", "body": "50% off <today>",
                           "projectId": "prj_1"}
    assert call.headers["content-type"] == "application/json"
    assert call.headers["x-webhook-id"] == "msg_abc123"
    timestamp = call.headers["x-timestamp"]
    assert abs(int(timestamp) - time.time()) < 60
    # recompute independently: "{timestamp}.{raw body}"
    expected = hmac_sha256_hex("whsec_project", f"{timestamp}.".encode() + call.body)
    assert call.headers["x-signature"] == f"sha256={expected}"
    tampered = call.body.replace(b"50%", b"90%")
    assert hmac_sha256_hex("whsec_project", f"{timestamp}.".encode() + tampered) != expected
    other_time = hmac_sha256_hex("whsec_project", f"{int(timestamp) + 1}.".encode() + call.body)
    assert other_time != expected


async def test_webhook_push_without_secret_is_permanent(http: httpx.AsyncClient) -> None:
    with FakePushWebhook() as srv:
        provider = WebhookPushProvider(http=http, url=srv.url, secret=None)
        with pytest.raises(PermanentSendError, match="POST /api/v1/channels/webhook-secret"):
            await provider.send(push())
        assert srv.calls == []


async def test_webhook_push_rejected_signature_and_outage(http: httpx.AsyncClient) -> None:
    with FakePushWebhook(secret="the-real-one") as srv:
        provider = WebhookPushProvider(http=http, url=srv.url, secret="another-one")
        with pytest.raises(PermanentSendError, match="HTTP 401") as caught:
            await provider.send(push())
        assert "another-one" not in str(caught.value)
        assert srv.calls[0].signature_valid is False
        srv.always(Reply(503, body="down"))
        good = WebhookPushProvider(http=http, url=srv.url, secret="the-real-one")
        with pytest.raises(TransientSendError, match="HTTP 503"):
            await good.send(push())
        srv.always(Reply(204))  # accepted, no id
        assert (await good.send(push())).provider_message_id is None


# ------------------------------------------------------------------------------ Web Push


class Browser:
    """A subscriber: a real P-256 key pair and a 16-byte auth secret."""

    def __init__(self, endpoint: str):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.auth = os.urandom(16)
        public = self.key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        self.subscription = {"endpoint": endpoint,
                             "keys": {"p256dh": b64url(public), "auth": b64url(self.auth)}}

    def decrypt(self, body: bytes) -> Any:
        return json.loads(http_ece.decrypt(body, private_key=self.key,
                                           auth_secret=self.auth, version="aes128gcm"))


def vapid_private_key() -> str:
    vapid = Vapid()
    vapid.generate_keys()
    return b64url(vapid.private_key.private_numbers().private_value.to_bytes(32, "big"))


def webpush_message(*browsers: Browser, **changes: Any) -> OutboundMessage:
    props = {"plan": "pro", "webPushSubscriptions": [b.subscription for b in browsers]}
    return push(user_properties=props, **changes)


async def test_webpush_delivers_encrypted_and_reports_gone_endpoints() -> None:
    with FakePushService() as srv:
        srv.gone("old")
        good, old = Browser(srv.endpoint("good")), Browser(srv.endpoint("old"))
        provider = WebPushProvider(private_key=vapid_private_key(),
                                   subject="mailto:ops@retenshun.test")
        result = await provider.send(webpush_message(good, old))
    assert result.provider == "WEBPUSH"
    assert result.dropped_subscriptions == [srv.endpoint("old")]
    assert result.provider_message_id == f"{srv.url}/m/1"
    [call] = srv.calls_to("good")
    assert call.method == "POST"
    assert call.headers["content-encoding"] == "aes128gcm"
    assert int(call.headers["ttl"]) > 0
    authorization = call.headers["authorization"]
    assert authorization.startswith("vapid t=") and ",k=" in authorization
    assert Vapid.verify(authorization)  # a valid ES256 JWT for the key it names
    token = authorization.split("t=", 1)[1].split(",", 1)[0]
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["aud"] == srv.url and claims["sub"] == "mailto:ops@retenshun.test"
    assert b"Sale starts" not in call.body  # encrypted on the wire
    assert good.decrypt(call.body) == {"title": "Sale starts", "body": "50% off <today>",
                                       "messageId": "msg_abc123"}
    assert len(srv.calls_to("old")) == 1


async def test_webpush_without_live_subscription_is_permanent() -> None:
    provider = WebPushProvider(private_key=vapid_private_key(), subject="ops@retenshun.test")
    with FakePushService() as srv:
        srv.gone("old")
        with pytest.raises(NoWebPushSubscription, match="user has no web push subscription") \
                as caught:
            await provider.send(webpush_message(Browser(srv.endpoint("old"))))
        assert caught.value.dropped_subscriptions == [srv.endpoint("old")]
        assert isinstance(caught.value, PermanentSendError)
        cases: list[dict[str, Any]] = [
            {}, {"webPushSubscriptions": []},
            {"webPushSubscriptions": [{"endpoint": srv.endpoint("x")}, "junk"]},
            {"webPushSubscriptions": [{"endpoint": srv.endpoint("y"),
                                       "keys": {"p256dh": "bad", "auth": "bad"}}]}]
        for props in cases:
            with pytest.raises(PermanentSendError, match="user has no web push subscription"):
                await provider.send(push(user_properties=props))
        assert len(srv.calls) == 1


@pytest.mark.parametrize(("status", "expected"), [
    (429, TransientSendError), (503, TransientSendError), (403, PermanentSendError),
])
async def test_webpush_endpoint_errors_are_classified(status: int,
                                                      expected: type[Exception]) -> None:
    provider = WebPushProvider(private_key=vapid_private_key(), subject="ops@retenshun.test")
    with FakePushService() as srv:
        srv.always(Reply(status, body="nope"))
        with pytest.raises(expected, match=f"HTTP {status}"):
            await provider.send(webpush_message(Browser(srv.endpoint("a"))))


async def test_webpush_delivered_somewhere_is_not_retried() -> None:
    """One device got it: a retry would push it twice there, so a failure on another
    subscription does not fail the message."""
    provider = WebPushProvider(private_key=vapid_private_key(), subject="ops@retenshun.test")
    with FakePushService() as srv:
        srv.answer("busy", 503)
        same = Browser(srv.endpoint("phone"))
        result = await provider.send(webpush_message(
            same, Browser(srv.endpoint("busy")), same))  # a duplicate endpoint goes once
        assert result.dropped_subscriptions == []
        assert len(srv.calls_to("phone")) == 1 and len(srv.calls_to("busy")) == 1
        srv.answer("phone", 429)
        srv.gone("old")
        with pytest.raises(TransientSendError, match="HTTP 429") as caught:
            await provider.send(webpush_message(same, Browser(srv.endpoint("old"))))
        assert caught.value.dropped_subscriptions == [srv.endpoint("old")]  # type: ignore[attr-defined]


async def test_webpush_unreachable_endpoint_is_transient() -> None:
    provider = WebPushProvider(private_key=vapid_private_key(), subject="ops@retenshun.test",
                               timeout=2)
    browser = Browser(f"http://127.0.0.1:{free_port()}/push/a")
    with pytest.raises(TransientSendError, match="unreachable"):
        await provider.send(webpush_message(browser))


def test_webpush_invalid_vapid_key_is_permanent() -> None:
    with pytest.raises(PermanentSendError, match="webPushPrivateKey") as caught:
        WebPushProvider(private_key="not-a-key", subject="ops@retenshun.test")
    assert "not-a-key" not in str(caught.value)


# ------------------------------------------------------------------------------ registry


@pytest.mark.parametrize(("channel", "values", "names"), [
    ("EMAIL", {}, ["emailProvider", "smtpHost", "smtpPort", "smtpFromEmail",
                   "postalynkApiKey", "PUT /api/v1/channels"]),
    ("EMAIL", {"emailProvider": "SMTP", "smtpHost": "mx.test", "smtpPassword": "pw-secret"},
     ["smtpPort", "smtpFromEmail"]),
    ("EMAIL", {"emailProvider": "POSTALYNK"}, ["postalynkApiKey", "postalynkFromEmail"]),
    ("PUSH", {}, ["pushProvider", "WEBPUSH", "WEBHOOK", "pushWebhookUrl"]),
    ("PUSH", {"pushProvider": "WEBPUSH", "webPushPrivateKey": "pk-secret"},
     ["webPushPublicKey", "webPushSubject"]),
    ("SMS", {"smsProvider": "TWILIO", "twilioAccountSid": "AC1"},
     ["twilioAuthToken", "twilioFromNumber"]),
    ("SMS", {}, ["smsProvider", "TWILIO"]),
])
async def test_registry_names_missing_settings(http: httpx.AsyncClient, channel: str,
                                               values: dict[str, Any],
                                               names: list[str]) -> None:
    with pytest.raises(PermanentSendError, match=f"{channel} channel is not configured") \
            as caught:
        build_provider(channel, ResolvedChannels(values), http=http, webhook_secret=None)
    reason = str(caught.value)
    for name in names:
        assert name in reason
    assert "secret" not in reason.replace("webhook-secret", "")  # no values leak


async def test_registry_in_app_and_unknown_channels_raise_value_error(
        http: httpx.AsyncClient) -> None:
    for channel in ("IN_APP", "FAX"):
        with pytest.raises(ValueError, match=channel):
            build_provider(channel, ResolvedChannels({}), http=http, webhook_secret=None)


async def test_registry_builds_working_providers(http: httpx.AsyncClient) -> None:
    with SmtpSink() as sink, FakePostalynk(api_key="pk") as pl, FakeTwilio() as tw, \
            FakePushWebhook(secret="whsec") as hook:
        smtp = build_provider("EMAIL", ResolvedChannels({
            "emailProvider": "SMTP", "smtpHost": sink.host, "smtpPort": sink.port,
            "smtpFromEmail": "news@retenshun.test"}), http=http, webhook_secret=None)
        postalynk = build_provider("EMAIL", ResolvedChannels({
            "emailProvider": "POSTALYNK", "postalynkApiKey": "pk",
            "postalynkFromEmail": "news@retenshun.test", "postalynkBaseUrl": pl.url}),
            http=http, webhook_secret=None)
        twilio = build_provider("SMS", ResolvedChannels({
            "smsProvider": "TWILIO", "twilioAccountSid": "AC9", "twilioAuthToken": "t",
            "twilioFromNumber": "+15550000000", "twilioBaseUrl": tw.url}),
            http=http, webhook_secret=None)
        webhook = build_provider("PUSH", ResolvedChannels({
            "pushProvider": "WEBHOOK", "pushWebhookUrl": hook.url}),
            http=http, webhook_secret="whsec")
        webpush = build_provider("PUSH", ResolvedChannels({
            "pushProvider": "WEBPUSH", "webPushPublicKey": "pub",
            "webPushPrivateKey": vapid_private_key(), "webPushSubject": "ops@retenshun.test"}),
            http=http, webhook_secret=None)

        assert (await smtp.send(email_message())).provider == "SMTP"
        assert (await postalynk.send(email_message())).provider_message_id == "pl_1"
        assert (await twilio.send(sms())).provider == "TWILIO"
        assert (await webhook.send(push())).provider_message_id == "wh_1"
        assert isinstance(webpush, WebPushProvider)
        assert len(sink.messages) == 1 and len(pl.calls) == len(tw.calls) == 1
        assert hook.calls[0].signature_valid is True
    # the defaults apply when a base URL is not set
    default = build_provider("EMAIL", ResolvedChannels({
        "emailProvider": "POSTALYNK", "postalynkApiKey": "pk",
        "postalynkFromEmail": "news@retenshun.test"}), http=http, webhook_secret=None)
    assert isinstance(default, PostalynkProvider)
    assert default.base_url == "https://api.postalynk.com"
