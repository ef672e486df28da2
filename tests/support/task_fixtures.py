"""Fixtures of the tests that start tasks through the API: the control loop at a test's pace, a Redis client, and
no task left for a later test to pick up. A test module takes them by importing them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from app.settings import AppSettings
from tests.support.database import sql


@pytest.fixture(name="api_settings")
def fast_api_settings(api_settings: AppSettings) -> AppSettings:
    """The control loop at a test's pace: passes every 0.1 s, a vanished job sent again and a dead replica's event
    taken over after 0.5 s. Tasks that tests start without a heartbeating worker stay running however slow the
    machine (the reaper's test backdates its tasks)."""
    return api_settings.model_copy(
        update={"control_interval": 0.1, "requeue_after": 0.5, "heartbeat_timeout": 600.0, "event_claim_after": 0.5}
    )


@pytest.fixture(name="no_unfinished_tasks_left", autouse=True)
async def cancel_unfinished_tasks(database_url: str) -> AsyncIterator[None]:
    """Later tests' control loops (and workers) must not pick up what a test left waiting or running."""
    yield
    await sql(
        database_url,
        "UPDATE tasks SET status = 'cancelled', finished_at = now(), error = 'left by a test' "
        "WHERE status IN ('pending', 'queued', 'running')",
    )


@pytest.fixture(name="redis")
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    """A client of the test's Redis database, closed at its end."""
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()
