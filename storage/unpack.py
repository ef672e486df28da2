"""Verified unpack (DESIGN §2 "Safe unpack"): a blob becomes a directory only if it is exactly what its digest says.

compressed file → size and sha256 checked → zstd (bounded window) → output capped at the declared tar size →
sha256 of the tar while a strict reader accepts canonical members only → files created in a fresh temporary
directory beside the destination → on a digest match, one `rename` puts it in place; on anything else the
temporary directory is removed and an `IntegrityError` (or `UnsafeArchive`) says what was wrong.

The reader is our own and accepts exactly what `storage.tarformat` writes; it never relies on `tarfile` filters.
"""

from __future__ import annotations

import hashlib
import os
import queue
import secrets
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

from storage import tarformat
from storage.canonical import check_links_stay_inside, check_path, check_symlink, sort_key
from storage.digest import Digest
from storage.errors import IntegrityError, SnapshotRefused, UnsafeArchive
from storage.zstdframes import complete_frames

CHUNK = 1 << 20
_ZERO_BLOCK = b"\x00" * tarformat.BLOCK
_MAX_PAX_RECORDS = 64 * 1024


@dataclass(frozen=True)
class UnpackLimits:
    max_files: int = 100_000
    max_path_bytes: int = 4096
    max_tar_bytes: int = 4 << 30
    """Used when the caller does not know the tar size; a known size is always the cap."""
    max_directories: int = 100_000
    """Distinct directories the members create: with the depth limit, this bounds inodes and memory."""
    max_window_log: int = 27
    """zstd window of at most 128 MiB: a frame asking for more is refused instead of allocating it."""


DEFAULT_LIMITS = UnpackLimits()


@dataclass(frozen=True)
class UnpackResult:
    files: int
    tar_size: int


def file_sha256(path: Path) -> tuple[str, int]:
    """The sha256 (hex) and size of a file, read in chunks."""
    hasher = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as handle:
        while chunk := handle.read(CHUNK):
            hasher.update(chunk)
            size += len(chunk)
    return hasher.hexdigest(), size


class _TarStream:
    """Decompressed bytes, counted against a cap and hashed as they arrive, served from memory to the reader.

    A producer thread decompresses and hashes 1 MiB chunks (zstd and sha256 release the GIL) while the caller
    parses headers and writes files: the two overlap as `zstd -dc | tar -x` does. At most `_AHEAD` chunks wait.
    `position` is how far the reader has consumed; `size` how much has been decompressed (and hashed).
    """

    _AHEAD = 4

    def __init__(self, reader: BinaryIO, cap: int) -> None:
        self._reader = reader
        self._cap = cap
        self._chunk = memoryview(b"")
        self._offset = 0
        self._ended = False
        self.hasher = hashlib.sha256()
        self.size = 0
        self.position = 0
        self._chunks: queue.Queue[bytes | BaseException] = queue.Queue(self._AHEAD)
        self._stop = threading.Event()
        self._producer = threading.Thread(target=self._produce, name="unpack-decompress", daemon=True)
        self._producer.start()

    def _produce(self) -> None:
        item: bytes | BaseException
        while not self._stop.is_set():
            try:
                item = self._reader.read(CHUNK)
                self.size += len(item)
                if self.size > self._cap:
                    item = IntegrityError(f"the blob inflates past its declared tar size of {self._cap:,} bytes")
                else:
                    self.hasher.update(item)
            except zstandard.ZstdError as exc:
                item = IntegrityError(f"the blob is not a valid zstd stream: {exc}")
            except BaseException as exc:  # handed to the reader, which raises it
                item = exc
            while not self._stop.is_set():
                try:
                    self._chunks.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if not isinstance(item, bytes) or not item:
                return

    def close(self) -> None:
        """Stop the producer (the reader may stop early, on an error) before the zstd reader is closed."""
        self._stop.set()
        self._producer.join()

    def _fill(self) -> bool:
        if self._ended:
            return False
        item = self._chunks.get()
        if isinstance(item, BaseException):
            self._ended = True
            raise item
        self._chunk, self._offset = memoryview(item), 0
        self._ended = not item
        return bool(item)

    def read(self, count: int) -> bytes:
        """Up to `count` bytes; b"" only at the end of the stream."""
        if self._offset >= len(self._chunk) and not self._fill():
            return b""
        piece = self._chunk[self._offset : self._offset + count]
        self._offset += len(piece)
        self.position += len(piece)
        return bytes(piece)

    def exactly(self, count: int) -> bytes:
        data = self.read(count)
        if len(data) == count:
            return data
        parts = [data]
        missing = count - len(data)
        while missing:
            more = self.read(missing)
            if not more:
                raise IntegrityError(f"the blob ends early: truncated after {self.size:,} tar bytes")
            parts.append(more)
            missing -= len(more)
        return b"".join(parts)


