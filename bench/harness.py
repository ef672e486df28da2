"""What the benchmarks measure with and report by: timed runs against a limit, median rows and their table, the
code under test, the corpus packed to a checked blob, and the results file.

Each benchmark module holds its own benchmark; what two of them need alike is here.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import git

from bench.corpus import TEMPLATE_PATH, Corpus
from storage.snapshot import Snapshot, snapshot_directory, snapshot_git

RESULTS = Path(__file__).resolve().parent.parent / "bench-results"
"""Where the benchmarks write their JSON unless told otherwise (git-ignored)."""
MEASURED_MODULES = ("snapshot", "trees", "canonical", "tarformat", "unpack")


class _MedianOf:
    """A row's median of one of its lists of seconds; None while that list is empty."""

    def __init__(self, samples: str) -> None:
        self.samples = samples

    def __get__(self, row: object, owner: type | None = None) -> float | None:
        values: list[float] = getattr(row, self.samples)
        return statistics.median(values) if values else None


@dataclass
class Measurement:
    """One row of a table: seconds of our side and of the limit's, wall and CPU, over the runs of one operation."""

    corpus: str
    operation: str
    tar_bytes: int
    ours_s: list[float] = field(default_factory=list)
    limit_s: list[float] = field(default_factory=list)
    ours_cpu_s: list[float] = field(default_factory=list)
    limit_cpu_s: list[float] = field(default_factory=list)
    note: str = ""

    ours = _MedianOf("ours_s")
    limit = _MedianOf("limit_s")
    ours_cpu = _MedianOf("ours_cpu_s")
    limit_cpu = _MedianOf("limit_cpu_s")

    @property
    def ratio(self) -> float | None:
        return self.ours / self.limit if self.ours is not None and self.limit else None

    @property
    def target(self) -> float | None:
        """The most `ratio` may be; None where the benchmark sets none for this row."""
        return None

    def to_json(self) -> dict[str, Any]:
        met = None if self.target is None or self.ratio is None else self.ratio <= self.target
        return {
            **asdict(self),
            "ours_median_s": self.ours,
            "limit_median_s": self.limit,
            "ours_cpu_median_s": self.ours_cpu,
            "limit_cpu_median_s": self.limit_cpu,
            "ratio": self.ratio,
            "target": self.target,
            "target_met": met,
        }


def table(rows: list[Measurement]) -> str:
    """The rows as a Markdown table, each with its target and whether it was met."""
    lines = [
        "| corpus | operation | tar MB | ours s | limit s | ours MB/s | ours/limit | target | ours CPU | limit CPU |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for row in rows:
        speed = fmt(row.tar_bytes / 1e6 / row.ours, 0) if row.ours else "n/a"
        target = ""
        if row.target is not None:
            verdict = "n/a" if row.ratio is None else "met" if row.ratio <= row.target else "MISSED"
            target = f"≤ {row.target:.2f}: {verdict}"
        lines.append(
            f"| {row.corpus} | {row.operation} | {row.tar_bytes / 1e6:.1f} | {fmt(row.ours)} | "
            f"{fmt(row.limit)} | {speed} | {fmt(row.ratio, 2)} | {target} | {fmt(row.ours_cpu, 2)} | "
            f"{fmt(row.limit_cpu, 2)} |"
        )
    return "\n".join(lines)


def run_shell(command: str) -> None:
    subprocess.run(["bash", "-c", f"set -euo pipefail\n{command}"], check=True, stdin=subprocess.DEVNULL)


def cpu_seconds() -> float:
    """CPU time of this process (all its threads) and of its waited-for children (the limit's tools, git)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(run: Callable[[Path], object], dest: Path) -> tuple[float, float]:
    """Wall-clock and CPU seconds of `run(dest)`."""
    gc.collect()
    cpu, start = cpu_seconds(), time.perf_counter()
    run(dest)
    return time.perf_counter() - start, cpu_seconds() - cpu


def remove(dest: Path, *, sync: bool) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    if sync:
        os.sync()  # deletions and write-back settle before the next timed run, not during it


def pack_corpus(corpus: Corpus, work: Path) -> tuple[Snapshot, Path]:
    """Pack the corpus to a blob file and check that every way of computing its digest agrees."""
    blob = work / f"{corpus.spec.name}.tar.zst"
    with git.Repo(corpus.repo) as repo, open(blob, "wb") as out:
        snap = snapshot_git(repo, corpus.commit, TEMPLATE_PATH, out)
    from_directory = snapshot_directory(corpus.directory, None)
    decompressed = hashlib.sha256()
    with subprocess.Popen(["zstd", "-dcq", str(blob)], stdout=subprocess.PIPE) as zstd:
        assert zstd.stdout is not None
        while chunk := zstd.stdout.read(1 << 20):
            decompressed.update(chunk)
    digests = {
        "git pack": str(snap.digest),
        "directory pack": str(from_directory.digest),
        "sha256 of zstd -dc": f"sha256:{decompressed.hexdigest()}",
    }
    if len(set(digests.values())) != 1 or zstd.returncode != 0 or snap.files != corpus.files:
        raise SystemExit(
            f"FAIL: {corpus.spec.name}: digests disagree or files are missing: {digests}, "
            f"{snap.files} members packed of {corpus.files}, zstd exit {zstd.returncode}"
        )
    return snap, blob


def code_under_test(*modules: str) -> dict[str, str]:
    """The commit and the sha256 of each storage module measured (`MEASURED_MODULES`, then `modules`): they change
    while others work on them."""
    root = Path(__file__).resolve().parent.parent
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    found = {"commit": head.stdout.strip()}
    for name in (*MEASURED_MODULES, *modules):
        module = root / "storage" / f"{name}.py"
        found[f"storage/{name}.py"] = hashlib.sha256(module.read_bytes()).hexdigest()[:16] if module.exists() else ""
    return found


def fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def utc_stamp() -> str:
    """The time now, as the results files name it."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}"


def write_results(
    directory: Path,
    benchmark: str,
    report: dict[str, Any],
    *,
    stamp: str | None = None,
    default: Callable[[Any], Any] | None = None,
) -> Path:
    """Write `report` as `<directory>/<benchmark>-<UTC>.json` and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{benchmark}-{stamp or utc_stamp()}.json"
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False, default=default) + "\n")
    return path
