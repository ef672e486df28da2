"""Snapshot benchmark: our pack and verified unpack, side by side with the best command-line pipelines.

    make bench                                        # all corpora, 5 runs each (~5 min on 2 cores)
    python -m bench.snapshot --corpus small,medium --runs 3
    python -m bench.snapshot --disk-corpus small,medium,large --profile

For each corpus (see `bench.corpus`: small ~2 MB, medium ~60 MB, large ~200 MB) it measures, interleaved
(ours, limit, ours, limit, …) after one untimed warm-up run of each, the median of `--runs` runs of:

- pack git:    `snapshot_git` in-process vs
               `git archive --format=tar C:tpl | tee >(openssl sha256) | zstd -3 -T0 >/dev/null`
- pack dir:    `snapshot_directory` of the checkout vs
               `tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - DIR | tee … | zstd -3 -T0`
- unpack tmpfs / unpack disk:
               `unpack_file` (verified: compressed sha256, tar size, digest) vs `zstd -dc BLOB | tar -xf -`,
               into a fresh directory each run, on tmpfs (/dev/shm) and on disk (/var/tmp; only the corpora named
               by `--disk-corpus`); destinations are removed (and, on disk, `sync`ed) outside the timed region.

Corpora, their repositories and the blob live on tmpfs (creating 6,000 files on these VMs' ext4 takes seconds);
after the warm-up every pack reads from the page cache, so the filesystem under them matters little.
The pipelines are written `{ … | tee /dev/fd/3 | zstd … ; } 3>&1 | openssl sha256`: the same work as
`tee >(openssl sha256)`, but bash waits for the hash to finish (it does not wait for a process substitution).
`openssl sha256`, not `sha256sum`, which does not use the SHA instructions (docs/BENCHMARKS.md). Our timings
include opening the Git repository; the limit's include starting bash and the tools.

Before timing, the benchmark checks correctness and fails loudly if anything disagrees: the digest of our Git pack
equals that of our directory pack and the sha256 of `zstd -dc` of our blob; both unpacked trees pack back to it.

Prints a Markdown table (MB = 10^6 bytes of canonical tar) and writes all raw timings and machine facts as JSON to
`bench-results/` (git-ignored). `--profile` adds one cProfile run of each of our operations per corpus.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from shlex import quote
from typing import Any

import git

from bench import harness, machine
from bench.corpus import SPECS, TEMPLATE_PATH, Corpus, generate
from storage.snapshot import Snapshot, snapshot_directory, snapshot_git

try:
    from storage.unpack import unpack_file
except ImportError:  # written concurrently; the pack benchmarks do not need it
    unpack_file = None  # type: ignore[assignment]

TARGETS = {("medium", "pack git"): 1.15, ("large", "pack git"): 1.0}
UNPACK_TARGET = 1.5
TAR_FLAGS = "--sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner"
HASH_AND_COMPRESS = "tee /dev/fd/3 | zstd -3 -T0 -q >/dev/null; } 3>&1 | openssl sha256 >/dev/null"


@dataclass
class Operation:
    """One row of the table: our in-process call and the limit's shell pipeline, each given a fresh `dest`."""

    name: str
    ours: Callable[[Path], object]
    limit: Callable[[Path], str]
    scratch: Path
    check: Callable[[Path], None] | None = None
    """Run on our and the limit's output after the warm-up run (unpack: the tree packs back to the digest)."""


@dataclass
class PackMeasurement(harness.Measurement):
    """A row of the pack and unpack table, with this benchmark's targets."""

    @property
    def target(self) -> float | None:
        if self.operation.startswith("unpack"):
            return UNPACK_TARGET
        return TARGETS.get((self.corpus, self.operation))


