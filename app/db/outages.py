"""Tells a database that is away (stopped, restarting, crashed, unreachable) from one that refused a statement.

The API answers the first with 503 and the control loop waits it out; the second is a bug and stays a 500 with
its traceback. A server that is shutting down or starting up (crash recovery after a kill takes a while) answers
with an error of its own rather than refusing the connection, so the SQLSTATE says which kind an error is.
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

UNAVAILABLE_SQLSTATES = ("08", "57P", "53300")
"""Connection exceptions; admin shutdown, crash shutdown, cannot connect now (starting up, shutting down,
recovering); too many connections."""


def database_unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the database did not answer, rather than that it refused what was asked of it."""
    if isinstance(exc, OperationalError | InterfaceError | ConnectionError | TimeoutError):
        return True  # TimeoutError and ConnectionError: asyncpg's own, raised unwrapped while connecting
    if isinstance(exc, DBAPIError):
        sqlstate = getattr(exc.orig, "sqlstate", None) or ""
        return exc.connection_invalidated or sqlstate.startswith(UNAVAILABLE_SQLSTATES)
    return False