@dataclass(frozen=True)
class _Header:
    path: str
    typeflag: bytes
    mode: int
    size: int
    target: str


def _field(block: bytes, start: int, length: int) -> bytes:
    return block[start : start + length].split(b"\x00", 1)[0]


def _octal(block: bytes, start: int, length: int, what: str) -> int:
    raw = block[start : start + length].rstrip(b"\x00 ")
    if raw and (not raw.isdigit() or b"8" in raw or b"9" in raw):
        raise UnsafeArchive(f"a tar header has a malformed {what} field {raw!r}")
    return int(raw or b"0", 8)


def _pax_records(data: bytes) -> dict[str, str]:
    records: dict[str, str] = {}
    while data:
        length_text, _, rest = data.partition(b" ")
        if not length_text.isdigit() or int(length_text) <= len(length_text) + 1 or int(length_text) > len(data):
            raise UnsafeArchive("a pax header has a malformed record")
        length = int(length_text)
        record, data = rest[: length - len(length_text) - 1], data[length:]
        if not record.endswith(b"\n"):
            raise UnsafeArchive("a pax header has a malformed record")
        keyword, _, value = record[:-1].partition(b"=")
        key = keyword.decode("ascii", "replace")
        if key not in ("path", "linkpath", "size"):
            raise UnsafeArchive(f"a pax header carries {key!r}; a canonical tar only uses path, linkpath and size")
        records[key] = value.decode("utf-8", "surrogateescape")
    return records


def _check_ustar(block: bytes) -> None:
    stored = _octal(block, 148, 8, "checksum")
    if stored != sum(block[:148]) + 8 * 32 + sum(block[156:]):
        raise IntegrityError("a tar header's checksum does not match")
    if block[257:265] != b"ustar\x0000":
        raise UnsafeArchive("a tar header is not POSIX ustar/pax")
    if any(block[108:124].strip(b"0\x00")) or _octal(block, 136, 12, "mtime") != 0:
        raise UnsafeArchive(f"member {_field(block, 0, 100)!r}: owner or mtime is not the canonical 0")
    if any(block[265:500]):
        raise UnsafeArchive(f"member {_field(block, 0, 100)!r}: owner names, device numbers or prefix are set")


