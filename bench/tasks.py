"""Tasks and workers: cold fetch of a template, warm-cache overhead, and dispatch latency, in one run (`make bench`).

    python -m bench.tasks                                    # medium and large, 5 runs; 200 dispatched tasks
    python -m bench.tasks --runs 3 --tasks 50 --parts cold,warm

- cold fetch: `LocalStore(fresh root, blobs).prefetch(blob)` (GET, size and sha256 of the compressed bytes, zstd,
  strict unpack hashing the tar, read-only sealing, rename into the store) against the limit
  `curl -sf <presigned GET> | zstd -dc | tar -xf - -C DIR`, which verifies nothing. Both read the same object of the
  same S3 server and write under `--dir`; interleaved (ours, limit, …) after one untimed warm-up run of each, whose
  trees must pack back to the digest; median of `--runs`. Destinations are removed (and, on disk, `sync`ed) outside
  the timed region. Target: ours/limit ≤ 1.5.
- warm overhead: with the entry in the store, what the worker does around a run besides copying — `LocalStore.use`
  entered and `link_template`, in worker threads as `worker.attempts` does (target ≤ 10 ms), and leaving `use`
  afterwards — and, apart, the run copy itself (`worker.rundir.copy_tree`, called as the runner calls it),
  shown beside `cp -a` of the same entry.
- dispatch: the API in-process (Litestar's test client runs the app and its control loop in a thread of this process;
  no HTTP socket) and one real `ahop worker` process with its default settings. A one-file shell template prints
  `$EPOCHREALTIME`; after one warm-up task (which fetches it), `--tasks` tasks one after another: t0 = time.time()
  just before `POST /api/v1/tasks`, GET every 5 ms until the task is final, then latency = the time the script
  printed minus t0 (one host, one clock). Targets: p50 ≤ 50 ms, p95 ≤ 150 ms.

Services come from the environment (AHOP_DATABASE_URL, AHOP_REDIS_URL, AHOP_S3_*) or are started like the tests'.
Prints Markdown tables and writes every raw timing and the machine facts to `bench-results/tasks-<UTC>.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from shlex import quote
from typing import Any

from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis import Redis

from app.devstack.processes import ManagedProcess
from app.devstack.stack import LocalStack
from app.main import create_app
from app.settings import AppSettings
from bench import machine
from bench.corpus import GIT_ENV, SPECS, generate
from bench.harness import (
    RESULTS,
    Measurement,
    code_under_test,
    fmt,
    pack_corpus,
    progress,
    remove,
    run_shell,
    table,
    timed,
    write_results,
)
from bench.presign import presigned_urls
from bench.services import WORKER_SECRET_KEYS, app_settings, fresh_database_and_bucket, tenant_token
from storage.blobstore import BlobStore, S3Location
from storage.digest import Digest
from storage.keys import blob_key
from storage.snapshot import snapshot_directory
from worker.attempts import entered_in_thread
from worker.protocol import WORKERS_KEY, BlobRef
from worker.rundir import copy_tree
from worker.store import LocalStore

FETCH_TARGET = 1.5
OVERHEAD_TARGET_MS = 10.0
DISPATCH_TARGETS_MS = {"p50": 50.0, "p95": 150.0}
FINAL = {"success", "failed", "timeout", "cancelled", "lost"}
TINY_SCRIPT = '#!/bin/bash\necho "t=$EPOCHREALTIME"\n'
Client = AsyncTestClient[Litestar]


@dataclass
class FetchMeasurement(Measurement):
    """A row of the cold-fetch table, with the fetch target."""

    @property
    def target(self) -> float | None:
        return FETCH_TARGET


@dataclass
class WarmMeasurement:
    """Seconds per task around a run from a warm store: before the copy, the copy, and leaving `use` after it."""

    corpus: str
    files: int
    tar_bytes: int
    before_s: list[float] = field(default_factory=list)
    copy_s: list[float] = field(default_factory=list)
    exit_s: list[float] = field(default_factory=list)
    cp_s: list[float] = field(default_factory=list)
    """`cp -a` of the same entry: the floor for any copy (it keeps the modes as they are; ours adds owner write)."""


def percentile(values: list[float], share: float) -> float:
    """The `share` quantile (0 to 1) by linear interpolation between the closest ranks."""
    ordered = sorted(values)
    position = share * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def upload(name: str, blobs: BlobStore, scratch: Path) -> BlobRef:
    """Generate corpus `name` on `scratch`, pack it to a verified blob and store it; the reference a job carries."""
    started = time.perf_counter()
    corpus = generate(SPECS[name], scratch / "corpora")
    snap, blob = pack_corpus(corpus, scratch)
    blobs.put_if_absent(snap.digest, blob, tar_size=snap.tar_size, files=snap.files, zst_sha256=snap.zst_sha256)
    shutil.rmtree(corpus.repo)
    blob.unlink()
    progress(
        f"{name}: {snap.files:,} files, tar {snap.tar_size / 1e6:.1f} MB, zst {snap.zst_size / 1e6:.1f} MB, "
        f"stored in S3 in {time.perf_counter() - started:.1f} s"
    )
    return BlobRef.of(snap)


def presigned_get(location: S3Location, digest: Digest) -> str:
    """A GET URL for the blob, signed with the same endpoint and credentials as the worker's."""
    (url,) = presigned_urls(location, "get_object", [blob_key(digest)])
    return url


