"""Maintenance fixtures: a database and a bucket of each test's own, since GC deletes what nothing references."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.db.engine import create_engine, create_session_factory
from app.devstack.stack import LocalStack
from app.main import create_app
from app.maintenance.start import Maintenance, build_maintenance
from app.settings import AppSettings
from storage.blobstore import BlobStore
from tests.support.database import new_migrated_database
from tests.support.deployment import Deployment
from tests.support.s3 import fresh_bucket
from tests.support.tenants import make_tenant


@pytest.fixture
async def own_settings(api_settings: AppSettings, stack: LocalStack, tmp_path: Path) -> AsyncIterator[AppSettings]:
    bucket = fresh_bucket(stack, "ahop-gc").bucket
    async with new_migrated_database(stack, "ahop_gc") as url:
        yield api_settings.model_copy(update={"database_url": url, "s3_bucket": bucket, "data_dir": tmp_path / "own"})


@pytest.fixture
async def engine(own_settings: AppSettings) -> AsyncIterator[AsyncEngine]:
    created = create_engine(own_settings.database_url, pool_size=5)
    yield created
    await created.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_session_factory(engine)


@pytest.fixture
def store(own_settings: AppSettings) -> BlobStore:
    return BlobStore(own_settings.s3_location())


@pytest.fixture
def maintenance(engine: AsyncEngine, store: BlobStore, own_settings: AppSettings) -> Maintenance:
    """Maintenance as `ahop gc|verify` builds it, over this test's database, bucket and the API's Git mirrors."""
    return build_maintenance(own_settings, engine, store)


@pytest.fixture
async def own(
    own_settings: AppSettings,
    maintenance: Maintenance,
    store: BlobStore,
    sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[Deployment]:
    """The API over this test's database and bucket, serving a tenant of its own, beside its maintenance."""
    caller = await make_tenant(own_settings.database_url)
    async with AsyncTestClient(create_app(own_settings)) as client:
        yield Deployment(client, caller, own_settings, maintenance, store, sessions)