def operations(corpus: Corpus, snap: Snapshot, blob: Path, places: dict[str, Path]) -> list[Operation]:
    def pack_git(_: Path) -> None:
        with git.Repo(corpus.repo) as repo, open(os.devnull, "wb") as sink:
            snapshot_git(repo, corpus.commit, TEMPLATE_PATH, sink)

    def pack_dir(_: Path) -> None:
        with open(os.devnull, "wb") as sink:
            snapshot_directory(corpus.directory, sink)

    def unpack(dest: Path) -> None:
        assert unpack_file is not None
        unpack_file(blob, dest, snap.digest, tar_size=snap.tar_size, zst_sha256=snap.zst_sha256)

    def packs_back(dest: Path) -> None:
        again = snapshot_directory(dest, None)
        if again.digest != snap.digest:
            raise SystemExit(f"FAIL: {dest} packs to {again.digest}, the blob is {snap.digest}")

    return [
        Operation("pack git", pack_git, lambda _: git_limit(corpus), places["disk"]),
        Operation("pack dir", pack_dir, lambda _: directory_limit(corpus.directory), places["disk"]),
        *(
            Operation(f"unpack {place}", unpack, lambda dest: unpack_limit(blob, dest), places[place], packs_back)
            for place in ("tmpfs", "disk")
        ),
    ]


def git_limit(corpus: Corpus) -> str:
    tree = f"{corpus.commit}:{TEMPLATE_PATH}"
    return f"{{ git -C {quote(str(corpus.repo))} archive --format=tar {tree} | {HASH_AND_COMPRESS}"


def directory_limit(directory: Path) -> str:
    return f"{{ tar {TAR_FLAGS} -cf - -C {quote(str(directory))} . | {HASH_AND_COMPRESS}"


def unpack_limit(blob: Path, dest: Path) -> str:
    blob_arg, dest_arg = quote(str(blob)), quote(str(dest))
    return f"mkdir {dest_arg} && zstd -dcq {blob_arg} | tar -xf - -C {dest_arg}"


def run_side(op: Operation, side: str, dest: Path) -> tuple[float, float] | None:
    """Wall and CPU seconds one side of `op` took to produce `dest`; None when our side cannot run."""
    if side == "limit":
        return harness.timed(lambda d: harness.run_shell(op.limit(d)), dest)
    if op.name.startswith("unpack") and unpack_file is None:
        return None
    return harness.timed(op.ours, dest)


def measure(
    corpus: Corpus, snap: Snapshot, blob: Path, places: dict[str, Path], runs: int, skip: set[str]
) -> list[harness.Measurement]:
    """Warm up, check the outputs, then time `runs` interleaved pairs of every operation not in `skip`."""
    found = []
    counter = 0
    for op in operations(corpus, snap, blob, places):
        if op.name in skip:
            continue
        row = PackMeasurement(corpus.spec.name, op.name, snap.tar_size)
        if op.name.startswith("unpack") and unpack_file is None:
            row.note = "storage/unpack.py (unpack_file) is missing: only the limit was measured"
        for run in range(runs + 1):  # run 0 is the warm-up: page cache, imports, first-call costs
            for side, wall, cpu in (("ours", row.ours_s, row.ours_cpu_s), ("limit", row.limit_s, row.limit_cpu_s)):
                counter += 1
                dest = op.scratch / f"{side}-{counter}"
                seconds = run_side(op, side, dest)
                if seconds is not None and run == 0 and op.check is not None:
                    op.check(dest)
                elif seconds is not None and run > 0:
                    wall.append(seconds[0])
                    cpu.append(seconds[1])
                harness.remove(dest, sync=op.name == "unpack disk")
        harness.progress(
            f"  {op.name:<13} ours {harness.fmt(row.ours)} s   limit {harness.fmt(row.limit)} s   (medians)"
        )
        found.append(row)
    return found


