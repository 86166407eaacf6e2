"""API keys: 256 random bits, stored as SHA-256 only; the full key is shown once."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.crypto import sha256_hex
from core.errors import NotFound
from core.ids import new_id, random_token
from core.models import ApiKey

KEY_PREFIXES = {"public": "pk_live_", "secret": "sk_live_"}
# NOTIFY channel of revocations, for the API processes' key caches (api/keycache.py).
KEY_CACHE_CHANNEL = "retenshun_api_keys"


async def create_key(
    db: AsyncSession, *, project_id: str, name: str, kind: str, created_by: str | None
) -> tuple[ApiKey, str]:
    full_key = KEY_PREFIXES[kind] + random_token(32)
    key = ApiKey(
        id=new_id("key"), project_id=project_id, name=name, kind=kind,
        key_hash=sha256_hex(full_key), prefix=full_key[:14] + "...", created_by=created_by,
    )
    db.add(key)
    await db.flush()
    await db.refresh(key)
    return key, full_key


async def list_keys(db: AsyncSession, project_id: str) -> list[ApiKey]:
    rows = await db.scalars(
        select(ApiKey)
        .where(ApiKey.project_id == project_id, ApiKey.revoked_at.is_(None))
        .order_by(ApiKey.created_at)
    )
    return list(rows)


async def revoke_key(db: AsyncSession, *, project_id: str, key_id: str) -> None:
    result = await db.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.project_id == project_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise NotFound(f"No active API key {key_id} in this project")
    # Every API process caches valid keys for a few seconds: tell them, at commit.
    await db.execute(select(func.pg_notify(KEY_CACHE_CHANNEL, "")))
