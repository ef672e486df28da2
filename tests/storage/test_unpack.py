"""Safe unpack (DESIGN §2): hostile blobs are refused on their members, leave nothing behind, write nothing outside.

Hostile archives are built byte by byte (`storage.tarformat` for near-canonical headers, `tarfile` for the rest)
and passed with the sha256 of their own tar as the expected digest: the digest would match, so every refusal below
comes from the unpacker's reading of the members, limits and figures, not from a digest mismatch.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import tarfile
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import zstandard

from storage import tarformat
from storage.digest import Digest
from storage.errors import IntegrityError, UnsafeArchive
from storage.snapshot import Snapshot, snapshot_directory
from storage.unpack import DEFAULT_LIMITS, UnpackLimits, UnpackResult, unpack_file
from tests.support.trees import LONG_PATH, build_fixture_tree, umask

MiB = 1 << 20
REGULAR, SYMLINK = tarformat.REGULAR, tarformat.SYMLINK


# --- building archives --------------------------------------------------------------------------------------------


def member(path: str, data: bytes = b"", *, mode: int = 0o644, typeflag: bytes = REGULAR, target: str = "") -> bytes:
    """One member as the canonical writer lays it out: header(s), data, padding."""
    return tarformat.header(path, mode, len(data), typeflag, target) + data + tarformat.padding(len(data))


def link(path: str, target: str) -> bytes:
    return member(path, mode=0o777, typeflag=SYMLINK, target=target)


def archive(*members: bytes) -> bytes:
    """Members followed by the canonical end of archive (two NUL blocks, padding to the 10 KiB record)."""
    body = b"".join(members)
    return body + tarformat.end_of_archive(len(body))


def patched(block: bytes, start: int, value: bytes) -> bytes:
    """A header block with bytes replaced at `start` and its checksum recomputed, so only that field is wrong."""
    changed = bytearray(block)
    changed[start : start + len(value)] = value
    changed[148:156] = b" " * 8
    changed[148:156] = b"%06o\x00 " % sum(changed)
    return bytes(changed)


def pax_record(keyword: str, value: str) -> bytes:
    body = f" {keyword}={value}\n".encode()
    length = len(body) + 1
    while len(body) + len(str(length)) != length:
        length += 1
    return str(length).encode() + body


def pax_header(records: bytes) -> bytes:
    return (
        tarformat.header("././@PaxHeader", 0, len(records), tarformat.PAX) + records + tarformat.padding(len(records))
    )


def tarfile_archive(*members: tuple[tarfile.TarInfo, bytes], tar_format: int = tarfile.PAX_FORMAT) -> bytes:
    """An archive written by CPython's tarfile (uid/gid/mtime 0 and empty names unless the TarInfo says otherwise)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tar_format, encoding="utf-8") as writer:
        for info, data in members:
            info.size = len(data)
            writer.addfile(info, io.BytesIO(data) if data else None)
    return buffer.getvalue()