def profile(
    corpus: Corpus, snap: Snapshot, blob: Path, places: dict[str, Path], skip: set[str], results: Path, stamp: str
) -> None:
    """One cProfile run of each of our operations; the stats go to `results`, the top functions to stdout."""
    for op in operations(corpus, snap, blob, places):
        if op.name in skip or (op.name.startswith("unpack") and unpack_file is None):
            continue
        dest = op.scratch / "profiled"
        profiler = cProfile.Profile()
        profiler.runcall(op.ours, dest)
        harness.remove(dest, sync=False)
        path = results / f"{stamp}-{corpus.spec.name}-{op.name.replace(' ', '-')}.pstats"
        profiler.dump_stats(path)
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(12)
        print(f"\n### cProfile, {corpus.spec.name} / {op.name} (ours; {path})\n{text.getvalue()}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.snapshot", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each side per operation (default 5)")
    parser.add_argument("--corpus", default="small,medium,large", help="comma-separated: small,medium,large")
    # Only private temporary directories (mkdtemp) are made under these two.
    parser.add_argument("--tmpfs", type=Path, default=Path("/dev/shm"), help="tmpfs: corpora, blob, unpacks")  # noqa: S108
    parser.add_argument("--disk", type=Path, default=Path("/var/tmp"), help="disk: unpacks on disk")  # noqa: S108
    parser.add_argument(
        "--disk-corpus",
        default="small,medium",
        help="corpora whose unpack is also timed on disk (default small,medium: on these VMs ext4 creates cost "
        "~1 ms a file, and large alone would add ~2 minutes)",
    )
    parser.add_argument("--results", type=Path, default=Path("bench-results"), help="where the JSON goes")
    parser.add_argument("--profile", action="store_true", help="also cProfile each of our operations once")
    args = parser.parse_args(argv)
    args.corpora = [name.strip() for name in args.corpus.split(",") if name.strip()]
    args.disk_corpora = [name.strip() for name in args.disk_corpus.split(",") if name.strip()]
    unknown = [name for name in args.corpora + args.disk_corpora if name not in SPECS]
    if unknown or not args.corpora or args.runs < 1:
        parser.error(
            f"--corpus and --disk-corpus take some of {', '.join(SPECS)} (got {args.corpus!r}); --runs must be ≥ 1"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    code = harness.code_under_test()  # as imported: later edits to the files do not change what runs
    load_start = os.getloadavg()  # other work on the machine shows up in the figures: record it
    if missing := machine.missing_tools():
        print(
            f"bench.snapshot: missing command-line tools {', '.join(missing)}, which the limit pipelines need. "
            f"Install them (Debian/Ubuntu: apt-get install -y {' '.join(missing)}) and run again."
        )
        return 2
    if unpack_file is None:
        harness.progress("bench.snapshot: storage/unpack.py (unpack_file) not found: our unpack will not be measured.")
    stamp = harness.utc_stamp()
    args.results.mkdir(parents=True, exist_ok=True)
    rows: list[harness.Measurement] = []
    corpora: dict[str, dict[str, Any]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="ahop-bench-", dir=args.disk) as disk_dir,
        tempfile.TemporaryDirectory(prefix="ahop-bench-", dir=args.tmpfs) as tmpfs_dir,
    ):
        places = {"disk": Path(disk_dir), "tmpfs": Path(tmpfs_dir)}
        for name in args.corpora:
            started = time.perf_counter()
            corpus = generate(SPECS[name], places["tmpfs"] / "corpora")
            snap, blob = harness.pack_corpus(corpus, places["tmpfs"])
            corpora[name] = {
                "files": corpus.files,
                "content_bytes": corpus.content_bytes,
                "commit": corpus.commit,
                "setup_s": round(time.perf_counter() - started, 2),
                **snap.to_json(),
            }
            sizes = f"tar {snap.tar_size / 1e6:.1f} MB, zst {snap.zst_size / 1e6:.1f} MB"
            harness.progress(
                f"{name}: {corpus.files:,} files, {sizes}, digests agree; set up in {corpora[name]['setup_s']} s"
            )
            skip = set() if name in args.disk_corpora else {"unpack disk"}
            rows += measure(corpus, snap, blob, places, args.runs, skip)
            if args.profile:
                profile(corpus, snap, blob, places, skip, args.results, stamp)
            shutil.rmtree(corpus.repo)
            blob.unlink()
        info = machine.describe(places)
    print(harness.table(rows))
    report = {
        "machine": info,
        "loadavg_start_end": [load_start, os.getloadavg()],
        "code": code,
        "runs": args.runs,
        "corpora": corpora,
        "results": [row.to_json() for row in rows],
    }
    path = harness.write_results(args.results, "snapshot", report, stamp=stamp)
    print(f"\nraw timings and machine facts: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
