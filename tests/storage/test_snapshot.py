"""Content identity: the canonical tar is pinned, deterministic, and the same from Git, a directory or an unpack."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
from pathlib import Path

import git
import pytest
import zstandard

from storage.canonical import Limits
from storage.errors import LimitExceeded, SnapshotRefused
from storage.snapshot import Snapshot, snapshot_directory, snapshot_git
from storage.trees import locate_git_path
from storage.unpack import unpack_file
from tests.support.repositories import commit_all
from tests.support.trees import GOLDEN_DIGEST, build_fixture_tree, umask


def reference_tar(root: Path) -> bytes:
    """The canonical tar written by CPython's tarfile, the reference writer of DESIGN §2."""
    members = sorted(
        (p for p in root.rglob("*") if p.is_symlink() or p.is_file()),
        key=lambda p: str(p.relative_to(root)).encode(),
    )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8") as archive:
        for path in members:
            info = tarfile.TarInfo(str(path.relative_to(root)))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if path.is_symlink():
                info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, os.readlink(path)
                archive.addfile(info)
            else:
                info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
                info.size = path.stat().st_size
                with open(path, "rb") as content:
                    archive.addfile(info, content)
    return buffer.getvalue()


def decompress(blob: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompressobj().decompress(blob)


def pack_dir(root: Path, level: int = 3) -> tuple[Snapshot, bytes]:
    out = io.BytesIO()
    return snapshot_directory(root, out, level=level), out.getvalue()


@pytest.fixture
def fixture_tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    root.mkdir()
    build_fixture_tree(root)
    return root


def test_golden_digest_is_pinned_and_equals_the_reference_writer(fixture_tree: Path) -> None:
    snapshot, blob = pack_dir(fixture_tree)
    tar = decompress(blob)
    assert tar == reference_tar(fixture_tree)
    assert f"sha256:{hashlib.sha256(tar).hexdigest()}" == str(snapshot.digest)
    assert str(snapshot.digest) == GOLDEN_DIGEST
    assert (snapshot.files, snapshot.tar_size) == (7, len(tar))


def test_blob_decompresses_to_the_digest_and_records_its_own_figures(fixture_tree: Path) -> None:
    snapshot, blob = pack_dir(fixture_tree)
    assert hashlib.sha256(decompress(blob)).hexdigest() == snapshot.digest.hex  # zstd -dc BLOB | sha256sum
    assert snapshot.zst_size == len(blob)
    assert snapshot.zst_sha256 == hashlib.sha256(blob).hexdigest()


def test_same_content_from_two_clones_with_other_umask_mtimes_and_levels_gives_one_digest(tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    origin.mkdir()
    build_fixture_tree(origin)
    commit_all(origin)
    results = []
    for index, (mask, level) in enumerate(((0o022, 1), (0o077, 3), (0o002, 19))):
        clone = tmp_path / f"clone{index}"
        with umask(mask):
            git.Repo.clone_from(origin, clone).close()
        for path in clone.rglob("*"):
            if not path.is_symlink():
                os.utime(path, (1_000_000 * (index + 1), 1_000_000 * (index + 1)))
        results.append(pack_dir(clone, level))
    digests = {str(snapshot.digest) for snapshot, _ in results}
    assert digests == {GOLDEN_DIGEST}
    assert len({blob for _, blob in results}) == 3  # the compressed bytes differ by level; the digest does not


def test_git_tree_pack_equals_directory_pack_of_a_checkout_and_of_its_unpacked_blob(
    tmp_path: Path, fixture_tree: Path
) -> None:
    commit = commit_all(fixture_tree)
    with git.Repo(fixture_tree) as repo:
        out = io.BytesIO()
        from_git = snapshot_git(repo, "main", "", out)
    assert from_git.commit == commit
    assert from_git.tree_id == git.Repo(fixture_tree).commit(commit).tree.hexsha
    from_dir, _ = pack_dir(fixture_tree)  # the work tree, whose top-level .git is skipped
    assert from_git.digest == from_dir.digest
    blob = tmp_path / "blob.tar.zst"
    blob.write_bytes(out.getvalue())
    unpack_file(blob, tmp_path / "unpacked", from_git.digest, tar_size=from_git.tar_size)
    assert pack_dir(tmp_path / "unpacked")[0].digest == from_git.digest


def test_git_subdirectory_and_single_file(fixture_tree: Path) -> None:
    commit_all(fixture_tree)
    with git.Repo(fixture_tree) as repo:
        sub = snapshot_git(repo, "HEAD", "lib/", None)
        single = snapshot_git(repo, "HEAD", "run.sh", None)
        root_dot = snapshot_git(repo, "HEAD", ".", None)
    assert sub.digest == pack_dir(fixture_tree / "lib")[0].digest
    assert sub.files == 2
    assert single.digest == pack_dir(fixture_tree / "run.sh")[0].digest
    assert single.files == 1
    assert root_dot.digest == pack_dir(fixture_tree)[0].digest


def test_a_located_path_that_lacks_its_entry_file_names_the_file_and_a_bad_path_names_none(fixture_tree: Path) -> None:
    commit_all(fixture_tree)
    with git.Repo(fixture_tree) as repo:
        assert locate_git_path(repo, "HEAD", "lib", "common.sh").kind == "tree"
        for path, entry in (("lib", "nope.sh"), ("lib", "sub"), ("run.sh", "other.sh")):
            with pytest.raises(SnapshotRefused) as refused:
                locate_git_path(repo, "HEAD", path, entry)
            assert refused.value.missing_member == entry, (path, entry)
        with pytest.raises(SnapshotRefused) as refused:
            locate_git_path(repo, "HEAD", "nope", "run.sh")
        assert refused.value.missing_member is None


def test_the_object_database_is_read_not_the_work_tree(fixture_tree: Path) -> None:
    commit_all(fixture_tree)
    before = pack_dir(fixture_tree)[0].digest
    (fixture_tree / "run.sh").write_text("changed, not committed\n")
    with git.Repo(fixture_tree) as repo:
        assert snapshot_git(repo, "HEAD", "", None).digest == before


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("../outside", "leaves the repository"),
        ("/etc", "relative to the repository root"),
        ("no/such/dir", "does not exist"),
        ("a/../../x", "leaves the repository"),
    ],
)
def test_git_paths_that_do_not_exist_or_escape_are_refused(fixture_tree: Path, path: str, message: str) -> None:
    commit_all(fixture_tree)
    with git.Repo(fixture_tree) as repo, pytest.raises(SnapshotRefused, match=message):
        snapshot_git(repo, "HEAD", path, None)