def remove_tree(path: Path, *, sync: bool) -> None:
    """Remove a destination, store entries included (read-only directories get their owner bits back first)."""
    for directory, _, _ in os.walk(path):
        os.chmod(directory, 0o700)
    remove(path, sync=sync)


def packs_to(tree: Path, ref: BlobRef, who: str) -> None:
    digest = snapshot_directory(tree, None).digest
    if digest != ref.digest:
        raise SystemExit(f"FAIL: the tree {who} unpacked ({tree}) packs to {digest}, not {ref.digest}")


def cold_fetch(
    name: str, ref: BlobRef, blobs: BlobStore, location: S3Location, place: Path, runs: int, sync: bool
) -> FetchMeasurement:
    """Interleaved runs of our prefetch into a fresh store and of curl | zstd | tar into a fresh directory."""
    url = presigned_get(location, ref.digest)
    row = FetchMeasurement(name, "cold fetch", ref.tar_size)

    def ours(dest: Path) -> None:
        if not LocalStore(dest, blobs).prefetch(ref):
            raise SystemExit(f"FAIL: the fresh store {dest} did not download {ref.digest}")

    def limit(dest: Path) -> None:
        run_shell(f"mkdir {quote(str(dest))} && curl -sf {quote(url)} | zstd -dcq | tar -xf - -C {quote(str(dest))}")

    for run in range(runs + 1):  # run 0 is the warm-up: connections, page cache, imports
        for side, work, wall, cpu in (
            ("ours", ours, row.ours_s, row.ours_cpu_s),
            ("limit", limit, row.limit_s, row.limit_cpu_s),
        ):
            dest = place / f"{name}-{side}-{run}"
            seconds, cpu_seconds = timed(work, dest)
            if run == 0:
                packs_to(dest / "store" / "sha256" / ref.digest.hex if side == "ours" else dest, ref, side)
            else:
                wall.append(seconds)
                cpu.append(cpu_seconds)
            remove_tree(dest, sync=sync)
    progress(f"  cold fetch {name}: ours {fmt(row.ours)} s   limit {fmt(row.limit)} s   (medians)")
    return row


async def warm_overhead(name: str, ref: BlobRef, store: LocalStore, runs: int, sync: bool) -> WarmMeasurement:
    """The worker's steps around a run with the entry already stored, in its threads, as `worker.attempts` does."""
    row = WarmMeasurement(name, ref.files, ref.tar_size)
    await asyncio.to_thread(store.prefetch, ref)
    for run in range(runs + 1):
        dest = store.runs_dir / f"bench-{name}-{run}"
        started = time.perf_counter()
        async with entered_in_thread(store.use(ref)) as entry:
            await asyncio.to_thread(store.link_template, "bench", f"warm-{name}", ref.digest)
            linked = time.perf_counter()
            await asyncio.to_thread(copy_tree, entry, dest, None)
            copied = time.perf_counter()
        left = time.perf_counter()
        if run:
            row.before_s.append(linked - started)
            row.copy_s.append(copied - linked)
            row.exit_s.append(left - copied)
        await asyncio.to_thread(remove_tree, dest, sync=sync)
        seconds, _ = await asyncio.to_thread(
            timed, lambda to: run_shell(f"cp -a {quote(str(entry))} {quote(str(to))}"), dest
        )
        if run:
            row.cp_s.append(seconds)
        await asyncio.to_thread(remove_tree, dest, sync=sync)
    progress(
        f"  warm {name}: before the copy {statistics.median(row.before_s) * 1000:.2f} ms, "
        f"copy {statistics.median(row.copy_s) * 1000:.1f} ms, cp -a {statistics.median(row.cp_s) * 1000:.1f} ms"
        "   (medians)"
    )
    return row


