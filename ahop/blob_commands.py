"""`ahop snapshot` and `ahop unpack`: offline commands over local trees and blobs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import click

from ahop.console import echo_json, fail
from ahop.exit_codes import EXIT_BAD_INPUT, EXIT_PROBLEMS

if TYPE_CHECKING:  # for annotations only: each command imports what it runs when it runs
    from storage.canonical import Limits


@click.command()
@click.option("--repo", type=click.Path(path_type=Path), help="A Git repository (bare or not); read from its objects.")
@click.option("--rev", default="HEAD", show_default=True, help="Commit-ish to read with --repo.")
@click.option("--path", "tree_path", default="", help="Directory or file inside the repository ('' or '.': its root).")
@click.option("--dir", "directory", type=click.Path(path_type=Path), help="A directory (or file) on disk instead.")
@click.option("--out", type=click.Path(path_type=Path), help="Write the .tar.zst blob here.")
@click.option("--level", type=click.IntRange(1, 22), default=3, show_default=True, help="zstd level.")
@click.option("--max-bytes", type=click.IntRange(min=0), default=1 << 30, show_default=True)
@click.option("--max-files", type=click.IntRange(min=0), default=100_000, show_default=True)
def snapshot(
    repo: Path | None,
    rev: str,
    tree_path: str,
    directory: Path | None,
    out: Path | None,
    level: int,
    max_bytes: int,
    max_files: int,
) -> None:
    """Pack a tree into its canonical blob and print one JSON object: digest, sizes, files, tree_id, commit.

    Offline: needs no service. `zstd -dc BLOB | sha256sum` prints the digest.
    """
    from storage.canonical import Limits
    from storage.errors import StorageError

    if (repo is None) == (directory is None):
        fail("give exactly one of --repo PATH or --dir DIR", EXIT_BAD_INPUT)
    limits = Limits(max_bytes=max_bytes, max_files=max_files)
    try:
        result = _write_snapshot(repo, rev, tree_path, directory, out, level, limits)
    except StorageError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    except OSError as exc:
        fail(f"{exc.filename or out}: {exc.strerror}", EXIT_BAD_INPUT)
    echo_json(result, indent=None)


def _write_snapshot(
    repo: Path | None, rev: str, tree_path: str, directory: Path | None, out: Path | None, level: int, limits: Limits
) -> dict[str, object]:
    """Pack into a temporary file beside `out` and rename it into place: never a half-written blob."""
    import contextlib
    import os
    import tempfile

    from storage.snapshot import snapshot_directory, snapshot_git

    def pack(sink: BinaryIO | None) -> dict[str, object]:
        if directory is not None:
            return snapshot_directory(directory, sink, level=level, limits=limits).to_json()
        import git

        try:
            repository = git.Repo(repo)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            fail(f"{repo} is not a Git repository", EXIT_BAD_INPUT)
        with repository:
            return snapshot_git(repository, rev, tree_path, sink, level=level, limits=limits).to_json()

    if out is None:
        return pack(None)
    descriptor, staging = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent if str(out.parent) else ".")
    try:
        with os.fdopen(descriptor, "wb") as sink:
            result = pack(sink)
        os.replace(staging, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        raise
    return result


@click.command()
@click.argument("blob", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--digest", required=True, help="The expected digest, sha256:<64 hex>.")
@click.option("--tar-size", type=click.IntRange(min=0), help="The recorded tar size (caps decompression).")
@click.option("--zst-sha256", help="The recorded sha256 of the compressed bytes, checked first.")
def unpack(blob: Path, dest: Path, digest: str, tar_size: int | None, zst_sha256: str | None) -> None:
    """Verified unpack of a local blob into the new directory DEST (exit 1 when the blob is not what it should be)."""
    from storage.digest import Digest
    from storage.errors import IntegrityError, InvalidDigest
    from storage.unpack import unpack_file

    try:
        expected = Digest.parse(digest)
        result = unpack_file(blob, dest, expected, tar_size=tar_size, zst_sha256=zst_sha256)
    except InvalidDigest as exc:
        fail(f"--digest: {exc}", EXIT_BAD_INPUT)
    except FileExistsError as exc:
        fail(f"{exc}; unpack needs a new directory", EXIT_BAD_INPUT)
    except FileNotFoundError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    except IntegrityError as exc:
        fail(f"refused: {exc}", EXIT_PROBLEMS)
    echo_json(
        {"digest": str(expected), "files": result.files, "tar_size": result.tar_size, "dest": str(dest)}, indent=None
    )
