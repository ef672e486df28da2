"""The health endpoints report each real service, and name the one that stops answering."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient
from pydantic import SecretStr

from app.devstack.postgres import PostgresServer
from app.devstack.redis import RedisServer
from app.devstack.seaweed import SeaweedS3
from app.devstack.stack import LocalStack
from app.main import create_app
from app.settings import AppSettings

PROBE_BOUND = 30.0
"""Each probe's timeout here: a loaded machine answers slowly but answers; a stopped server refuses at once."""


async def test_live_answers_without_any_service(app_settings: AppSettings) -> None:
    settings = app_settings.model_copy(update={"database_url": "postgresql://nobody@127.0.0.1:1/none"})
    async with AsyncTestClient(create_app(settings)) as client:
        response = await client.get("/health/live")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_reports_each_service_ok(app_settings: AppSettings) -> None:
    settings = app_settings.model_copy(update={"health_timeout": PROBE_BOUND})
    async with AsyncTestClient(create_app(settings)) as client:
        response = await client.get("/health/ready")
    assert response.status_code == 200
    assert response.json() == {"database": "ok", "redis": "ok", "s3": "ok"}


async def test_openapi_schema_lists_the_health_routes(app_settings: AppSettings) -> None:
    async with AsyncTestClient(create_app(app_settings)) as client:
        response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    assert {"/health/live", "/health/ready"} <= set(response.json()["paths"])


def _point_at_postgres(settings: AppSettings, server: PostgresServer, _: LocalStack) -> AppSettings:
    return settings.model_copy(update={"database_url": server.url()})


def _point_at_redis(settings: AppSettings, server: RedisServer, _: LocalStack) -> AppSettings:
    return settings.model_copy(update={"redis_url": server.url()})


def _point_at_s3(settings: AppSettings, server: SeaweedS3, stack: LocalStack) -> AppSettings:
    local = LocalStack(env={"AHOP_S3_BUCKET": settings.s3_bucket, **_s3_env(server)})
    local.ensure_bucket()
    return settings.model_copy(
        update={
            "s3_endpoint_url": server.endpoint_url,
            "s3_access_key_id": server.credentials.access_key_id,
            "s3_secret_access_key": SecretStr(server.credentials.secret_access_key),
        }
    )


def _s3_env(server: SeaweedS3) -> dict[str, str]:
    return {
        "AHOP_S3_ENDPOINT_URL": server.endpoint_url,
        "AHOP_S3_ACCESS_KEY_ID": server.credentials.access_key_id,
        "AHOP_S3_SECRET_ACCESS_KEY": server.credentials.secret_access_key,
    }


STOPPABLE: dict[str, tuple[Callable[[Path], object], Callable[..., AppSettings]]] = {
    "database": (lambda state: PostgresServer.start(state, durable=False), _point_at_postgres),
    "redis": (lambda state: RedisServer.start(state, durable=False), _point_at_redis),
    "s3": (lambda state: SeaweedS3.start(state), _point_at_s3),
}


@pytest.fixture(params=sorted(STOPPABLE))
def service_to_stop(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, object]]:
    """A separate, real server of one kind, which the test may stop; always stopped afterwards."""
    start, _ = STOPPABLE[request.param]
    server = start(tmp_path / "own")
    try:
        yield request.param, server
    finally:
        server.stop()  # type: ignore[attr-defined]


async def test_ready_is_503_naming_the_service_that_stopped(
    service_to_stop: tuple[str, object], app_settings: AppSettings, stack: LocalStack
) -> None:
    name, server = service_to_stop
    _, point = STOPPABLE[name]
    settings = point(app_settings.model_copy(update={"health_timeout": PROBE_BOUND}), server, stack)
    async with AsyncTestClient(create_app(settings)) as client:
        before = await client.get("/health/ready")
        assert before.status_code == 200, before.text
        server.stop()  # type: ignore[attr-defined]
        after = await client.get("/health/ready")
    assert after.status_code == 503
    body = after.json()
    assert body[name].startswith("unavailable"), body
    assert {other: body[other] for other in body if other != name} == {
        other: "ok" for other in ("database", "redis", "s3") if other != name
    }
