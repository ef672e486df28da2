"""`ahop gc` and `ahop verify`: maintenance of the whole store, run on a server host against the database and S3.

Both record a run (its report is also readable over the API), show progress on stderr, print the report on stdout
(a summary, or with --json the whole report), and exit 0 (all good), 1 (verify found problems), 2 (bad input),
3 (a service unavailable or the run failed) or 4 (another GC is running).
"""

from __future__ import annotations

import dataclasses
import getpass
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from ahop.console import echo_json, fail, load_settings
from ahop.exit_codes import EXIT_BAD_INPUT, EXIT_PROBLEMS, EXIT_UNAVAILABLE

if TYPE_CHECKING:
    from app.maintenance.start import Maintenance, RunResult, StartedRun


def _started_by() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()} (ahop command)"


def _run(start: Any, command: str, as_json: bool) -> RunResult:
    """Build maintenance from the settings, start the run with `start(maintenance)`, and run it with progress.

    Another GC holding the lock (exit 4) and other domain errors go up to `ahop.cli.main`, which maps them."""
    import asyncio

    from sqlalchemy.exc import DBAPIError

    from ahop.progress_display import TerminalProgress
    from app.db.engine import create_engine
    from app.maintenance.start import build_maintenance
    from app.settings import AppSettings
    from storage.blobstore import BlobStore

    settings = load_settings(AppSettings)

    async def run() -> RunResult:
        engine = create_engine(settings.database_url, pool_size=3)
        store = BlobStore(settings.s3_location())
        try:
            maintenance: Maintenance = build_maintenance(settings, engine, store)
            started: StartedRun = await start(maintenance)
            if as_json:
                return await started.execute(None)
            with TerminalProgress(command) as progress:
                return await started.execute(progress)
        finally:
            store.close()
            await engine.dispose()

    try:
        return asyncio.run(run())
    except (OSError, DBAPIError) as exc:
        fail(f"database unavailable: {exc}", EXIT_UNAVAILABLE)


def _finish(result: RunResult, as_json: bool, summary: list[str]) -> None:
    if as_json:
        echo_json(
            {
                "run_id": str(result.run_id),
                "status": result.status.value,
                "error": result.error,
                "report": result.report,
            }
        )
    else:
        for line in summary:
            click.echo(line)
    if result.error is not None:
        fail(f"run {result.run_id} failed: {result.error}", EXIT_UNAVAILABLE)


