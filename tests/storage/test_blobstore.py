"""The S3 blob store against a real SeaweedFS: put-if-absent and its races, multipart, listing, deletion, errors."""

from __future__ import annotations

import contextlib
import hashlib
import io
import random
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import zstandard

from app.devstack.stack import LocalStack
from storage.blobstore import BlobInfo, BlobStore, MiB, S3Location
from storage.digest import Digest
from storage.errors import BlobNotFound, BucketNotFound, IntegrityError, StorageUnavailable
from storage.keys import BLOB_PREFIX, blob_key
from tests.support.s3 import fresh_bucket, s3_client


@dataclass(frozen=True)
class Blob:
    """A compressed file and the figures a caller of put_if_absent knows about it."""

    digest: Digest
    path: Path
    tar_size: int
    zst_sha256: str

    def put(self, store: BlobStore, files: int = 3) -> tuple[bool, BlobInfo]:
        return store.put_if_absent(
            self.digest, self.path, tar_size=self.tar_size, files=files, zst_sha256=self.zst_sha256
        )


def tar_like(size: int, seed: int) -> bytes:
    """Compressible bytes standing in for a canonical tar (the store never looks inside)."""
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randrange(2, 9)).hex().encode() for _ in range(500)]
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choices(words, k=12)) + b"\n"
    return bytes(out[:size])


def compressed(tar: bytes, path: Path, level: int = 3) -> Blob:
    data = zstandard.ZstdCompressor(level=level, write_checksum=True).compress(tar)
    path.write_bytes(data)
    return Blob(Digest.of(hashlib.sha256(tar)), path, len(tar), hashlib.sha256(data).hexdigest())


def raw(path: Path, size: int) -> Blob:
    """`size` random bytes in `path`, as if they were a compressed blob of some tar."""
    data = random.randbytes(size)
    path.write_bytes(data)
    return Blob(Digest(secrets.token_hex(32)), path, 2 * size, hashlib.sha256(data).hexdigest())


def fetched(store: BlobStore, digest: Digest) -> bytes:
    with store.get(digest) as reader:
        return reader.read()


@pytest.fixture(scope="module")
def shared_location(stack: LocalStack) -> S3Location:
    """A bucket for the tests that only look at their own random digests (creating a bucket takes ~1 s)."""
    return fresh_bucket(stack)


@pytest.fixture
def location(stack: LocalStack) -> S3Location:
    """A fresh, empty bucket, for the tests that look at the whole bucket."""
    return fresh_bucket(stack)


@pytest.fixture
def store(shared_location: S3Location) -> Iterator[BlobStore]:
    with BlobStore(shared_location) as opened:
        yield opened


@pytest.fixture
def empty_store(location: S3Location) -> Iterator[BlobStore]:
    with BlobStore(location) as opened:
        yield opened


@pytest.fixture
def by_hand(stack: LocalStack) -> Iterator[Callable[[str, str, bytes], None]]:
    """Put an object into a bucket the way an operator would with an S3 tool: no metadata, any key."""
    location = stack.s3_location()
    client = s3_client(location, max_pool_connections=16)

    def put(bucket: str, key: str, data: bytes) -> None:
        client.put_object(Bucket=bucket, Key=key, Body=data)

    yield put
    client.close()


def test_a_second_put_uploads_nothing_and_reports_the_stored_blob(empty_store: BlobStore, tmp_path: Path) -> None:
    store = empty_store
    blob = compressed(tar_like(100_000, seed=1), tmp_path / "a.tar.zst")

    first = blob.put(store, files=7)
    second = blob.put(store, files=7)

    expected = BlobInfo(blob.digest, blob.path.stat().st_size, blob.tar_size, 7, blob.zst_sha256)
    assert first == (True, expected)
    assert second == (False, expected)
    assert store.head(blob.digest) == expected
    assert [listed.digest for listed in store.list_blobs()] == [blob.digest]
    assert fetched(store, blob.digest) == blob.path.read_bytes()


def test_concurrent_writers_of_one_digest_store_one_object_and_both_report_it(
    location: S3Location, tmp_path: Path
) -> None:
    rounds = 5
    stores = [BlobStore(location), BlobStore(location)]
    barrier = threading.Barrier(2)

    def race(store: BlobStore, blob: Blob) -> tuple[bool, BlobInfo]:
        barrier.wait(timeout=10)
        return blob.put(store)

    try:
        with ThreadPoolExecutor(2) as pool:
            for n in range(rounds):
                tar = tar_like(64_000, seed=100 + n)
                fast = compressed(tar, tmp_path / f"{n}-fast.tar.zst", level=1)
                small = compressed(tar, tmp_path / f"{n}-small.tar.zst", level=19)
                assert fast.digest == small.digest
                assert fast.zst_sha256 != small.zst_sha256

                results = list(pool.map(race, stores, [fast, small]))

                assert sorted(uploaded for uploaded, _ in results) == [False, True]
                assert results[0][1] == results[1][1]
                stored = fetched(stores[0], fast.digest)
                assert results[0][1].zst_sha256 == hashlib.sha256(stored).hexdigest()
                assert results[0][1].zst_size == len(stored)
        listed = sorted(listed.digest for listed in stores[0].list_blobs())
        assert len(listed) == rounds
    finally:
        for store in stores:
            store.close()


