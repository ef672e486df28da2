"""`ahop snapshot` and `ahop unpack` as an operator runs them: offline, one JSON object, clear refusals."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import zstandard

from tests.support.repositories import commit_all
from tests.support.trees import GOLDEN_DIGEST, build_fixture_tree


def ahop(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ahop", *args], capture_output=True, text=True, cwd=cwd, check=False)


def test_snapshot_of_a_repository_prints_one_json_object_and_writes_the_blob(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "scripts" / "cleanup").mkdir(parents=True)
    build_fixture_tree(repo / "scripts" / "cleanup")
    commit = commit_all(repo)
    blob = tmp_path / "out" / "cleanup.tar.zst"
    blob.parent.mkdir()

    result = ahop("snapshot", "--repo", str(repo), "--rev", "main", "--path", "scripts/cleanup", "--out", str(blob))

    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)  # exactly one JSON document on stdout
    assert set(printed) == {"digest", "tar_size", "zst_size", "zst_sha256", "files", "tree_id", "commit"}
    assert printed["digest"] == GOLDEN_DIGEST
    assert printed["commit"] == commit
    assert printed["files"] == 7
    data = blob.read_bytes()
    assert (len(data), hashlib.sha256(data).hexdigest()) == (printed["zst_size"], printed["zst_sha256"])
    tar = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    assert f"sha256:{hashlib.sha256(tar).hexdigest()}" == printed["digest"]
    assert sorted(p.name for p in blob.parent.iterdir()) == ["cleanup.tar.zst"]  # no temporary file left


def test_snapshot_of_a_directory_has_no_git_fields(tmp_path: Path) -> None:
    build_fixture_tree(tmp_path)
    result = ahop("snapshot", "--dir", str(tmp_path), "--level", "1")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert (printed["digest"], printed["tree_id"], printed["commit"]) == (GOLDEN_DIGEST, None, None)


def test_bad_input_exits_2_with_the_reason_and_writes_nothing(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    build_fixture_tree(tree)
    (tree / "escape").symlink_to("../../etc")
    out = tmp_path / "blob.tar.zst"
    cases = [
        (["--dir", str(tree), "--out", str(out)], "'escape' -> '../../etc' leaves the tree"),
        (["--repo", str(tmp_path / "nothing")], "is not a Git repository"),
        (["--dir", str(tree), "--repo", str(tree)], "exactly one of --repo PATH or --dir DIR"),
        (["--dir", str(tree), "--max-files", "3"], "the limit is 3 files"),
    ]
    for args, message in cases:
        result = ahop("snapshot", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr
        assert result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"]


def test_unpack_verifies_and_refuses_a_wrong_digest(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    build_fixture_tree(tree)
    blob = tmp_path / "blob.tar.zst"
    packed = json.loads(ahop("snapshot", "--dir", str(tree), "--out", str(blob)).stdout)

    good = ahop("unpack", str(blob), str(tmp_path / "good"), "--digest", packed["digest"])
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["files"] == 7
    assert (tmp_path / "good" / "run.sh").read_text() == (tree / "run.sh").read_text()

    other = "sha256:" + "0" * 64
    bad = ahop("unpack", str(blob), str(tmp_path / "bad"), "--digest", other)
    assert bad.returncode == 1
    assert f"expected {other}" in bad.stderr
    assert not (tmp_path / "bad").exists()

    malformed = ahop("unpack", str(blob), str(tmp_path / "bad"), "--digest", "md5:abc")
    assert malformed.returncode == 2
    assert "sha256:<64 lowercase hex>" in malformed.stderr
