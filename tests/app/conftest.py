"""API fixtures: the real application over the session's services, and tenants with tokens of each role."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from litestar import Litestar
from litestar.testing import AsyncTestClient
from pydantic import SecretStr

from app.db.engine import create_engine, create_session_factory
from app.db.models import Role
from app.main import create_app
from app.services.tokens import create_tenant, issue_token
from app.settings import AppSettings


@dataclass(frozen=True)
class Caller:
    """A tenant and one bearer header per role."""

    tenant_id: str
    headers: dict[Role, dict[str, str]]

    def __getitem__(self, role: Role) -> dict[str, str]:
        return self.headers[role]


async def make_tenant(database_url: str) -> Caller:
    engine = create_engine(database_url, pool_size=1)
    try:
        async with create_session_factory(engine)() as session, session.begin():
            tenant = await create_tenant(session, f"t-{secrets.token_hex(5)}")
            headers = {}
            for role in Role:
                issued = await issue_token(session, tenant.id, role)
                headers[role] = {"Authorization": f"Bearer {issued.secret}"}
        return Caller(str(tenant.id), headers)
    finally:
        await engine.dispose()


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


def server_env(settings: AppSettings, tmp_path: Path) -> dict[str, str]:
    """The environment of a real `ahop serve` process on the test's services: no other AHOP_ setting, its own
    data directory and keys, local repositories allowed under the test's directory."""
    location = settings.s3_location()
    return {
        **{key: value for key, value in os.environ.items() if not key.startswith("AHOP_")},
        "AHOP_DATABASE_URL": settings.database_url,
        "AHOP_REDIS_URL": settings.redis_url,
        "AHOP_S3_ENDPOINT_URL": location.endpoint_url or "",
        "AHOP_S3_BUCKET": location.bucket,
        "AHOP_S3_ACCESS_KEY_ID": location.access_key_id or "",
        "AHOP_S3_SECRET_ACCESS_KEY": location.secret_access_key or "",
        "AHOP_DATA_DIR": str(tmp_path / "server"),
        "AHOP_GIT_ALLOWED_SCHEMES": "https,ssh,file",
        "AHOP_GIT_FILE_ROOTS": str(tmp_path),
        "AHOP_SECRET_KEYS": Fernet.generate_key().decode(),
    }


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


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
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "first")
    return repo