def test_a_blob_above_the_multipart_threshold_round_trips(store: BlobStore, tmp_path: Path) -> None:
    store.multipart_threshold = 8 * MiB
    store.part_size = 6 * MiB
    blob = raw(tmp_path / "big.tar.zst", 20_000_000)

    uploaded, info = blob.put(store)

    assert uploaded
    assert info == store.head(blob.digest) == BlobInfo(blob.digest, 20_000_000, blob.tar_size, 3, blob.zst_sha256)
    assert store.download(blob.digest, tmp_path / "back") == info
    assert (tmp_path / "back").read_bytes() == blob.path.read_bytes()
    with store.get(blob.digest) as reader:
        hasher = hashlib.sha256()
        while chunk := reader.read(MiB):
            hasher.update(chunk)
    assert hasher.hexdigest() == blob.zst_sha256
    assert blob.put(store) == (False, info)


@pytest.mark.parametrize("threshold", [64 * MiB, 5 * MiB], ids=["one request", "in parts"])
def test_a_blob_given_as_an_open_file_is_sent_from_its_start(store: BlobStore, tmp_path: Path, threshold: int) -> None:
    """What an import passes: the file its pack just wrote, positioned at its end."""
    store.multipart_threshold, store.part_size = threshold, 5 * MiB
    blob = raw(tmp_path / "spooled.tar.zst", 12_000_000)
    body = io.BytesIO(blob.path.read_bytes())
    body.seek(0, io.SEEK_END)

    uploaded, info = store.put_if_absent(blob.digest, body, tar_size=blob.tar_size, files=3, zst_sha256=blob.zst_sha256)

    assert uploaded
    assert info == BlobInfo(blob.digest, 12_000_000, blob.tar_size, 3, blob.zst_sha256)
    assert store.download(blob.digest, tmp_path / "back") == info
    assert (tmp_path / "back").read_bytes() == blob.path.read_bytes()


def test_a_blob_of_over_100_mb_round_trips_with_the_default_settings(store: BlobStore, tmp_path: Path) -> None:
    blob = raw(tmp_path / "huge.tar.zst", 105 * 1000 * 1000)

    uploaded, info = blob.put(store)
    downloaded = store.download(blob.digest, tmp_path / "back")

    assert uploaded
    assert info == downloaded == BlobInfo(blob.digest, 105 * 1000 * 1000, blob.tar_size, 3, blob.zst_sha256)
    assert hashlib.sha256((tmp_path / "back").read_bytes()).hexdigest() == blob.zst_sha256


def test_listing_and_deleting_go_past_a_thousand_blobs(
    empty_store: BlobStore, by_hand: Callable[[str, str, bytes], None]
) -> None:
    store = empty_store
    digests = {Digest(secrets.token_hex(32)) for _ in range(1_100)}
    started = datetime.now(UTC)
    # One request per object (put_if_absent makes two): listing only needs keys, and this keeps the test fast.
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda digest: by_hand(store.location.bucket, blob_key(digest), b"tiny"), digests))
    written = datetime.now(UTC)
    foreign = f"{BLOB_PREFIX}ab/not-a-blob.txt"
    by_hand(store.location.bucket, foreign, b"left by someone")

    listed = list(store.list_blobs())

    assert {entry.digest for entry in listed} == digests
    assert len(listed) == len(digests)
    assert {entry.size for entry in listed} == {4}
    # GC's grace is judged by these: each is the moment of its write, as an aware time (S3 keeps whole seconds).
    second = timedelta(seconds=1)
    assert all(started - second <= entry.last_modified <= written + second for entry in listed)
    assert list(store.list_other_keys()) == [foreign]

    assert sorted(store.delete(sorted(digests))) == sorted(digests)
    assert list(store.list_blobs()) == []
    assert list(store.list_other_keys()) == [foreign]


def test_a_missing_blob_is_reported_by_key(store: BlobStore, tmp_path: Path) -> None:
    digest = Digest(secrets.token_hex(32))
    dest = tmp_path / "never"
    for attempt in (store.head, store.get, lambda d: store.download(d, dest)):
        with pytest.raises(BlobNotFound) as caught:
            attempt(digest)
        assert blob_key(digest) in str(caught.value)
        assert store.location.bucket in str(caught.value)
    assert not dest.exists()
    assert store.delete([digest]) == [digest]  # deleting what is absent is no error


