"""Every error leaves as {"error", "message", "status"} (+ "details" for validation)."""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import RetenshunError, TooManyRequests
from core.schemas import ErrorBody

log = logging.getLogger("retenshun.api")


def error_response(
    status: int, message: str, *, details: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "error": HTTPStatus(status).phrase, "message": message, "status": status
    }
    if details is not None:
        body["details"] = details
    return JSONResponse(body, status_code=status, headers=headers)


def _field_path(loc: tuple[Any, ...]) -> str:
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def _validation_details(exc: RequestValidationError) -> tuple[str, list[dict[str, str]]]:
    details: list[dict[str, str]] = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx") or {}
            return f"Malformed JSON body: {ctx.get('error', 'cannot be parsed')}", []
        msg = err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":
            msg = "Unknown field"
        elif err.get("type") == "missing":
            msg = "Field required"
        details.append({"field": _field_path(tuple(err.get("loc", ()))), "message": msg})
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5])
    return f"Request validation failed: {summary}", details


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RetenshunError)
    async def _retenshun(_: Request, exc: RetenshunError) -> JSONResponse:
        headers = None
        if isinstance(exc, TooManyRequests):
            headers = {"Retry-After": str(exc.retry_after)}
        return error_response(exc.status, exc.message, details=exc.details, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, details = _validation_details(exc)
        return error_response(400, message, details=details or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404 and exc.detail == "Not Found":
            message = f"No route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
        if _is_nul_character(exc):
            return error_response(400, "Text may not contain the NUL character (\\u0000)")
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return internal_error_response()

    _document_errors(app)


def _is_nul_character(exc: BaseException | None) -> bool:
    """PostgreSQL text and jsonb cannot hold U+0000: psycopg refuses such a parameter and
    the server such a JSON escape. Any write path may meet one in user input; it is the
    caller's error, not ours. (Ingestion checks first and names the field.)"""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, psycopg.errors.UntranslatableCharacter) or (
                isinstance(exc, psycopg.DataError) and "NUL" in str(exc)):
            return True
        exc = getattr(exc, "orig", None) or exc.__cause__
        seen += 1
    return False


def internal_error_response() -> JSONResponse:
    """The one 500 body: what happened stays in the log, never in the response."""
    return error_response(500, "An internal error occurred; it has been logged.")


def _document_errors(app: FastAPI) -> None:
    """Make /openapi.json tell the truth about errors: validation is a 400 in the contract's
    body (FastAPI would document a 422 that never happens), errors are JSON whatever the
    success type, and any operation can fail with a 500 in the same body."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        error_ref = {"$ref": "#/components/schemas/ErrorBody"}
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                had_422 = responses.pop("422", None) is not None
                if had_422 and "400" not in responses:
                    responses["400"] = {
                        "description": "Malformed JSON or a body/query that fails validation "
                                       "(with `details`)",
                        "content": {"application/json": {"schema": error_ref}},
                    }
                for code, response in responses.items():
                    # Errors always leave as JSON (the handlers above), also from a route
                    # whose success is HTML: FastAPI would document them in its media type.
                    content = response.get("content", {})
                    if code[0] in "45" and "application/json" not in content and any(
                        media.get("schema") == error_ref for media in content.values()
                    ):
                        response["content"] = {"application/json": {"schema": error_ref}}
                responses.setdefault("500", {
                    "description": "Internal error (logged; the body never carries a traceback)",
                    "content": {"application/json": {"schema": error_ref}},
                })
        components = schema.get("components", {}).get("schemas", {})
        if "ErrorBody" not in components:
            components["ErrorBody"] = ErrorBody.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            for name, sub in components["ErrorBody"].pop("$defs", {}).items():
                components.setdefault(name, sub)
        for unused in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 models
            if f'"#/components/schemas/{unused}"' not in json.dumps(schema):
                components.pop(unused, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
