"""The services a benchmark runs against: those named by `AHOP_*` in the environment, the others started like the
tests'; each run with a migrated database and a bucket of its own, and the server settings that point at them."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from pydantic import SecretStr

from app.db import migrate
from app.db.engine import create_engine, create_session_factory
from app.db.models import Role
from app.devstack.postgres import ensure_database
from app.devstack.stack import LocalStack
from app.services.tokens import create_tenant, issue_token
from app.settings import AppSettings

WORKER_SECRET_KEYS = Fernet.generate_key().decode()
"""The seal shared by the benchmarks' server and workers (AHOP_WORKER_SECRET_KEYS)."""


def fresh_database_and_bucket(stack: LocalStack) -> tuple[str, str]:
    """A migrated database and a bucket of this run's own on the stack's servers: their URL and name."""
    database = f"ahop_bench_{secrets.token_hex(4)}"
    ensure_database(stack.env["AHOP_DATABASE_URL"], database)
    database_url = stack.env["AHOP_DATABASE_URL"].rsplit("/", 1)[0] + "/" + database
    migrate.upgrade(database_url)
    bucket = f"ahop-bench-{secrets.token_hex(4)}"
    stack.ensure_bucket(bucket)
    return database_url, bucket


async def tenant_token(database_url: str) -> str:
    """The secret of an admin token of a new tenant."""
    engine = create_engine(database_url, pool_size=1)
    try:
        async with create_session_factory(engine)() as session, session.begin():
            tenant = await create_tenant(session, f"bench-{secrets.token_hex(4)}")
            return (await issue_token(session, tenant.id, Role.ADMIN)).secret
    finally:
        await engine.dispose()


def app_settings(
    stack: LocalStack, database_url: str, bucket: str, data_dir: Path, interval: float | None = None
) -> AppSettings:
    """The server's settings on the stack's services, for local (file) repositories anywhere."""
    location = stack.s3_location(bucket)
    fields: dict[str, Any] = dict(
        database_url=database_url,
        redis_url=stack.env["AHOP_REDIS_URL"],
        s3_endpoint_url=location.endpoint_url,
        s3_bucket=bucket,
        s3_access_key_id=location.access_key_id,
        s3_secret_access_key=SecretStr(location.secret_access_key or ""),
        s3_region=location.region,
        data_dir=data_dir,
        git_allowed_schemes="https,ssh,file",
        git_file_roots="/",  # its own corpora
        secret_keys=SecretStr(Fernet.generate_key().decode()),
        worker_secret_keys=SecretStr(WORKER_SECRET_KEYS),
    )
    if interval is not None:
        fields["control_interval"] = interval
    return AppSettings(**fields)
