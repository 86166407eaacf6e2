"""The `responses=` tables each route declares, so /docs lists every error it can give."""

from typing import Any

from core.schemas import ErrorBody

_DESCRIPTIONS = {
    400: "Malformed JSON or a body/query that fails validation (with `details`)",
    401: "Missing, unknown or revoked credentials",
    403: "Credentials lack the scope or role for this endpoint",
    404: "No such resource in this project",
    409: "Conflicts with the current state",
    413: "Body over 1 MiB",
    429: "Rate limit exceeded (see Retry-After)",
    503: "A dependency (database or Temporal) is unavailable",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": ErrorBody, "description": _DESCRIPTIONS[c]} for c in codes}


KEY_ERRORS = errors(400, 401, 403, 413, 429)
SECRET_ERRORS = errors(400, 401, 403, 404, 413, 429)
SESSION_ERRORS = errors(400, 401, 403, 413, 429)
