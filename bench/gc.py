"""GC over many blobs, half of them unreferenced: mark, sweep and orphan-sweep times of the real `ahop gc` run.

    python -m bench.gc                                # 20,000 blobs and 300 orphan objects, 1 run
    python -m bench.gc --blobs 5000 --orphans 100 --runs 3

Setup, in a fresh database and bucket of the local stack (timed apart; not part of the target):
- `--blobs` N real small blobs (a one-file canonical tar of random text, zstd level 3 with its checksum, ~1 KB)
  PUT with our metadata by 16 threads, and `--orphans` more objects that no row names;
- N blob rows, copied in with asyncpg, touched two days ago;
- one tenant; N/4 templates whose current (only) version references a blob, N/4 pending tasks that reference
  other blobs; the other N/2 blobs nothing references. Then ANALYZE, as autovacuum would have done by then.

Measured through `Maintenance`, as `ahop gc` runs it (`start_gc`, then `execute`), one after another:
1. dry run, grace 3600 s: what it reports and how long it takes (candidates must be N/2);
2. EXPLAIN (ANALYZE, BUFFERS) of the mark query (the same statement `GarbageCollector._mark` builds), kept in the JSON;
3. real GC, grace 3600 s (the rows are two days old; the objects are younger, so no orphan qualifies): each phase
   (retention, mark, sweep, orphans) clocked from the run's progress (the report's own figures go to the JSON). S3
   DeleteObjects and the bucket listing are clocked inside the store (a `BlobStore` that times its own `delete`
   and `list_blobs`), so a phase splits into S3 and database time. Then checked: the N/2 unreferenced rows and
   objects are gone, the referenced ones and the orphans remain (listing the bucket) — else the run aborts;
4. GC with grace 0: no candidates left, only the orphans go; the orphan sweep's time. Checked the same way.

Target: the real GC (3) over 20,000 blobs in ≤ 60 s. Deletions per second = blobs deleted ÷ the sweep phase.
The database is the stack's (PostgreSQL without fsync when we start it) and the S3 server SeaweedFS, both on the
same cores as this process. Prints Markdown tables; raw figures and machine facts go to `bench-results/gc-<UTC>.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import zstandard
from sqlalchemy import func, literal, select

from app.db.engine import create_engine
from app.db.models import Blob, RunStatus
from app.devstack.postgres import PostgresServer
from app.devstack.seaweed import SeaweedS3
from app.devstack.stack import LocalStack
from app.maintenance import references
from app.maintenance.start import Maintenance, build_maintenance
from bench import machine
from bench.harness import RESULTS, code_under_test, cpu_seconds, progress, write_results
from bench.services import app_settings, fresh_database_and_bucket
from storage.blobstore import CONTENT_TYPE, DELETE_BATCH, BlobInfo, BlobStore, ListedBlob, S3Location, _client
from storage.digest import Digest
from storage.keys import blob_key
from storage.tarformat import MODE_FILE, REGULAR, end_of_archive, header, padding

TARGET_SECONDS = 60.0
TARGET_BLOBS = 20_000
GRACE = 3600.0
UPLOAD_THREADS = 16


@dataclass(frozen=True)
class Payload:
    info: BlobInfo
    compressed: bytes


@dataclass
class Population:
    """What the setup stored, by digest hex."""

    by_template: list[str]
    by_task: list[str]
    unreferenced: list[str]
    orphans: list[str]
    setup_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def referenced(self) -> set[str]:
        return {*self.by_template, *self.by_task}


class ClockedStore(BlobStore):
    """The real store, clocking the S3 requests GC makes: DeleteObjects and the bucket listing."""

    def __init__(self, location: S3Location) -> None:
        super().__init__(location)
        self.clock = {"delete_s": 0.0, "delete_requests": 0, "list_s": 0.0, "listed": 0}

    def delete(self, digests: Iterable[Digest]) -> list[Digest]:
        wanted = list(digests)
        started = time.perf_counter()
        try:
            return super().delete(wanted)
        finally:
            self.clock["delete_s"] += time.perf_counter() - started
            self.clock["delete_requests"] += -(-len(wanted) // DELETE_BATCH)

    def list_blobs(self) -> Iterator[ListedBlob]:
        listing = super().list_blobs()
        while True:
            started = time.perf_counter()
            item = next(listing, None)
            self.clock["list_s"] += time.perf_counter() - started
            if item is None:
                return
            self.clock["listed"] += 1
            yield item


class PhaseClock:
    """Progress that notes when each phase of a run starts (the run tells its progress every phase change)."""

    def __init__(self) -> None:
        self.starts: list[tuple[str, float]] = []

    def phase(self, name: str, total: int | None = None) -> None:
        self.starts.append((name, time.perf_counter()))

    def advance(self, items: int = 1, nbytes: int = 0) -> None:
        pass

    def durations(self, ended: float) -> dict[str, float]:
        ends = [start for _, start in self.starts[1:]] + [ended]
        return {name: end - start for (name, start), end in zip(self.starts, ends, strict=True)}


def servers_of(stack: LocalStack) -> dict[str, psutil.Process]:
    """The S3 and PostgreSQL servers we started (none when the environment names them)."""
    kinds: dict[type, str] = {SeaweedS3: "S3", PostgresServer: "PostgreSQL"}
    return {
        kinds[type(server)]: psutil.Process(server.process.pid) for server in stack.servers if type(server) in kinds
    }


def cpu_used(servers: dict[str, psutil.Process]) -> dict[str, float]:
    """CPU seconds used so far by this process and by each server (PostgreSQL: with its backends, live or gone)."""
    used = {"bench": cpu_seconds()}
    for name, process in servers.items():
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total = times.user + times.system + times.children_user + times.children_system
            for child in process.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    child_times = child.cpu_times()
                    total += child_times.user + child_times.system
            used[name] = total
    return used


def small_blob(rng: random.Random) -> Payload:
    """A real blob: a canonical tar of one file of random text, zstd-compressed with the frame checksum."""
    text = rng.randbytes(rng.randint(100, 1500)).hex().encode() + b"\n"
    tar = header("run.sh", MODE_FILE, len(text), REGULAR) + text + padding(len(text))
    tar += end_of_archive(len(tar))
    compressed = zstandard.ZstdCompressor(level=3, write_checksum=True).compress(tar)
    digest = Digest(hashlib.sha256(tar).hexdigest())
    return Payload(BlobInfo(digest, len(compressed), len(tar), 1, hashlib.sha256(compressed).hexdigest()), compressed)


def upload(location: S3Location, payloads: list[Payload]) -> None:
    """PUT every payload under its blob key with our metadata, UPLOAD_THREADS at a time, with the store's client."""
    client = _client(location)

    def put(payload: Payload) -> None:
        client.put_object(
            Bucket=location.bucket,
            Key=blob_key(payload.info.digest),
            Body=payload.compressed,
            ContentType=CONTENT_TYPE,
            Metadata=payload.info.metadata(),
        )

    try:
        with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
            list(pool.map(put, payloads))
    finally:
        client.close()


