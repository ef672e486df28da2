"""The server's settings: read once from `AHOP_*` environment variables by an entry point, then passed down."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.db.engine import asyncpg_url
from app.git.mirror import GitOptions
from storage.settings import S3Settings
from worker.job_secrets import SealSettings


class AppSettings(S3Settings, SealSettings, BaseSettings):
    """Everything the API server and its commands need to know about their surroundings."""

    model_config = SettingsConfigDict(env_prefix="AHOP_", extra="ignore")

    database_url: str = Field(
        default="postgresql+asyncpg://postgres@127.0.0.1:5432/ahop",
        description="PostgreSQL URL; postgresql:// is accepted and driven by asyncpg.",
    )
    redis_url: str = "redis://127.0.0.1:6379/0"
    data_dir: Path = Path("/var/lib/ahop")
    host: str = "127.0.0.1"
    port: int = 8000
    health_timeout: float = Field(default=2.0, gt=0, description="Seconds each readiness probe may take.")
    git_allowed_schemes: str = Field(default="https,ssh", description="Comma-separated URL schemes; add file locally.")
    git_file_roots: str = Field(
        default="",
        description="Comma- or colon-separated absolute paths under which local (file) repositories may lie; "
        "never the data dir, even inside a root.",
    )
    git_timeout: float = Field(default=120.0, gt=0, description="Seconds any one git command may take.")
    git_pool_size: int = Field(
        default=4, ge=1, le=256, description="Pieces of git work (fetch, ls-remote, scan, pack) the API runs at once."
    )
    git_tenant_limit: int = Field(
        default=2, ge=1, description="Of those, how many one tenant may run at once; its others wait for a slot."
    )
    # Under `ahop dev`'s 20 s wait for its API, and the 30 s a Kubernetes pod gets by default.
    shutdown_timeout: int = Field(
        default=15,
        ge=1,
        description="Seconds `ahop serve` lets requests finish after SIGTERM; then it stops them "
        "and kills their git commands.",
    )
    git_known_hosts: Path | None = Field(default=None, description="known_hosts for ssh remotes; others refused.")
    secret_keys: SecretStr | None = Field(default=None, description="Comma-separated Fernet keys; the first encrypts.")
    max_template_bytes: int = Field(default=256 << 20, gt=0, description="Largest template, in tar bytes.")
    max_template_files: int = Field(default=20_000, gt=0, description="Most files in one template.")
    # A dead worker's running task is lost at most heartbeat_timeout + control_interval (to notice) + lost_grace +
    # control_interval (to mark it) after the worker's last heartbeat: 15 + 2 + 10 + 2 = 29 s by default. The
    # timeout is three missed heartbeats (workers beat every 5 s); the grace is twice that interval, within which
    # every live worker beats again after Redis restarted or lost its data.
    heartbeat_timeout: float = Field(
        default=15.0,
        gt=0,
        description="Seconds without a heartbeat before a worker counts as dead and its running tasks as lost.",
    )
    lost_grace: float = Field(
        default=10.0,
        ge=0,
        description="Seconds a running task must keep looking lost to a server before it is marked lost "
        "(rides out a Redis restart or data loss, after which workers beat again).",
    )
    worker_forget_after: float = Field(
        default=86_400.0, gt=0, description="Seconds after its last heartbeat that a dead worker leaves the list."
    )
    prefetch_on_import: bool = Field(
        default=False, description="Ask the live workers of a template's pool to prefetch each newly imported content."
    )
    control_loop: bool = Field(
        default=True, description="Run the control loop (event consumer, reconciler, reaper) in this server process."
    )
    control_interval: float = Field(
        default=2.0, gt=0, description="Seconds between the control loop's passes (reconciler, reaper)."
    )
    task_log_limit: int = Field(default=10_000, gt=0, description="Output lines kept per task attempt (the newest).")
    requeue_after: float = Field(
        default=30.0, gt=0, description="Seconds a queued task's job may be gone from Redis before it is sent again."
    )
    event_claim_after: float = Field(
        default=60.0,
        gt=0,
        description="Seconds a worker event may stay unrecorded by a server (that died) before another takes it.",
    )
    redis_timeout: float = Field(default=5.0, gt=0, description="Seconds one Redis command of tasks may take.")
    keep_versions: int = Field(
        default=10, ge=1, description="Versions kept per template (besides the current one); GC frees older ones."
    )
    task_retention_days: float = Field(
        default=30.0, gt=0, description="Days finished tasks, their output and maintenance reports are kept."
    )
    gc_grace: float = Field(
        default=3600.0,
        ge=0,
        description="Seconds a blob must go unreferenced and untouched (an object: unlisted by any row) before GC "
        "deletes it; covers imports in flight.",
    )
    verify_concurrency: int = Field(default=4, ge=1, le=64, description="Blobs one verify run checks at once.")

    @field_validator("database_url")
    @classmethod
    def _use_asyncpg(cls, url: str) -> str:
        return asyncpg_url(url)

    @field_validator("git_file_roots")
    @classmethod
    def _absolute_roots(cls, roots: str) -> str:
        for root in _split_roots(roots):
            if not root.startswith("/"):
                raise ValueError(f"AHOP_GIT_FILE_ROOTS: {root!r} is not an absolute path")
        return roots

    def file_roots(self) -> tuple[Path, ...]:
        """The roots that local repositories may lie under."""
        return tuple(Path(root) for root in _split_roots(self.git_file_roots))

    def git_options(self) -> GitOptions:
        """How the server runs git: time limit, known hosts, allowed schemes, local roots and its pool."""
        return GitOptions(
            self.git_timeout,
            self.git_known_hosts,
            self.allowed_schemes(),
            self.file_roots(),
            pool_size=self.git_pool_size,
            tenant_limit=self.git_tenant_limit,
        )

    def allowed_schemes(self) -> frozenset[str]:
        return frozenset(s.strip().lower() for s in self.git_allowed_schemes.split(",") if s.strip())

    def secret_key_list(self) -> list[str]:
        raw = self.secret_keys.get_secret_value() if self.secret_keys else ""
        return [key.strip() for key in raw.split(",") if key.strip()]


def _split_roots(roots: str) -> list[str]:
    return [root.strip() for root in roots.replace(":", ",").split(",") if root.strip()]
