"""The S3 blob store: put-if-absent, head, get, list and delete of blobs; the only module that imports boto3/botocore.

It moves bytes and nothing more: the digest is computed by the caller, the key layout lives in `storage.keys`.
Every botocore failure becomes a `storage.errors` exception in one place (`_translate`), with a message that names
the operation, key, bucket and endpoint and never the credentials.

Each blob carries its figures as S3 user metadata (`x-amz-meta-*`): `tar-size`, `files`, `zst-sha256`; its
compressed size is the object's own length.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, BinaryIO, NamedTuple, Self, TypedDict

import boto3
import botocore.exceptions
import botocore.session
import botocore.utils
from botocore.config import Config

from storage.digest import Digest
from storage.errors import BlobNotFound, BucketNotFound, IntegrityError, StorageError, StorageUnavailable
from storage.keys import BLOB_PREFIX, blob_key, digest_from_key

if TYPE_CHECKING:
    from botocore.response import StreamingBody
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef, ObjectTypeDef

MiB = 1024 * 1024
DOWNLOAD_CHUNK = 1 * MiB
DELETE_BATCH = 1000  # the most keys one DeleteObjects request accepts
CONTENT_TYPE = "application/zstd"

META_TAR_SIZE = "tar-size"
META_FILES = "files"
META_ZST_SHA256 = "zst-sha256"

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})
_CREDENTIALS_REFUSED = frozenset({"403", "Forbidden", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"})
_CORRUPTED = frozenset({"BadDigest", "XAmzContentSHA256Mismatch"})
_BUCKET_EXISTS = frozenset({"BucketAlreadyOwnedByYou", "BucketAlreadyExists"})


@dataclass(frozen=True)
class S3Location:
    """Where blobs live and how to reach them. Built by each entry point from its settings."""

    endpoint_url: str | None
    bucket: str
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    region: str = "us-east-1"
    connect_timeout: float = 5.0
    read_timeout: float = 20.0
    """Seconds the server may send nothing (nor take anything) within one request: a stopped server fails each
    attempt after this long, instead of holding the caller for as long as it stays stopped."""
    max_attempts: int = 3
    """Tries of each request, the first included; a body being streamed is never tried again."""


@dataclass(frozen=True)
class BlobInfo:
    """The figures recorded with a stored blob: sizes, file count and the sha256 of the compressed bytes."""

    digest: Digest
    zst_size: int
    tar_size: int
    files: int
    zst_sha256: str

    def __post_init__(self) -> None:
        if not _SHA256_HEX.fullmatch(self.zst_sha256):
            raise ValueError(f"zst_sha256 must be 64 lowercase hex characters, got {self.zst_sha256!r}")
        if min(self.zst_size, self.tar_size, self.files) < 0:
            raise ValueError(f"sizes and file count must not be negative: {self}")

    def metadata(self) -> dict[str, str]:
        """The S3 user metadata that records these figures on the object."""
        return {META_TAR_SIZE: str(self.tar_size), META_FILES: str(self.files), META_ZST_SHA256: self.zst_sha256}


class ListedBlob(NamedTuple):
    """One blob in a bucket listing."""

    digest: Digest
    size: int
    last_modified: datetime


class PendingUpload(NamedTuple):
    """A multipart upload under the blob prefix that was started and neither completed nor aborted."""

    key: str
    upload_id: str
    initiated: datetime


class _Condition(TypedDict, total=False):
    IfNoneMatch: str


def _timestamp(text: str) -> datetime:
    """An S3 timestamp: ISO 8601 in listings (parsed by the standard library; UTC when it names no zone, as S3's
    times are), anything else as botocore would.

    botocore's own parser goes through dateutil for every one, which was most of our CPU in a bucket listing (the
    one per GC and per full verify): ~70 µs a key, against ~10 µs."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return botocore.utils.parse_timestamp(text)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _client(location: S3Location) -> S3Client:
    config = Config(
        region_name=location.region,
        # Every object or part we upload carries a ChecksumSHA256 header, signed and checked by the server; signing
        # the payload as well (botocore's default over plain http) hashed each upload twice more, client and server.
        s3={"addressing_style": "path", "payload_signing_enabled": False},
        connect_timeout=location.connect_timeout,
        read_timeout=location.read_timeout,
        retries={"total_max_attempts": location.max_attempts, "mode": "standard"},  # tries, the first included
        # One store serves many threads (asyncio.to_thread, upload pools); botocore's default of 10 connections
        # would make the rest open and discard a connection per request.
        max_pool_connections=32,
        # We verify content hashes ourselves; botocore's default checksums halve GET throughput.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    session = botocore.session.get_session()
    session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=_timestamp)
    return boto3.session.Session(botocore_session=session).client(
        "s3",
        endpoint_url=location.endpoint_url,
        aws_access_key_id=location.access_key_id,
        aws_secret_access_key=location.secret_access_key,
        config=config,
    )


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: botocore.exceptions.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _translate(exc: Exception, where: str, *, about_key: bool) -> StorageError:
    """Our exception for a botocore failure of the request described by `where`: the one place SDK errors map.

    A bare 404 names nothing; it means the key when the request was about one, else the bucket.
    Neither `where` nor botocore's own messages ever hold the secret key.
    """
    if not isinstance(exc, botocore.exceptions.ClientError):
        return StorageUnavailable(f"{where}: the request to the S3 endpoint failed ({exc})")
    code = _code(exc)
    if code == "NoSuchBucket" or (code in _NOT_FOUND and not about_key):
        return BucketNotFound(f"{where}: the bucket does not exist; create it or correct the bucket name")
    if code in _NOT_FOUND:
        return BlobNotFound(f"{where}: no such object")
    if code in _CREDENTIALS_REFUSED:
        return StorageUnavailable(
            f"{where}: the server refused our credentials ({code}); check the access key id, secret and permissions"
        )
    if code in _CORRUPTED:
        return IntegrityError(
            f"{where}: the bytes the server received do not match the checksum sent ({code}); "
            "the file differs from its recorded sha256 or was corrupted in transit"
        )
    message = exc.response.get("Error", {}).get("Message", "")
    return StorageUnavailable(f"{where}: the server answered {code or _status(exc)} {message}".rstrip())


