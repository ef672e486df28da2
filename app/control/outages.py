"""Saying once that a service the control loop needs is away, and once that it is back.

Every job of the loop notices an outage on its own, pass after pass. An operator needs one line when the database
or Redis goes away and one when it returns, without a traceback (nothing is wrong with our code): not one line per
job, per pass, or per event that waits to be recorded.
"""

from __future__ import annotations

import logging

from redis.exceptions import RedisError

from app.db.outages import database_unavailable

log = logging.getLogger("ahop.control")


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and what it was raised from (a use case's `Unavailable` names the service's own error as its cause)."""
    found: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in found:
        found.append(current)
        current = current.__cause__
    return found


def service_of(exc: BaseException) -> str | None:
    """The service whose outage `exc` reports, or None for any other failure (a bug: logged with its traceback)."""
    for cause in _chain(exc):
        if isinstance(cause, RedisError):  # Redis clients wrap their socket errors: checked first
            return "Redis"
        if database_unavailable(cause):
            return "the database"
    return None


class Outages:
    """Which jobs are failing on which service: the first job that fails on a service says it is unavailable,
    and the last of them to work again says it is back."""

    def __init__(self) -> None:
        self._failing: dict[str, set[str]] = {}

    def failed(self, job: str, service: str, exc: BaseException, retry_after: float) -> None:
        jobs = self._failing.setdefault(service, set())
        if not jobs:
            log.warning(
                "%s is unavailable (%s: %s); the control loop waits for it, trying again every %g s",
                service,
                type(exc).__name__,
                exc,
                retry_after,
            )
        jobs.add(job)

    def worked(self, job: str) -> None:
        for service, jobs in list(self._failing.items()):
            if job not in jobs:
                continue
            jobs.discard(job)
            if not jobs:
                del self._failing[service]
                log.info("%s is available again; the control loop goes on", service)
