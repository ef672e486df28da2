"""Tree sources for canonical tars: a directory on disk, or a path in a Git commit read from the object database.

Both list their members sorted and checked (`storage.canonical`) and then stream contents in that order. The same
files give the same members from either side: that is what makes a Git import and a worker's re-pack agree.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import subprocess
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

import git
import gitdb.exc

from storage.canonical import FILE, SYMLINK, Entry, check_path, sort_key
from storage.errors import SnapshotRefused

CHUNK = 1 << 20
GIT_FILE, GIT_EXECUTABLE, GIT_SYMLINK, GIT_SUBMODULE = "100644", "100755", "120000", "160000"


class DirectoryTree:
    """The files under a directory (a single file gives itself alone). A top-level `.git` is skipped."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tree_id: str | None = None
        self.commit: str | None = None

    def entries(self) -> list[Entry]:
        try:
            info = self.root.stat()
        except FileNotFoundError:
            raise SnapshotRefused(f"{self.root}: no such file or directory") from None
        if stat.S_ISREG(info.st_mode):
            name = check_path(os.fsencode(self.root.name), str(self.root))
            return [Entry(name, FILE, info.st_size, bool(info.st_mode & 0o111))]
        if not stat.S_ISDIR(info.st_mode):
            raise SnapshotRefused(f"{self.root}: not a directory or a regular file")
        found: list[Entry] = []
        try:
            self._walk(os.fsencode(self.root), b"", found)
        except OSError as exc:
            raise SnapshotRefused(f"{exc.filename or self.root}: {exc.strerror}") from exc
        found.sort(key=lambda entry: sort_key(entry.path))
        return found

    def _walk(self, directory: bytes, prefix: bytes, found: list[Entry]) -> None:
        with os.scandir(directory) as listing:
            for item in listing:
                relative = prefix + item.name
                if relative == b".git":
                    continue
                if item.is_symlink():
                    path = check_path(relative, str(self.root))
                    found.append(Entry(path, SYMLINK, len(os.readlink(item.path))))
                elif item.is_dir(follow_symlinks=False):
                    self._walk(item.path, relative + b"/", found)
                elif item.is_file(follow_symlinks=False):
                    path = check_path(relative, str(self.root))
                    info = item.stat(follow_symlinks=False)
                    found.append(Entry(path, FILE, info.st_size, bool(info.st_mode & 0o111)))
                else:
                    shown = os.fsdecode(relative)
                    raise SnapshotRefused(
                        f"{shown!r} is not a regular file, directory or symlink (fifo, socket, device?)"
                    )

    def contents(self, entries: list[Entry]) -> Iterator[tuple[Entry, Iterable[bytes]]]:
        single = len(entries) == 1 and not self.root.is_dir()
        for entry in entries:
            location = self.root if single else self.root / entry.path
            try:
                if entry.kind == SYMLINK:
                    yield entry, [os.fsencode(os.readlink(location))]
                else:
                    # The root the caller named may be a link to a file; inside the tree, links are never followed.
                    yield entry, _read_file(location, entry.size, follow=single)
            except OSError as exc:
                raise SnapshotRefused(f"{location}: {exc.strerror} (did it change while it was read?)") from exc


def _read_file(path: Path, size: int, *, follow: bool = False) -> Iterator[bytes]:
    # O_NOFOLLOW: a file swapped for a symlink after listing is refused, not followed out of the tree.
    descriptor = os.open(path, os.O_RDONLY | (0 if follow else os.O_NOFOLLOW))
    with os.fdopen(descriptor, "rb", buffering=0) as handle:
        if size <= CHUNK:
            yield handle.read(size + 1)  # one byte more shows a file that grew since it was listed
            return
        while chunk := handle.read(CHUNK):
            yield chunk


def normalize_repo_path(path: str) -> str:
    """A path inside the repository, '' for its root; refuses absolute paths and any that climb out."""
    if path.startswith("/"):
        raise SnapshotRefused(f"path {path!r} must be relative to the repository root")
    parts = [part for part in PurePosixPath(path).parts if part != "."]
    if ".." in parts:
        raise SnapshotRefused(f"path {path!r} leaves the repository; '..' is not allowed")
    return "/".join(parts)