def _next_header(stream: _TarStream, max_path_bytes: int) -> _Header | None:
    block = stream.exactly(tarformat.BLOCK)
    if block == _ZERO_BLOCK:
        return None
    # Every header is rebuilt with the canonical writer and compared byte for byte below; the field-by-field
    # checks (`_check_ustar`) run only when that comparison fails, to say what exactly is wrong.
    raw_blocks = [block]
    if block[257:265] != b"ustar\x0000":  # cheap, and the clearest thing to say about a GNU or v7 tar
        _check_ustar(block)
    records: dict[str, str] = {}
    if block[156:157] == tarformat.PAX:
        size = _octal(block, 124, 12, "size")
        if size > _MAX_PAX_RECORDS:
            raise UnsafeArchive(f"a pax header of {size:,} bytes is larger than any canonical member needs")
        raw_records = stream.exactly(size + len(tarformat.padding(size)))
        records = _pax_records(raw_records[:size])
        block = stream.exactly(tarformat.BLOCK)
        raw_blocks += [raw_records, block]
    typeflag = block[156:157]
    raw_path = records["path"].encode("utf-8", "surrogateescape") if "path" in records else _field(block, 0, 100)
    shown = raw_path.decode("utf-8", "replace")
    if typeflag not in (tarformat.REGULAR, tarformat.SYMLINK):
        kinds = {
            b"1": "a hard link",
            b"3": "a character device",
            b"4": "a block device",
            b"5": "a directory",
            b"6": "a fifo",
            b"x": "a second pax header",
            b"g": "a global pax header",
        }
        raise UnsafeArchive(
            f"member {shown!r} is {kinds.get(typeflag, f'of type {typeflag!r}')}; only files and symlinks"
        )
    if len(raw_path) > max_path_bytes:
        raise UnsafeArchive(f"member path of {len(raw_path)} bytes exceeds the limit of {max_path_bytes}")
    try:
        path = check_path(raw_path, "archive member")
    except SnapshotRefused as exc:
        raise UnsafeArchive(str(exc)) from None
    mode = _octal(block, 100, 8, "mode")
    allowed = (
        (tarformat.MODE_FILE, tarformat.MODE_EXECUTABLE) if typeflag == tarformat.REGULAR else (tarformat.MODE_SYMLINK,)
    )
    if mode not in allowed:
        raise UnsafeArchive(f"member {path!r} has mode {mode:o}; canonical modes are 644, 755 and 777 (symlinks)")
    if "size" in records and not records["size"].isdigit():
        raise UnsafeArchive(f"member {path!r}: malformed pax size {records['size']!r}")
    size = int(records["size"]) if "size" in records else _octal(block, 124, 12, "size")
    target = records.get("linkpath") or _field(block, 157, 100).decode("utf-8", "surrogateescape")
    if typeflag == tarformat.SYMLINK and size != 0:
        raise UnsafeArchive(f"symlink {path!r} carries data")
    if path == ".git" or path.startswith(".git/"):
        raise UnsafeArchive(f"member {path!r} is inside a top-level .git, which snapshots never hold")
    raw_header = tarformat.header(path, mode, size, typeflag, target if typeflag == tarformat.SYMLINK else "")
    if raw_header != b"".join(raw_blocks):
        _check_ustar(raw_blocks[0])
        _check_ustar(raw_blocks[-1])
        raise UnsafeArchive(f"member {path!r}: header bytes differ from the canonical writer's")
    return _Header(path, typeflag, mode, size, target)


def _extract(stream: _TarStream, root: Path, limits: UnpackLimits) -> int:
    files = 0
    previous = b""
    links: dict[str, str] = {}
    directories: set[str] = set()
    while (member := _next_header(stream, limits.max_path_bytes)) is not None:
        key = sort_key(member.path)
        if key <= previous:
            what = "a duplicate" if key == previous else "out of order"
            raise UnsafeArchive(f"member {member.path!r} is {what}; canonical members are sorted and unique")
        previous = key
        parts = member.path.split("/")
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in links:
                raise UnsafeArchive(
                    f"member {member.path!r} would be written through the symlink {'/'.join(parts[:depth])!r}"
                )
        files += 1
        if files > limits.max_files:
            raise UnsafeArchive(f"the archive holds more than {limits.max_files:,} members")
        location = f"{root}/{member.path}"  # strings, not pathlib: this loop runs once per member
        try:
            for depth in range(1, len(parts)):
                directory = "/".join(parts[:depth])
                if directory not in directories:
                    if len(directories) >= limits.max_directories:
                        raise UnsafeArchive(f"the archive creates more than {limits.max_directories:,} directories")
                    os.mkdir(f"{root}/{directory}")  # fails on a member file of that name: no merging, no following
                    # 0755 whatever the umask: the tree is read by the run-as users of scripts
                    os.chmod(f"{root}/{directory}", 0o755)  # noqa: S103
                    directories.add(directory)
            if member.typeflag == tarformat.SYMLINK:
                try:
                    target = check_symlink(member.path, member.target.encode("utf-8", "surrogateescape"))
                except SnapshotRefused as exc:
                    raise UnsafeArchive(str(exc)) from None
                os.symlink(target, location)
                links[member.path] = target
            else:
                _write_file(stream, location, member)
        except OSError as exc:
            raise UnsafeArchive(f"member {member.path!r} cannot be created: {exc.strerror}") from exc
    try:
        check_links_stay_inside(links)  # before the rename: no escaping link ever becomes visible
    except SnapshotRefused as exc:
        raise UnsafeArchive(str(exc)) from None
    end = stream.position - tarformat.BLOCK
    rest = tarformat.end_of_archive(end)[tarformat.BLOCK :]
    if stream.exactly(len(rest)) != rest or stream.read(1):
        raise UnsafeArchive("the archive does not end in exactly two NUL blocks and NUL padding to the record")
    return files


