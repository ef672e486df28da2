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


DRIVER_MODULES = ("asyncpg", "psycopg", "sqlalchemy.pool", "sqlalchemy.connectors", "sqlalchemy.dialects")
"""Where a connection is made: a socket error raised through one of these was raised while reaching the database."""


def _raised_by_the_driver(exc: BaseException) -> bool:
    """Whether `exc` came up through the code that connects to the database (SQLAlchemy re-raises a failed
    connect's socket error unwrapped), not from other code a request ran beside its database work."""
    traceback = exc.__traceback__
    while traceback is not None:
        module = traceback.tb_frame.f_globals.get("__name__", "")
        if isinstance(module, str) and module.startswith(DRIVER_MODULES):
            return True
        traceback = traceback.tb_next
    return False


def database_unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the database did not answer, rather than that it refused what was asked of it."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    if isinstance(exc, OSError):
        # Connecting raises the socket's own error unwrapped: refused, timed out, no route, no such host.
        return _raised_by_the_driver(exc)
    if isinstance(exc, DBAPIError):
        sqlstate = getattr(exc.orig, "sqlstate", None) or ""
        return exc.connection_invalidated or sqlstate.startswith(UNAVAILABLE_SQLSTATES)
    return False
