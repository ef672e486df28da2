"""The one map from what went wrong to the exit code of an `ahop` command, for every command.

    0    ok
    1    problems found (verify, backfill) or the script failed (`ahop task run` exits with the script's own code
         when it has one, 128 + N when signal N ended it, 1 when it failed without one, was cancelled or was lost)
    2    bad input: an invalid value, an unknown id or code, a name already taken, a request the caller's token
         may not make (401/403: the token is the operator's input), or one that conflicts with the object's state
    3    a service unavailable: the API, the database, Redis, S3 or a Git remote did not answer or failed
         (any 5xx answer of the API)
    4    another GC is running
    124  the task timed out (as `timeout(1)` reports it)
    130  interrupted (Ctrl-C while following a task)

Errors raised in the command itself (`app.errors`, `storage.errors`, the database driver) and answers of
the API map to these codes here and nowhere else.
"""

from __future__ import annotations

import sys
from typing import Any

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 3
EXIT_BUSY = 4
EXIT_TIMED_OUT = 124
EXIT_INTERRUPTED = 130


def _loaded(module: str, name: str) -> Any:
    """`module.name` if the module is loaded, else None. An error of a module that was never imported cannot have
    been raised, and looking it up this way keeps `ahop worker` from loading `app` just to map an error."""
    found = sys.modules.get(module)
    return getattr(found, name, None) if found is not None else None


def _is(exc: BaseException, module: str, *names: str) -> bool:
    kinds = tuple(kind for kind in (_loaded(module, name) for name in names) if isinstance(kind, type))
    return bool(kinds) and isinstance(exc, kinds)


def code_for_error(exc: BaseException) -> int | None:
    """The exit code for an error that reached the command line; None for one that is not the operator's (a bug,
    whose traceback should show)."""
    if _is(exc, "app.maintenance.runs", "AlreadyRunning"):
        return EXIT_BUSY
    if _is(exc, "app.errors", "Unavailable", "Upstream"):
        return EXIT_UNAVAILABLE
    if _is(exc, "app.errors", "AppError"):  # not found, invalid, conflict, forbidden
        return EXIT_BAD_INPUT
    if _is(exc, "storage.errors", "StorageUnavailable", "BucketNotFound"):
        return EXIT_UNAVAILABLE
    if _is(exc, "storage.errors", "IntegrityError"):
        return EXIT_PROBLEMS
    if _is(exc, "storage.errors", "StorageError"):  # a malformed digest, a refused snapshot, no such blob
        return EXIT_BAD_INPUT
    if _is(exc, "sqlalchemy.exc", "OperationalError", "InterfaceError"):
        return EXIT_UNAVAILABLE
    if _is(exc, "httpx", "TransportError"):
        return EXIT_UNAVAILABLE
    return None


def code_for_status(status: int) -> int:
    """The exit code for an answer of the API with this HTTP status."""
    if status < 400:
        return EXIT_OK
    if status >= 500:  # 502 a Git remote failed, 503 a service is down, 500 the server failed
        return EXIT_UNAVAILABLE
    return EXIT_BAD_INPUT  # 400, 404, 409, 422, and 401/403: the token given is the operator's input too
