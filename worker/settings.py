"""The worker's settings: read once from `AHOP_*` environment variables by `ahop worker`, then passed down."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from storage.blobstore import S3Location
from worker.protocol import DEFAULT_POOL


class WorkerSettings(BaseSettings):
    """What a worker host needs: Redis, read access to S3 and a directory of its own. No database."""

    model_config = SettingsConfigDict(env_prefix="AHOP_", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    s3_endpoint_url: str | None = None
    s3_bucket: str = "ahop"
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_region: str = "us-east-1"
    worker_root: Path = Path("/opt/ahop-worker")
    worker_pool: str = Field(default=DEFAULT_POOL, description="The pool (queue) this worker takes jobs from.")
    worker_max_jobs: int = Field(default=4, ge=1)
    worker_poll_delay: float = Field(default=0.05, gt=0, description="Seconds between queue polls.")

    def s3_location(self) -> S3Location:
        return S3Location(
            endpoint_url=self.s3_endpoint_url,
            bucket=self.s3_bucket,
            access_key_id=self.s3_access_key_id,
            secret_access_key=self.s3_secret_access_key.get_secret_value() if self.s3_secret_access_key else None,
            region=self.s3_region,
        )