async def insert_rows(database_url: str, rows: list[Payload], population: Population) -> None:
    """Blob rows two days old; templates with one version each and pending tasks referencing half of them."""
    connection = await asyncpg.connect(libpq_url(database_url))
    try:
        touched = datetime.now(UTC) - timedelta(days=2)
        await connection.copy_records_to_table(
            "blobs",
            columns=["digest", "tar_size", "zst_size", "zst_sha256", "files", "touched_at", "created_at"],
            records=[
                (
                    row.info.digest.hex,
                    row.info.tar_size,
                    row.info.zst_size,
                    row.info.zst_sha256,
                    row.info.files,
                    touched,
                    touched,
                )
                for row in rows
            ],
        )
        async with connection.transaction():
            tenant = await connection.fetchval("INSERT INTO tenants (name) VALUES ($1) RETURNING id", "bench-gc")
            codes = [f"gc-{number}" for number in range(len(population.by_template))]
            await connection.execute(
                "INSERT INTO task_templates (tenant_id, code, name, import_state) "
                "SELECT $1, code, code, 'pending' FROM unnest($2::text[]) AS code",
                tenant,
                codes,
            )
            await connection.execute(
                "INSERT INTO template_versions (template_id, version, digest, script_type, entry_file) "
                "SELECT t.id, 1, d.digest, 'shell', 'run.sh' FROM unnest($2::text[], $3::text[]) AS d(code, digest) "
                "JOIN task_templates t ON t.tenant_id = $1 AND t.code = d.code",
                tenant,
                codes,
                population.by_template,
            )
            await connection.execute(
                "UPDATE task_templates t SET current_version_id = v.id, import_state = 'imported' "
                "FROM template_versions v WHERE v.template_id = t.id AND t.tenant_id = $1",
                tenant,
            )
            await connection.execute(
                "INSERT INTO tasks (tenant_id, template_code, version, digest, pool, status, timeout) "
                "SELECT $1, 'gc-task', 1, digest, 'default', 'pending', 600 FROM unnest($2::text[]) AS digest",
                tenant,
                population.by_task,
            )
        await connection.execute("ANALYZE")
    finally:
        await connection.close()