class GitTree:
    """A directory (its contents) or a single file (alone, at the root) of a commit, read from the object
    database, never from a work tree. `tree_id` is the Git id of what is packed: the tree, or for a single
    file its blob."""

    def __init__(self, repo: git.Repo, rev: str, path: str) -> None:
        # Read exactly the objects the ids name: no replace refs, no lazy fetching of missing objects.
        repo.git.update_environment(GIT_NO_REPLACE_OBJECTS="1", GIT_NO_LAZY_FETCH="1")
        self.repo = repo
        self.path = normalize_repo_path(path)
        try:
            commit = repo.commit(rev)
        except (gitdb.exc.BadName, gitdb.exc.BadObject, ValueError) as exc:
            raise SnapshotRefused(f"revision {rev!r} not found in {repo.git_dir}") from exc
        self.commit: str | None = commit.hexsha
        try:
            self._object = commit.tree / self.path if self.path else commit.tree
        except KeyError:
            raise SnapshotRefused(f"path {self.path!r} does not exist at {rev} ({commit.hexsha[:12]})") from None
        if self._object.type == "submodule":
            raise SnapshotRefused(f"path {self.path!r} is a Git submodule; submodules cannot be snapshotted")
        self.tree_id: str | None = self._object.hexsha

    @property
    def content_key(self) -> str:
        """What determines this snapshot's digest, as Git knows it: the tree id of a directory, or for a single
        file its mode, blob id and name (the same blob under another name or mode packs differently)."""
        if self._object.type == "blob":
            return f"file:{self._object.mode:o}:{self._object.hexsha}:{PurePosixPath(self.path).name}"
        return f"tree:{self._object.hexsha}"

    def entries(self) -> list[Entry]:
        if self._object.type == "blob":
            name = PurePosixPath(self.path).name
            return [_git_entry(str(oct(self._object.mode))[2:], name.encode(), self._object.size, self.path)]
        listing = self.repo.git.ls_tree("-r", "-l", "-z", self._object.hexsha, stdout_as_string=False)
        found = []
        self._ids: dict[str, str] = {}
        for record in listing.split(b"\0"):
            if not record:
                continue
            meta, _, raw_path = record.partition(b"\t")
            mode, _kind, object_id, size = meta.decode().split()
            shown = f"{self.path}/{raw_path.decode(errors='replace')}".lstrip("/")
            entry = _git_entry(mode, raw_path, int(size) if size != "-" else 0, shown)
            self._ids[entry.path] = object_id
            found.append(entry)
        found.sort(key=lambda entry: sort_key(entry.path))
        return found

    def contents(self, entries: list[Entry]) -> Iterator[tuple[Entry, Iterable[bytes]]]:
        single = self._object.type == "blob"
        ids = [self._object.hexsha] if single else [self._ids[entry.path] for entry in entries]
        reader = _BatchReader(self.repo, ids)
        try:
            for entry, object_id in zip(entries, ids, strict=True):
                yield entry, reader.next_object(object_id, entry.size)
        finally:
            reader.close()


def _git_entry(mode: str, raw_path: bytes, size: int, shown: str) -> Entry:
    if mode == GIT_SUBMODULE:
        raise SnapshotRefused(f"{shown!r} is a Git submodule (gitlink); submodules cannot be snapshotted")
    path = check_path(raw_path, shown)
    if mode == GIT_SYMLINK:
        return Entry(path, SYMLINK, size)
    if not mode.startswith("100"):
        raise SnapshotRefused(f"{shown!r} has Git mode {mode}, which is neither a file nor a symlink")
    return Entry(path, FILE, size, executable=mode == GIT_EXECUTABLE)


