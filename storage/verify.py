"""Re-reading stored blobs to prove they still hold what the database records (DESIGN §6 "Verify").

For each blob, one streamed pass over the object's bytes, in 1 MiB chunks and without temporary files:

    GET → length against the recorded compressed size → sha256 of the compressed bytes and a walk of their zstd
    frames → zstd (window ≤ 128 MiB, output capped at the recorded tar size + 1) → length and sha256 of the tar

and one `Outcome`. When several figures disagree, the first in that order is reported: a compressed stream that
differs from the record explains any tar figure that follows from it. `check_blobs` runs several checks at once
in threads (the socket reads, sha256 and zstd release the GIL), so a run is bound by S3 and the CPU, not by round
trips. Failures of the store itself (StorageUnavailable, BucketNotFound) are no outcome: they propagate.
"""

from __future__ import annotations

import enum
import hashlib
import threading
from collections.abc import Generator, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import zstandard

from storage.blobstore import BlobReader, BlobStore
from storage.digest import Digest
from storage.errors import BlobNotFound, IntegrityError

CHUNK = 1 << 20
MAX_WINDOW_LOG = 27
"""The zstd window `storage.unpack` allows (128 MiB): a frame asking for more is corrupt, not allocated."""


class Outcome(enum.StrEnum):
    """What verify says of one blob; the value is what blob rows and reports hold."""

    OK = "ok"
    MISSING = "missing"
    CORRUPT = "corrupt"
    SIZE_MISMATCH = "size-mismatch"


@dataclass(frozen=True)
class Expected:
    """What the database row records for a blob."""

    digest: Digest
    zst_size: int
    zst_sha256: str
    tar_size: int


@dataclass(frozen=True)
class Check:
    """The verdict on one blob."""

    digest: Digest
    outcome: Outcome
    detail: str
    """Empty when ok; otherwise one sentence naming the blob, the figure at fault and both values."""
    zst_bytes: int
    """Compressed bytes read from S3, for throughput and progress."""


class _Stopped(Exception):
    """`check_blobs` was left early: a check still running gives up at its next chunk."""


class _Frames:
    """Follows the zstd frame layout (RFC 8878) through the compressed bytes as they stream past.

    libzstd's streaming decoder reports a plain end of input for a stream cut inside its last block header or
    before its checksum, and `storage.unpack` refuses such a blob (`storage.zstdframes`, which walks a file):
    this is the same walk, fed chunk by chunk, so that "ok" means a worker can unpack the blob.
    """

    _MAGIC, _SKIPPABLE_LENGTH, _DESCRIPTOR, _BLOCK = range(4)
    _ZSTD_MAGIC = 0xFD2FB528
    _DICT_ID_BYTES = (0, 1, 2, 4)
    _CONTENT_SIZE_BYTES = (0, 2, 4, 8)

    def __init__(self) -> None:
        self.frames = 0
        self.broken = False
        self._state = self._MAGIC
        self._want = 4  # bytes of the structure being read (magic, length, descriptor, block header)
        self._header = bytearray()
        self._skip = 0  # bytes to pass over: the rest of a frame header, block contents, a checksum
        self._checksum = False

    @property
    def complete(self) -> bool:
        """True when the bytes so far are one or more whole frames and nothing else."""
        return (
            not self.broken and self.frames > 0 and self._state == self._MAGIC and not self._header and not self._skip
        )

    def feed(self, data: bytes) -> None:
        position, end = 0, len(data)
        while position < end and not self.broken:
            if self._skip:
                step = min(self._skip, end - position)
                self._skip -= step
                position += step
                continue
            take = min(self._want - len(self._header), end - position)
            self._header += data[position : position + take]
            position += take
            if len(self._header) == self._want:
                value = int.from_bytes(self._header, "little")
                self._header.clear()
                self._advance(value)

    def _advance(self, value: int) -> None:
        if self._state == self._MAGIC:
            if value & 0xFFFFFFF0 == 0x184D2A50:
                self._state, self._want = self._SKIPPABLE_LENGTH, 4
            elif value == self._ZSTD_MAGIC:
                self._state, self._want = self._DESCRIPTOR, 1
            else:
                self.broken = True
        elif self._state == self._SKIPPABLE_LENGTH:
            self._skip = value
            self._state, self._want = self._MAGIC, 4
        elif self._state == self._DESCRIPTOR:
            single_segment = bool(value & 0x20)
            content_size_bytes = self._CONTENT_SIZE_BYTES[value >> 6] or (1 if single_segment else 0)
            self._skip = (0 if single_segment else 1) + self._DICT_ID_BYTES[value & 0x03] + content_size_bytes
            self._checksum = bool(value & 0x04)
            self._state, self._want = self._BLOCK, 3
        else:
            last, kind, size = value & 1, (value >> 1) & 3, value >> 3
            if kind == 3:  # reserved block type
                self.broken = True
                return
            self._skip = 1 if kind == 1 else size  # an RLE block stores one byte
            if last:
                self._skip += 4 if self._checksum else 0
                self.frames += 1
                self._state, self._want = self._MAGIC, 4