def populate(location: S3Location, database_url: str, blobs: int, orphans: int, seed: int) -> Population:
    rng = random.Random(seed)  # noqa: S311 -- reproducible test data
    started = time.perf_counter()
    payloads = [small_blob(rng) for _ in range(blobs + orphans)]
    made = time.perf_counter()
    digests = [payload.info.digest.hex for payload in payloads]
    quarter = blobs // 4
    population = Population(
        by_template=digests[:quarter],
        by_task=digests[quarter : 2 * quarter],
        unreferenced=digests[2 * quarter : blobs],
        orphans=digests[blobs:],
    )
    upload(location, payloads)
    uploaded = time.perf_counter()
    asyncio.run(insert_rows(database_url, payloads[:blobs], population))
    population.setup_seconds = {
        "make_blobs": made - started,
        "upload": uploaded - made,
        "rows": time.perf_counter() - uploaded,
    }
    progress(
        f"setup: {blobs:,} blobs + {orphans} orphans made in {made - started:.1f} s, uploaded in "
        f"{uploaded - made:.1f} s ({len(payloads) / (uploaded - made):.0f} PUT/s), rows in "
        f"{population.setup_seconds['rows']:.1f} s"
    )
    return population


async def gc_run(
    maintenance: Maintenance, store: ClockedStore, servers: dict[str, psutil.Process], *, dry_run: bool, grace: float
) -> dict[str, Any]:
    """One GC as `ahop gc` runs it; its report, wall time, each phase's time, the store's S3 time and CPU used."""
    before = dict(store.clock)
    clock = PhaseClock()
    cpu = cpu_used(servers)
    started = time.perf_counter()
    run = await maintenance.start_gc(dry_run=dry_run, grace=grace, wait=False, started_by="bench.gc")
    result = await run.execute(clock)
    ended = time.perf_counter()
    cpu = {name: seconds - cpu[name] for name, seconds in cpu_used(servers).items() if name in cpu}
    if result.status is not RunStatus.SUCCEEDED:
        raise SystemExit(f"FAIL: the GC run ended {result.status.value}: {result.error}")
    report = {key: value for key, value in result.report.items() if not key.endswith("_digests")}
    s3 = {key: store.clock[key] - before[key] for key in before}
    return {
        "report": report,
        "wall_s": ended - started,
        "phases_s": clock.durations(ended),
        "s3": s3,
        "cpu_s": cpu,
        "candidate_digests": result.report["candidate_digests"],
    }


async def explain_mark(database_url: str, grace: float, keep: int) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of the statement GC's mark runs (built as `GarbageCollector._mark` builds it)."""
    query = (
        select(Blob.digest, Blob.zst_size)
        .where(Blob.touched_at < func.now() - literal(timedelta(seconds=grace)), references.unreferenced(keep))
        .order_by(Blob.digest)
    )
    engine = create_engine(database_url, pool_size=1)
    try:
        compiled = query.compile(dialect=engine.dialect, compile_kwargs={"render_postcompile": True})
        params = [compiled.params[name] for name in compiled.positiontup or []]
        async with engine.connect() as connection:
            raw = await connection.get_raw_connection()
            rows = await raw.driver_connection.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {compiled}", *params)  # type: ignore[union-attr]
        return "\n".join(row[0] for row in rows)
    finally:
        await engine.dispose()


def libpq_url(database_url: str) -> str:
    """The URL asyncpg itself takes (SQLAlchemy's driver suffix removed)."""
    return database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def rows_left(database_url: str) -> set[str]:
    connection = await asyncpg.connect(libpq_url(database_url))
    try:
        return {row[0] for row in await connection.fetch("SELECT digest FROM blobs")}
    finally:
        await connection.close()