def _info(digest: Digest, zst_size: int, metadata: Mapping[str, str], where: str) -> BlobInfo:
    """The BlobInfo an object's length and user metadata record."""
    missing = [name for name in (META_TAR_SIZE, META_FILES, META_ZST_SHA256) if name not in metadata]
    if missing:
        raise IntegrityError(
            f"{where}: the object lacks the metadata {', '.join(missing)}, so it was not stored by this system; "
            "delete it and import the template again"
        )
    try:
        return BlobInfo(
            digest, zst_size, int(metadata[META_TAR_SIZE]), int(metadata[META_FILES]), metadata[META_ZST_SHA256]
        )
    except ValueError as exc:
        raise IntegrityError(f"{where}: unreadable metadata {dict(metadata)}: {exc}") from exc


def _checked(digest: Digest) -> Digest:
    if not isinstance(digest, Digest):
        raise TypeError(f"expected a Digest, got {type(digest).__name__}; parse text with Digest.parse")
    return digest


@contextlib.contextmanager
def _readable(source: Path | BinaryIO) -> Iterator[tuple[BinaryIO, int]]:
    """`source` open for reading, with its size: a path is opened (and closed again), a file object is measured."""
    if isinstance(source, Path):
        with source.open("rb") as file:
            yield file, os.fstat(file.fileno()).st_size
        return
    size = source.seek(0, os.SEEK_END)
    source.seek(0)
    yield source, size


def _checksum(sha256: bytes) -> str:
    """The form S3's ChecksumSHA256 takes: base64 of the raw 32 bytes."""
    return base64.b64encode(sha256).decode("ascii")


