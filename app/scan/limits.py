"""Whether a candidate fits the server's import limits, counted as the import will count it.

The import refuses an `original_path` whose canonical tar would be larger than the server's `max_bytes`
(`AHOP_MAX_TEMPLATE_BYTES`) or hold more than its `max_files` (`AHOP_MAX_TEMPLATE_FILES`) files
(`storage.canonical.check_limits`). The scan reports the same figures as problems, so nobody selects a candidate
that cannot be imported. The members are the regular files and symlinks under `original_path` at their paths
relative to it (a file alone is one member under its name); the tar size is `storage.tarformat.archive_size` of
them, exact except that a symlink target longer than 100 bytes adds a record the listing does not show. The
limits come from the caller (the server's settings); nothing here reads the environment.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from app.scan.params import Problem
from storage.canonical import Limits
from storage.tarformat import archive_size


class LimitCheck:
    """The import's limits over one tree: `problems(original_path, ...)` for any candidate of it."""

    def __init__(self, members: Iterable[tuple[str, int]], limits: Limits | None) -> None:
        """`members`: (path, data size) of every regular file and symlink of the tree (a symlink's data size is
        0: its target goes in its header). None as `limits` checks nothing."""
        ordered = sorted(members)
        self._paths = [path for path, _ in ordered]
        self._sizes = [size for _, size in ordered]
        self._limits = limits

    def problems(self, original_path: str, whole_directory: bool) -> tuple[Problem, ...]:
        """A problem naming each limit that the import of `original_path` (a directory, or a file alone) would
        exceed, with the figures."""
        if self._limits is None:
            return ()
        return _over(self._limits, original_path, self._members(original_path, whole_directory))

    def _members(self, original_path: str, whole_directory: bool) -> list[tuple[str, int]]:
        """The members of the tar of `original_path`, at their paths inside it."""
        if not whole_directory:
            index = bisect.bisect_left(self._paths, original_path)
            return [(original_path.rpartition("/")[2], self._sizes[index])]
        if not original_path:
            return list(zip(self._paths, self._sizes, strict=True))
        # Every path below `d` sorts from "d/" up to (not including) "d0": "/" is the character just before "0".
        low = bisect.bisect_left(self._paths, original_path + "/")
        high = bisect.bisect_left(self._paths, original_path + "0")
        cut = len(original_path) + 1
        return [(self._paths[index][cut:], self._sizes[index]) for index in range(low, high)]


def _over(limits: Limits, where: str, members: list[tuple[str, int]]) -> tuple[Problem, ...]:
    problems = []
    tar_size = archive_size(members)
    if tar_size > limits.max_bytes:
        figures = f"makes a tar of {tar_size:,} bytes; the server imports at most {limits.max_bytes:,}"
        problems.append(Problem(where or ".", None, f"{figures} (AHOP_MAX_TEMPLATE_BYTES)"))
    if len(members) > limits.max_files:
        figures = f"{len(members):,} files; the server imports at most {limits.max_files:,}"
        problems.append(Problem(where or ".", None, f"{figures} (AHOP_MAX_TEMPLATE_FILES)"))
    return tuple(problems)
