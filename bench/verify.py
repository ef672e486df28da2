"""Verify throughput: the app's verify run over stored blobs, beside GET + `zstd -dc` + `openssl sha256` of the same.

    python -m bench.verify                          # 40 blobs of ~4-8 MB compressed + 200 small ones, 3 runs
    python -m bench.verify --blobs 80 --small 0 --concurrency 2 --runs 5

Blobs are packed (`snapshot_directory`) from semi-compressible data (`bench.corpus`: random bytes over a 16- or
64-symbol alphabet, with a little text) and stored, each set in a fresh bucket with a fresh database whose blob rows
describe them; then, in the same run, interleaved (ours, storage only, limit, limit+tee, GET only, ours, …) after
one untimed warm-up run of each, the median of `--runs` runs of:

- ours:       what `ahop verify --all` runs: `Maintenance.start_verify(digest=None, sample=None, grace=0,
              repair=False)`, then its `execute` (built by `build_maintenance` from the settings): the run's row,
              rows read page by page, `check_blobs` at `AHOP_VERIFY_CONCURRENCY` checks at once, outcomes recorded
              on the rows, the bucket listed for objects without a row, the report stored. Every blob must be ok
              and no object an orphan. Only the process start and imports of the command are left out.
- storage only: `check_blobs(store, records, concurrency=C)` alone — GET, compressed size and sha256, zstd frame
              walk, bounded zstd, tar size and digest — so that the cost of the app layer shows (ours ÷ it).
- limit:      for each object `curl -sf <presigned GET> | zstd -dcq | openssl sha256`, C pipelines at a time (a
              pool of C threads, each running one pipeline after another); every hash must equal the digest.
              It checks less than we do (no compressed sha256, no sizes) and pays a process start per tool and
              object, which weighs on small objects.
- limit+tee:  the same, also hashing the compressed bytes:
              `{ curl -sf URL | tee /dev/fd/3 | zstd -dcq | openssl sha256 >&4; } 3>&1 | openssl sha256`.
- GET only:   `curl -sf -o /dev/null URL`, C at a time: what the S3 server delivers, for reference (no target).

C is the app's `verify_concurrency` (AHOP_VERIFY_CONCURRENCY, default 4) unless `--concurrency` sets it; every side
uses the same C. Throughput is MB (10^6 bytes) of compressed data per second of wall-clock time. Target: ours ≥ 0.7
times the limit. The S3 server (SeaweedFS, started like the tests' unless AHOP_S3_* name one) runs on the same cores
and its CPU time is shown apart ("S3 CPU s", when we started it); PostgreSQL runs there too (ours only). `openssl
sha256`, not `sha256sum` (docs/BENCHMARKS.md says why).

Prints a Markdown table and writes the raw timings and machine facts to `bench-results/verify-<UTC>.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.engine import create_engine, create_session_factory
from app.db.models import Blob, RunStatus
from app.devstack.seaweed import SeaweedS3
from app.devstack.stack import LocalStack
from app.maintenance.start import Maintenance, RunResult, build_maintenance
from bench import machine
from bench.corpus import semi_compressible
from bench.harness import RESULTS, code_under_test, cpu_seconds, fmt, progress, write_results
from bench.presign import presigned_urls
from bench.services import app_settings, fresh_database_and_bucket
from storage.blobstore import BlobStore, S3Location
from storage.keys import blob_key
from storage.snapshot import snapshot_directory
from storage.verify import Expected, Outcome, check_blobs

TARGET = 0.7


@dataclass(frozen=True)
class Pipeline:
    """A shell pipeline run once per object (its URL is `$1`) and the lines it must print for it."""

    script: str
    prints: Callable[[Expected], set[str]]


PIPELINES = {
    "limit": Pipeline('set -o pipefail; curl -sf "$1" | zstd -dcq | openssl sha256', lambda blob: {blob.digest.hex}),
    "limit+tee": Pipeline(
        'set -o pipefail; exec 4>&1; { curl -sf "$1" | tee /dev/fd/3 | zstd -dcq | openssl sha256 >&4; } 3>&1 '
        "| openssl sha256",
        lambda blob: {blob.digest.hex, blob.zst_sha256},
    ),
    "GET only": Pipeline('curl -sf -o /dev/null -w "%{size_download}\\n" "$1"', lambda blob: {str(blob.zst_size)}),
}
SIDES = ("ours", "storage only", *PIPELINES)


@dataclass
class BlobSet:
    """Stored blobs of one kind: the records verify reads and a presigned GET URL for each."""

    name: str
    records: list[Expected]
    files: list[int] = field(default_factory=list)
    """The file count of each blob (its row records it)."""
    urls: list[str] = field(default_factory=list)

    @property
    def zst_bytes(self) -> int:
        return sum(record.zst_size for record in self.records)


@dataclass
class Row:
    """Seconds (wall and CPU) of each side over one blob set."""

    name: str
    objects: int
    zst_bytes: int
    tar_bytes: int
    seconds: dict[str, list[float]] = field(default_factory=lambda: {side: [] for side in SIDES})
    cpu_seconds: dict[str, list[float]] = field(default_factory=lambda: {side: [] for side in SIDES})
    server_cpu_seconds: dict[str, list[float]] = field(default_factory=lambda: {side: [] for side in SIDES})
    """CPU seconds of the S3 server during each run (when we started it)."""
    app_reports: list[dict[str, Any]] = field(default_factory=list)
    """The report of each timed run of ours, as `ahop verify --json` prints it."""

    def median(self, side: str) -> float | None:
        return statistics.median(self.seconds[side]) if self.seconds[side] else None

    def speed(self, side: str) -> float | None:
        """MB of compressed data per second."""
        seconds = self.median(side)
        return self.zst_bytes / 1e6 / seconds if seconds else None

    def ratio(self, side: str) -> float | None:
        """Our throughput over the throughput of `side`."""
        ours, theirs = self.speed("ours"), self.speed(side)
        return ours / theirs if ours and theirs else None

    def to_json(self) -> dict[str, Any]:
        speeds = {side: self.speed(side) for side in self.seconds}
        ratios = {side: self.ratio(side) for side in SIDES[1:]}
        return {
            **asdict(self),
            "mb_per_s": speeds,
            "cpu_median_s": self.cpu(self.cpu_seconds),
            "server_cpu_median_s": self.cpu(self.server_cpu_seconds),
            "ours_speed_over": ratios,
            "target": TARGET,
        }

    @staticmethod
    def cpu(seconds: dict[str, list[float]]) -> dict[str, float | None]:
        return {side: statistics.median(values) if values else None for side, values in seconds.items()}


def make_blobs(store: BlobStore, scratch: Path, name: str, count: int, sizes: tuple[int, int], seed: int) -> BlobSet:
    """Pack and store `count` blobs whose trees hold `sizes[0]` to `sizes[1]` bytes, mostly semi-compressible."""
    rng = random.Random(seed)  # noqa: S311 -- reproducible test data
    blobs = BlobSet(name, [])
    for number in range(count):
        root = scratch / f"{name}-{number}"
        root.mkdir()
        size = rng.randint(*sizes)
        (root / "payload.bin").write_bytes(semi_compressible(rng, size * 9 // 10))
        (root / "notes.txt").write_bytes(b"".join(b"line %d of %s\n" % (n, name.encode()) for n in range(size // 200)))
        blob = scratch / f"{name}-{number}.tar.zst"
        with blob.open("wb") as out:
            snap = snapshot_directory(root, out)
        store.put_if_absent(snap.digest, blob, tar_size=snap.tar_size, files=snap.files, zst_sha256=snap.zst_sha256)
        blobs.records.append(Expected(snap.digest, snap.zst_size, snap.zst_sha256, snap.tar_size))
        blobs.files.append(snap.files)
        shutil.rmtree(root)
        blob.unlink()
    return blobs


def presign(location: S3Location, blobs: BlobSet) -> None:
    """A GET URL for every blob, signed with the store's endpoint and credentials."""
    blobs.urls = presigned_urls(location, "get_object", [blob_key(record.digest) for record in blobs.records])


