"""The dashboard: one self-contained HTML page (inline CSS and JS, no external resources).

GET / serves it, and so does GET /accept-invite (the page reads the invite token from
the query string). The page talks only to the session endpoints under /api/v1 and to
/dev/mail. Its inline script is allowed by hash in a strict Content-Security-Policy.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

PAGE = Path(__file__).parent / "static" / "dashboard.html"
_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)

router = APIRouter(tags=["dashboard"])


def _csp(html: str) -> str:
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
        for s in _SCRIPT.findall(html)
    )
    # Inline styles stay allowed so caught mail renders as sent; its sandboxed iframe
    # (srcdoc inherits this policy) runs no script and loads no remote image.
    return (
        f"default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src 'self' data:; frame-src 'self'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    )


@cache
def _page() -> tuple[str, str]:
    html = PAGE.read_text(encoding="utf-8")
    return html, _csp(html)


def _response() -> HTMLResponse:
    html, csp = _page()
    return HTMLResponse(html, headers={
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",  # invite tokens ride in the URL
        "Cache-Control": "no-cache",
    })


@router.get("/", response_class=HTMLResponse, summary="The dashboard (HTML page)")
async def dashboard() -> HTMLResponse:
    """Sign up or log in, manage API keys and the team, read mail caught in dev."""
    return _response()


@router.get("/accept-invite", response_class=HTMLResponse,
            summary="The dashboard, opened on an invite link")
async def accept_invite_page() -> HTMLResponse:
    """Where an invite's `acceptUrl` points: the page reads `token` from the query string
    and posts it, with the password the invitee chooses, to /api/v1/auth/accept-invite."""
    return _response()
