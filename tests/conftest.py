"""Shared fixtures: one stack of real services per test session, a fresh migrated database, isolation per test;
the API in-process, tenants with tokens of each role, a Git repository of scripts to import from, and real OpenSSH
servers as the hosts an operator manages.

The services come from the same launcher `ahop dev` uses, unless the environment names existing ones
(AHOP_DATABASE_URL, AHOP_REDIS_URL, AHOP_S3_ENDPOINT_URL with AHOP_S3_ACCESS_KEY_ID/AHOP_S3_SECRET_ACCESS_KEY).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from litestar import Litestar
from litestar.testing import AsyncTestClient
from pydantic import SecretStr
from redis.asyncio import Redis

from app.devstack.stack import LocalStack
from app.main import create_app
from app.settings import AppSettings
from tests.support.database import new_database
from tests.support.fleet import Fleet
from tests.support.repositories import commit_all
from tests.support.seal import WORKER_SECRET_KEYS
from tests.support.ssh_hosts import TargetHost, target_hosts
from tests.support.tenants import Caller, make_tenant


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """Real Postgres, Redis and S3 for the whole session: given by the environment, or started here."""
    started = LocalStack.scratch(tmp_path_factory.mktemp("stack"))
    yield started
    started.stop()


@pytest.fixture(scope="session")
def database_url(stack: LocalStack) -> Iterator[str]:
    """A database of our own for this session, built by running the migrations; dropped afterwards."""
    with new_database(stack, "ahop_test", migrated=True) as url:
        yield url


@pytest.fixture(scope="session")
def bucket(stack: LocalStack) -> str:
    name = f"ahop-test-{secrets.token_hex(4)}"
    stack.ensure_bucket(name)
    return name


@pytest.fixture
async def redis_url(stack: LocalStack) -> str:
    """A Redis database emptied before each test that uses it."""
    url = stack.env["AHOP_REDIS_URL"].rsplit("/", 1)[0] + "/9"
    client = Redis.from_url(url)
    await client.flushdb()
    await client.aclose()
    return url


@pytest.fixture
def app_settings(stack: LocalStack, database_url: str, redis_url: str, bucket: str, tmp_path: Path) -> AppSettings:
    location = stack.s3_location(bucket)
    return AppSettings(
        database_url=database_url,
        redis_url=redis_url,
        s3_endpoint_url=location.endpoint_url,
        s3_bucket=bucket,
        s3_access_key_id=location.access_key_id,
        s3_secret_access_key=SecretStr(location.secret_access_key) if location.secret_access_key else None,
        data_dir=tmp_path / "data",
        worker_secret_keys=SecretStr(WORKER_SECRET_KEYS),
    )


@pytest.fixture
def worker_env(stack: LocalStack, redis_url: str, bucket: str, tmp_path: Path) -> dict[str, str]:
    """The environment of a worker process: Redis and S3 only, no database URL anywhere."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AHOP_")}
    location = stack.s3_location(bucket)
    env.update(
        AHOP_REDIS_URL=redis_url,
        AHOP_S3_ENDPOINT_URL=location.endpoint_url or "",
        AHOP_S3_BUCKET=bucket,
        AHOP_S3_ACCESS_KEY_ID=location.access_key_id or "",
        AHOP_S3_SECRET_ACCESS_KEY=location.secret_access_key or "",
        AHOP_WORKER_ROOT=str(tmp_path / "worker"),
        AHOP_WORKER_SECRET_KEYS=WORKER_SECRET_KEYS,
    )
    return env


@pytest.fixture
def fleet(worker_env: dict[str, str], tmp_path: Path) -> Iterator[Fleet]:
    """Real `ahop worker` processes started by the test, all stopped (by pid) at its end."""
    workers = Fleet(worker_env, tmp_path / "worker-logs")
    yield workers
    workers.stop_all()


@pytest.fixture
def api_settings(app_settings: AppSettings, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> AppSettings:
    return app_settings.model_copy(
        update={
            "git_allowed_schemes": "https,ssh,file",
            # Local repositories live in the tests' temp dirs; the data dir inside them stays refused.
            "git_file_roots": str(tmp_path_factory.getbasetemp()),
            "secret_keys": SecretStr(Fernet.generate_key().decode()),
            "data_dir": tmp_path / "server-data",
        }
    )


@pytest.fixture
async def client(api_settings: AppSettings) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(create_app(api_settings)) as test_client:
        yield test_client


@pytest.fixture
async def alice(database_url: str) -> Caller:
    return await make_tenant(database_url)


@pytest.fixture
async def bob(database_url: str) -> Caller:
    return await make_tenant(database_url)


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    """A Git repository with a script directory, as an ops team keeps it."""
    repo = tmp_path / "origin"
    (repo / "scripts" / "disk_cleanup").mkdir(parents=True)
    script = repo / "scripts" / "disk_cleanup" / "cleanup.sh"
    script.write_text("#!/bin/bash\n# Name: Disk cleanup\n# @param days integer Keep files newer than this\necho ok\n")
    script.chmod(0o755)
    # Unique content per test: the database (and its tree → digest cache) is shared by the whole session.
    (repo / "scripts" / "disk_cleanup" / "README.md").write_text(f"cleans disks ({secrets.token_hex(8)})\n")
    commit_all(repo, message="first")
    return repo


@pytest.fixture(scope="module")
def ssh_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[TargetHost]]:
    """Three running OpenSSH hosts shared by the tests of one module, which leave them as found (running, not
    paused); a test that pauses or stops a host takes `ssh_host`."""
    with target_hosts(tmp_path_factory.mktemp("ssh-hosts"), 3) as started:
        yield started


@pytest.fixture
def ssh_host(tmp_path: Path) -> Iterator[TargetHost]:
    """A running OpenSSH host of the test's own, which it may pause or stop."""
    with target_hosts(tmp_path / "ssh-host", 1) as started:
        yield started[0]