def check_left(what: str, store: BlobStore, database_url: str, rows: set[str], objects: set[str]) -> None:
    """Abort unless exactly `rows` remain in the database and exactly `objects` in the bucket."""
    found_rows = asyncio.run(rows_left(database_url))
    found_objects = {item.digest.hex for item in store.list_blobs()}
    for kind, found, expected in (("rows", found_rows, rows), ("objects", found_objects, objects)):
        if found != expected:
            raise SystemExit(
                f"FAIL: after {what}, {len(found)} {kind} remain where {len(expected)} should: "
                f"{len(found - expected)} unexpected, {len(expected - found)} missing"
            )


def check_report(what: str, report: dict[str, Any], **expected: int) -> None:
    wrong = {key: (report[key], value) for key, value in expected.items() if report[key] != value}
    if wrong:
        shown = ", ".join(f"{key}={got} (expected {value})" for key, (got, value) in wrong.items())
        raise SystemExit(f"FAIL: the {what} reported {shown}")


def one_run(stack: LocalStack, work: Path, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """A fresh database and bucket, populated; then the dry run, the plan, the real GC and the orphan GC."""
    database_url, bucket = fresh_database_and_bucket(stack)
    location = stack.s3_location(bucket)
    population = populate(location, database_url, args.blobs, args.orphans, seed)
    half = len(population.unreferenced)
    settings = app_settings(stack, database_url, bucket, work / "server")
    result: dict[str, Any] = {"setup_s": population.setup_seconds}
    servers = servers_of(stack)

    async def collect() -> None:
        engine = create_engine(database_url, pool_size=3)
        try:
            maintenance = build_maintenance(settings, engine, store)
            dry = await gc_run(maintenance, store, servers, dry_run=True, grace=GRACE)
            check_report("dry run", dry["report"], candidates=half, deleted=0, orphans_found=0)
            if len(set(dry.pop("candidate_digests")) - {f"sha256:{d}" for d in population.unreferenced}):
                raise SystemExit("FAIL: the dry run named a referenced blob as a candidate")
            result["dry_run"] = dry
            result["mark_plan"] = await explain_mark(database_url, GRACE, settings.keep_versions)
            real = await gc_run(maintenance, store, servers, dry_run=False, grace=GRACE)
            real.pop("candidate_digests")
            check_report("real GC", real["report"], candidates=half, deleted=half, kept_in_use=0, orphans_found=0)
            result["gc"] = real
            await asyncio.to_thread(
                check_left,
                "the real GC",
                store,
                database_url,
                population.referenced,
                population.referenced | set(population.orphans),
            )
            orphan = await gc_run(maintenance, store, servers, dry_run=False, grace=0)
            orphan.pop("candidate_digests")
            check_report(
                "orphan GC", orphan["report"], candidates=0, deleted=0, orphans_removed=len(population.orphans)
            )
            result["orphan_gc"] = orphan
            await asyncio.to_thread(
                check_left, "the orphan GC", store, database_url, population.referenced, population.referenced
            )
        finally:
            await engine.dispose()

    store = ClockedStore(location)
    with store:
        asyncio.run(collect())
    gc = result["gc"]
    phases = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in gc["phases_s"].items())
    dry, orphan = result["dry_run"]["wall_s"], result["orphan_gc"]["wall_s"]
    progress(
        f"  GC of {args.blobs:,} blobs: {gc['wall_s']:.1f} s ({phases}); dry run {dry:.1f} s; orphan GC {orphan:.1f} s"
    )
    return result


def median(runs: list[dict[str, Any]], *path: str) -> float:
    values = []
    for run in runs:
        value: Any = run
        for key in path:
            value = value.get(key, 0.0) if isinstance(value, dict) else 0.0
        values.append(float(value))
    return statistics.median(values)


