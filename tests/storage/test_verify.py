"""Verifying stored blobs against their records, on a real SeaweedFS: every outcome, and many blobs at once."""

from __future__ import annotations

import hashlib
import io
import random
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import zstandard

from app.devstack.stack import LocalStack
from storage.blobstore import BlobStore, S3Location
from storage.digest import Digest
from storage.errors import BucketNotFound, StorageUnavailable
from storage.keys import blob_key
from storage.snapshot import snapshot_directory
from storage.verify import Check, Expected, Outcome, check_blob, check_blobs
from tests.support.s3 import fresh_bucket, s3_client

Overwrite = Callable[[Digest, bytes], None]


@dataclass(frozen=True)
class Stored(Expected):
    """A blob put into the store: the record the database would hold for it, and its compressed bytes."""

    data: bytes


def tree(root: Path, seed: int, size: int = 300_000) -> Path:
    """A small template directory; random contents of `size` bytes, so blobs of one size have one length."""
    root.mkdir()
    (root / "run.sh").write_text("#!/bin/sh\necho verify\n")
    (root / "data.bin").write_bytes(random.Random(seed).randbytes(size))
    return root


def packed(root: Path) -> Stored:
    out = io.BytesIO()
    snap = snapshot_directory(root, out)
    return Stored(snap.digest, snap.zst_size, snap.zst_sha256, snap.tar_size, out.getvalue())


def put(store: BlobStore, blob: Stored, tmp_path: Path) -> Stored:
    path = tmp_path / f"{blob.digest.hex}.tar.zst"
    path.write_bytes(blob.data)
    store.put_if_absent(blob.digest, path, tar_size=blob.tar_size, files=2, zst_sha256=blob.zst_sha256)
    return blob


@pytest.fixture(scope="module")
def location(stack: LocalStack) -> S3Location:
    return fresh_bucket(stack, "verify")


@pytest.fixture
def store(location: S3Location) -> Iterator[BlobStore]:
    with BlobStore(location) as opened:
        yield opened


@pytest.fixture
def make(store: BlobStore, tmp_path: Path) -> Callable[[], Stored]:
    """Pack and store a fresh blob (a new random seed each call)."""

    def made() -> Stored:
        seed = secrets.randbits(64)
        return put(store, packed(tree(tmp_path / f"tree-{seed}", seed)), tmp_path)

    return made


@pytest.fixture
def overwrite(location: S3Location) -> Iterator[Overwrite]:
    """Replace a blob's bytes the way a faulty disk or an operator's S3 tool would: same key, metadata kept."""
    client = s3_client(location, s3={"addressing_style": "path"})

    def write(digest: Digest, data: bytes) -> None:
        key = blob_key(digest)
        metadata = client.head_object(Bucket=location.bucket, Key=key)["Metadata"]
        client.put_object(Bucket=location.bucket, Key=key, Body=data, Metadata=metadata)

    yield write
    client.close()


def test_an_intact_blob_is_ok(store: BlobStore, make: Callable[[], Stored]) -> None:
    blob = make()

    assert check_blob(store, blob) == Check(blob.digest, Outcome.OK, "", blob.zst_size)


def test_a_deleted_object_is_missing(store: BlobStore, make: Callable[[], Stored]) -> None:
    blob = make()
    store.delete([blob.digest])

    found = check_blob(store, blob)

    assert (found.outcome, found.zst_bytes) == (Outcome.MISSING, 0)
    assert str(blob.digest) in found.detail
    assert blob_key(blob.digest) in found.detail


def test_another_valid_blob_of_the_same_length_in_its_place_is_corrupt(
    store: BlobStore, make: Callable[[], Stored], overwrite: Overwrite, tmp_path: Path
) -> None:
    blob = make()
    other = packed(tree(tmp_path / "other", seed=-1))
    assert len(other.data) == len(blob.data) != 0
    overwrite(blob.digest, other.data)

    found = check_blob(store, blob)

    assert found.outcome is Outcome.CORRUPT
    assert found.zst_bytes == len(blob.data)
    assert str(blob.digest) in found.detail
    assert other.zst_sha256 in found.detail
    assert blob.zst_sha256 in found.detail


