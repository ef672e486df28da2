"""Errors of the server's use cases. `app.api.errors` maps each to one HTTP status; commands map them to exit codes.

AppError
├── NotFound        no such object in the caller's tenant (another tenant's objects are "not found" too)
├── Conflict        the object exists already, or is still in use
├── InvalidInput    the request names something wrong; `fields` lists each field and what is expected
├── Damaged         stored content fails its check; an operator repairs it (`ahop verify --repair`)
├── Upstream        a Git remote failed (its message, credentials redacted)
└── Unavailable     the database, Redis or S3 did not answer; nothing was written
"""

from __future__ import annotations


class AppError(Exception):
    """Base class of the use cases' errors."""


class NotFound(AppError):
    pass


class Forbidden(AppError):
    pass


class Conflict(AppError):
    pass


class InvalidInput(AppError):
    """Bad input; `fields` maps each offending field to what was wrong with it."""

    def __init__(self, message: str, fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.fields = fields or {}


class Damaged(AppError):
    """Content in the store is not what its row records: nothing a request can fix, so no retry helps."""


class Upstream(AppError):
    pass


class Unavailable(AppError):
    pass
