"""Readiness probes of the three services the server depends on."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.blobstore import BlobStore

OK = "ok"


@dataclass(frozen=True)
class Readiness:
    """One word per service: "ok", or what went wrong."""

    checks: dict[str, str]

    @property
    def ready(self) -> bool:
        return all(outcome == OK for outcome in self.checks.values())


@dataclass(eq=False)
class HealthProbe:
    """Checks Postgres, Redis and S3 concurrently, each bounded by `timeout` seconds."""

    engine: AsyncEngine
    redis: Redis
    blobs: BlobStore
    timeout: float

    async def _database(self) -> None:
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def _redis_ping(self) -> None:
        await self.redis.ping()

    async def _s3(self) -> None:
        await asyncio.to_thread(self.blobs.check_bucket)

    async def _outcome(self, probe: Callable[[], Awaitable[None]]) -> str:
        try:
            await asyncio.wait_for(probe(), self.timeout)
        except TimeoutError:
            return f"unavailable: no answer within {self.timeout:g}s"
        except Exception as exc:  # any failure of a dependency is reported, not raised
            return f"unavailable: {type(exc).__name__}: {exc}"[:300].strip()
        return OK

    async def check(self) -> Readiness:
        names = ("database", "redis", "s3")
        outcomes = await asyncio.gather(
            self._outcome(self._database), self._outcome(self._redis_ping), self._outcome(self._s3)
        )
        return Readiness(dict(zip(names, outcomes, strict=True)))
