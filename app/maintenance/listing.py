"""The bucket's blobs, page by page, without blocking the event loop: each page is pulled in a worker thread."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

from storage.blobstore import BlobStore, ListedBlob

PAGE = 1000


async def blob_pages(store: BlobStore, size: int = PAGE) -> AsyncIterator[list[ListedBlob]]:
    listing: Iterator[ListedBlob] = store.list_blobs()
    while page := await asyncio.to_thread(lambda: list(itertools.islice(listing, size))):
        yield page


def older_than(grace: float) -> datetime:
    """The instant before which an object counts as older than the grace."""
    return datetime.now(UTC) - timedelta(seconds=grace)