async def record_rows(engine: AsyncEngine, blobs: BlobSet) -> None:
    """The blob rows an import would have written for these objects."""
    rows = [
        {
            "digest": record.digest.hex,
            "tar_size": record.tar_size,
            "zst_size": record.zst_size,
            "zst_sha256": record.zst_sha256,
            "files": files,
        }
        for record, files in zip(blobs.records, blobs.files, strict=True)
    ]
    async with create_session_factory(engine)() as session, session.begin():
        await session.execute(insert(Blob), rows)


@dataclass
class AppVerify:
    """`ahop verify --all` over one blob set's database and bucket, on an event loop that outlives the runs."""

    runner: asyncio.Runner
    maintenance: Maintenance
    blobs: BlobSet
    reports: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self) -> None:
        result = self.runner.run(self._run())
        report = {key: value for key, value in result.report.items() if key not in ("problems", "orphan_digests")}
        if result.status is not RunStatus.SUCCEEDED or report.get("ok") != len(self.blobs.records) or report["orphans"]:
            raise SystemExit(
                f"FAIL: the verify run ended {result.status.value} ({result.error}) with {report}, not "
                f"{len(self.blobs.records)} ok and no orphans; problems: {result.report.get('problems')}"
            )
        self.reports.append(report)

    async def _run(self) -> RunResult:
        started = await self.maintenance.start_verify(
            digest=None, sample=None, grace=0, repair=False, started_by="bench.verify"
        )
        return await started.execute(None)


