"""Template import through the API, beside `ahop snapshot` of the same tree, in one run (`make bench`).

- cold: every run commits a one-line change under the template path (a new tree: nothing cached), then imports it
  through the API (in-process ASGI: routing, auth, validation, fetch into the mirror, pack, blob row, S3 upload,
  template and version rows; the HTTP socket itself is not measured) against the pack alone (`snapshot_git` of the
  same commit, what `ahop snapshot --repo` runs). Target: at most 1.3 times the snapshot.
- by hand: the steps no import can skip, as commands, in the same run: `git fetch` of the commit into a bare
  mirror, the pack written to a file (`ahop snapshot --out`), `curl -T` of that file to the same S3 server (one
  presigned PUT). The cold import against it is what the API, rows and checks cost beyond the physical limit.
- warm: `POST /task-templates/{id}/sync` of an unchanged repository (fetch, tree-id lookup, no packing).
  Target: ≤ 50 ms whatever the tree's size.

Services come from the environment (AHOP_DATABASE_URL, AHOP_REDIS_URL, AHOP_S3_*) or are started like the tests'.
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
from pathlib import Path
from typing import Any

import git
from litestar.testing import AsyncTestClient

from app.devstack.stack import LocalStack
from app.main import create_app
from app.settings import AppSettings
from bench import machine
from bench.corpus import GIT_ENV, SPECS, TEMPLATE_PATH, generate
from bench.harness import RESULTS, write_results
from bench.presign import presigned_urls
from bench.services import app_settings, fresh_database_and_bucket, tenant_token
from storage.blobstore import S3Location
from storage.snapshot import snapshot_git


def commit_change(repo: Path, run: int) -> str:
    marker = repo / TEMPLATE_PATH / "bench-run.txt"
    marker.write_text(f"cold run {run} {secrets.token_hex(8)}\n")
    env = {**os.environ, **GIT_ENV}
    # The corpus was committed by fast-import, which leaves the index empty: load HEAD's tree into it first,
    # or the commit would hold the marker alone.
    subprocess.run(["git", "-C", str(repo), "read-tree", "HEAD"], check=True, env=env)
    subprocess.run(["git", "-C", str(repo), "add", str(marker)], check=True, env=env)
    subprocess.run(["git", "-C", str(repo), "commit", "-q", "-m", f"run {run}"], check=True, env=env)
    return subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, env=env, capture_output=True, text=True
    ).stdout.strip()


def pack_alone(repo: Path, commit: str) -> float:
    started = time.perf_counter()
    with git.Repo(repo) as repository, open(os.devnull, "wb") as sink:
        snapshot_git(repository, commit, TEMPLATE_PATH, sink)
    return time.perf_counter() - started


class ByHand:
    """`git fetch` + pack to a file + `curl -T` to S3, timed together: what an import cannot do without."""

    def __init__(self, work: Path, location: S3Location) -> None:
        self.mirror = work / "by-hand.git"
        self.blob = work / "by-hand.tar.zst"
        subprocess.run(["git", "init", "--quiet", "--bare", str(self.mirror)], check=True)
        (self.put_url,) = presigned_urls(location, "put_object", ["by-hand.tar.zst"])

    def __call__(self, repo: Path, commit: str) -> float:
        started = time.perf_counter()
        subprocess.run(
            [
                "git",
                "--git-dir",
                str(self.mirror),
                "fetch",
                "--quiet",
                "--no-tags",
                "--",
                str(repo),
                "+refs/heads/*:refs/heads/*",
            ],
            check=True,
            env={**os.environ, **GIT_ENV},
        )
        with git.Repo(self.mirror) as repository, self.blob.open("wb") as out:
            snapshot_git(repository, commit, TEMPLATE_PATH, out)
        subprocess.run(["curl", "-sSf", "-o", os.devnull, "-T", str(self.blob), self.put_url], check=True)
        return time.perf_counter() - started


async def measure(settings: AppSettings, token: str, repo: Path, runs: int, by_hand: ByHand) -> dict[str, Any]:
    """Each run commits a change, then times the import, the pack alone and the by-hand pipeline of that commit,
    in an order that rotates from run to run (whatever runs first after a commit pays for nothing the others skip,
    but rotating keeps any such effect out of the ratios)."""
    headers = {"Authorization": f"Bearer {token}"}
    timings: dict[str, list[float]] = {"cold_api_s": [], "cold_pack_s": [], "cold_by_hand_s": []}
    warm: list[float] = []
    async with AsyncTestClient(create_app(settings), timeout=600) as client:
        added = await client.post("/api/v1/git-repositories", json={"name": "bench", "url": str(repo)}, headers=headers)
        repository_id = added.json()["id"]
        body = {
            "name": "bench",
            "script_type": "shell",
            "entry_file": "bench-run.txt",
            "repository_id": repository_id,
            "original_path": TEMPLATE_PATH,
        }
        imported: dict[str, Any] = {}

        async def import_through_api(run: int, commit: str) -> None:
            response = await client.post(
                "/api/v1/task-templates", json={**body, "code": f"cold-{run}"}, headers=headers
            )
            if response.status_code != 201:
                raise SystemExit(f"import failed: {response.status_code} {response.text}")
            imported.update(response.json())

        async def snapshot_alone(run: int, commit: str) -> None:
            await asyncio.to_thread(pack_alone, repo, commit)

        async def pipeline_by_hand(run: int, commit: str) -> None:
            await asyncio.to_thread(by_hand, repo, commit)

        steps = [
            ("cold_api_s", import_through_api),
            ("cold_pack_s", snapshot_alone),
            ("cold_by_hand_s", pipeline_by_hand),
        ]
        for run in range(runs + 1):  # run 0 warms the page cache, the mirrors and the connections
            commit = commit_change(repo, run)
            for name, step in steps[run % 3 :] + steps[: run % 3]:
                started = time.perf_counter()
                await step(run, commit)
                if run:
                    timings[name].append(time.perf_counter() - started)
            if imported["artifact"]["files"] < 2:
                raise SystemExit(
                    f"the imported tree holds {imported['artifact']['files']} file(s): "
                    "the benchmark corpus was not committed"
                )
        for _ in range(runs * 4 + 1):
            started = time.perf_counter()
            synced = await client.post(f"/api/v1/task-templates/{imported['id']}/sync", headers=headers)
            warm.append(time.perf_counter() - started)
            if synced.json() != {"changed": False, "version": None}:
                raise SystemExit(f"warm sync changed something: {synced.text}")
    return {**timings, "warm_sync_s": warm[1:]}


def main(argv: list[str] | None = None) -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would bury the table
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="medium", choices=sorted(SPECS))
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args(argv)
    if shutil.which("curl") is None:
        raise SystemExit("the by-hand pipeline needs `curl` on PATH")
    with tempfile.TemporaryDirectory(prefix="ahop-bench-imports-") as temp:
        work = Path(temp)
        print(f"generating the {args.corpus} corpus…", file=sys.stderr)
        corpus = generate(SPECS[args.corpus], work)
        stack = LocalStack.scratch(work / "stack")
        try:
            database_url, bucket = fresh_database_and_bucket(stack)
            location = stack.s3_location(bucket)
            settings = app_settings(stack, database_url, bucket, work / "server")
            token = asyncio.run(tenant_token(database_url))
            by_hand = ByHand(work, location)
            timings = asyncio.run(measure(settings, token, corpus.repo, args.runs, by_hand))
        finally:
            stack.stop()
    api, pack = statistics.median(timings["cold_api_s"]), statistics.median(timings["cold_pack_s"])
    by_hand_median = statistics.median(timings["cold_by_hand_s"])
    warm = sorted(timings["warm_sync_s"])
    warm_median, warm_p95 = statistics.median(warm), warm[int(0.95 * (len(warm) - 1))]
    print(f"\n{args.corpus}: {corpus.files:,} files, {corpus.content_bytes / 1e6:.0f} MB; median of {args.runs} runs")
    print(
        f"  cold import via API  {api:7.3f} s   snapshot alone {pack:7.3f} s   ratio {api / pack:.2f}  (target ≤ 1.3)"
    )
    per_run = sorted(a / p for a, p in zip(timings["cold_api_s"], timings["cold_pack_s"], strict=True))
    print(f"                       per run: {per_run[0]:.2f} to {per_run[-1]:.2f}")
    print(
        f"  by hand (git fetch, pack to a file, curl -T) {by_hand_median:7.3f} s: {by_hand_median / pack:.2f} times "
        f"the snapshot; the cold import takes {api / by_hand_median:.2f} times as long"
    )
    print(f"  warm sync            {warm_median * 1000:7.1f} ms median, {warm_p95 * 1000:.1f} ms p95  (target ≤ 50 ms)")
    report = {
        "corpus": args.corpus,
        "files": corpus.files,
        "runs": args.runs,
        **timings,
        "ratio": api / pack,
        "by_hand_over_snapshot": by_hand_median / pack,
        "import_over_by_hand": api / by_hand_median,
        "warm_median_ms": warm_median * 1000,
        "machine": machine.describe({"work": Path(tempfile.gettempdir())}),
    }
    out = write_results(RESULTS, "imports", report)
    print(f"  results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