class _Closing:
    """Something to close once done with it: `with` closes it when the block ends."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class BlobReader(_Closing):
    """A blob's compressed bytes as they arrive from the server. Close it, or use it in a `with` block."""

    def __init__(
        self, body: StreamingBody, info: BlobInfo, errors: Callable[[], contextlib.AbstractContextManager[None]]
    ) -> None:
        self.info = info
        """The figures recorded on the object being read."""
        self._body = body
        self._errors = errors

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes (all that remain when negative); b"" at the end."""
        with self._errors():
            return self._body.read(None if size < 0 else size)

    def close(self) -> None:
        """Release the connection."""
        self._body.close()


class BlobStore(_Closing):
    """Blob objects in one bucket of an S3-compatible store. Thread-safe; close it when done."""

    multipart_threshold: int = 64 * MiB
    """Files larger than this go up in parts; one PUT is fine up to ~60 MB (PERF_NOTES)."""
    part_size: int = 16 * MiB
    """Bytes per part of a multipart upload; S3 wants at least 5 MiB for every part but the last."""

    def __init__(self, location: S3Location) -> None:
        self.location = location
        self._s3 = _client(location)
        # Conditional writes (`If-None-Match: *`) make "first writer wins" atomic. Servers without them (older
        # MinIO answers 501 NotImplemented) get plain writes after our HEAD instead: a narrow race remains there,
        # so after such a write we HEAD again and report whatever object is stored.
        self._conditional_writes = True

    def on_request(self, operation: str, hook: Callable[[], object]) -> Callable[[], None]:
        """Call `hook` just before each request of the S3 `operation` ("DeleteObjects", "PutObject", …) leaves, in
        the thread that sends it; returns the function that removes the hook. For tracing, and for tests that must
        act while a request is on its way."""
        event = f"before-send.s3.{operation}"

        def before_send(**_: object) -> None:
            hook()  # and return None: a value returned here would be taken as the response

        self._s3.meta.events.register(event, before_send)
        return lambda: self._s3.meta.events.unregister(event, before_send)

    def close(self) -> None:
        """Close the client's connections."""
        self._s3.close()

    def _about(self, action: str, key: str | None = None) -> str:
        place = f"bucket {self.location.bucket!r} at {self.location.endpoint_url or 'AWS S3'}"
        return f"{action} of {key!r} in {place}" if key else f"{action} of {place}"

    @contextlib.contextmanager
    def _translated(self, action: str, key: str | None = None) -> Iterator[None]:
        try:
            yield
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise _translate(exc, self._about(action, key), about_key=key is not None) from exc

    def check_bucket(self) -> None:
        """Raise unless the bucket exists and our credentials may use it."""
        with self._translated("HEAD"):
            self._s3.head_bucket(Bucket=self.location.bucket)

    def ensure_bucket(self) -> bool:
        """Create the bucket if it is missing; return whether it was created."""
        try:
            self.check_bucket()
            return False
        except BucketNotFound:
            pass
        with self._translated("creation"):
            try:
                self._s3.create_bucket(Bucket=self.location.bucket)
            except botocore.exceptions.ClientError as exc:
                if _code(exc) in _BUCKET_EXISTS:  # created by someone else since our check
                    return False
                raise
        return True

    def head(self, digest: Digest) -> BlobInfo:
        """The figures recorded with the blob; BlobNotFound when it is absent, IntegrityError without our metadata."""
        try:
            return self._head(_checked(digest))
        except BlobNotFound:
            self.check_bucket()  # HEAD answers a bare 404 for a missing bucket too: say which is missing
            raise

    def exists(self, digest: Digest) -> bool:
        """Whether an object is stored under the digest's key (one with foreign metadata counts too)."""
        try:
            self.head(digest)
        except BlobNotFound:
            return False
        except IntegrityError:
            pass
        return True

    def _head(self, digest: Digest) -> BlobInfo:
        key = blob_key(digest)
        with self._translated("HEAD", key):
            response = self._s3.head_object(Bucket=self.location.bucket, Key=key)
        return _info(digest, response["ContentLength"], response["Metadata"], self._about("HEAD", key))

    def put_if_absent(
        self, digest: Digest, source: Path | BinaryIO, *, tar_size: int, files: int, zst_sha256: str
    ) -> tuple[bool, BlobInfo]:
        """Store the compressed bytes in `source` (a file, or a seekable file object read from its start) as the
        blob of `digest` unless a blob is already stored there.

        Returns whether we uploaded, and the figures of the object actually stored: when another writer got there
        first (before our HEAD, or between it and our write) those are its figures, not ours. The server checks
        the bytes against `zst_sha256` (IntegrityError on mismatch, and nothing is stored).
        """
        try:
            return False, self._head(_checked(digest))
        except BlobNotFound:
            pass
        written, ours = self._write(digest, source, tar_size, files, zst_sha256, conditional=True)
        # Always report what is stored, not what we sent: a server that ignores If-None-Match lets a second
        # writer replace the first, and the row must describe the object a worker will download.
        stored = self.head(digest)
        return written and stored.zst_sha256 == ours.zst_sha256, stored

    def replace(
        self, digest: Digest, source: Path | BinaryIO, *, tar_size: int, files: int, zst_sha256: str
    ) -> BlobInfo:
        """Store `source` as the blob of `digest` whether or not an object is there: how a repair puts back a blob
        whose stored bytes went missing or bad. The server checks the bytes against `zst_sha256`."""
        self._write(_checked(digest), source, tar_size, files, zst_sha256, conditional=False)
        return self.head(digest)

    def _write(
        self, digest: Digest, source: Path | BinaryIO, tar_size: int, files: int, zst_sha256: str, *, conditional: bool
    ) -> tuple[bool, BlobInfo]:
        """Send `source` in one PUT, or in parts above the multipart threshold; whether it was written (False when
        `conditional` and an object was there), and the figures of what we sent."""
        with _readable(source) as (body, size):
            ours = BlobInfo(digest, size, tar_size, files, zst_sha256)
            send = self._put_in_parts if size > self.multipart_threshold else self._put
            return send(blob_key(digest), body, ours, conditional=conditional), ours

    def _write_if_absent(self, write: Callable[[_Condition], object]) -> bool:
        """Run `write` with `If-None-Match: *` where the server honours it; False when the key already exists."""
        while True:
            condition: _Condition = {"IfNoneMatch": "*"} if self._conditional_writes else {}
            try:
                write(condition)
                return True
            except botocore.exceptions.ClientError as exc:
                if _status(exc) == 412 or _code(exc) == "PreconditionFailed":
                    return False
                if _status(exc) == 409 and _code(exc) == "ConditionalRequestConflict":
                    return False  # AWS: a concurrent conditional write of the same key; the winner's is stored
                if not (condition and (_status(exc) == 501 or _code(exc) == "NotImplemented")):
                    raise
                self._conditional_writes = False  # and write again, unconditionally: see __init__

    def _put(self, key: str, body: BinaryIO, info: BlobInfo, *, conditional: bool = True) -> bool:
        """One PUT of `body`; False when an object already sits under `key` (and `conditional`)."""
        with self._translated("upload", key):

            def write(condition: _Condition) -> None:
                body.seek(0)  # a retry without the condition sends the file again
                self._s3.put_object(
                    Bucket=self.location.bucket,
                    Key=key,
                    Body=body,
                    ContentType=CONTENT_TYPE,
                    ChecksumSHA256=_checksum(bytes.fromhex(info.zst_sha256)),
                    Metadata=info.metadata(),
                    **condition,
                )

            if not conditional:
                write({})
                return True
            return self._write_if_absent(write)

    def _put_in_parts(self, key: str, body: BinaryIO, info: BlobInfo, *, conditional: bool = True) -> bool:
        """A multipart upload of `body`; False when an object already sits under `key`.

        S3 checks each part's ChecksumSHA256, but has no whole-object SHA-256 for multipart uploads; so we hash
        the file as we send it and abort instead of completing when it differs from `info.zst_sha256`.
        """
        bucket = self.location.bucket
        with self._translated("multipart upload", key):
            upload_id = self._s3.create_multipart_upload(
                Bucket=bucket, Key=key, ContentType=CONTENT_TYPE, Metadata=info.metadata(), ChecksumAlgorithm="SHA256"
            )["UploadId"]
            completed = False
            try:
                parts = self._upload_parts(key, upload_id, body, info.zst_sha256)

                def complete(condition: _Condition) -> None:
                    self._s3.complete_multipart_upload(
                        Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}, **condition
                    )

                if conditional:
                    completed = self._write_if_absent(complete)
                else:
                    complete({})
                    completed = True
                return completed
            finally:
                if not completed:
                    # Best effort: the error that got us here matters more. A bucket lifecycle rule
                    # (AbortIncompleteMultipartUpload) removes what an abort could not.
                    with contextlib.suppress(botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
                        self._s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)

    def _upload_parts(self, key: str, upload_id: str, body: BinaryIO, zst_sha256: str) -> list[CompletedPartTypeDef]:
        # One part after another: PUT is server-bound on SeaweedFS (PERF_NOTES), and blobs this big are rare.
        whole = hashlib.sha256()
        parts: list[CompletedPartTypeDef] = []
        while chunk := body.read(self.part_size):
            whole.update(chunk)
            checksum = _checksum(hashlib.sha256(chunk).digest())
            number = len(parts) + 1
            response = self._s3.upload_part(
                Bucket=self.location.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=chunk,
                ChecksumSHA256=checksum,
            )
            parts.append({"PartNumber": number, "ETag": response["ETag"], "ChecksumSHA256": checksum})
        if whole.hexdigest() != zst_sha256:
            raise IntegrityError(
                f"{self._about('multipart upload', key)}: the bytes sent have sha256 {whole.hexdigest()}, "
                f"not the {zst_sha256} recorded for it; nothing was stored"
            )
        return parts

    def get(self, digest: Digest) -> BlobReader:
        """A reader of the blob's compressed bytes, streamed from the server; BlobNotFound when it is absent."""
        key = blob_key(_checked(digest))
        with self._translated("GET", key):
            response = self._s3.get_object(Bucket=self.location.bucket, Key=key)
        body = response["Body"]
        try:
            info = _info(digest, response["ContentLength"], response["Metadata"], self._about("GET", key))
        except BaseException:
            body.close()
            raise
        return BlobReader(body, info, lambda: self._translated("GET", key))

    def download(self, digest: Digest, dest: Path) -> BlobInfo:
        """Write the blob's compressed bytes to the file `dest`, checking them against the recorded size and sha256.

        When the transfer or the check fails, `dest` is removed: a file left there holds the complete blob.
        """
        with self.get(digest) as reader:
            try:
                hasher = hashlib.sha256()
                size = 0
                with dest.open("wb") as out:
                    while chunk := reader.read(DOWNLOAD_CHUNK):
                        hasher.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
                got, expected = (size, hasher.hexdigest()), (reader.info.zst_size, reader.info.zst_sha256)
                if got != expected:
                    raise IntegrityError(
                        f"{self._about('GET', blob_key(digest))}: received {got[0]} bytes with sha256 {got[1]}, "
                        f"but the object records {expected[0]} bytes with sha256 {expected[1]}"
                    )
            except BaseException:
                dest.unlink(missing_ok=True)
                raise
        return reader.info

    def _objects(self) -> Iterator[ObjectTypeDef]:
        paginator = self._s3.get_paginator("list_objects_v2")
        with self._translated("listing"):
            for page in paginator.paginate(Bucket=self.location.bucket, Prefix=BLOB_PREFIX):
                yield from page.get("Contents", [])

    def list_blobs(self) -> Iterator[ListedBlob]:
        """Every blob in the bucket, page by page; keys outside the layout are skipped (see `list_other_keys`)."""
        for item in self._objects():
            digest = digest_from_key(item["Key"])
            if digest is not None:
                yield ListedBlob(digest, item["Size"], item["LastModified"])

    def list_other_keys(self) -> Iterator[str]:
        """Keys under the blob prefix that do not name a blob: objects this system never writes."""
        for item in self._objects():
            if digest_from_key(item["Key"]) is None:
                yield item["Key"]

    def list_pending_uploads(self) -> Iterator[PendingUpload]:
        """Multipart uploads under the blob prefix still open: a writer's in flight, or one that crashed (the store
        keeps their parts, and bills them, until they are aborted)."""
        paginator = self._s3.get_paginator("list_multipart_uploads")
        with self._translated("listing of multipart uploads"):
            for page in paginator.paginate(Bucket=self.location.bucket, Prefix=BLOB_PREFIX):
                for upload in page.get("Uploads", []):
                    yield PendingUpload(upload["Key"], upload["UploadId"], upload["Initiated"])

    def abort_upload(self, upload: PendingUpload) -> None:
        """Abort a pending multipart upload and free its parts; one already gone counts as aborted."""
        with self._translated("abort of a multipart upload", upload.key):
            try:
                self._s3.abort_multipart_upload(Bucket=self.location.bucket, Key=upload.key, UploadId=upload.upload_id)
            except botocore.exceptions.ClientError as exc:
                if _code(exc) != "NoSuchUpload":
                    raise

    def delete(self, digests: Iterable[Digest]) -> list[Digest]:
        """Delete these blobs, 1,000 per request; return them. Absent blobs count as deleted (S3 semantics).

        When the server refuses some keys, StorageUnavailable names them; earlier batches stay deleted.
        """
        wanted = list(dict.fromkeys(_checked(digest) for digest in digests))
        deleted: list[Digest] = []
        for start in range(0, len(wanted), DELETE_BATCH):
            batch = wanted[start : start + DELETE_BATCH]
            with self._translated("delete"):
                response = self._s3.delete_objects(
                    Bucket=self.location.bucket,
                    Delete={"Objects": [{"Key": blob_key(digest)} for digest in batch], "Quiet": True},
                )
            if failed := response.get("Errors", []):
                named = ", ".join(f"{error.get('Key')} ({error.get('Code')})" for error in failed[:10])
                more = f" and {len(failed) - 10} more" if len(failed) > 10 else ""
                raise StorageUnavailable(
                    f"{self._about('delete')}: the server did not delete {len(failed)} of {len(batch)} keys: "
                    f"{named}{more}; {len(deleted)} blobs in earlier requests were deleted"
                )
            deleted += batch
        return deleted