def storage_only(store: BlobStore, blobs: BlobSet, concurrency: int) -> None:
    bad = [check for check in check_blobs(store, blobs.records, concurrency=concurrency) if check.outcome != Outcome.OK]
    if bad:
        raise SystemExit(f"FAIL: verify found {len(bad)} blobs not ok, first: {bad[0]}")


def limit(blobs: BlobSet, concurrency: int, pipeline: Pipeline) -> None:
    """Run `pipeline` once per object, `concurrency` at a time; check what it prints."""

    def one(index: int) -> None:
        done = subprocess.run(
            ["bash", "-c", pipeline.script, "bash", blobs.urls[index]],
            capture_output=True,
            text=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        record = blobs.records[index]
        printed = {line.rpartition("= ")[2] for line in done.stdout.splitlines()}
        if done.returncode != 0 or printed != pipeline.prints(record):
            raise SystemExit(
                f"FAIL: {pipeline.script!r} for {record.digest} exited {done.returncode} and printed "
                f"{done.stdout!r} {done.stderr!r}, not {sorted(pipeline.prints(record))}"
            )

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(len(blobs.records))))


def timed(run: Callable[[], None], server: psutil.Process | None) -> tuple[float, float, float | None]:
    """Wall-clock and CPU seconds (this process's threads and its waited-for children) of `run()`, and the CPU
    seconds of the S3 server meanwhile."""

    def server_cpu() -> float:
        times = server.cpu_times() if server is not None else None
        return times.user + times.system if times is not None else 0.0

    cpu, served, start = cpu_seconds(), server_cpu(), time.perf_counter()
    run()
    wall = time.perf_counter() - start
    return wall, cpu_seconds() - cpu, server_cpu() - served if server is not None else None


def measure(store: BlobStore, app: AppVerify, concurrency: int, runs: int, server: psutil.Process | None) -> Row:
    blobs = app.blobs
    row = Row(blobs.name, len(blobs.records), blobs.zst_bytes, sum(record.tar_size for record in blobs.records))
    sides: dict[str, Callable[[], None]] = {
        "ours": app,
        "storage only": lambda: storage_only(store, blobs, concurrency),
    }
    for name, pipeline in PIPELINES.items():
        sides[name] = functools.partial(limit, blobs, concurrency, pipeline)
    for run in range(runs + 1):  # run 0 is the warm-up (connections, page cache of the server) and the check
        for side, work in sides.items():
            seconds, cpu, server_cpu = timed(work, server)
            if run:
                row.seconds[side].append(seconds)
                row.cpu_seconds[side].append(cpu)
                if server_cpu is not None:
                    row.server_cpu_seconds[side].append(server_cpu)
    row.app_reports = app.reports[1:]  # the first is the warm-up's
    speeds = ", ".join(f"{side} {fmt(row.speed(side), 0)}" for side in SIDES)
    progress(f"  {blobs.name}: {speeds} MB/s (medians)")
    return row


def rate(value: float | None) -> str:
    return fmt(value, 0 if value is None or value >= 10 else 1)