class _BatchReader:
    """Objects from one `git cat-file --batch`, requests written by a thread while replies are read: no round
    trip per file, and git reads the next object while we compress the last."""

    def __init__(self, repo: git.Repo, object_ids: list[str]) -> None:
        self._process = repo.git.cat_file("--batch", as_process=True, istream=subprocess.PIPE)
        self._stdin: IO[bytes] = self._process.proc.stdin
        # Read git's answers through a 1 MiB buffer (and a 1 MiB pipe where Linux allows): far fewer syscalls than
        # the default 8 KiB for the tens of megabytes a template can hold.
        stdout = self._process.proc.stdout
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(stdout.fileno(), fcntl.F_SETPIPE_SZ, CHUNK)
        self._stdout: IO[bytes] = open(stdout.fileno(), "rb", buffering=CHUNK, closefd=False)  # noqa: SIM115
        self._unread: Iterator[bytes] | None = None
        self._feeder = threading.Thread(target=self._feed, args=(object_ids,), daemon=True)
        self._feeder.start()

    def _feed(self, object_ids: list[str]) -> None:
        try:
            self._stdin.write("".join(f"{object_id}\n" for object_id in object_ids).encode())
            self._stdin.close()
        except (BrokenPipeError, ValueError):
            pass  # the reader stopped early (an error, a limit): nothing more to ask for

    def next_object(self, object_id: str, expected_size: int) -> Iterator[bytes]:
        if self._unread is not None:
            for _ in self._unread:  # the caller skipped the last object's bytes: they must not become this one's
                pass
        line = self._stdout.readline()
        parts = line.split()
        if len(parts) != 3 or parts[1] != b"blob" or parts[0].decode() != object_id:
            raise SnapshotRefused(f"git cat-file answered {line!r} for {object_id}; the repository may be damaged")
        size = int(parts[2])
        if size != expected_size:
            raise SnapshotRefused(f"object {parts[0].decode()} has {size} bytes, ls-tree said {expected_size}")
        self._unread = self._read(size)
        return self._unread

    def _read(self, size: int) -> Iterator[bytes]:
        remaining = size
        while remaining:
            chunk = self._stdout.read(min(remaining, CHUNK))
            if not chunk:
                raise SnapshotRefused("git cat-file ended early; the repository may be damaged")
            remaining -= len(chunk)
            yield chunk
        self._stdout.read(1)  # the newline after each object

    def close(self) -> None:
        self._stdout.close()
        self._process.proc.stdout.close()
        self._process.proc.wait()
        self._feeder.join()


@dataclass(frozen=True)
class GitPath:
    """What a path names in a commit, found with one `git ls-tree` (no object parsing, no content read)."""

    commit: str
    path: str
    kind: str
    """`tree` or `blob`."""
    object_id: str
    content_key: str
    """As `GitTree.content_key`: equal keys pack to equal digests."""


def locate_git_path(repo: git.Repo, rev: str, path: str, member: str) -> GitPath:
    """Resolve `path` at `rev` and check that `member` (relative to it; its own name for a file) exists, cheaply.

    Lets an import whose content is already known skip listing and packing the whole tree.
    """
    path = normalize_repo_path(path)
    try:
        commit = repo.git.rev_parse("--verify", "--end-of-options", f"{rev}^{{commit}}").strip()
    except git.GitCommandError as exc:
        raise SnapshotRefused(f"revision {rev!r} not found in {repo.git_dir}") from exc
    if path:
        listing = repo.git.ls_tree("-z", "--full-tree", commit, "--", path, stdout_as_string=False)
        meta, _, _ = listing.rstrip(b"\0").partition(b"\t")
        if not meta:
            raise SnapshotRefused(f"path {path!r} does not exist at {rev} ({commit[:12]})")
        mode, kind, object_id = meta.decode().split()
    else:
        mode, kind, object_id = "040000", "tree", repo.git.rev_parse(f"{commit}^{{tree}}").strip()
    if kind == "commit":
        raise SnapshotRefused(f"path {path!r} is a Git submodule; submodules cannot be snapshotted")
    if kind == "blob":
        name = PurePosixPath(path).name
        if member != name:
            raise SnapshotRefused(
                f"the entry of the single file {path!r} is {name!r}, not {member!r}", missing_member=member
            )
        return GitPath(commit, path, kind, object_id, f"file:{int(mode, 8):o}:{object_id}:{name}")
    try:
        member_kind = repo.git.cat_file("-t", f"{object_id}:{member}").strip()
    except git.GitCommandError:
        member_kind = "missing"
    if member_kind != "blob":
        raise SnapshotRefused(
            f"{member!r} is not a file of {path or '.'!r} at {rev} ({commit[:12]})", missing_member=member
        )
    return GitPath(commit, path, kind, object_id, f"tree:{object_id}")
