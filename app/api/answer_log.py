"""What an error answer leaves in the server's log, besides the access-log line every request gets.

- 4xx: nothing more. The caller sent something wrong and was told so in the answer; the access log has the line.
- 502 and 503 raised by a use case (`Upstream`: a Git remote failed; `Unavailable`: Redis or S3 did not answer):
  one WARNING line with the message, which already names what failed. An outage must not write a traceback for
  every request it refuses.
- Any other 5xx: an ERROR with the traceback. That is an unexpected exception (a 500: a bug) or the database
  refusing or dropping a connection (503), where the operator needs to see where and why.
"""

from __future__ import annotations

import sys

from litestar.types import Logger, Scope

from app.api.errors import status_of
from app.errors import Unavailable, Upstream


def log_error_answer(logger: Logger, scope: Scope, _traceback: list[str]) -> None:
    """Litestar's `exception_logging_handler`: called, inside the `except`, for every exception a request raised."""
    exc = sys.exception()
    if exc is None:
        return
    status = status_of(exc)
    if status < 500:
        return
    request = f"{scope.get('method', scope['type'].upper())} {scope['path']}"
    if isinstance(exc, Upstream | Unavailable):
        logger.warning("%s answered %d: %s", request, status, exc)
    else:
        logger.error("%s answered %d: %s: %s", request, status, type(exc).__name__, exc, exc_info=exc)
