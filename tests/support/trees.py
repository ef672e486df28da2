"""A directory with every kind of entry a canonical tar must carry, the digest its tar always has, and the umask
it is made under."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LONG_PATH = "deeply/nested/" + "d" * 60 + "/" + "f" * 40 + ".txt"  # > 100 bytes: needs a pax path record


GOLDEN_DIGEST = "sha256:5f1f7f4dd22a07c5c02c76ab306f92d77d155bcdd9158daf0a4a77bd2a2d3ddc"


def build_fixture_tree(root: Path) -> None:
    """Executable and plain files, nested directories, an in-tree symlink, a non-ASCII name, an empty file and a
    path longer than 100 bytes."""
    (root / "lib" / "sub").mkdir(parents=True)
    (root / Path(LONG_PATH).parent).mkdir(parents=True)
    (root / "run.sh").write_text('#!/bin/bash\necho hello "$@"\n')
    (root / "run.sh").chmod(0o755)
    (root / "lib" / "common.sh").write_text("greet() { echo hi; }\n")
    (root / "lib" / "sub" / "data.json").write_text('{"a": 1}\n')
    (root / "empty").write_bytes(b"")
    (root / "配置-été.txt").write_text("non-ascii name\n")
    (root / LONG_PATH).write_text("long path\n")
    (root / "current").symlink_to("lib/sub/data.json")


@contextmanager
def umask(mask: int) -> Iterator[None]:
    """The process's umask set to `mask` inside the block, as a user's shell may have it."""
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)
