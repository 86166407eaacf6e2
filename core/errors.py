"""One error base class: services raise these, the API turns them into the contract's body."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any


class RetenshunError(Exception):
    status: int = 500

    def __init__(self, message: str, *, status: int | None = None, details: Any = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.details = details

    @property
    def reason(self) -> str:
        return HTTPStatus(self.status).phrase


class BadRequest(RetenshunError):
    status = 400


class Unauthorized(RetenshunError):
    status = 401


class Forbidden(RetenshunError):
    status = 403


class NotFound(RetenshunError):
    status = 404


class Conflict(RetenshunError):
    status = 409


class TooManyRequests(RetenshunError):
    status = 429

    def __init__(self, message: str, *, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class ServiceUnavailable(RetenshunError):
    status = 503