def _write_file(stream: _TarStream, location: str, member: _Header) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    descriptor = os.open(location, flags, 0o600)
    try:
        remaining = member.size
        while remaining:
            chunk = stream.exactly(min(remaining, CHUNK))
            _write_all(descriptor, chunk)
            remaining -= len(chunk)
        os.fchmod(descriptor, member.mode)
    finally:
        os.close(descriptor)
    if stream.exactly(len(tarformat.padding(member.size))) != tarformat.padding(member.size):
        raise UnsafeArchive(f"member {member.path!r}: non-zero padding after its data")


def _write_all(descriptor: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view) :]


def unpack_file(
    blob: Path,
    dest: Path,
    expected: Digest,
    *,
    tar_size: int | None = None,
    zst_sha256: str | None = None,
    zst_size: int | None = None,
    limits: UnpackLimits = DEFAULT_LIMITS,
) -> UnpackResult:
    """Unpack the local blob `blob` into the new directory `dest`, verified against `expected` and the recorded
    figures that are given. Raises `IntegrityError` (or `UnsafeArchive`) and leaves nothing behind on any mismatch;
    `FileExistsError` when `dest` already exists."""
    if zst_sha256 is not None or zst_size is not None:
        actual_sha256, actual_size = file_sha256(blob)
        if zst_size is not None and actual_size != zst_size:
            raise IntegrityError(f"{blob}: {actual_size:,} compressed bytes, the record says {zst_size:,}")
        if zst_sha256 is not None and actual_sha256 != zst_sha256:
            raise IntegrityError(f"{blob}: compressed sha256 {actual_sha256} does not match the recorded {zst_sha256}")
    if not complete_frames(blob):
        raise IntegrityError(f"{blob}: not a whole zstd stream (truncated, or followed by other bytes)")
    if dest.exists() or dest.is_symlink():
        raise FileExistsError(f"{dest} already exists")
    if not dest.parent.is_dir():
        raise FileNotFoundError(
            f"{dest.parent} does not exist; unpack creates DEST itself, inside an existing directory"
        )
    staging = dest.parent / f".{dest.name}.unpack-{secrets.token_hex(6)}"
    staging.mkdir(mode=0o755)
    staging.chmod(0o755)
    try:
        decompressor = zstandard.ZstdDecompressor(max_window_size=1 << limits.max_window_log)
        with open(blob, "rb") as compressed, decompressor.stream_reader(compressed, read_size=CHUNK) as reader:
            stream = _TarStream(reader, tar_size if tar_size is not None else limits.max_tar_bytes)
            try:
                files = _extract(stream, staging, limits)
            finally:
                stream.close()
        if tar_size is not None and stream.size != tar_size:
            raise IntegrityError(f"{blob}: {stream.size:,} tar bytes, the record says {tar_size:,}")
        actual = Digest.of(stream.hasher)
        if actual != expected:
            raise IntegrityError(f"{blob}: content digest is {actual}, expected {expected}")
        try:
            staging.rename(dest)
        except OSError as exc:
            raise FileExistsError(f"{dest} appeared while unpacking: {exc.strerror}") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return UnpackResult(files=files, tar_size=stream.size)
