"""GET /dev/mail: what the `retenshun dev` SMTP catcher received (dev only)."""

from __future__ import annotations

import asyncio
import email
import email.policy
from pathlib import Path

from fastapi import APIRouter
from pydantic import BaseModel

from api.deps import StateDep
from core.errors import NotFound

router = APIRouter(tags=["dev"])


class CaughtMail(BaseModel):
    id: str
    mailFrom: str
    rcptTo: list[str]
    subject: str
    headers: dict[str, str]
    text: str | None
    html: str | None


class CaughtMailList(BaseModel):
    messages: list[CaughtMail]
    total: int


def _parse(path: Path) -> CaughtMail:
    raw = path.read_bytes()
    envelope, _, data = raw.partition(b"\n\n")
    meta = dict(line.split(": ", 1) for line in envelope.decode().splitlines() if ": " in line)
    # SMTP delivers CRLF line endings; show plain newlines.
    msg = email.message_from_bytes(data.replace(b"\r\n", b"\n"), policy=email.policy.default)
    text = msg.get_body(("plain",))  # type: ignore[attr-defined]
    html = msg.get_body(("html",))  # type: ignore[attr-defined]
    return CaughtMail(
        id=path.stem, mailFrom=meta.get("X-Envelope-From", ""),
        rcptTo=[r for r in meta.get("X-Envelope-To", "").split(",") if r],
        subject=str(msg.get("Subject", "")), headers={k: str(v) for k, v in msg.items()},
        text=text.get_content() if text else None, html=html.get_content() if html else None,
    )


@router.get("/dev/mail", response_model=CaughtMailList, responses={404: {}})
async def list_mail(state: StateDep) -> CaughtMailList:
    """Newest first. Only served by `retenshun dev` (RETENSHUN_DEV_MAIL_DIR set)."""
    folder = state.settings.dev_mail_dir
    if not folder:
        raise NotFound("The mail catcher runs only under `retenshun dev`")
    return await asyncio.to_thread(_read_all, Path(folder))


def _read_all(folder: Path) -> CaughtMailList:
    files = sorted(folder.glob("*.eml"), reverse=True)
    return CaughtMailList(messages=[_parse(p) for p in files], total=len(files))