class _Compressed:
    """The object's bytes as zstd pulls them: counted, hashed and walked frame by frame on the way."""

    def __init__(self, reader: BlobReader, stop: threading.Event | None) -> None:
        self._reader = reader
        self._stop = stop
        self.hasher = hashlib.sha256()
        self.frames = _Frames()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        if self._stop is not None and self._stop.is_set():
            raise _Stopped
        data = self._reader.read(CHUNK if size < 0 else size)
        self.hasher.update(data)
        self.frames.feed(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        """Read what zstd left unread, so that the size and sha256 cover the whole object."""
        while self.read(CHUNK):
            pass


@dataclass(frozen=True)
class _Figures:
    """What one pass over an object found."""

    zst_size: int
    zst_sha256: str
    zstd_error: str
    """libzstd's complaint, "" when it decoded the bytes."""
    whole_frames: bool
    tar_size: int
    """At most one byte more than the recorded tar size: decompression stops there."""
    tar_digest: Digest


def check_blob(store: BlobStore, expected: Expected) -> Check:
    """Read the blob of `expected.digest` back from `store` and classify it against the recorded figures.

    Raises StorageUnavailable or BucketNotFound when the store cannot be asked; every state of the object
    itself is an outcome.
    """
    return _check(store, expected, None)


def _check(store: BlobStore, expected: Expected, stop: threading.Event | None) -> Check:
    digest = expected.digest
    try:
        reader = store.get(digest)
    except BlobNotFound as exc:
        return Check(digest, Outcome.MISSING, f"{digest}: no object is stored for it ({exc})", 0)
    except IntegrityError as exc:  # an object without our metadata: not written by this system
        return Check(digest, Outcome.CORRUPT, f"{digest}: {exc}", 0)
    with reader:
        if reader.info.zst_size != expected.zst_size:  # no need to read it
            return Check(
                digest,
                Outcome.SIZE_MISMATCH,
                f"{digest}: the object holds {reader.info.zst_size:,} "
                f"compressed bytes, the record says {expected.zst_size:,}",
                0,
            )
        figures = _read(reader, expected.tar_size, stop)
    outcome, detail = _classify(expected, figures)
    return Check(digest, outcome, f"{digest}: {detail}" if detail else "", figures.zst_size)


def _read(reader: BlobReader, tar_cap: int, stop: threading.Event | None) -> _Figures:
    """One pass over the object: compressed size, sha256 and frames; tar size (up to `tar_cap` + 1) and digest."""
    source = _Compressed(reader, stop)
    tar = hashlib.sha256()
    tar_size = 0
    zstd_error = ""
    decompressor = zstandard.ZstdDecompressor(max_window_size=1 << MAX_WINDOW_LOG)
    try:
        with decompressor.stream_reader(
            source,  # type: ignore[arg-type]
            read_size=CHUNK,
            read_across_frames=True,
            closefd=False,
        ) as zstd:
            # One byte past the record tells that the tar is longer: never inflate more than that.
            while tar_size <= tar_cap and (data := zstd.read(min(CHUNK, tar_cap + 1 - tar_size))):
                tar.update(data)
                tar_size += len(data)
    except zstandard.ZstdError as exc:
        zstd_error = str(exc)
    source.drain()
    return _Figures(
        source.size, source.hasher.hexdigest(), zstd_error, source.frames.complete, tar_size, Digest.of(tar)
    )


def _classify(expected: Expected, found: _Figures) -> tuple[Outcome, str]:
    """The outcome and its detail: the first figure that differs, in the order the bytes are derived."""
    if found.zst_size != expected.zst_size:  # the server sent other than it announced
        return (
            Outcome.SIZE_MISMATCH,
            f"{found.zst_size:,} compressed bytes arrived, the record says {expected.zst_size:,}",
        )
    if found.zst_sha256 != expected.zst_sha256:
        return (
            Outcome.CORRUPT,
            f"the compressed bytes have sha256 {found.zst_sha256}, the record says {expected.zst_sha256}",
        )
    if found.zstd_error:
        return Outcome.CORRUPT, f"the compressed bytes are not valid zstd ({found.zstd_error})"
    if not found.whole_frames:
        return Outcome.CORRUPT, "the compressed bytes are not whole zstd frames (cut short, or followed by other bytes)"
    if found.tar_size > expected.tar_size:
        return Outcome.SIZE_MISMATCH, f"the tar holds more than the {expected.tar_size:,} bytes the record says"
    if found.tar_size != expected.tar_size:
        return (
            Outcome.SIZE_MISMATCH,
            f"the tar holds {found.tar_size:,} bytes, not the {expected.tar_size:,} bytes the record says",
        )
    if found.tar_digest != expected.digest:
        return Outcome.CORRUPT, f"the tar has digest {found.tar_digest}, not the one it is stored under"
    return Outcome.OK, ""


def check_blobs(
    store: BlobStore, expected: Iterable[Expected], *, concurrency: int = 4
) -> Generator[Check, None, None]:
    """`check_blob` of every item of `expected`, `concurrency` at a time; the checks in the order they finish.

    `expected` is read lazily, at most twice `concurrency` items ahead of the checks handed back, so a generator
    over millions of rows runs in bounded memory. Closing the generator (leaving a loop over it) or an error,
    which is raised here, cancels the queued checks and stops the running ones at their next chunk.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    rows = iter(expected)
    stop = threading.Event()
    pending: set[Future[Check]] = set()
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="verify") as pool:
        try:
            while True:
                for row in rows:
                    pending.add(pool.submit(_check, store, row, stop))
                    if len(pending) >= 2 * concurrency:
                        break
                if not pending:
                    return
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        finally:
            stop.set()
            for future in pending:
                future.cancel()
