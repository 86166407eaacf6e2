"""Channel settings (providers) and the inbound-webhook secret."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, EmailStr, Field, HttpUrl

from api.deps import SESSION_COOKIE, SessionDep, StateDep, dashboard_session, secret_key
from api.responses import SECRET_ERRORS
from core.schemas import ApiModel, ReadModel
from core.services import channels as channel_service
from core.services import webhooks as webhook_service

router = APIRouter(prefix="/channels", tags=["channels"])


class ChannelsUpdate(ApiModel):
    """Any subset of the settings; a secret left out keeps the stored one, null clears."""

    email_provider: Literal["SMTP", "POSTALYNK"] | None = None
    smtp_host: str | None = Field(None, max_length=255)
    smtp_port: int | None = Field(None, ge=1, le=65535)
    smtp_username: str | None = Field(None, max_length=255)
    smtp_password: str | None = Field(None, max_length=1000)
    smtp_from_email: EmailStr | None = None
    smtp_start_tls: bool | None = None
    postalynk_api_key: str | None = Field(None, max_length=1000)
    postalynk_from_email: EmailStr | None = None
    postalynk_base_url: HttpUrl | None = None
    push_provider: Literal["WEBPUSH", "WEBHOOK"] | None = None
    web_push_public_key: str | None = Field(None, max_length=500)
    web_push_private_key: str | None = Field(None, max_length=500)
    web_push_subject: str | None = Field(None, max_length=300)
    push_webhook_url: HttpUrl | None = None
    sms_provider: Literal["TWILIO"] | None = None
    twilio_account_sid: str | None = Field(None, max_length=100)
    twilio_auth_token: str | None = Field(None, max_length=200)
    twilio_from_number: str | None = Field(None, max_length=30)
    twilio_base_url: HttpUrl | None = None
    openai_api_key: str | None = Field(None, max_length=500)
    openai_base_url: HttpUrl | None = None
    openai_model: str | None = Field(None, max_length=100)

    def changes(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", by_alias=True, include=self.model_fields_set)
        return {k: (v.rstrip("/") if k.endswith("BaseUrl") and v else v) for k, v in data.items()}


class ChannelsView(BaseModel):
    """Per channel: `provider`, `configured`, the non-secret settings, and for each secret
    only `has<Name>` (e.g. `hasSmtpPassword`). Secrets are never returned."""

    email: dict[str, Any] = Field(examples=[{"provider": "SMTP", "configured": True,
                                             "smtpHost": "smtp.example.com", "smtpPort": 587,
                                             "smtpFromEmail": "hi@example.com",
                                             "hasSmtpPassword": True}])
    push: dict[str, Any]
    sms: dict[str, Any]
    inApp: dict[str, Any]
    ai: dict[str, Any]
    webhook: dict[str, Any] = Field(examples=[{"secretConfigured": True}])


class Updated(ReadModel):
    updated: bool = True


class WebhookSecret(ReadModel):
    secret: str = Field(description="whsec_…; shown only in this response")


@router.get("", response_model=ChannelsView, responses=SECRET_ERRORS)
async def get_channels(key: Annotated[Any, Depends(secret_key)], db: SessionDep,
                       state: StateDep) -> dict[str, Any]:
    """Providers, `configured`, and non-secret fields; secrets only as `has…` booleans."""
    channels = await channel_service.load(db, state.secrets, key.project_id,
                                          state.settings.smtp_catcher)
    view = channel_service.public_view(channels)
    view["webhook"] = {"secretConfigured": await webhook_service.has_secret(db, key.project_id)}
    return view


async def _update(body: ChannelsUpdate, project_id: str, db: SessionDep, state: StateDep,
                  ) -> Updated:
    await channel_service.update(db, state.secrets, project_id, body.changes(),
                                 state.settings.smtp_catcher)
    return Updated()


@router.put("", response_model=Updated, responses=SECRET_ERRORS)
async def put_channels(body: ChannelsUpdate, key: Annotated[Any, Depends(secret_key)],
                       db: SessionDep, state: StateDep) -> Updated:
    """Same merge rules as PATCH (fields left out are kept; null clears one)."""
    return await _update(body, key.project_id, db, state)


@router.patch("", response_model=Updated, responses=SECRET_ERRORS)
async def patch_channels(body: ChannelsUpdate, key: Annotated[Any, Depends(secret_key)],
                         db: SessionDep, state: StateDep) -> Updated:
    return await _update(body, key.project_id, db, state)


@router.post("/webhook-secret", response_model=WebhookSecret, responses=SECRET_ERRORS)
async def rotate_webhook_secret(request: Request, db: SessionDep, state: StateDep,
                                ) -> WebhookSecret:
    """Rotate the secret that signs inbound receipts (and outbound push webhooks).
    Takes a secret key or the dashboard session (with X-CSRF-Token)."""
    if request.cookies.get(SESSION_COOKIE) and not (
        request.headers.get("x-api-key") or request.headers.get("authorization")
    ):
        project_id = (await dashboard_session(request, state, db)).project_id
    else:
        project_id = (await secret_key(request, state)).project_id
    secret = await webhook_service.rotate_secret(db, state.secrets, project_id)
    return WebhookSecret(secret=secret)