def test_a_mismatching_checksum_is_refused_and_leaves_no_object(store: BlobStore, tmp_path: Path) -> None:
    blob = compressed(tar_like(10_000, seed=2), tmp_path / "a.tar.zst")
    wrong = replace(blob, zst_sha256=hashlib.sha256(b"other bytes").hexdigest())

    with pytest.raises(IntegrityError) as caught:
        wrong.put(store)

    assert blob_key(blob.digest) in str(caught.value)
    with pytest.raises(BlobNotFound):
        store.head(blob.digest)


def test_a_multipart_upload_with_a_mismatching_checksum_is_aborted(store: BlobStore, tmp_path: Path) -> None:
    store.multipart_threshold = store.part_size = 5 * MiB
    blob = raw(tmp_path / "big.tar.zst", 6 * MiB)
    wrong = replace(blob, zst_sha256=hashlib.sha256(b"other bytes").hexdigest())

    with pytest.raises(IntegrityError, match=blob.zst_sha256):
        wrong.put(store)

    with pytest.raises(BlobNotFound):
        store.head(blob.digest)
    assert blob.put(store)[0]


def test_an_object_without_our_metadata_is_an_integrity_error(
    store: BlobStore, by_hand: Callable[[str, str, bytes], None]
) -> None:
    digest = Digest(secrets.token_hex(32))
    by_hand(store.location.bucket, blob_key(digest), b"uploaded by hand")

    for attempt in (store.head, store.get):
        with pytest.raises(IntegrityError, match="lacks the metadata tar-size, files, zst-sha256"):
            attempt(digest)


def calls_of(blob: Blob, *, delete: bool = False) -> list[Callable[[BlobStore], object]]:
    """Each call of the store that reaches the bucket, on `blob`; its deletion too if `delete`."""
    calls: list[Callable[[BlobStore], object]] = [
        BlobStore.check_bucket,
        lambda store: store.head(blob.digest),
        lambda store: store.get(blob.digest),
        lambda store: blob.put(store),
        lambda store: list(store.list_blobs()),
    ]
    if delete:
        calls.append(lambda store: store.delete([blob.digest]))
    return calls


def test_a_missing_bucket_is_named(stack: LocalStack, tmp_path: Path) -> None:
    bucket = f"missing-{secrets.token_hex(6)}"
    blob = compressed(b"tar", tmp_path / "a.tar.zst")
    attempts = calls_of(blob, delete=True)
    with BlobStore(stack.s3_location(bucket)) as store:
        for attempt in attempts:
            with pytest.raises(BucketNotFound, match=f"bucket '{bucket}'"):
                attempt(store)


def test_wrong_credentials_are_refused_without_showing_the_secret(store: BlobStore, tmp_path: Path) -> None:
    location = store.location
    blob = compressed(b"tar", tmp_path / "a.tar.zst")
    blob.put(store)
    secret = f"wrong-{secrets.token_hex(16)}"
    attempts = calls_of(blob)
    with BlobStore(replace(location, secret_access_key=secret)) as refused:
        for attempt in attempts:
            with pytest.raises(StorageUnavailable, match="refused our credentials") as caught:
                attempt(refused)
            assert location.bucket in str(caught.value)
            assert secret not in str(caught.value)
            assert secret not in str(caught.value.__cause__)
        assert secret not in repr(refused.location)


def test_an_unreachable_endpoint_is_unavailable() -> None:
    location = S3Location("http://127.0.0.1:9", "somewhere", "key", "secret", connect_timeout=1, max_attempts=1)
    with (
        BlobStore(location) as store,
        pytest.raises(StorageUnavailable, match="request to the S3 endpoint failed") as caught,
    ):
        store.head(Digest(secrets.token_hex(32)))
    assert "http://127.0.0.1:9" in str(caught.value)


@pytest.mark.parametrize("tries", [1, 3])
def test_a_server_that_never_answers_is_tried_as_often_as_configured(tries: int) -> None:
    """An S3 that takes connections and then says nothing (a stopped process): each try ends at the read
    timeout, and `max_attempts` counts them all, the first included."""
    connections: list[socket.socket] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(0.1)
        stop = threading.Event()

        def take() -> None:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    connections.append(listener.accept()[0])

        taker = threading.Thread(target=take)
        taker.start()
        endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
        location = S3Location(endpoint, "somewhere", "key", "secret", read_timeout=0.3, max_attempts=tries)
        try:
            with BlobStore(location) as store, pytest.raises(StorageUnavailable):
                store.head(Digest(secrets.token_hex(32)))
        finally:
            stop.set()
            taker.join()
            for connection in connections:
                connection.close()
    assert len(connections) == tries


def test_a_digest_must_be_a_digest(store: BlobStore, tmp_path: Path) -> None:
    text = f"sha256:{secrets.token_hex(32)}"
    for attempt in (store.head, store.get, lambda d: store.delete([d])):
        with pytest.raises(TypeError, match=r"Digest\.parse"):
            attempt(text)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Digest\.parse"):
        store.put_if_absent(text, tmp_path, tar_size=1, files=1, zst_sha256="0" * 64)  # type: ignore[arg-type]
