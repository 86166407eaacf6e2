"""Liveness of the two things the product cannot work without."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api.deps import StateDep

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    database: bool
    temporal: bool


@router.get("/healthz", response_model=Health, responses={503: {"model": Health}})
async def healthz(state: StateDep) -> JSONResponse:
    """200 when PostgreSQL and Temporal both answer, 503 (naming which failed) otherwise."""
    try:
        async with state.raw_pool.connection(timeout=2) as conn:
            await conn.execute("SELECT 1")
        database = True
    except Exception:
        database = False
    temporal = await state.temporal.healthy()
    ok = database and temporal
    body = Health(status="ok" if ok else "unavailable", database=database, temporal=temporal)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)
