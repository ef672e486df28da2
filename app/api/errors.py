"""The one mapping from errors to HTTP answers: `{"status_code", "detail"}`, plus `extra.errors` for 422.

Validation errors answer 422 with every offending field (Litestar's default is 400), so a client can show them all:
`extra.errors` lists the first `MAX_LISTED_PROBLEMS` of them and `extra.count` says how many there were, so a body
with thousands of bad fields gets an answer of bounded size that still says how bad it was.

Damaged content answers 409: the stored object conflicts with what its row records, the request itself was fine,
and only an operator's repair (`ahop verify --repair`) resolves it, so retrying the same request does not help.
"""

from __future__ import annotations

from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap
from sqlalchemy.exc import DBAPIError

from app.db.outages import database_unavailable
from app.errors import AppError, Conflict, Damaged, Forbidden, InvalidInput, NotFound, Unavailable, Upstream

STATUS = {
    NotFound: 404,
    Conflict: 409,
    Damaged: 409,
    InvalidInput: 422,
    Forbidden: 403,
    Upstream: 502,
    Unavailable: 503,
}
DATABASE_ERRORS = (DBAPIError, OSError)
"""What `database_error` handles: 503 when the database did not answer (a dropped or refused connection, a host
that cannot be found or reached, a server shutting down or starting up), else 500. A socket error is the
database's only when it came up through the code that connects to it (`app.db.outages`)."""
MAX_LISTED_PROBLEMS = 100


def _answer(status: int, detail: str, extra: dict[str, Any] | None = None) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {"status_code": status, "detail": detail}
    if extra:
        body["extra"] = extra
    return Response(body, status_code=status, media_type=MediaType.JSON)


def app_error(_: Request[Any, Any, Any], exc: AppError) -> Response[dict[str, Any]]:
    status = status_of(exc)
    if isinstance(exc, InvalidInput) and exc.fields:
        return _invalid(str(exc), [{"field": field, "message": message} for field, message in exc.fields.items()])
    return _answer(status, str(exc))


def _invalid(detail: str, problems: list[dict[str, str]]) -> Response[dict[str, Any]]:
    """422 naming the first `MAX_LISTED_PROBLEMS` problems; with more, the detail says how many and that it cut."""
    count = len(problems)
    if count > MAX_LISTED_PROBLEMS:
        detail = f"{count:,} problems; the first {MAX_LISTED_PROBLEMS} are listed"
    return _answer(422, detail, {"errors": problems[:MAX_LISTED_PROBLEMS], "count": count})


def validation_error(_: Request[Any, Any, Any], exc: ValidationException) -> Response[dict[str, Any]]:
    errors = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if isinstance(item, dict):
            errors.append(
                {"field": str(item.get("key") or item.get("source") or "body"), "message": str(item.get("message"))}
            )
    if not errors:
        errors.append({"field": "body", "message": exc.detail})
    return _invalid(exc.detail or "the request is not valid", errors)


def database_error(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """The database did not answer: 503, and the transaction (if any) was rolled back with the session. Any other
    database error is a bug: 500, as Litestar answers it."""
    if not database_unavailable(exc):
        return _answer(500, "Internal Server Error")
    return _answer(503, f"the database is unavailable ({type(exc).__name__}); nothing was written")


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    AppError: app_error,
    ValidationException: validation_error,
    **dict.fromkeys(DATABASE_ERRORS, database_error),
}


def status_of(exc: BaseException) -> int:
    """The status the handlers above (or Litestar's own, for its HTTP exceptions) answer for `exc`; else 500."""
    if isinstance(exc, HTTPException):
        return exc.status_code
    if isinstance(exc, AppError):
        return next(code for kind, code in STATUS.items() if isinstance(exc, kind))
    if isinstance(exc, DATABASE_ERRORS) and database_unavailable(exc):
        return 503
    return 500
