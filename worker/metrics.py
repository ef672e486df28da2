"""A worker's Prometheus metrics, served on a small HTTP port of its own (`AHOP_WORKER_METRICS_PORT`).

The registry is the worker's own, never prometheus_client's global one. Cache hits and misses count the tasks that
found, or did not find, their template in the local store; downloads count every fetch from S3 (prefetches too).
The store's size is read when Prometheus scrapes, since several workers on one host may share the store. Runs on
target hosts count per host: how each ended, and whether the host's cache already held the content.
"""

from __future__ import annotations

import errno
import logging
import math
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from storage.errors import BlobNotFound, IntegrityError, StorageUnavailable
from worker.protocol import HOST_FINAL_STATUSES

if TYPE_CHECKING:
    from worker.store import StoreStats

log = logging.getLogger("ahop.worker")

UNPACK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Seconds: a small script directory unpacks in milliseconds, a 200 MB template in about a second."""
DOWNLOAD_RESULTS = ("ok", "missing", "corrupt", "unavailable", "error")
HOST_CONTENT_RESULTS = ("reused", "sent", "replaced")


def download_result(problem: BaseException | None) -> str:
    """The `result` label of a fetch that ended with `problem` (None: the entry was placed)."""
    if problem is None:
        return "ok"
    if isinstance(problem, BlobNotFound):
        return "missing"
    if isinstance(problem, IntegrityError):
        return "corrupt"
    if isinstance(problem, StorageUnavailable):
        return "unavailable"
    return "error"


class _StoreCollector(Collector):
    """The store's size, read at each scrape; NaN when it cannot be read (the scrape itself still answers)."""

    def __init__(self, size: Callable[[], StoreStats]) -> None:
        self.size = size

    def collect(self) -> Iterable[Metric]:
        try:
            size = self.size()
            figures = (float(size.bytes), float(size.entries))
        except OSError as exc:
            log.warning("metrics: cannot read the size of the local store: %s", exc)
            figures = (math.nan, math.nan)
        yield GaugeMetricFamily(
            "ahop_worker_cache_bytes", "Bytes of template content in the local store now.", value=figures[0]
        )
        yield GaugeMetricFamily(
            "ahop_worker_cache_entries", "Templates (digests) in the local store now.", value=figures[1]
        )


class WorkerMetrics:
    """The metrics of one worker process; the store and the attempts count into it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.cache_hits = Counter(
            "ahop_worker_cache_hits", "Tasks whose template was already in the local store.", registry=self.registry
        )
        self.cache_misses = Counter(
            "ahop_worker_cache_misses", "Tasks whose template was not in the local store.", registry=self.registry
        )
        self.downloads = Counter(
            "ahop_worker_downloads",
            "Blobs fetched from S3 by this worker, by how the fetch ended.",
            ["result"],
            registry=self.registry,
        )
        for result in DOWNLOAD_RESULTS:
            self.downloads.labels(result=result)
        self.download_bytes = Counter(
            "ahop_worker_download_bytes", "Compressed bytes downloaded from S3 by this worker.", registry=self.registry
        )
        self.unpack_seconds = Histogram(
            "ahop_worker_unpack_seconds",
            "Seconds to verify and unpack one downloaded blob.",
            buckets=UNPACK_BUCKETS,
            registry=self.registry,
        )
        self.host_runs = Counter(
            "ahop_worker_host_runs",
            "Runs of a template on a target host, by how each ended (success, failed, unreachable, timeout, "
            "cancelled).",
            ["status"],
            registry=self.registry,
        )
        for status in HOST_FINAL_STATUSES:
            self.host_runs.labels(status=status)
        self.host_content = Counter(
            "ahop_worker_host_content",
            "Template content checked in a target host's cache before a run: reused (intact there, nothing sent), "
            "sent (absent) or replaced (another sha256 there: tampered or damaged).",
            ["result"],
            registry=self.registry,
        )
        for result in HOST_CONTENT_RESULTS:
            self.host_content.labels(result=result)
        self.host_content_bytes = Counter(
            "ahop_worker_host_content_bytes",
            "Bytes of canonical tar sent to target hosts' caches.",
            registry=self.registry,
        )
        self.running_tasks = Gauge(
            "ahop_worker_running_tasks", "Tasks this worker runs now (fetch included).", registry=self.registry
        )

    def watch_store(self, size: Callable[[], StoreStats]) -> None:
        """Report the local store's size, read by `size` at each scrape."""
        self.registry.register(_StoreCollector(size))

    def watch_running(self, running: Callable[[], int]) -> None:
        """Report the number of running tasks, read by `running` at each scrape."""
        self.running_tasks.set_function(lambda: float(running()))


class MetricsServer:
    """prometheus_client's HTTP server (a daemon thread), stopped by `stop`."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self.server = server
        self.thread = thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()  # shutdown alone keeps the port
        self.thread.join()


def serve(metrics: WorkerMetrics, host: str, port: int) -> MetricsServer | None:
    """Serve `metrics` on host:port; None when the port is 0 (metrics off) or cannot be bound, which is logged once:
    a worker runs its tasks without metrics rather than not at all."""
    if port == 0:
        return None
    try:
        server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as exc:
        why = "is taken" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror or exc})"
        log.warning(
            "metrics port %s on %s %s: this worker runs without metrics. Give each worker on a host its own port "
            "(AHOP_WORKER_METRICS_PORT), or 0 to turn metrics off.",
            port,
            host,
            why,
        )
        return None
    log.info("metrics served on http://%s:%d/metrics", host, port)
    return MetricsServer(server, thread)