@click.command()
@click.option("--dry-run", is_flag=True, help="Report what would be deleted; change nothing.")
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=None,
    help="Seconds a blob must go unreferenced and untouched before it goes (default AHOP_GC_GRACE: 3600).",
)
@click.option("--wait", is_flag=True, help="Wait for a GC that is running to end, instead of exiting with 4.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
def gc(dry_run: bool, grace: float | None, wait: bool, as_json: bool) -> None:
    """Apply retention and delete blobs (and stray objects) that nothing references, online."""

    async def start(maintenance: Maintenance) -> StartedRun:
        return await maintenance.start_gc(dry_run=dry_run, grace=grace, wait=wait, started_by=_started_by())

    result = _run(start, "gc", as_json)
    _finish(result, as_json, _gc_summary(result) if result.error is None else _so_far(result, _gc_summary))


def _so_far(result: RunResult, summary: Callable[[RunResult], list[str]]) -> list[str]:
    """What a run that failed or was stopped had done, from the report it left."""
    so_far = result.report.get("so_far")
    if not so_far:
        return []
    return ["before it stopped:", *summary(dataclasses.replace(result, report=so_far))]


def _gc_summary(result: RunResult) -> list[str]:
    from rich.filesize import decimal

    report = result.report
    verb = "would delete" if report["dry_run"] else "deleted"
    orphans = report["orphans_found"] if report["dry_run"] else report["orphans_removed"]
    lines = [
        f"gc run {result.run_id}{' (dry run: nothing was changed)' if report['dry_run'] else ''}",
        f"  blobs examined: {report['blobs_examined']}, candidates: {report['candidates']} "
        f"({decimal(report['candidate_bytes'])})",
        f"  {verb}: {report['candidates'] if report['dry_run'] else report['deleted']} blobs, "
        f"{decimal(report['candidate_bytes'] if report['dry_run'] else report['bytes_freed'])}"
        + (f"; {report['kept_in_use']} kept (taken by an import or a task meanwhile)" if report["kept_in_use"] else ""),
        f"  objects without a row: {orphans} {verb.split()[-1] if report['dry_run'] else 'removed'} "
        f"({decimal(report['orphan_bytes'])})",
        f"  retention: {report['versions_pruned']} versions, {report['tasks_pruned']} finished tasks, "
        f"{report['runs_pruned']} run reports",
        f"  duration: {report['duration_seconds']:.2f} s (retention {report['retention_seconds']:.2f} s, "
        f"mark {report['mark_seconds']:.2f} s, sweep {report['sweep_seconds']:.2f} s, "
        f"orphans {report['orphans_seconds']:.2f} s)",
    ]
    if report["stale_uploads"]:
        lines.append(
            f"  multipart uploads never finished: {report['stale_uploads']}"
            f"{' found' if report['dry_run'] else ', aborted ' + str(report['uploads_aborted'])}"
        )
    if report["dry_run"]:
        lines += [f"  candidate {digest}" for digest in report["candidate_digests"]]
    return lines


@click.command()
@click.option("--digest", default=None, help="Verify only this blob (sha256:<64 hex>).")
@click.option("--sample", type=click.IntRange(min=1), default=None, help="Verify this many blobs chosen at random.")
@click.option("--all", "everything", is_flag=True, help="Verify every blob and list stray objects (the default).")
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=None,
    help="Seconds within which a row without object, or an object without row, is an import in flight "
    "(default AHOP_GC_GRACE: 3600).",
)
@click.option("--repair", is_flag=True, help="Pack a missing or damaged blob again from its recorded commit and path.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
def verify(
    digest: str | None, sample: int | None, everything: bool, grace: float | None, repair: bool, as_json: bool
) -> None:
    """Re-read blobs and check their compressed sha256, size and digest; exit 1 if any is not ok."""
    from storage.digest import Digest
    from storage.errors import InvalidDigest

    if sum((digest is not None, sample is not None, everything)) > 1:
        fail("give at most one of --digest, --sample and --all", EXIT_BAD_INPUT)
    try:
        parsed = Digest.parse(digest) if digest is not None else None
    except InvalidDigest as exc:
        fail(f"--digest: {exc}", EXIT_BAD_INPUT)

    async def start(maintenance: Maintenance) -> StartedRun:
        return await maintenance.start_verify(
            digest=parsed, sample=sample, grace=grace, repair=repair, started_by=_started_by()
        )

    result = _run(start, "verify", as_json)
    _finish(result, as_json, _verify_summary(result) if result.error is None else _so_far(result, _verify_summary))
    if not result.report.get("all_ok", False):
        sys.exit(EXIT_PROBLEMS)


def _verify_summary(result: RunResult) -> list[str]:
    from rich.filesize import decimal

    report = result.report
    lines = [
        f"verify run {result.run_id}: {report['examined']} blobs, {decimal(report['bytes_read'])} read in "
        f"{report['duration_seconds']:.2f} s ({report['megabytes_per_second']} MB/s)",
        f"  ok {report['ok']}, missing {report['missing']}, corrupt {report['corrupt']}, "
        f"size-mismatch {report['size_mismatch']}, objects without a row {report['orphans']}"
        + (f", in flight {report['in_flight']}" if report["in_flight"] else "")
        + (f", deleted by GC meanwhile {report['gone']}" if report["gone"] else ""),
    ]
    for problem in report["problems"]:
        lines.append(f"  {problem['outcome']}: {problem['detail'] or problem['digest']}")
        if "repaired" in problem:
            lines.append(f"    {'repaired' if problem['repaired'] else 'not repaired'}: {problem['repair']}")
    lines += [f"  object without a row: {digest}" for digest in report["orphan_digests"]]
    if report["repaired"]:
        lines.append(f"  repaired {report['repaired']}, could not repair {report['not_repaired']}")
    return lines
