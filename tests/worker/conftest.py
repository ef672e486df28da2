"""Worker test fixtures: the session bucket as a BlobStore, publishing a directory into it as a `BlobRef`, and the
queue of jobs."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings

from tests.support.blob_fixtures import blobs, publish, s3_location  # noqa: F401  (fixtures)
from worker.protocol import serialize


@pytest.fixture
async def queue(redis_url: str) -> AsyncIterator[ArqRedis]:
    """The arq queue of jobs, as the server enqueues them (JSON)."""
    pool = await create_pool(RedisSettings.from_dsn(redis_url), job_serializer=serialize)
    yield pool
    await pool.aclose()
