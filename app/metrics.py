"""The API's Prometheus metrics: what this process did (counters, a histogram), and store-wide figures read from the
database when Prometheus scrapes `GET /metrics`.

Each application has a registry of its own, never prometheus_client's global one, so several applications in one
process (tests, an embedding) keep separate counts. The counters and the dispatch histogram belong to one replica:
sum them over replicas. The database figures describe the whole store and are the same on every replica: take their
`max()` over replicas, never their `sum()`.

A scrape reads the database with a few aggregate queries bounded by `timeout`; when the database does not answer,
the scrape still succeeds with this process's own metrics and `ahop_metrics_database_up 0`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.models import Blob, MaintenanceRun, RunKind, RunStatus, Task, TaskStatus
from worker.protocol import HOST_FINAL_STATUSES

log = logging.getLogger("ahop.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4"
"""The Prometheus text format that `generate_latest` writes (every Prometheus version reads it); the response adds
`charset=utf-8`."""
DISPATCH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Seconds: a worker polling every 20 ms starts a task within tens of milliseconds; a busy pool within minutes."""
VERIFY_OUTCOMES = ("ok", "missing", "corrupt", "size-mismatch")
HOST_END_STATUSES = (*HOST_FINAL_STATUSES, "lost")
"""How a run on a target host ends: as its worker reported, or lost with its worker."""
UNVERIFIED = "unverified"
GC_REPORT_FIGURES = (
    ("duration_seconds", "ahop_gc_last_duration_seconds", "Seconds the last completed GC run took."),
    ("deleted", "ahop_gc_last_deleted_blobs", "Blobs the last completed GC run deleted."),
    ("bytes_freed", "ahop_gc_last_freed_bytes", "Compressed bytes of the blobs the last completed GC run deleted."),
    ("orphans_removed", "ahop_gc_last_orphans_removed", "Objects without a blob row that the last GC run removed."),
    ("orphan_bytes_freed", "ahop_gc_last_orphan_freed_bytes", "Bytes of the objects without a row it removed."),
)
"""(key of a GC run's report, metric name, help) of the figures reported from the last completed GC run."""


@dataclass(frozen=True)
class LastGc:
    """The last GC run that completed without `--dry-run`: when it finished, and its report's figures."""

    finished_at: datetime
    figures: dict[str, float]


@dataclass(frozen=True)
class StoreFigures:
    """What the database says about the whole store, read at scrape time."""

    blobs: dict[str, int] = field(default_factory=dict)
    """Blob rows by the outcome of their last verify (`UNVERIFIED` for never verified)."""
    stored_bytes: int = 0
    tar_bytes: int = 0
    tasks: dict[str, int] = field(default_factory=dict)
    runs: dict[tuple[str, str], int] = field(default_factory=dict)
    """Maintenance runs kept in the database, by (kind, status)."""
    last_gc: LastGc | None = None


async def read_figures(session: AsyncSession) -> StoreFigures:
    """The store-wide figures: three aggregate queries and a look-up of the latest GC run (maintenance runs are few:
    retention prunes them)."""
    outcome = func.coalesce(Blob.verify_outcome, UNVERIFIED)
    zst, tar = func.coalesce(func.sum(Blob.zst_size), 0), func.coalesce(func.sum(Blob.tar_size), 0)
    blob_rows = await session.execute(select(outcome, func.count(), zst, tar).group_by(outcome))
    blobs: dict[str, int] = {}
    stored_bytes = tar_bytes = 0
    for name, count, compressed, uncompressed in blob_rows:
        blobs[name] = count
        stored_bytes, tar_bytes = stored_bytes + int(compressed), tar_bytes + int(uncompressed)
    task_rows = await session.execute(select(Task.status, func.count()).group_by(Task.status))
    tasks = {status: count for status, count in task_rows}
    kind, status = MaintenanceRun.kind, MaintenanceRun.status
    run_rows = await session.execute(select(kind, status, func.count()).group_by(kind, status))
    runs = {(run_kind, run_status): count for run_kind, run_status, count in run_rows}
    return StoreFigures(blobs, stored_bytes, tar_bytes, tasks, runs, await _last_gc(session))


