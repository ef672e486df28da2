"""Fixtures of the tests that hand workers their blobs: the session bucket as a BlobStore, and publishing a
directory into it as a `BlobRef`. A test module (or conftest) takes them by importing them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.devstack.stack import LocalStack
from storage.blobstore import BlobStore, S3Location
from storage.snapshot import snapshot_directory
from tests.support.jobs import Publish
from worker.protocol import BlobRef


@pytest.fixture
def s3_location(stack: LocalStack, bucket: str) -> S3Location:
    """Where the session bucket is, with the credentials a worker would have."""
    return stack.s3_location(bucket)


@pytest.fixture
def blobs(s3_location: S3Location) -> Iterator[BlobStore]:
    """A BlobStore on the session bucket."""
    with BlobStore(s3_location) as store:
        yield store


@pytest.fixture
def publish(blobs: BlobStore, tmp_path_factory: pytest.TempPathFactory) -> Publish:
    """Pack a directory as the server does on import, upload it if absent, and return the job's reference to it.

    The bucket lives for the whole session: a test that deletes or damages a blob publishes content of its own."""

    def publish(directory: Path) -> BlobRef:
        packed = tmp_path_factory.mktemp("blob") / "blob.tar.zst"
        with packed.open("wb") as out:
            snapshot = snapshot_directory(directory, out)
        _, stored = blobs.put_if_absent(
            snapshot.digest, packed, tar_size=snapshot.tar_size, files=snapshot.files, zst_sha256=snapshot.zst_sha256
        )
        packed.unlink()
        return BlobRef.of(stored)

    return publish