def tables(runs: list[dict[str, Any]], blobs: int, orphans: int) -> str:
    total = median(runs, "gc", "report", "duration_seconds")  # the collector's own clock, as `ahop gc` prints it
    sweep_phase = median(runs, "gc", "phases_s", "sweep")
    deleted = median(runs, "gc", "report", "deleted")
    target = TARGET_SECONDS * blobs / TARGET_BLOBS
    verdict = f"≤ {target:g} s: {'met' if total <= target else 'MISSED'}"
    if blobs != TARGET_BLOBS:
        verdict += f" (scaled from {TARGET_SECONDS:g} s for {TARGET_BLOBS:,})"
    phase = {name: median(runs, "gc", "phases_s", name) for name in ("retention", "mark", "sweep", "orphans")}
    first = [
        "| blobs | candidates | retention s | mark s | sweep s | orphan listing s | total s "
        "| deletions/s (sweep) | target |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        f"| {blobs:,} | {median(runs, 'gc', 'report', 'candidates'):,.0f} | {phase['retention']:.2f} | "
        f"{phase['mark']:.2f} | {phase['sweep']:.2f} | {phase['orphans']:.2f} | **{total:.2f}** | "
        f"{deleted / sweep_phase if sweep_phase else 0:,.0f} | {verdict} |",
    ]
    second = [
        "| run | found | retention s | mark s | sweep s | of which DeleteObjects s (requests) | orphans s "
        "| of which listing s (objects) | wall s | CPU s: bench, S3, PostgreSQL |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, key, found in (
        ("dry run, grace 3600 s", "dry_run", "candidates"),
        ("real GC, grace 3600 s", "gc", "deleted"),
        ("orphan GC, grace 0", "orphan_gc", "orphans_removed"),
    ):
        phases = {phase: median(runs, key, "phases_s", phase) for phase in ("retention", "mark", "sweep", "orphans")}
        second.append(
            f"| {name} | {median(runs, key, 'report', found):,.0f} {found.replace('_', ' ')} | "
            f"{phases['retention']:.2f} | {phases['mark']:.2f} | {phases['sweep']:.2f} | "
            f"{median(runs, key, 's3', 'delete_s'):.2f} ({median(runs, key, 's3', 'delete_requests'):.0f}) | "
            f"{phases['orphans']:.2f} | {median(runs, key, 's3', 'list_s'):.2f} "
            f"({median(runs, key, 's3', 'listed'):,.0f}) | {median(runs, key, 'wall_s'):.2f} | "
            + ", ".join(
                f"{median(runs, key, 'cpu_s', name):.2f}" if name in runs[0][key]["cpu_s"] else "n/a"
                for name in ("bench", "S3", "PostgreSQL")
            )
            + " |"
        )
    setup = " + ".join(f"{name} {median(runs, 'setup_s', name):.1f} s" for name in ("make_blobs", "upload", "rows"))
    return (
        f"### GC of {blobs:,} blobs, half unreferenced (median of {len(runs)} run(s))\n\n"
        + "\n".join(first)
        + f"\n\n### GC phases ({orphans} orphan objects; S3 requests clocked inside the store)\n\n"
        + "\n".join(second)
        + f"\n\nSetup (not timed against the target): {setup}."
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gc", description=__doc__.splitlines()[0])
    parser.add_argument("--blobs", type=int, default=TARGET_BLOBS, help="blob rows and objects (default 20000)")
    parser.add_argument("--orphans", type=int, default=300, help="objects without a row (default 300)")
    parser.add_argument("--runs", type=int, default=1, help="runs, each on a fresh database and bucket (default 1)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args(argv)
    if args.blobs < 4 or args.orphans < 0 or args.runs < 1:
        parser.error("--blobs must be ≥ 4, --orphans ≥ 0 and --runs ≥ 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report: dict[str, Any] = {
        "code": code_under_test(),
        "blobs": args.blobs,
        "orphans": args.orphans,
        "target_s": TARGET_SECONDS,
        "loadavg_start": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="ahop-bench-gc-") as work_dir:
        work = Path(work_dir)
        stack = LocalStack.scratch(work / "stack")
        try:
            runs = [one_run(stack, work, args, seed) for seed in range(args.runs)]
        finally:
            stack.stop()
        report["machine"] = machine.describe({"work": work})
    report["loadavg_end"] = os.getloadavg()
    report["runs"] = runs
    print(tables(runs, args.blobs, args.orphans))
    out = write_results(args.results, "gc", report, default=str)
    print(f"\nraw figures, the mark query's plan and machine facts: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
