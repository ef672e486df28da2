"""Pack a tree into a blob in one pass: canonical tar → sha256 (the digest) → zstd → sha256 and size → output."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import git
import zstandard

from storage.canonical import ByteSink, Limits, TreeSource, write_canonical_tar
from storage.digest import Digest
from storage.trees import DirectoryTree, GitTree

DEFAULT_LEVEL = 3
_FLUSH_AT = 1 << 20
DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Snapshot:
    """What packing produced: the digest of the tar, and the figures recorded beside the blob."""

    digest: Digest
    tar_size: int
    zst_size: int
    zst_sha256: str
    files: int
    tree_id: str | None
    commit: str | None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "digest": str(self.digest)}


class _CompressedSink:
    """Counts and hashes compressed bytes on their way to the output (or nowhere, when only the digest is wanted)."""

    def __init__(self, out: BinaryIO | None) -> None:
        self.out = out
        self.hasher = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.hasher.update(data)
        self.size += len(data)
        if self.out is not None:
            self.out.write(data)
        return len(data)

    def flush(self) -> None:
        if self.out is not None:
            self.out.flush()


class _TarSink:
    """Buffers tar bytes into ~1 MiB pieces, hashes them (the digest) and hands them to the compressor."""

    def __init__(self, compressor: ByteSink) -> None:
        self.compressor = compressor
        self.hasher = hashlib.sha256()
        self.buffer = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.buffer += data
        if len(self.buffer) >= _FLUSH_AT:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self.buffer:
            self.hasher.update(self.buffer)
            self.compressor.write(self.buffer)
            self.buffer = bytearray()


def pack(
    source: TreeSource, out: BinaryIO | None, *, what: str, level: int = DEFAULT_LEVEL, limits: Limits = DEFAULT_LIMITS
) -> Snapshot:
    """Write the blob of `source` to `out` (None: compute the figures only) and return its `Snapshot`.

    zstd runs multi-threaded (`threads=-1`) with the frame checksum on. Compressed bytes depend on the level and
    the zstd version; the digest never does.
    """
    if not 1 <= level <= zstandard.MAX_COMPRESSION_LEVEL:
        raise ValueError(f"zstd level must be between 1 and {zstandard.MAX_COMPRESSION_LEVEL}, got {level}")
    compressed = _CompressedSink(out)
    compressor = zstandard.ZstdCompressor(level=level, threads=-1, write_checksum=True)
    with compressor.stream_writer(compressed, closefd=False) as zstd_writer:  # type: ignore[arg-type]
        tar = _TarSink(zstd_writer)
        stats = write_canonical_tar(source, tar, limits, what)
        tar.flush()
    return Snapshot(
        digest=Digest.of(tar.hasher),
        tar_size=stats.tar_size,
        zst_size=compressed.size,
        zst_sha256=compressed.hasher.hexdigest(),
        files=stats.files,
        tree_id=getattr(source, "tree_id", None),
        commit=getattr(source, "commit", None),
    )


def snapshot_directory(
    root: Path, out: BinaryIO | None, *, level: int = DEFAULT_LEVEL, limits: Limits = DEFAULT_LIMITS
) -> Snapshot:
    """The blob of a directory's contents (or of a single file)."""
    return pack(DirectoryTree(root), out, what=str(root), level=level, limits=limits)


def snapshot_git(
    repo: git.Repo,
    rev: str,
    path: str,
    out: BinaryIO | None,
    *,
    level: int = DEFAULT_LEVEL,
    limits: Limits = DEFAULT_LIMITS,
) -> Snapshot:
    """The blob of `path` (a directory's contents, or a single file) in commit `rev` of `repo`."""
    tree = GitTree(repo, rev, path)
    return pack(tree, out, what=f"{path or '.'} at {rev}", level=level, limits=limits)
