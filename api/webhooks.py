"""Inbound delivery receipts (signed) and one-click unsubscribe (RFC 8058)."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

from api.deps import SessionDep, StateDep
from api.responses import errors
from core.errors import BadRequest, NotFound, ServiceUnavailable, Unauthorized
from core.services import messages as message_service
from core.services import webhooks as webhook_service
from workflows.starts import start_process_receipt

router = APIRouter(tags=["webhooks"])
log = logging.getLogger("retenshun.api.webhooks")


class Received(BaseModel):
    received: bool = True
    duplicate: bool = False


class Unsubscribed(BaseModel):
    unsubscribed: bool = True


@router.post("/webhook/{project_id}", response_model=Received, status_code=202,
             responses=errors(400, 401, 413, 503))
async def receive_webhook(
    project_id: str, request: Request, db: SessionDep, state: StateDep,
    x_signature: Annotated[str | None, Header()] = None,
    x_timestamp: Annotated[str | None, Header()] = None,
    x_webhook_id: Annotated[str | None, Header()] = None,
) -> Received:
    """A provider's delivery receipt. `X-Signature`: hex HMAC-SHA256 of the raw body with the
    project's webhook secret (`sha256=` prefix allowed), or of `"{X-Timestamp}.{body}"` when
    X-Timestamp is sent (then within 5 minutes). Stored once per `id` (or X-Webhook-Id),
    answered at once, processed by a workflow."""
    body = await request.body()
    secret = await webhook_service.project_secret(db, state.secrets, project_id)
    if secret is None:
        # Unknown project and unset secret answer alike: nothing to learn from probing.
        raise Unauthorized("Invalid webhook signature (no webhook secret is set)")
    webhook_service.verify_signature(secret, body, x_signature, x_timestamp)
    try:
        parsed: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"Malformed JSON body: {exc}") from exc
    if not isinstance(parsed, dict) or parsed.get("event") not in webhook_service.RECEIPT_EVENTS:
        raise BadRequest("`event` must be one of " + ", ".join(
            sorted(webhook_service.RECEIPT_EVENTS)))
    if not isinstance(parsed.get("data"), dict):
        raise BadRequest("`data` must be an object carrying `messageId`")
    rid = webhook_service.receipt_id(body, parsed, x_webhook_id)
    stored = await webhook_service.store_receipt(db, project_id, rid, parsed["event"], parsed)
    await db.commit()
    if not stored.processed:
        try:
            client = await state.temporal.client()
            await start_process_receipt(client, state.settings.temporal_task_queue,
                                        project_id=project_id, receipt_id=rid,
                                        event=parsed["event"])
        except Exception as exc:
            # Stored but not yet processed: the provider's retry will start it.
            log.error("cannot start processing receipt %s: %s", rid, exc)
            raise ServiceUnavailable("Receipt stored; processing is unavailable, retry") from exc
    return Received(duplicate=not stored.new)


_CONFIRM_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Unsubscribe</title>
</head><body style="font-family:sans-serif;max-width:32rem;margin:4rem auto">
<h1>Unsubscribe</h1><p>Stop receiving these emails?</p>
<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">
<button type="submit">Unsubscribe</button></form></body></html>"""


@router.get("/unsubscribe/{token}", response_class=HTMLResponse, responses=errors(400))
async def unsubscribe_page(token: str, state: StateDep) -> HTMLResponse:
    """A confirmation page (link scanners follow GETs, so only the POST unsubscribes)."""
    message_service.read_unsubscribe_token(
        message_service.signing_keys(state.settings.secret_key), token)
    return HTMLResponse(_CONFIRM_PAGE)


@router.post("/unsubscribe/{token}", response_model=Unsubscribed, responses=errors(400, 404))
async def unsubscribe(token: str, db: SessionDep, state: StateDep) -> Unsubscribed:
    """RFC 8058 one-click: the link in `List-Unsubscribe`, no login. Sets `subscribed` false."""
    project_id, user_id = message_service.read_unsubscribe_token(
        message_service.signing_keys(state.settings.secret_key), token)
    if not await message_service.unsubscribe(db, project_id, user_id):
        raise NotFound("This user no longer exists")
    return Unsubscribed()