def tiny_repo(parent: Path) -> Path:
    """A Git repository holding one template, `tiny/run.sh`, that prints the time it started."""
    repo = parent / "tiny-origin"
    (repo / "tiny").mkdir(parents=True)
    script = repo / "tiny" / "run.sh"
    script.write_text(TINY_SCRIPT)
    script.chmod(0o755)
    env = {**os.environ, **GIT_ENV}
    for command in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "tiny template"]):
        subprocess.run(["git", "-C", str(repo), *command], check=True, env=env, capture_output=True)
    return repo


def start_worker(stack: LocalStack, bucket: str, root: Path, logs: Path) -> ManagedProcess:
    """`ahop worker` with the worker's environment only (no database), ready once its first heartbeat is in Redis."""
    location = stack.s3_location(bucket)
    name = f"bench-{secrets.token_hex(3)}"
    env = {key: value for key, value in os.environ.items() if not key.startswith("AHOP_")}
    env.update(
        AHOP_REDIS_URL=stack.env["AHOP_REDIS_URL"],
        AHOP_S3_ENDPOINT_URL=location.endpoint_url or "",
        AHOP_S3_BUCKET=bucket,
        AHOP_S3_ACCESS_KEY_ID=location.access_key_id or "",
        AHOP_S3_SECRET_ACCESS_KEY=location.secret_access_key or "",
        AHOP_S3_REGION=location.region,
        AHOP_WORKER_ROOT=str(root),
        AHOP_WORKER_ID=name,
        AHOP_WORKER_SECRET_KEYS=WORKER_SECRET_KEYS,
    )
    process = ManagedProcess.start(
        name,
        [sys.executable, "-m", "ahop", "worker"],
        log_path=logs / f"{name}.log",
        pid_file=logs / f"{name}.pid",
        env=env,
    )
    redis = Redis.from_url(stack.env["AHOP_REDIS_URL"])
    try:
        process.wait_ready(lambda: bool(redis.hexists(WORKERS_KEY, name)), where="first heartbeat", timeout=60)
    except BaseException:
        process.stop()
        raise
    finally:
        redis.close()
    return process


def answer(response: Any, status: int, what: str) -> dict[str, Any]:
    if response.status_code != status:
        raise SystemExit(f"FAIL: {what}: HTTP {response.status_code} (expected {status}): {response.text}")
    return dict(response.json())


async def final_task(client: Client, headers: dict[str, str], task_id: str, bound: float = 60) -> dict[str, Any]:
    """GET the task every 5 ms until it is final; the bound only catches hangs."""
    deadline = time.monotonic() + bound
    while True:
        task = answer(await client.get(f"/api/v1/tasks/{task_id}", headers=headers), 200, "GET the task")
        if task["status"] in FINAL:
            return task
        if time.monotonic() > deadline:
            raise SystemExit(f"FAIL: task {task_id} still {task['status']} after {bound:g} s: {task}")
        await asyncio.sleep(0.005)


async def script_time(client: Client, headers: dict[str, str], task_id: str, bound: float = 30) -> float:
    """The `t=<epoch seconds>` line the tiny script printed, from the task's log."""
    deadline = time.monotonic() + bound
    while True:
        log = answer(await client.get(f"/api/v1/tasks/{task_id}/logs", headers=headers), 200, "GET the log")
        for item in log["items"]:
            if item["line"].startswith("t="):
                return float(item["line"].removeprefix("t="))
        if time.monotonic() > deadline:
            raise SystemExit(f"FAIL: no t= line in the log of task {task_id}: {log}")
        await asyncio.sleep(0.01)


