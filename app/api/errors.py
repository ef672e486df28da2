"""The one mapping from errors to HTTP answers: `{"status_code", "detail"}`, plus `extra.errors` for 422.

Damaged content answers 409: the stored object conflicts with what its row records, the request itself was fine,
and only an operator's repair (`ahop verify --repair`) resolves it, so retrying the same request does not help.

Validation errors answer 422 with every offending field (Litestar's default is 400), so a client can show them all.
"""

from __future__ import annotations

from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import ValidationException
from litestar.types import ExceptionHandlersMap
from sqlalchemy.exc import InterfaceError, OperationalError

from app.services.errors import AppError, Conflict, Damaged, Forbidden, InvalidInput, NotFound, Unavailable, Upstream

STATUS = {
    NotFound: 404,
    Conflict: 409,
    Damaged: 409,
    InvalidInput: 422,
    Forbidden: 403,
    Upstream: 502,
    Unavailable: 503,
}


def _answer(status: int, detail: str, extra: dict[str, Any] | None = None) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {"status_code": status, "detail": detail}
    if extra:
        body["extra"] = extra
    return Response(body, status_code=status, media_type=MediaType.JSON)


def app_error(_: Request[Any, Any, Any], exc: AppError) -> Response[dict[str, Any]]:
    status = next(code for kind, code in STATUS.items() if isinstance(exc, kind))
    extra = None
    if isinstance(exc, InvalidInput) and exc.fields:
        extra = {"errors": [{"field": field, "message": message} for field, message in exc.fields.items()]}
    return _answer(status, str(exc), extra)


def validation_error(_: Request[Any, Any, Any], exc: ValidationException) -> Response[dict[str, Any]]:
    errors = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if isinstance(item, dict):
            errors.append(
                {"field": str(item.get("key") or item.get("source") or "body"), "message": item.get("message")}
            )
    if not errors:
        errors.append({"field": "body", "message": exc.detail})
    return _answer(422, exc.detail or "the request is not valid", {"errors": errors})


def database_unavailable(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """The database did not answer: 503, and the transaction (if any) was rolled back with the session."""
    return _answer(503, f"the database is unavailable ({type(exc).__name__}); nothing was written")


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    AppError: app_error,
    ValidationException: validation_error,
    OperationalError: database_unavailable,
    InterfaceError: database_unavailable,
    ConnectionError: database_unavailable,
}