async def _last_gc(session: AsyncSession) -> LastGc | None:
    """A failed run's report is partial and a dry run frees nothing: neither tells what GC last did."""
    keys = [key for key, _, _ in GC_REPORT_FIGURES]
    row = (
        await session.execute(
            select(MaintenanceRun.finished_at, *(MaintenanceRun.report[key] for key in keys))
            .where(
                MaintenanceRun.kind == RunKind.GC.value,
                MaintenanceRun.status.in_([RunStatus.SUCCEEDED.value, RunStatus.PROBLEMS.value]),
                MaintenanceRun.finished_at.is_not(None),
                ~MaintenanceRun.options.contains({"dry_run": True}),
            )
            .order_by(MaintenanceRun.finished_at.desc())
            .limit(1)
        )
    ).first()
    if row is None:
        return None
    finished_at, *values = row
    figures = {
        key: float(value)
        for key, value in zip(keys, values, strict=True)
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    return LastGc(finished_at, figures)


def figure_families(figures: StoreFigures | None) -> Iterator[Metric]:
    """The metric families of the database figures; only `ahop_metrics_database_up 0` when they could not be read."""
    up = GaugeMetricFamily("ahop_metrics_database_up", "Whether this scrape could read the figures from the database.")
    up.add_metric([], 0 if figures is None else 1)
    yield up
    if figures is None:
        return
    blobs = GaugeMetricFamily(
        "ahop_blobs",
        "Blobs in the store, by the outcome of their last verify; sum() for the total.",
        labels=["verify_outcome"],
    )
    for outcome in (*VERIFY_OUTCOMES, UNVERIFIED, *sorted(set(figures.blobs) - {*VERIFY_OUTCOMES, UNVERIFIED})):
        blobs.add_metric([outcome], figures.blobs.get(outcome, 0))
    yield blobs
    yield GaugeMetricFamily(
        "ahop_blobs_stored_bytes",
        "Compressed bytes of all blobs: what the object store holds.",
        value=figures.stored_bytes,
    )
    yield GaugeMetricFamily(
        "ahop_blobs_tar_bytes", "Uncompressed (canonical tar) bytes of all blobs.", value=figures.tar_bytes
    )
    tasks = GaugeMetricFamily("ahop_tasks", "Tasks kept in the database, by status, of all tenants.", labels=["status"])
    known = [status.value for status in TaskStatus]
    for status in (*known, *sorted(set(figures.tasks) - set(known))):
        tasks.add_metric([status], figures.tasks.get(status, 0))
    yield tasks
    runs = GaugeMetricFamily(
        "ahop_maintenance_runs",
        "GC and verify runs kept in the database, by kind and status.",
        labels=["kind", "status"],
    )
    pairs = {(kind.value, status.value) for kind in RunKind for status in RunStatus} | set(figures.runs)
    for kind, status in sorted(pairs):
        runs.add_metric([kind, status], figures.runs.get((kind, status), 0))
    yield runs
    if figures.last_gc is not None:
        yield GaugeMetricFamily(
            "ahop_gc_last_completed_timestamp_seconds",
            "Unix time at which the last GC run that completed (not a dry run) finished.",
            value=figures.last_gc.finished_at.timestamp(),
        )
        for key, name, documentation in GC_REPORT_FIGURES:
            if key in figures.last_gc.figures:
                yield GaugeMetricFamily(name, documentation, value=figures.last_gc.figures[key])


class _Scrape(Collector):
    """One scrape's view: the registry's metrics followed by figures already read."""

    def __init__(self, registry: CollectorRegistry, figures: Iterable[Metric]) -> None:
        self.registry = registry
        self.figures = figures

    def collect(self) -> Iterable[Metric]:
        yield from self.registry.collect()
        yield from self.figures


def _figure(figures: Callable[[], dict[str, int]], name: str) -> float:
    return figures()[name]


class ApiMetrics:
    """The metrics of one application: counted by the import service and the event consumer, exposed by
    `GET /metrics`. `timeout` bounds the database part of a scrape, in seconds."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        timeout: float,
        git_load: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        self.session_factory = session_factory
        self.timeout = timeout
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.imports = Counter(
            "ahop_imports",
            "Template versions imported by this process, by whether the content was packed or the "
            "tree → digest cache already knew it.",
            ["result"],
            registry=self.registry,
        )
        for result in ("packed", "cached"):
            self.imports.labels(result=result)
        self.dedup = Counter(
            "ahop_import_dedup",
            "Imports by this process that packed content whose blob the object store already "
            "held: nothing was uploaded.",
            registry=self.registry,
        )
        self.dispatch = Histogram(
            "ahop_task_dispatch_seconds",
            "Seconds from a task's creation to the start of its first attempt on a "
            "worker, for the starts that this process recorded.",
            buckets=DISPATCH_BUCKETS,
            registry=self.registry,
        )
        self.host_runs = Counter(
            "ahop_host_runs",
            "Runs on target hosts that ended, as this process recorded their end, by the host's status.",
            ["status"],
            registry=self.registry,
        )
        for status in HOST_END_STATUSES:
            self.host_runs.labels(status=status)
        if git_load is not None:
            git_work = Gauge(
                "ahop_git_work",
                "Git work of this process now: waiting for a mirror's lock, waiting for a slot of the "
                "git pool (or of its tenant), running.",
                ["state"],
                registry=self.registry,
            )
            for state in git_load():
                git_work.labels(state=state).set_function(functools.partial(_figure, git_load, state))
        self._failing: str | None = None

    def imported(self, *, packed: bool) -> None:
        """A template version was committed; `packed` False when the tree → digest cache answered."""
        self.imports.labels(result="packed" if packed else "cached").inc()

    def deduplicated(self) -> None:
        """Packed content turned out to be stored already."""
        self.dedup.inc()

    def dispatched(self, seconds: float) -> None:
        """A first attempt started `seconds` after its task was created (never negative: clocks may disagree)."""
        self.dispatch.observe(max(0.0, seconds))

    def host_runs_ended(self, status: str, count: int = 1) -> None:
        """`count` runs on target hosts ended with `status`."""
        if count:
            self.host_runs.labels(status=status).inc(count)

    async def exposition(self) -> bytes:
        """The text that `GET /metrics` answers."""
        figures: StoreFigures | None = None
        try:
            figures = await asyncio.wait_for(self._read(), self.timeout)
        except (TimeoutError, OSError, SQLAlchemyError) as exc:
            problem = f"{type(exc).__name__}: {exc}" if str(exc) else f"no answer within {self.timeout:g}s"
            if problem != self._failing:  # once per kind of failure, not once per scrape
                log.warning("metrics: cannot read the database figures, scrapes answer without them: %s", problem)
            self._failing = problem
        else:
            if self._failing is not None:
                log.info("metrics: the database figures can be read again")
            self._failing = None
        return generate_latest(_Scrape(self.registry, list(figure_families(figures))))

    async def _read(self) -> StoreFigures:
        async with self.session_factory() as session, session.begin():
            return await read_figures(session)