async def dispatch(settings: AppSettings, token: str, repo: Path, tasks: int) -> dict[str, list[float]]:
    """Seconds from just before the POST to the script's start, and to the POST's answer, per task."""
    headers = {"Authorization": f"Bearer {token}"}
    latency: list[float] = []
    posted: list[float] = []
    async with AsyncTestClient(create_app(settings), timeout=60) as client:
        added = await client.post("/api/v1/git-repositories", json={"name": "tiny", "url": str(repo)}, headers=headers)
        repository = answer(added, 201, "add the repository")
        body = {
            "name": "tiny",
            "code": "tiny",
            "script_type": "shell",
            "entry_file": "run.sh",
            "repository_id": repository["id"],
            "original_path": "tiny",
            "timeout": 60,
        }
        imported = await client.post("/api/v1/task-templates", json=body, headers=headers)
        template = answer(imported, 201, "import the template")
        for n in range(tasks + 1):  # task 0 fetches the blob into the worker's store: the warm-up
            t0 = time.time()
            response = await client.post(
                "/api/v1/tasks", json={"template_id": template["id"], "params": {}}, headers=headers
            )
            t_posted = time.time()
            created = answer(response, 201, "create a task")
            done = await final_task(client, headers, created["id"])
            if done["status"] != "success":
                raise SystemExit(f"FAIL: task {created['id']} ended {done['status']}: {done}")
            started = await script_time(client, headers, created["id"])
            if n:
                latency.append(started - t0)
                posted.append(t_posted - t0)
            if n and n % 50 == 0:
                progress(f"  dispatch: {n} tasks, p50 so far {statistics.median(latency) * 1000:.1f} ms")
    return {"latency_s": latency, "post_s": posted}