def test_a_record_matching_the_compressed_bytes_of_another_tar_is_corrupt(
    store: BlobStore, make: Callable[[], Stored], overwrite: Overwrite, tmp_path: Path
) -> None:
    blob = make()
    other = packed(tree(tmp_path / "other", seed=-2))
    overwrite(blob.digest, other.data)
    # As if the bytes had been replaced when the blob was written: the compressed figures agree, the tar does not.
    record = replace(other, digest=blob.digest)

    found = check_blob(store, record)

    assert found.outcome is Outcome.CORRUPT
    assert f"the tar has digest {other.digest}" in found.detail
    assert str(blob.digest) in found.detail


def test_another_valid_blob_of_another_length_in_its_place_is_a_size_mismatch(
    store: BlobStore, make: Callable[[], Stored], overwrite: Overwrite, tmp_path: Path
) -> None:
    blob = make()
    other = packed(tree(tmp_path / "other", seed=-3, size=200_000))
    overwrite(blob.digest, other.data)

    found = check_blob(store, blob)

    assert found.outcome is Outcome.SIZE_MISMATCH
    assert str(blob.digest) in found.detail
    assert f"{len(other.data):,}" in found.detail
    assert f"{len(blob.data):,}" in found.detail


@pytest.mark.parametrize("change", [-1, +1])
def test_a_tar_of_another_length_than_recorded_is_a_size_mismatch(
    store: BlobStore, make: Callable[[], Stored], change: int
) -> None:
    blob = make()
    record = replace(blob, tar_size=blob.tar_size + change)

    found = check_blob(store, record)

    assert found.outcome is Outcome.SIZE_MISMATCH
    assert str(blob.digest) in found.detail
    assert f"{record.tar_size:,} bytes the record says" in found.detail
    assert found.zst_bytes == len(blob.data)


def test_bytes_that_are_not_zstd_are_corrupt_even_when_their_checksum_matches(
    store: BlobStore, make: Callable[[], Stored], overwrite: Overwrite
) -> None:
    blob = make()
    garbage = random.randbytes(len(blob.data))
    overwrite(blob.digest, garbage)
    record = replace(blob, zst_sha256=hashlib.sha256(garbage).hexdigest())

    found = check_blob(store, record)

    assert found.outcome is Outcome.CORRUPT
    assert "not valid zstd" in found.detail
    assert str(blob.digest) in found.detail


def test_a_stream_cut_before_its_checksum_is_corrupt(
    store: BlobStore, make: Callable[[], Stored], overwrite: Overwrite
) -> None:
    # libzstd decodes all the data of such a stream without complaint; a worker's unpack refuses it.
    blob = make()
    cut = blob.data[:-4]
    overwrite(blob.digest, cut)
    record = replace(blob, zst_size=len(cut), zst_sha256=hashlib.sha256(cut).hexdigest())

    found = check_blob(store, record)

    assert found.outcome is Outcome.CORRUPT
    assert "not whole zstd frames" in found.detail


def test_a_blob_asking_for_a_window_over_128_mib_is_corrupt(
    store: BlobStore, make: Callable[[], Stored], overwrite: Overwrite, tmp_path: Path
) -> None:
    blob = make()
    tar = io.BytesIO()
    with zstandard.ZstdDecompressor().stream_reader(blob.data) as reader:
        tar.write(reader.read())
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=28, write_checksum=1)
    compressor = zstandard.ZstdCompressor(compression_params=params).compressobj()  # streamed: no content size
    wide = compressor.compress(tar.getvalue()) + compressor.flush()
    assert zstandard.get_frame_parameters(wide).window_size == 1 << 28
    overwrite(blob.digest, wide)
    record = replace(blob, zst_size=len(wide), zst_sha256=hashlib.sha256(wide).hexdigest())

    found = check_blob(store, record)

    assert found.outcome is Outcome.CORRUPT
    assert "not valid zstd" in found.detail