def test_unknown_revision_is_refused(fixture_tree: Path) -> None:
    commit_all(fixture_tree)
    with git.Repo(fixture_tree) as repo, pytest.raises(SnapshotRefused, match="revision 'nope' not found"):
        snapshot_git(repo, "nope", "", None)


@pytest.mark.parametrize(
    ("target", "message"), [("/etc/passwd", "must be relative"), ("../../outside", "leaves the tree")]
)
def test_symlinks_leaving_the_tree_are_refused_from_disk_and_from_git(
    fixture_tree: Path, target: str, message: str
) -> None:
    (fixture_tree / "lib" / "bad").symlink_to(target)
    with pytest.raises(SnapshotRefused, match=rf"'lib/bad'.*{message}"):
        snapshot_directory(fixture_tree, None)
    commit_all(fixture_tree)
    with git.Repo(fixture_tree) as repo, pytest.raises(SnapshotRefused, match=rf"'lib/bad'.*{message}"):
        snapshot_git(repo, "HEAD", "", None)


def test_submodules_are_refused(fixture_tree: Path) -> None:
    commit = commit_all(fixture_tree)
    subprocess.run(
        ["git", "update-index", "--add", "--cacheinfo", f"160000,{commit},vendor/tool"], cwd=fixture_tree, check=True
    )
    commit_all(fixture_tree, stage=False)  # `add -A` would drop the gitlink: its directory is not checked out
    with git.Repo(fixture_tree) as repo:
        with pytest.raises(SnapshotRefused, match="'vendor/tool' is a Git submodule"):
            snapshot_git(repo, "HEAD", "", None)
        with pytest.raises(SnapshotRefused, match="submodule"):
            snapshot_git(repo, "HEAD", "vendor/tool", None)


def test_paths_that_are_not_utf8_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    (root / "ok.txt").write_text("fine\n")
    with open(os.path.join(os.fsencode(root), b"caf\xe9.txt"), "wb") as latin1:
        latin1.write(b"x")
    with pytest.raises(SnapshotRefused, match="not valid UTF-8"):
        snapshot_directory(root, None)
    commit_all(root)
    with git.Repo(root) as repo, pytest.raises(SnapshotRefused, match="not valid UTF-8"):
        snapshot_git(repo, "HEAD", "", None)


def test_a_fifo_is_refused(fixture_tree: Path) -> None:
    os.mkfifo(fixture_tree / "pipe")
    with pytest.raises(SnapshotRefused, match="'pipe' is not a regular file"):
        snapshot_directory(fixture_tree, None)


def test_limits_are_refused_with_the_figures(fixture_tree: Path) -> None:
    with pytest.raises(LimitExceeded, match=r"has 7 files and .* bytes; the limit is 5 files"):
        snapshot_directory(fixture_tree, None, limits=Limits(max_files=5))
    with pytest.raises(LimitExceeded, match=r"the limit is 100,000 files and 10 bytes"):
        snapshot_directory(fixture_tree, None, limits=Limits(max_bytes=10))


def test_a_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SnapshotRefused, match="no such file or directory"):
        snapshot_directory(tmp_path / "absent", None)


def test_a_symlink_escaping_through_another_symlink_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    (root / "s").mkdir(parents=True)
    (root / "s" / "up").symlink_to("..")  # the tree's root: allowed on its own
    (root / "t").symlink_to("s/up/..")  # lexically "s", really the tree's parent
    with pytest.raises(SnapshotRefused, match=r"symlink 't' -> 's/up/\.\.' leaves the tree once"):
        snapshot_directory(root, None)


def test_trees_no_worker_could_unpack_are_refused_when_packing(tmp_path: Path) -> None:
    root = tmp_path / "deep"
    deep = root.joinpath(*(["d"] * 40))
    deep.mkdir(parents=True)
    (deep / "f").write_text("x")
    with pytest.raises(SnapshotRefused, match="32 levels"):
        snapshot_directory(root, None)


def test_the_size_limit_counts_the_tar_not_only_file_bytes(tmp_path: Path) -> None:
    root = tmp_path / "empties"
    root.mkdir()
    for index in range(50):
        (root / f"empty-{index:03}").write_bytes(b"")
    actual = snapshot_directory(root, None).tar_size  # 50 headers and the end blocks: no file bytes at all
    assert actual == 30_720
    with pytest.raises(
        LimitExceeded, match=rf"makes a tar of {actual:,} bytes; the limit is 100,000 files and 1,000 bytes"
    ):
        snapshot_directory(root, None, limits=Limits(max_bytes=1000))
