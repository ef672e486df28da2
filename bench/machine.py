"""What a benchmark ran on: CPU, cores, memory, library and tool versions, filesystems, date."""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import subprocess
from pathlib import Path

import git
import zstandard

TOOLS = ("git", "tar", "zstd", "openssl", "bash")


def missing_tools() -> list[str]:
    """The command-line tools the limit pipelines need that are not on PATH."""
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def _first_line(*command: str) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as exc:
        return f"unavailable ({exc.strerror})"
    return (result.stdout or result.stderr).strip().splitlines()[0] if (result.stdout or result.stderr) else ""


def _cpuinfo(key: str) -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == key:
                return value.strip()
    except OSError:
        pass
    return "unknown"


def _memory_total() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) // 1024:,} MiB"
    except OSError:
        pass
    return "unknown"


def filesystem_type(path: Path) -> str:
    """The type of the mount holding `path`, from /proc/mounts (`stat -f` calls ext4 "ext2/ext3")."""
    resolved, best, kind = str(path.resolve()), "", "unknown"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    for line in mounts:
        _device, point, fstype, *_ = line.split()
        inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fstype
    return kind


def describe(places: dict[str, Path]) -> dict[str, object]:
    """Everything worth stating next to the figures; `places` names the directories used (their fs type is shown)."""
    return {
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": _cpuinfo("model name"),
        "cpu_sha_ni": "sha_ni" in _cpuinfo("flags").split(),
        "memory": _memory_total(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "zstandard": zstandard.__version__,
        "libzstd": ".".join(str(part) for part in zstandard.ZSTD_VERSION),
        "zstandard_backend": zstandard.backend,
        "gitpython": git.__version__,
        "git": _first_line("git", "--version"),
        "zstd_cli": _first_line("zstd", "--version"),
        "tar": _first_line("tar", "--version"),
        "openssl": _first_line("openssl", "version"),
        "bash": _first_line("bash", "--version"),
        "filesystems": {name: f"{path} ({filesystem_type(path)})" for name, path in places.items()},
    }