def test_an_object_without_our_metadata_is_corrupt(store: BlobStore, location: S3Location) -> None:
    digest = Digest(secrets.token_hex(32))
    client = s3_client(location)
    client.put_object(Bucket=location.bucket, Key=blob_key(digest), Body=b"uploaded by hand")
    client.close()

    found = check_blob(store, Expected(digest, 16, "0" * 64, 100))

    assert found.outcome is Outcome.CORRUPT
    assert "lacks the metadata" in found.detail


@pytest.mark.parametrize("concurrency", [1, 8])
def test_many_blobs_get_one_check_each(
    store: BlobStore, make: Callable[[], Stored], overwrite: Overwrite, concurrency: int
) -> None:
    intact = [make() for _ in range(6)]
    deleted = [make() for _ in range(3)]
    store.delete([blob.digest for blob in deleted])
    replaced = [make() for _ in range(2)]
    for blob in replaced:
        overwrite(blob.digest, random.randbytes(len(blob.data)))
    wrong_tar = [replace(make(), tar_size=1) for _ in range(2)]
    never_stored = [Expected(Digest(secrets.token_hex(32)), 10, "0" * 64, 20) for _ in range(3)]
    wanted = {
        **{blob.digest: Outcome.OK for blob in intact},
        **{blob.digest: Outcome.MISSING for blob in deleted},
        **{blob.digest: Outcome.CORRUPT for blob in replaced},
        **{record.digest: Outcome.SIZE_MISMATCH for record in wrong_tar},
        **{record.digest: Outcome.MISSING for record in never_stored},
    }
    records = [*intact, *deleted, *replaced, *wrong_tar, *never_stored]
    random.shuffle(records)

    found = list(check_blobs(store, iter(records), concurrency=concurrency))

    assert len(found) == len(records)
    assert {check.digest: check.outcome for check in found} == wanted
    assert sum(check.zst_bytes for check in found if check.outcome is Outcome.OK) == sum(
        len(blob.data) for blob in intact
    )


@pytest.mark.parametrize("concurrency", [1, 3])
def test_records_are_read_only_a_little_ahead_of_the_checks(store: BlobStore, concurrency: int) -> None:
    drawn = 0

    def records() -> Iterator[Expected]:  # a stand-in for a database cursor over a million rows
        nonlocal drawn
        for _ in range(1_000_000):
            drawn += 1
            yield Expected(Digest(secrets.token_hex(32)), 10, "0" * 64, 20)

    results = check_blobs(store, records(), concurrency=concurrency)
    for received in range(1, 41):
        assert next(results).outcome is Outcome.MISSING
        assert drawn - received <= 2 * concurrency
    results.close()
    assert drawn <= 40 + 2 * concurrency


def test_leaving_the_loop_early_leaves_no_thread_behind(store: BlobStore, make: Callable[[], Stored]) -> None:
    blobs = [make() for _ in range(8)]
    before = set(threading.enumerate())

    for check in check_blobs(store, blobs, concurrency=4):
        assert check.outcome is Outcome.OK
        break

    assert set(threading.enumerate()) <= before


def test_a_store_that_cannot_be_asked_is_an_error_not_an_outcome(
    stack: LocalStack, location: S3Location, make: Callable[[], Stored]
) -> None:
    blob = make()
    with BlobStore(replace(location, secret_access_key="wrong")) as refused:
        with pytest.raises(StorageUnavailable, match="refused our credentials"):
            check_blob(refused, blob)
        with pytest.raises(StorageUnavailable, match="refused our credentials"):
            list(check_blobs(refused, [blob] * 5, concurrency=2))
    missing = stack.s3_location(f"missing-{secrets.token_hex(6)}")
    with BlobStore(missing) as nowhere, pytest.raises(BucketNotFound):
        check_blob(nowhere, blob)
