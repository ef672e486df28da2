"""The worker's settings: read once from `AHOP_*` environment variables by `ahop worker`, then passed down."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from storage.settings import S3Settings
from worker.job_secrets import SealSettings
from worker.protocol import DEFAULT_POOL
from worker.runner import DEFAULT_PATH


class WorkerSettings(S3Settings, SealSettings, BaseSettings):
    """What a worker host needs: Redis, read access to S3 and a directory of its own. No database."""

    model_config = SettingsConfigDict(env_prefix="AHOP_", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    worker_root: Path = Path("/opt/ahop-worker")
    worker_id: str | None = Field(default=None, description="This worker's name; default <host>-<pid>.")
    worker_pool: str = Field(default=DEFAULT_POOL, description="The pool (queue) this worker takes jobs from.")
    worker_max_jobs: int = Field(default=4, ge=1, description="Tasks this worker runs at once.")
    worker_poll_delay: float = Field(default=0.02, gt=0, description="Seconds between queue polls.")
    worker_cache_max_bytes: int | None = Field(
        default=None, gt=0, description="Cap of the local store; least recently used entries go first."
    )
    worker_heartbeat_interval: float = Field(default=5.0, gt=0, description="Seconds between heartbeats.")
    worker_kill_grace: float = Field(default=10.0, ge=0, description="Seconds between SIGTERM and SIGKILL.")
    worker_cancel_poll: float = Field(default=0.2, gt=0, description="Seconds between checks for a cancel.")
    worker_connect_timeout: float = Field(
        default=30.0, gt=0, description="Seconds a login to one target host may take before the host is unreachable."
    )
    worker_shutdown_grace: float = Field(
        default=60.0, ge=0, description="On SIGTERM, seconds running tasks get to finish before they are killed."
    )
    worker_script_path: str = Field(
        default=DEFAULT_PATH, description="PATH of scripts, and where their interpreters (bash, python3, …) are found."
    )
    worker_run_as: str | None = Field(default=None, description="User that scripts run as (the worker must be root).")
    worker_metrics_port: int = Field(
        default=9464,
        ge=0,
        le=65535,
        description="Port of the Prometheus metrics (GET /metrics); 0 turns them off. One port per worker on a host.",
    )
    worker_metrics_host: str = Field(default="0.0.0.0", description="Address the metrics port listens on.")  # noqa: S104

    def resolved_worker_id(self) -> str:
        return self.worker_id or f"{socket.gethostname()}-{os.getpid()}"
