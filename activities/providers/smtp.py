"""Email over SMTP (aiosmtplib): one connection per message, short timeouts, no retries.

The message is multipart/alternative (text/plain, then the HTML body as given) with our
id inside the Message-ID (`<msg_…@retenshun>`) so receipts and bounces can be matched.
Non-transactional mail carries RFC 8058 one-click List-Unsubscribe headers.

Failures: a 5xx reply (refused recipient or sender, rejected data, failed login), an
invalid address, an unverifiable certificate or a server lacking a required extension
(STARTTLS, AUTH, SMTPUTF8) are permanent; a 4xx reply, a
refused or dropped connection and timeouts are transient."""

from __future__ import annotations

import re
import ssl
from email.message import EmailMessage
from email.utils import formatdate, parseaddr

import aiosmtplib

from activities.providers.base import (
    OutboundMessage,
    PermanentSendError,
    ProviderResult,
    TransientSendError,
)
from core.rendering import html_to_text
from core.services.channels import ResolvedChannels

DEFAULT_TIMEOUT = 10.0
_ATOM = r"[^\s@<>()\[\],;:\"\\]+"
_ADDRESS = re.compile(rf"^{_ATOM}@{_ATOM}$")


def message_id_header(message_id: str) -> str:
    """The Message-ID we give a message: our id, so a receipt naming it can be matched."""
    return f"<{message_id}@retenshun>"


def _one_line(value: str) -> str:
    return " ".join(value.split())


def _valid_address(address: str | None) -> bool:
    return bool(address) and _ADDRESS.match(address or "") is not None


def build_email(message: OutboundMessage, from_email: str) -> EmailMessage:
    """The RFC 5322 message for `message` (shared by tests and any other SMTP path)."""
    mail = EmailMessage()
    mail["From"] = from_email
    mail["To"] = message.to or ""
    mail["Subject"] = _one_line(message.subject or "")
    mail["Date"] = formatdate(usegmt=True)
    mail["Message-ID"] = message_id_header(message.message_id)
    if not message.transactional and message.unsubscribe_url:
        mail["List-Unsubscribe"] = f"<{_one_line(message.unsubscribe_url)}>"
        mail["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    text = message.text if message.text is not None else html_to_text(message.body)
    mail.set_content(text or " ", subtype="plain")
    mail.add_alternative(message.body, subtype="html")
    return mail


class SmtpProvider:
    name = "SMTP"

    def __init__(
        self,
        *,
        host: str,
        port: int,
        from_email: str,
        username: str | None = None,
        password: str | None = None,
        start_tls: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
    ):
        self.host = host
        self.port = int(port)
        self.from_email = from_email
        self._username = username or None
        self._password = password or None
        self.start_tls = bool(start_tls)
        self.timeout = timeout

    @classmethod
    def from_channels(cls, channels: ResolvedChannels) -> SmtpProvider:
        return cls(
            host=str(channels.get("smtpHost")),
            port=int(channels.get("smtpPort")),
            from_email=str(channels.get("smtpFromEmail")),
            username=channels.get("smtpUsername"),
            password=channels.get("smtpPassword"),
            start_tls=bool(channels.get("smtpStartTls")),
        )

    async def send(self, message: OutboundMessage) -> ProviderResult:
        if not _valid_address(message.to):
            raise PermanentSendError(f"invalid email address: {message.to!r}")
        sender = parseaddr(self.from_email)[1]
        if not _valid_address(sender):
            raise PermanentSendError(f"invalid smtpFromEmail: {self.from_email!r}")
        try:
            mail = build_email(message, self.from_email)
        except (ValueError, TypeError) as exc:
            raise PermanentSendError(f"cannot build the email: {exc}") from exc
        assert message.to is not None
        try:
            await aiosmtplib.send(
                mail,
                sender=sender,
                recipients=[message.to],
                hostname=self.host,
                port=self.port,
                username=self._username,
                password=self._password,
                # Port 465 speaks TLS from the first byte; elsewhere STARTTLS only if asked.
                use_tls=self.port == 465 and not self.start_tls,
                start_tls=self.start_tls,
                timeout=self.timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            detail = "; ".join(f"{r.code} {r.message}" for r in exc.recipients)
            if codes and all(code >= 500 for code in codes):
                raise PermanentSendError(f"SMTP server refused the recipient: {detail}") from exc
            raise TransientSendError(f"SMTP server deferred the recipient: {detail}") from exc
        except aiosmtplib.SMTPResponseException as exc:
            # Refused sender, rejected DATA, failed login, HELO refused: by the reply code.
            what = type(exc).__name__.removeprefix("SMTP")
            detail = f"SMTP {what}: {exc.code} {exc.message}"
            if exc.code >= 500:
                raise PermanentSendError(detail) from exc
            raise TransientSendError(detail) from exc
        except ssl.SSLCertVerificationError as exc:
            raise PermanentSendError(
                f"SMTP server {self.host}:{self.port} has a certificate that cannot be "
                f"verified: {exc.verify_message}"
            ) from exc
        except (OSError, TimeoutError) as exc:
            # Refused or dropped connections and timeouts (aiosmtplib's are OSErrors too).
            raise TransientSendError(
                f"SMTP server {self.host}:{self.port} unreachable or dropped the connection: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        except aiosmtplib.SMTPException as exc:
            # What is left is a missing extension (STARTTLS, AUTH, SMTPUTF8): configuration.
            raise PermanentSendError(f"SMTP server cannot take this message: {exc}") from exc
        return ProviderResult(
            provider=self.name, provider_message_id=message_id_header(message.message_id)
        )