def tar_info(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname = kind, mode, linkname
    return info


def compress(tar: bytes) -> bytes:
    return zstandard.ZstdCompressor(write_checksum=True).compress(tar)


def digest_of(data: bytes) -> Digest:
    return Digest(hashlib.sha256(data).hexdigest())


def noise(size: int) -> bytes:
    """Deterministic incompressible bytes."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


@contextmanager
def peak_memory() -> Iterator[list[int]]:
    """The peak of Python allocations inside the block, in bytes (read it after the block)."""
    peak: list[int] = []
    already = tracemalloc.is_tracing()
    if already:
        tracemalloc.reset_peak()
    else:
        tracemalloc.start()
    try:
        yield peak
    finally:
        peak.append(tracemalloc.get_traced_memory()[1])
        if not already:
            tracemalloc.stop()


def mentions(message: str, number: int) -> bool:
    return f"{number:,}" in message or str(number) in message


# --- the scene: a blob beside an area holding the destination and a sentinel directory ----------------------------


class Scene:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blob = root / "blob.tar.zst"
        self.area = root / "area"
        self.dest = self.area / "dest"
        self.sentinel = self.area / "sentinel"

    def unpack(
        self,
        tar: bytes,
        *,
        blob: bytes | None = None,
        expected: Digest | None = None,
        tar_size: int | None = None,
        zst_sha256: str | None = None,
        zst_size: int | None = None,
        limits: UnpackLimits = DEFAULT_LIMITS,
    ) -> UnpackResult:
        """Write the blob (by default: `tar` compressed) and unpack it expecting the digest of `tar`."""
        self.blob.write_bytes(compress(tar) if blob is None else blob)
        return unpack_file(
            self.blob,
            self.dest,
            digest_of(tar) if expected is None else expected,
            tar_size=tar_size,
            zst_sha256=zst_sha256,
            zst_size=zst_size,
            limits=limits,
        )

    def refuse(self, error: type[Exception], tar: bytes, *, exact: bool = True, **unpacking: Any) -> str:
        """Unpack, expect `error` (exactly that class unless `exact` is off), check nothing is left; the message.
        `unpacking` as `unpack` takes it."""
        with pytest.raises(error) as caught:
            self.unpack(tar, **unpacking)
        if exact:
            assert type(caught.value) is error, f"{type(caught.value).__name__}: {caught.value}"
        self.assert_nothing_left()
        return str(caught.value)

    def assert_nothing_left(self) -> None:
        """No destination, no staging directory, the sentinel untouched, nothing new beside the area."""
        assert not os.path.lexists(self.dest)
        assert sorted(os.listdir(self.area)) == ["sentinel"], "a staging directory or an escaped file was left"
        assert sorted(os.listdir(self.sentinel)) == ["keep.txt"]
        assert (self.sentinel / "keep.txt").read_bytes() == b"keep"
        assert sorted(os.listdir(self.root)) == ["area", "blob.tar.zst"]


@pytest.fixture
def scene(tmp_path: Path) -> Scene:
    made = Scene(tmp_path)
    made.sentinel.mkdir(parents=True)
    (made.sentinel / "keep.txt").write_bytes(b"keep")
    return made


def build_tree(root: Path) -> None:
    """The golden fixture tree, plus a symlink whose target needs a pax linkpath record (> 100 bytes)."""
    build_fixture_tree(root)
    (root / "lib" / "long-link").symlink_to("../" + LONG_PATH)  # > 100 bytes: a pax linkpath record


def snapshot_blob(source: Path, blob: Path) -> Snapshot:
    with open(blob, "wb") as out:
        return snapshot_directory(source, out)


def listing(root: Path) -> dict[str, tuple[str, int, str | bytes]]:
    """Every entry under `root`: kind, permission bits, and content (files) or target (symlinks)."""
    found: dict[str, tuple[str, int, str | bytes]] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        name = path.relative_to(root).as_posix()
        if stat.S_ISLNK(info.st_mode):
            found[name] = ("symlink", stat.S_IMODE(info.st_mode), os.readlink(path))
        elif stat.S_ISREG(info.st_mode):
            found[name] = ("file", stat.S_IMODE(info.st_mode), path.read_bytes())
        else:
            found[name] = ("dir", stat.S_IMODE(info.st_mode), "")
    return found


# --- a good blob ---------------------------------------------------------------------------------------------------


def test_snapshot_unpacks_exactly_regardless_of_umask_and_repacks_to_its_digest(tmp_path: Path) -> None:
    source = tmp_path / "source"
    build_tree(source)
    blob = tmp_path / "blob.tar.zst"
    snap = snapshot_blob(source, blob)
    (tmp_path / "area").mkdir()
    dest = tmp_path / "area" / "dest"

    with umask(0o077):
        result = unpack_file(
            blob, dest, snap.digest, tar_size=snap.tar_size, zst_sha256=snap.zst_sha256, zst_size=snap.zst_size
        )

    assert result == UnpackResult(files=snap.files, tar_size=snap.tar_size)
    assert os.listdir(tmp_path / "area") == ["dest"]
    files = {name: entry for name, entry in listing(dest).items() if entry[0] != "dir"}
    assert files == {
        "current": ("symlink", 0o777, "lib/sub/data.json"),
        LONG_PATH: ("file", 0o644, b"long path\n"),
        "empty": ("file", 0o644, b""),
        "lib/common.sh": ("file", 0o644, b"greet() { echo hi; }\n"),
        "lib/long-link": ("symlink", 0o777, "../" + LONG_PATH),
        "lib/sub/data.json": ("file", 0o644, b'{"a": 1}\n'),
        "run.sh": ("file", 0o755, b'#!/bin/bash\necho hello "$@"\n'),
        "配置-été.txt": ("file", 0o644, b"non-ascii name\n"),
    }
    assert (dest / "current").read_text() == '{"a": 1}\n'
    assert snapshot_directory(dest, None).digest == snap.digest


def test_directories_are_0755_regardless_of_umask(scene: Scene) -> None:
    """Files get exact modes whatever the umask; the directories holding them must not be left unreadable."""
    with umask(0o077):
        scene.unpack(archive(member("d/e/f.txt", b"x")))
    modes = {name: mode for name, (kind, mode, _) in listing(scene.dest).items() if kind == "dir"}
    assert modes == {"d": 0o755, "d/e": 0o755}
    assert stat.S_IMODE(scene.dest.stat().st_mode) == 0o755


@pytest.mark.parametrize(
    "names",
    [["B", "a"], ["a-b", "a/c"], ["\uff5e.txt", "\U0001f600.txt"], ["a.txt", "a/b", "a0"]],
    ids=["uppercase-first", "dash-before-slash", "utf8-order", "slash-between-dot-and-zero"],
)
def test_members_sorted_by_utf8_bytes_are_accepted(scene: Scene, names: list[str]) -> None:
    tar = archive(*(member(name, name.encode()) for name in names))
    assert scene.unpack(tar, tar_size=len(tar)) == UnpackResult(files=len(names), tar_size=len(tar))
    assert all((scene.dest / name).read_bytes() == name.encode() for name in names)


def test_limits_are_inclusive(scene: Scene) -> None:
    tar = archive(member("a" * 32), member("b"))
    assert scene.unpack(tar, limits=UnpackLimits(max_files=2, max_path_bytes=32)).files == 2


# --- paths and links that leave the tree ----------------------------------------------------------------------------

EscapeCase = Callable[[Scene], tuple[bytes, str, Path]]
"""From a scene: the tar, a fragment the error must quote, and the path the attack would create."""

ESCAPES: dict[str, EscapeCase] = {
    "dotdot-member": lambda s: (
        archive(member("../sentinel/pwned.txt", b"x")),
        "../sentinel/pwned.txt",
        s.sentinel / "pwned.txt",
    ),
    "inner-dotdot": lambda s: (
        archive(member("ok/../../sentinel/pwned.txt", b"x")),
        "ok/../../sentinel",
        s.sentinel / "pwned.txt",
    ),
    "absolute-member": lambda s: (
        archive(member(f"{s.sentinel}/pwned.txt", b"x")),
        f"{s.sentinel}/pwned.txt",
        s.sentinel / "pwned.txt",
    ),
    "symlink-up-twice": lambda s: (archive(link("a", "../../x")), "../../x", s.root / "x"),
    "symlink-then-write": lambda s: (
        archive(link("a", "../sentinel"), member("a/pwned.txt", b"x")),
        "../sentinel",
        s.sentinel / "pwned.txt",
    ),
    "symlink-to-parent": lambda s: (
        archive(link("d", ".."), member("d/sentinel/pwned.txt", b"x")),
        "'d'",
        s.sentinel / "pwned.txt",
    ),
    "absolute-symlink": lambda s: (archive(link("a", "/etc/passwd")), "/etc/passwd", s.dest / "a"),
    "absolute-symlink-then-write": lambda s: (
        archive(link("a", str(s.sentinel)), member("a/pwned.txt", b"x")),
        str(s.sentinel),
        s.sentinel / "pwned.txt",
    ),
    # s/up -> .. is the tree's root (allowed), so t -> s/up/.. looks like "s" but resolves to the destination's parent
    "symlink-through-symlink": lambda s: (archive(link("s/up", ".."), link("t", "s/up/..")), "'t'", s.dest / "t"),
}


@pytest.mark.parametrize("case", ESCAPES.values(), ids=ESCAPES.keys())
def test_refuses_paths_and_links_that_leave_the_tree(scene: Scene, case: EscapeCase) -> None:
    tar, quoted, target = case(scene)
    message = scene.refuse(UnsafeArchive, tar)
    assert quoted in message
    assert not os.path.lexists(target)


@pytest.mark.parametrize(
    ("members", "quoted"),
    [
        ([link("d", "sub"), member("d/f", b"x")], "d/f"),
        ([link("d", "sub"), member("d/deeper/f", b"x")], "d/deeper/f"),
        ([link("d", "sub"), link("d/l", "x")], "d/l"),
        ([link("s/up", ".."), member("s/up/f", b"x")], "s/up/f"),
    ],
    ids=["file-in-link", "file-below-link", "link-in-link", "file-in-link-to-root"],
)
def test_refuses_members_written_through_a_symlink_member(scene: Scene, members: list[bytes], quoted: str) -> None:
    assert quoted in scene.refuse(UnsafeArchive, archive(*members))


def test_refuses_a_top_level_git_directory(scene: Scene) -> None:
    """Packing skips a top-level .git, so an archive holding one never came from a snapshot (and would not re-pack)."""
    tar = archive(member(".git/config", b"[core]\n\tfsmonitor = ./run.sh\n"), member("run.sh", b"x"))
    assert ".git" in scene.refuse(UnsafeArchive, tar)


# --- members a canonical tar never holds -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typeflag", "kind"),
    [
        (b"1", "hard link"),
        (b"3", "character device"),
        (b"4", "block device"),
        (b"5", "directory"),
        (b"6", "fifo"),
        (b"7", "b'7'"),
        (b"g", "global pax"),
        (b"\x00", "type"),
    ],
    ids=["hard-link", "char-device", "block-device", "directory", "fifo", "contiguous", "global-pax", "old-regular"],
)
def test_refuses_member_types_other_than_file_and_symlink(scene: Scene, typeflag: bytes, kind: str) -> None:
    tar = archive(member("first.txt", b"x"), member("odd-member", typeflag=typeflag, target="first.txt"))
    message = scene.refuse(UnsafeArchive, tar)
    assert "odd-member" in message
    assert kind in message


@pytest.mark.parametrize(
    ("kind", "mode", "linkname"),
    [
        (tarfile.LNKTYPE, 0o644, "first.txt"),
        (tarfile.CHRTYPE, 0o644, ""),
        (tarfile.FIFOTYPE, 0o644, ""),
        (tarfile.DIRTYPE, 0o755, ""),
        (tarfile.REGTYPE, 0o4755, ""),
    ],
    ids=["hard-link", "char-device", "fifo", "directory", "setuid"],
)
def test_refuses_odd_members_written_by_tarfile(scene: Scene, kind: bytes, mode: int, linkname: str) -> None:
    odd = tar_info("odd-member", kind, mode, linkname)
    odd.devmajor, odd.devminor = (1, 3) if kind == tarfile.CHRTYPE else (0, 0)
    tar = tarfile_archive((tar_info("first.txt"), b"x"), (odd, b""))
    assert "odd-member" in scene.refuse(UnsafeArchive, tar)


@pytest.mark.parametrize(
    ("mode", "typeflag"),
    [
        (0o4755, REGULAR),
        (0o2755, REGULAR),
        (0o1755, REGULAR),
        (0o640, REGULAR),
        (0o600, REGULAR),
        (0o664, REGULAR),
        (0o777, REGULAR),
        (0o700, REGULAR),
        (0o755, SYMLINK),
        (0o644, SYMLINK),
    ],
    ids=[
        "setuid",
        "setgid",
        "sticky",
        "0640",
        "0600",
        "group-writable",
        "world-writable",
        "0700",
        "link-0755",
        "link-0644",
    ],
)
def test_refuses_non_canonical_modes(scene: Scene, mode: int, typeflag: bytes) -> None:
    target = "other" if typeflag == SYMLINK else ""
    message = scene.refuse(UnsafeArchive, archive(member("moded", mode=mode, typeflag=typeflag, target=target)))
    assert "moded" in message
    assert f"{mode:o}" in message


@pytest.mark.parametrize(
    ("start", "value"),
    [
        (108, b"0001750\x00"),
        (116, b"0001750\x00"),
        (136, b"00000000001\x00"),
        (265, b"root"),
        (297, b"wheel"),
        (329, b"0000000\x00"),
        (337, b"0000001\x00"),
        (345, b"prefix"),
    ],
    ids=["uid", "gid", "mtime", "uname", "gname", "devmajor", "devminor", "ustar-prefix"],
)
def test_refuses_owner_time_device_and_prefix_fields(scene: Scene, start: int, value: bytes) -> None:
    header = patched(tarformat.header("owned.txt", 0o644, 1, REGULAR), start, value)
    assert "owned.txt" in scene.refuse(UnsafeArchive, archive(header + b"x" + tarformat.padding(1)))


def test_refuses_owner_fields_written_by_tarfile(scene: Scene) -> None:
    info = tar_info("owned.txt")
    info.uid, info.gid, info.uname, info.gname = 1000, 1000, "ops", "ops"
    assert "owned.txt" in scene.refuse(UnsafeArchive, tarfile_archive((info, b"x")))


@pytest.mark.parametrize(
    "members",
    [[member("dup.txt", b"1"), member("dup.txt", b"2")], [member("dup.txt", b"1"), link("dup.txt", "other")]],
    ids=["file-twice", "file-and-symlink"],
)
def test_refuses_duplicate_members(scene: Scene, members: list[bytes]) -> None:
    message = scene.refuse(UnsafeArchive, archive(*members))
    assert "dup.txt" in message
    assert "duplicate" in message


@pytest.mark.parametrize(
    "names",
    [["b", "a"], ["\U0001f600.txt", "\uff5e.txt"], ["a/c", "a-b"], ["a", "B"], ["a/b", "a"]],
    ids=["reversed", "utf16-order", "walk-order", "case-insensitive", "prefix-last"],
)
def test_refuses_members_out_of_utf8_byte_order(scene: Scene, names: list[str]) -> None:
    # UTF-8 byte order is code-point order; UTF-16 (Java, JavaScript) puts U+1F600 (D83D DE00) before U+FF5E.
    message = scene.refuse(UnsafeArchive, archive(*(member(name, b"x") for name in names)))
    assert repr(names[1]) in message
    assert "order" in message


@pytest.mark.parametrize(
    "keyword",
    ["mtime", "uid", "uname", "SCHILY.xattr.security.capability", "comment"],
)
def test_refuses_pax_headers_with_other_keywords(scene: Scene, keyword: str) -> None:
    info = tar_info("paxed.txt")
    info.pax_headers = {keyword: "1"}
    assert keyword in scene.refuse(UnsafeArchive, tarfile_archive((info, b"x")))


def test_refuses_gnu_longname_members(scene: Scene) -> None:
    tar = tarfile_archive((tar_info("long/" + "n" * 120), b"x"), tar_format=tarfile.GNU_FORMAT)
    assert "ustar" in scene.refuse(UnsafeArchive, tar)


def test_refuses_a_longlink_member_with_pax_magic(scene: Scene) -> None:
    name = ("long/" + "n" * 120).encode() + b"\x00"
    tar = archive(
        tarformat.header("././@LongLink", 0o644, len(name), b"L") + name + tarformat.padding(len(name)),
        member("long/short", b"x"),
    )
    assert "@LongLink" in scene.refuse(UnsafeArchive, tar)


# --- malformed numbers and records: refused quickly, never a hang or a stray exception ----------------------------

SIZE_MINUS_ONE = patched(tarformat.header("neg.txt", 0o644, 0, REGULAR), 124, b"-1".ljust(12, b"\x00"))
MALFORMED = {
    "negative-size": archive(SIZE_MINUS_ONE + b"data" + tarformat.padding(4)),
    "negative-size-at-end-of-stream": SIZE_MINUS_ONE,
    "pax-size-not-a-number": archive(pax_header(pax_record("size", "abc")) + member("neg.txt")),
    "pax-size-negative": archive(pax_header(pax_record("size", "-1")) + member("neg.txt")),
    "pax-header-size-negative": archive(
        patched(tarformat.header("././@PaxHeader", 0, 0, tarformat.PAX), 124, b"-1000".ljust(12, b"\x00")),
        member("neg.txt"),
    ),
    "pax-record-length-zero": archive(pax_header(b"0 path=a\nXX") + member("neg.txt")),
}


@pytest.mark.timeout(2)
@pytest.mark.parametrize("tar", MALFORMED.values(), ids=MALFORMED.keys())
def test_refuses_malformed_sizes_and_pax_records(scene: Scene, tar: bytes) -> None:
    message = scene.refuse(UnsafeArchive, tar)
    assert re.search(r"size|pax", message)


# --- bombs: the declared tar size (or the limit) caps the output, in bounded memory -----------------------------


def write_zero_bomb(path: Path, head: bytes, zeros: int) -> None:
    """A small blob that inflates to `head` followed by `zeros` NUL bytes, never holding them all in memory."""
    chunk = bytes(MiB)
    with open(path, "wb") as out, zstandard.ZstdCompressor(level=1).stream_writer(out, closefd=False) as writer:
        writer.write(head)
        for _ in range(zeros // MiB):
            writer.write(chunk)


@pytest.mark.parametrize(
    ("head", "tar_size", "limits"),
    [
        (tarformat.header("zeros.bin", 0o644, 2 << 30, REGULAR), MiB, DEFAULT_LIMITS),
        (tarformat.header("zeros.bin", 0o644, 2 << 30, REGULAR), None, UnpackLimits(max_tar_bytes=MiB)),
        (SIZE_MINUS_ONE, MiB, DEFAULT_LIMITS),
    ],
    ids=["declared-size", "limit", "negative-member-size"],
)
def test_stops_at_the_declared_tar_size(scene: Scene, head: bytes, tar_size: int | None, limits: UnpackLimits) -> None:
    write_zero_bomb(scene.blob, head, 128 * MiB)
    assert scene.blob.stat().st_size < MiB
    # Where it stopped shows in what it held and what it said (the size it stopped at), not in a time bound.
    with peak_memory() as peak, pytest.raises(IntegrityError) as caught:
        unpack_file(scene.blob, scene.dest, digest_of(b"zeros"), tar_size=tar_size, limits=limits)
    assert peak[0] < 32 * MiB, f"{peak[0]:,} bytes held while unpacking a {tar_size or limits.max_tar_bytes:,}-byte tar"
    if head is not SIZE_MINUS_ONE:
        assert type(caught.value) is IntegrityError
        assert mentions(str(caught.value), MiB)
    scene.assert_nothing_left()


# --- digests, figures and damaged streams -----------------------------------------------------------------------


@pytest.fixture
def good(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Snapshot]:
    """The compressed bytes and figures of a real snapshot of a small tree with incompressible content."""
    source = tmp_path_factory.mktemp("source")
    (source / "noise.bin").write_bytes(noise(64 * 1024))
    (source / "run.sh").write_text("echo ok\n")
    out = io.BytesIO()
    snap = snapshot_directory(source, out)
    return out.getvalue(), snap


def test_refuses_a_wrong_digest_naming_both(scene: Scene, good: tuple[bytes, Snapshot]) -> None:
    blob, snap = good
    other = digest_of(b"other content")
    message = scene.refuse(IntegrityError, b"", blob=blob, expected=other)
    assert str(other) in message
    assert str(snap.digest) in message


@pytest.mark.parametrize("garbage", [False, True], ids=["valid-zstd", "not-zstd"])
def test_refuses_a_wrong_compressed_sha256_before_decompressing(
    scene: Scene, good: tuple[bytes, Snapshot], garbage: bool
) -> None:
    blob, snap = good
    if garbage:
        blob = b"not zstd at all" * 100
    wrong = hashlib.sha256(b"other").hexdigest()
    message = scene.refuse(IntegrityError, b"", blob=blob, expected=snap.digest, zst_sha256=wrong)
    assert wrong in message
    assert hashlib.sha256(blob).hexdigest() in message
    assert "zstd" not in message


@pytest.mark.parametrize("delta", [-1, 1])
def test_refuses_a_wrong_compressed_size(scene: Scene, good: tuple[bytes, Snapshot], delta: int) -> None:
    blob, snap = good
    message = scene.refuse(IntegrityError, b"", blob=blob, expected=snap.digest, zst_size=snap.zst_size + delta)
    assert mentions(message, snap.zst_size)
    assert mentions(message, snap.zst_size + delta)


@pytest.mark.parametrize("delta", [-512, 512])
def test_refuses_a_wrong_tar_size(scene: Scene, good: tuple[bytes, Snapshot], delta: int) -> None:
    blob, snap = good
    message = scene.refuse(IntegrityError, b"", blob=blob, expected=snap.digest, tar_size=snap.tar_size + delta)
    assert mentions(message, snap.tar_size + delta)


def _window_28(tar: bytes) -> bytes:
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=28)
    out = io.BytesIO()
    with zstandard.ZstdCompressor(compression_params=params).stream_writer(out, closefd=False) as writer:
        writer.write(tar)  # streamed: the frame keeps its 256 MiB window instead of shrinking to the content
    return out.getvalue()


DAMAGE: dict[str, Callable[[bytes, bytes], bytes]] = {
    "cut-in-half": lambda blob, tar: blob[: len(blob) // 2],
    "frame-checksum-missing": lambda blob, tar: blob[:-4],
    "frame-checksum-wrong": lambda blob, tar: blob[:-1] + bytes([blob[-1] ^ 0xFF]),
    "junk-after-frame": lambda blob, tar: blob + b"junk",
    "empty": lambda blob, tar: b"",
    "window-over-128MiB": lambda blob, tar: _window_28(tar),
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_refuses_damaged_streams(scene: Scene, damage: Callable[[bytes, bytes], bytes]) -> None:
    tar = archive(member("noise.bin", noise(64 * 1024)), member("run.sh", b"echo ok\n"))
    message = scene.refuse(IntegrityError, tar, blob=damage(compress(tar), tar))
    assert re.search(r"truncat|ends early|zstd|checksum", message)


@pytest.mark.parametrize("kind", ["directory", "file", "dangling-symlink"])
def test_refuses_an_existing_destination_and_leaves_it_alone(
    scene: Scene, good: tuple[bytes, Snapshot], kind: str
) -> None:
    blob, snap = good
    if kind == "directory":
        scene.dest.mkdir()
        (scene.dest / "mine.txt").write_text("mine")
    elif kind == "file":
        scene.dest.write_text("mine")
    else:
        scene.dest.symlink_to("nowhere")
    before = listing(scene.area)
    with pytest.raises(FileExistsError, match="dest"):
        scene.unpack(b"", blob=blob, expected=snap.digest)
    assert listing(scene.area) == before


# --- what follows the end of the archive, and other bytes the canonical writer never produces ---------------------

ONE = archive(member("a.txt", b"x"))  # header, data block, two end blocks, padding to 10240 bytes
ENDINGS = {
    "non-zero-padding": ONE[:-10] + b"X" * 10,
    "second-end-block-not-zero": ONE[:1536] + b"Y" * 512 + ONE[2048:],
    "archive-after-the-end": ONE + archive(member("hidden.sh", b"rm -rf ~\n")),
    "extra-zero-record": ONE + bytes(tarformat.RECORD),
    "no-record-padding": ONE[:2048],
}


@pytest.mark.parametrize("tar", ENDINGS.values(), ids=ENDINGS.keys())
def test_refuses_anything_but_zeros_to_the_record_boundary_after_the_end(scene: Scene, tar: bytes) -> None:
    """The digest covers these bytes, but a canonical tar ends in exactly two NUL blocks and NUL record padding;
    `tar --ignore-zeros` would extract what hides after the end, and a re-pack would not give the digest back."""
    message = scene.refuse(IntegrityError, tar, exact=False)
    assert re.search(r"end|trailing|padding|after", message)


def plain_with(start: int, value: bytes) -> bytes:
    """A one-member archive of plain.txt ("x") with header bytes replaced at `start`."""
    return archive(patched(tarformat.header("plain.txt", 0o644, 1, REGULAR), start, value) + b"x" + bytes(511))


NON_CANONICAL_BYTES = {
    "linkname-on-a-file": archive(member("plain.txt", b"x", target="elsewhere")),
    "mode-written-0o644": plain_with(100, b"0o644\x00\x00\x00"),
    "pax-path-for-a-short-name": archive(pax_header(pax_record("path", "plain.txt")) + member("plain.txt", b"x")),
    "bytes-after-the-name": plain_with(10, b"hidden"),
    "bytes-after-the-prefix": plain_with(500, b"tail"),
    "non-zero-data-padding": archive(tarformat.header("plain.txt", 0o644, 1, REGULAR) + b"x" + b"Z" * 511),
}


@pytest.mark.parametrize("tar", NON_CANONICAL_BYTES.values(), ids=NON_CANONICAL_BYTES.keys())
def test_refuses_bytes_the_canonical_writer_never_produces(scene: Scene, tar: bytes) -> None:
    """Only the writer's exact bytes unpack to a tree that re-packs to the same digest (DESIGN §2)."""
    message = scene.refuse(UnsafeArchive, tar)
    assert "plain.txt" in message or "0o644" in message  # the member, or the malformed field itself


# --- limits ----------------------------------------------------------------------------------------------------------


def test_refuses_more_members_than_the_limit(scene: Scene) -> None:
    tar = archive(member("a"), member("b"), member("c"))
    message = scene.refuse(UnsafeArchive, tar, limits=UnpackLimits(max_files=2))
    assert re.search(r"\b2\b", message)


def test_refuses_a_path_longer_than_the_limit(scene: Scene) -> None:
    tar = archive(member("p" * 33))
    message = scene.refuse(UnsafeArchive, tar, limits=UnpackLimits(max_path_bytes=32))
    assert "33" in message
    assert "32" in message
