"""A whole deployment of one test's own: the API in-process, a tenant, and what maintenance reads and writes.

GC and verify judge every blob in the bucket and every row in the database, so their tests cannot share either
with other tests; this bundles what such a test holds, all over the same database and bucket.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.maintenance.start import Maintenance
from app.settings import AppSettings
from storage.blobstore import BlobStore
from tests.support.api import Client
from tests.support.tenants import Caller


@dataclass(frozen=True)
class Deployment:
    client: Client
    carol: Caller
    """The one tenant, with a token of each role."""
    settings: AppSettings
    maintenance: Maintenance
    """Maintenance as `ahop gc|verify` builds it."""
    store: BlobStore
    sessions: async_sessionmaker[AsyncSession]
