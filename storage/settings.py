"""The S3 settings of every entry point: one set of fields, so the server and the worker read the same `AHOP_S3_*`.

A plain model that reads nothing itself: each entry point's settings class inherits these fields and reads them
from the environment with its own.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr

from storage.blobstore import S3Location


class S3Settings(BaseModel):
    """Where blobs live and how to reach them, as settings; `s3_location()` is what the blob store takes."""

    s3_endpoint_url: str | None = None
    s3_bucket: str = "ahop"
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_region: str = "us-east-1"
    s3_connect_timeout: float = Field(default=5.0, gt=0, description="Seconds to open a connection to S3.")
    s3_read_timeout: float = Field(
        default=20.0,
        gt=0,
        description="Seconds S3 may stay silent within one request or download (a stopped server) before it is "
        "tried again or fails: the API answers 503 (an import waits at most about attempts x this per request), "
        "a task fails saying so.",
    )
    s3_max_attempts: int = Field(default=3, ge=1, le=10, description="Tries of each S3 request, the first included.")

    def s3_location(self) -> S3Location:
        """The blob store's location from these settings."""
        return S3Location(
            endpoint_url=self.s3_endpoint_url,
            bucket=self.s3_bucket,
            access_key_id=self.s3_access_key_id,
            secret_access_key=self.s3_secret_access_key.get_secret_value() if self.s3_secret_access_key else None,
            region=self.s3_region,
            connect_timeout=self.s3_connect_timeout,
            read_timeout=self.s3_read_timeout,
            max_attempts=self.s3_max_attempts,
        )
