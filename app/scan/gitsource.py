"""The scan of a commit's tree, read from the Git object database (never a work tree): `scan_git`.

One `git ls-tree -r -l -z` lists the tree with modes and sizes; one `git cat-file --batch` process then answers
the few reads the scan makes (script headers, surveys, the first bytes of likely playbooks), one object at a time,
keeping only the bytes asked for.
"""

from __future__ import annotations

import subprocess
from types import TracebackType
from typing import IO

import git
import gitdb.exc

from app.scan.candidates import Candidate, ScanFile, scan
from app.scan.errors import ScanError
from storage.canonical import Limits

CHUNK = 1 << 20
GIT_EXECUTABLE, GIT_SYMLINK, GIT_SUBMODULE = "100755", "120000", "160000"


def scan_git(repo: git.Repo, rev: str, limits: Limits | None = None) -> list[Candidate]:
    """The candidates at `rev` (a branch, tag or commit) of `repo`, a bare mirror or any repository; with the
    server's import `limits`, candidates over them say so in their problems.

    Pass a resolved commit id when the caller records which commit it scanned: a branch may move meanwhile.
    """
    try:
        tree = repo.commit(rev).tree.hexsha
    except (gitdb.exc.BadName, gitdb.exc.BadObject, ValueError) as exc:
        raise ScanError(f"revision {rev!r} not found in {repo.git_dir}") from exc
    try:
        listing = repo.git.ls_tree("-r", "-l", "-z", tree, stdout_as_string=False)
    except git.GitCommandError as exc:
        raise ScanError(f"cannot list the tree of {rev!r} in {repo.git_dir}: {exc.stderr.strip()}") from exc
    files, object_ids = parse_listing(listing)
    with _BlobReader(repo) as blobs:
        return scan(files, lambda path, limit: blobs.read(object_ids[path], limit), limits)


def parse_listing(listing: bytes) -> tuple[list[ScanFile], dict[str, str]]:
    """`ScanFile`s and the object id of each path, from `git ls-tree -r -l -z` output."""
    files = []
    object_ids = {}
    for record in listing.split(b"\0"):
        if not record:
            continue
        meta, _, raw_path = record.partition(b"\t")
        mode, _kind, object_id, size = meta.decode().split()
        path = raw_path.decode("utf-8", errors="replace")
        object_ids[path] = object_id
        files.append(
            ScanFile(
                path=path,
                size=int(size) if size != "-" else 0,
                executable=mode == GIT_EXECUTABLE,
                is_symlink=mode == GIT_SYMLINK,
                is_submodule=mode == GIT_SUBMODULE,
            )
        )
    return files, object_ids


class _BlobReader:
    """Blobs from one `git cat-file --batch`, asked one at a time; the bytes past `limit` are read and dropped."""

    def __init__(self, repo: git.Repo) -> None:
        self._process = repo.git.cat_file("--batch", as_process=True, istream=subprocess.PIPE)
        self._stdin: IO[bytes] = self._process.proc.stdin
        self._stdout: IO[bytes] = self._process.proc.stdout

    def __enter__(self) -> _BlobReader:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def read(self, object_id: str, limit: int) -> bytes:
        self._stdin.write(f"{object_id}\n".encode())
        self._stdin.flush()
        line = self._stdout.readline()
        parts = line.split()
        if len(parts) != 3 or parts[1] != b"blob":
            raise ScanError(f"git cat-file answered {line!r} for {object_id}; the repository may be damaged")
        size = int(parts[2])
        kept = self._stdout.read(min(size, limit))
        remaining = size - len(kept)
        while remaining > 0:
            chunk = self._stdout.read(min(remaining, CHUNK))
            if not chunk:
                raise ScanError(f"git cat-file ended inside {object_id}; the repository may be damaged")
            remaining -= len(chunk)
        self._stdout.read(1)  # the newline after each object
        return kept

    def close(self) -> None:
        self._stdin.close()
        self._stdout.read()
        self._stdout.close()
        self._process.proc.wait()
