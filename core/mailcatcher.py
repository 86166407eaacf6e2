"""A local SMTP server that accepts every message and keeps it as a file (`retenshun dev`).

Each message becomes `<folder>/<UTC timestamp>-<id>.eml`: the envelope as two header
lines, a blank line, then the raw RFC 5322 message as received, which is what
`GET /dev/mail` (api/dev_mail.py) reads back, newest first by file name:

    X-Envelope-From: sender@example.com
    X-Envelope-To: a@example.com,b@example.com

    <raw message>
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

log = logging.getLogger("retenshun.mailcatcher")


def _one_line(value: str) -> str:
    return value.replace("\r", " ").replace("\n", " ").strip()


def mail_file_name(now: datetime | None = None) -> str:
    """Sortable by time (microseconds, UTC), unique by a random suffix."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{stamp}-{secrets.token_hex(4)}.eml"


def write_mail(folder: Path, mail_from: str, rcpt_tos: list[str], data: bytes) -> Path:
    """Store one message atomically (written aside, then renamed into place)."""
    folder.mkdir(parents=True, exist_ok=True)
    envelope = (
        f"X-Envelope-From: {_one_line(mail_from)}\n"
        f"X-Envelope-To: {','.join(_one_line(r) for r in rcpt_tos)}\n\n"
    ).encode()
    path = folder / mail_file_name()
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(envelope + data)
    os.replace(tmp, path)
    return path


# Called after each message is stored: (file, envelope sender, recipients, raw message).
OnMail = Callable[[Path, str, list[str], bytes], None]


class MailDirHandler:
    """aiosmtpd handler: every DATA is accepted and written to the folder."""

    def __init__(self, folder: Path, on_mail: OnMail | None = None):
        self.folder = folder
        self.on_mail = on_mail

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        data = envelope.original_content or envelope.content or b""
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        path = write_mail(self.folder, envelope.mail_from or "", list(envelope.rcpt_tos), data)
        log.info("caught mail from %s to %s -> %s", envelope.mail_from,
                 ",".join(envelope.rcpt_tos), path.name)
        if self.on_mail is not None:
            try:
                self.on_mail(path, envelope.mail_from or "", list(envelope.rcpt_tos), data)
            except Exception:  # a reporting hook must never refuse a message
                log.exception("on_mail hook failed")
        return "250 Message accepted for delivery"


class MailCatcher:
    """The SMTP catcher on host:port, served from a background thread."""

    def __init__(self, folder: Path, host: str = "127.0.0.1", port: int = 1025,
                 on_mail: OnMail | None = None):
        self.folder = folder
        self.host = host
        self.port = port
        self.on_mail = on_mail
        self._controller: Controller | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        controller = Controller(
            MailDirHandler(self.folder, self.on_mail), hostname=self.host, port=self.port,
            decode_data=False, enable_SMTPUTF8=True, ready_timeout=10,
        )
        controller.start()
        self._controller = controller

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> MailCatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