def warm_table(rows: list[WarmMeasurement]) -> str:
    lines = [
        "| template | files | tar MB | use + link (before the copy) | run copy | `cp -a` | leaving use | target |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        before = statistics.median(row.before_s) * 1000
        verdict = "met" if before <= OVERHEAD_TARGET_MS else "MISSED"
        lines.append(
            f"| {row.corpus} | {row.files:,} | {row.tar_bytes / 1e6:.1f} | {before:.2f} ms "
            f"(max {max(row.before_s) * 1000:.2f}) | {statistics.median(row.copy_s) * 1000:.1f} ms "
            f"(max {max(row.copy_s) * 1000:.1f}) | {statistics.median(row.cp_s) * 1000:.1f} ms | "
            f"{statistics.median(row.exit_s) * 1000:.2f} ms | "
            f"≤ {OVERHEAD_TARGET_MS:g} ms + copy: {verdict} |"
        )
    return "\n".join(lines)


def dispatch_figures(timings: dict[str, list[float]]) -> dict[str, float]:
    latency, post = timings["latency_s"], timings["post_s"]
    return {
        "p50_ms": percentile(latency, 0.5) * 1000,
        "p95_ms": percentile(latency, 0.95) * 1000,
        "max_ms": max(latency) * 1000,
        "post_p50_ms": percentile(post, 0.5) * 1000,
    }


def dispatch_table(figures: dict[str, float], tasks: int) -> str:
    lines = ["| dispatch (task created → script started) | measured | target |", "|---|---:|---|"]
    for key, target in (("p50", DISPATCH_TARGETS_MS["p50"]), ("p95", DISPATCH_TARGETS_MS["p95"]), ("max", None)):
        value = figures[f"{key}_ms"]
        verdict = "" if target is None else f"≤ {target:g} ms: {'met' if value <= target else 'MISSED'}"
        lines.append(f"| {key} of {tasks} tasks | {value:.1f} ms | {verdict} |")
    lines.append(f"| of which POST /api/v1/tasks answered (p50) | {figures['post_p50_ms']:.1f} ms | |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.tasks", description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", default="medium,large", help="cold fetch of these (default medium,large)")
    parser.add_argument("--warm-corpora", default="small,medium", help="warm overhead of these (default small,medium)")
    parser.add_argument("--runs", type=int, default=5, help="timed cold-fetch runs of each side (default 5)")
    parser.add_argument("--warm-runs", type=int, default=20, help="timed warm runs per template (default 20)")
    parser.add_argument("--tasks", type=int, default=200, help="tasks dispatched after the warm-up (default 200)")
    parser.add_argument("--parts", default="cold,warm,dispatch", help="which measurements (default all three)")
    parser.add_argument(
        "--control-interval",
        type=float,
        default=None,
        help="the server's control_interval in seconds (default: the server's own)",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="stores and unpacks, both sides on this filesystem (default the temp dir)",
    )
    parser.add_argument("--tmpfs", type=Path, default=Path("/dev/shm"), help="corpora and blobs while packing")  # noqa: S108
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args(argv)
    args.corpus_list = [name.strip() for name in args.corpora.split(",") if name.strip()]
    args.warm_list = [name.strip() for name in args.warm_corpora.split(",") if name.strip()]
    args.part_list = {part.strip() for part in args.parts.split(",") if part.strip()}
    unknown = [name for name in args.corpus_list + args.warm_list if name not in SPECS]
    if unknown or min(args.runs, args.warm_runs, args.tasks) < 1 or not args.part_list <= {"cold", "warm", "dispatch"}:
        parser.error(
            f"--corpora and --warm-corpora take some of {', '.join(SPECS)}; --parts some of cold,warm,dispatch; "
            f"--runs, --warm-runs and --tasks must be ≥ 1 (got {unknown or args.parts})"
        )
    return args


def measure(args: argparse.Namespace, work: Path, scratch: Path, report: dict[str, Any]) -> list[str]:
    """Run the parts asked for against a fresh stack; fill `report` and return the printed tables."""
    tables: list[str] = []
    sync = machine.filesystem_type(args.dir) != "tmpfs"  # on disk, deletions settle outside the timed region
    stack = LocalStack.scratch(work / "stack")
    try:
        database_url, bucket = fresh_database_and_bucket(stack)
        location = stack.s3_location(bucket)
        with BlobStore(location) as blobs:
            names = (args.corpus_list if "cold" in args.part_list else []) + (
                args.warm_list if "warm" in args.part_list else []
            )
            stored = {name: upload(name, blobs, scratch) for name in dict.fromkeys(names)}
            report["corpora"] = {name: asdict(ref) for name, ref in stored.items()}
            if "cold" in args.part_list:
                rows: list[Measurement] = [
                    cold_fetch(n, stored[n], blobs, location, work, args.runs, sync) for n in args.corpus_list
                ]
                report["cold_fetch"] = [row.to_json() for row in rows]
                tables.append(f"### Cold fetch + unpack (median of {args.runs})\n\n{table(rows)}")
            if "warm" in args.part_list:
                store = LocalStore(work / "warm-store", blobs)
                warm = [asyncio.run(warm_overhead(n, stored[n], store, args.warm_runs, sync)) for n in args.warm_list]
                report["warm"] = [asdict(row) for row in warm]
                tables.append(f"### Warm store, per task (median of {args.warm_runs})\n\n{warm_table(warm)}")
        if "dispatch" in args.part_list:
            settings = app_settings(stack, database_url, bucket, work / "server", args.control_interval)
            token = asyncio.run(tenant_token(database_url))
            worker = start_worker(stack, bucket, work / "worker", work / "logs")
            try:
                timings = asyncio.run(dispatch(settings, token, tiny_repo(work), args.tasks))
            finally:
                worker.stop()
            figures = dispatch_figures(timings)
            report["dispatch"] = {**timings, **figures, "control_interval": settings.control_interval}
            tables.append(f"### Dispatch latency (one worker, warm store)\n\n{dispatch_table(figures, args.tasks)}")
    finally:
        stack.stop()
    return tables


def main(argv: list[str] | None = None) -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would bury the table
    args = parse_args(argv)
    if missing := [tool for tool in ("curl", "zstd", "tar", "git") if shutil.which(tool) is None]:
        print(f"bench.tasks: missing command-line tools {', '.join(missing)}; install them and run again.")
        return 2
    report: dict[str, Any] = {"code": code_under_test(), "runs": args.runs, "loadavg_start": os.getloadavg()}
    args.dir.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="ahop-bench-tasks-", dir=args.dir) as work_dir,
        tempfile.TemporaryDirectory(prefix="ahop-bench-tasks-", dir=args.tmpfs) as scratch_dir,
    ):
        tables = measure(args, Path(work_dir), Path(scratch_dir), report)
        report["machine"] = machine.describe({"work": Path(work_dir), "scratch": Path(scratch_dir)})
    report["loadavg_end"] = os.getloadavg()
    print("\n\n".join(tables))
    out = write_results(args.results, "tasks", report)
    print(f"\nraw timings and machine facts: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