def table(rows: list[Row], concurrency: int) -> str:
    lines = [
        "| blobs | objects | zst MB | tar MB | side | MB/s | objects/s | ours ÷ side | wall s | CPU s | S3 CPU s |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        for side in SIDES:
            ratio = row.ratio(side)
            shown = fmt(ratio, 2)
            if side == "limit":
                verdict = "n/a" if ratio is None else "met" if ratio >= TARGET else "MISSED"
                shown = f"**{shown}** (target ≥ {TARGET}: {verdict})"
            cpu, server_cpu = Row.cpu(row.cpu_seconds)[side], Row.cpu(row.server_cpu_seconds)[side]
            seconds = row.median(side)
            lines.append(
                f"| {row.name} | {row.objects} | {row.zst_bytes / 1e6:.1f} | {row.tar_bytes / 1e6:.1f} | {side} | "
                f"{rate(row.speed(side))} | {rate(row.objects / seconds if seconds else None)} | "
                f"{'' if side == 'ours' else shown} | {fmt(seconds)} | "
                f"{fmt(cpu, 2)} | {fmt(server_cpu, 2)} |"
            )
    title = f"### Verify throughput, {concurrency} at a time (median of runs; MB = 10^6 compressed bytes)"
    return f"{title}\n\n" + "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.verify", description=__doc__.splitlines()[0])
    parser.add_argument("--blobs", type=int, default=40, help="large blobs, ~4-8 MB compressed each (default 40)")
    parser.add_argument(
        "--small", type=int, default=200, help="small blobs, ~4-60 KB compressed (default 200; 0: none)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=None, help="checks / pipelines at once, every side (default: the app's)"
    )
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each side (default 3)")
    parser.add_argument("--scratch", type=Path, default=Path("/dev/shm"), help="where blobs are packed")  # noqa: S108
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args(argv)
    if min(args.runs, args.concurrency or 1) < 1 or min(args.blobs, args.small) < 0 or args.blobs + args.small == 0:
        parser.error("--runs and --concurrency must be ≥ 1, --blobs and --small ≥ 0 and not both 0")
    return args


def prepare(
    stack: LocalStack,
    runner: asyncio.Runner,
    closing: contextlib.ExitStack,
    work: Path,
    scratch: Path,
    name: str,
    count: int,
    sizes: tuple[int, int],
    seed: int,
    concurrency: int | None,
) -> tuple[BlobStore, AppVerify]:
    """A fresh database and bucket holding one blob set and its rows, and the app's maintenance over them."""
    started = time.perf_counter()
    database_url, bucket = fresh_database_and_bucket(stack)
    location = stack.s3_location(bucket)
    store = closing.enter_context(BlobStore(location))
    blobs = make_blobs(store, scratch, name, count, sizes, seed)
    presign(location, blobs)
    settings = app_settings(stack, database_url, bucket, work / "server")
    if concurrency is not None:
        settings = settings.model_copy(update={"verify_concurrency": concurrency})
    engine = create_engine(settings.database_url, pool_size=3)  # as `ahop verify` does
    closing.callback(lambda: runner.run(engine.dispose()))
    runner.run(record_rows(engine, blobs))
    progress(
        f"{name}: {count} blobs, {blobs.zst_bytes / 1e6:.1f} MB compressed, stored in "
        f"{time.perf_counter() - started:.1f} s"
    )
    return store, AppVerify(runner, build_maintenance(settings, engine, store), blobs)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if missing := [tool for tool in ("bash", "curl", "zstd", "openssl", "tee") if shutil.which(tool) is None]:
        print(f"bench.verify: missing command-line tools {', '.join(missing)}; install them and run again.")
        return 2
    code = code_under_test("verify", "blobstore")
    report: dict[str, Any] = {
        "code": code,
        "runs": args.runs,
        "concurrency": args.concurrency,
        "loadavg_start": os.getloadavg(),
    }
    with (
        tempfile.TemporaryDirectory(prefix="ahop-bench-verify-") as work_dir,
        tempfile.TemporaryDirectory(prefix="ahop-bench-verify-", dir=args.scratch) as scratch_dir,
    ):
        work, scratch = Path(work_dir), Path(scratch_dir)
        stack = LocalStack.scratch(work / "stack")
        try:
            with asyncio.Runner() as runner, contextlib.ExitStack() as closing:
                prepared = []
                for name, count, sizes, seed in (
                    ("large", args.blobs, (7_500_000, 10_500_000), 1),
                    ("small", args.small, (6_000, 80_000), 2),
                ):
                    if count:
                        prepared.append(
                            prepare(stack, runner, closing, work, scratch, name, count, sizes, seed, args.concurrency)
                        )
                concurrency = prepared[0][1].maintenance.policy.verify_concurrency
                report["concurrency"] = concurrency
                ours_server = [server for server in stack.servers if isinstance(server, SeaweedS3)]
                server = psutil.Process(ours_server[0].process.pid) if ours_server else None
                rows = [measure(store, app, concurrency, args.runs, server) for store, app in prepared]
        finally:
            stack.stop()
        report["machine"] = machine.describe({"work": work, "scratch": scratch})
    report["loadavg_end"] = os.getloadavg()
    report["results"] = [row.to_json() for row in rows]
    print(table(rows, report["concurrency"]))
    out = write_results(args.results, "verify", report)
    print(f"\nraw timings and machine facts: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
