"""Settings from the environment (and `.env`), validated once at start-up."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_SECRET_KEY = "dev-insecure-secret-key-change-me"  # noqa: S105 (refused outside dev)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    env: Literal["dev", "test", "production"] = Field("production", alias="RETENSHUN_ENV")
    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:5432/retenshun", alias="DATABASE_URL"
    )
    temporal_address: str = Field("127.0.0.1:7233", alias="TEMPORAL_ADDRESS")
    temporal_namespace: str = Field("default", alias="TEMPORAL_NAMESPACE")
    temporal_task_queue: str = Field("retenshun", alias="TEMPORAL_TASK_QUEUE")
    temporal_ui_url: str = Field("http://127.0.0.1:8233", alias="TEMPORAL_UI_URL")
    # Comma-separated Fernet-compatible passphrases; the first encrypts, all decrypt.
    secret_key: str = Field(DEV_SECRET_KEY, alias="RETENSHUN_SECRET_KEY")
    public_url: str = Field("http://127.0.0.1:8000", alias="RETENSHUN_PUBLIC_URL")
    rate_limit_ingest: str = Field("1000/second", alias="RETENSHUN_RATE_LIMIT_INGEST")
    rate_limit_ingest_burst: int = Field(2000, alias="RETENSHUN_RATE_LIMIT_INGEST_BURST")
    rate_limit_api: str = Field("100/second", alias="RETENSHUN_RATE_LIMIT_API")
    redis_url: str | None = Field(None, alias="RETENSHUN_REDIS_URL")
    session_ttl_seconds: int = Field(7 * 24 * 3600, alias="RETENSHUN_SESSION_TTL")
    invite_ttl_seconds: int = Field(7 * 24 * 3600, alias="RETENSHUN_INVITE_TTL")
    cookie_secure: bool = Field(False, alias="RETENSHUN_COOKIE_SECURE")
    db_pool_size: int = Field(10, alias="RETENSHUN_DB_POOL_SIZE")
    # Set by `retenshun dev`: where the local SMTP catcher drops mail for GET /dev/mail.
    dev_mail_dir: str | None = Field(None, alias="RETENSHUN_DEV_MAIL_DIR")
    # Tag enrollment runs with projectId/automationId/userId search attributes (registered
    # by `retenshun dev`; register them on a production cluster or set this false).
    temporal_search_attributes: bool = Field(True, alias="RETENSHUN_TEMPORAL_SEARCH_ATTRIBUTES")
    # How long POST /messages waits for the send before answering `queued`.
    message_wait_seconds: float = Field(3.0, alias="RETENSHUN_MESSAGE_WAIT_SECONDS")
    # Set by `retenshun dev`: new projects' email channel points at this SMTP catcher.
    smtp_catcher: str | None = Field(None, alias="RETENSHUN_SMTP_CATCHER")
    openai_api_key: str | None = Field(None, alias="OPENAI_API_KEY")
    openai_base_url: str | None = Field(None, alias="OPENAI_BASE_URL")
    openai_model: str = Field("gpt-4o-mini", alias="OPENAI_MODEL")

    @model_validator(mode="after")
    def _refuse_default_secret_outside_dev(self) -> Settings:
        if self.env == "production" and self.secret_key == DEV_SECRET_KEY:
            raise ValueError(
                "RETENSHUN_SECRET_KEY must be set outside dev: it encrypts provider "
                "credentials at rest (use a long random string, e.g. "
                "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`)"
            )
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
