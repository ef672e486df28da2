"""The S3 blob store: the only module that imports boto3 or botocore."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import boto3
import botocore.exceptions
from botocore.config import Config

from storage.errors import BucketNotFound, StorageUnavailable

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@dataclass(frozen=True)
class S3Location:
    """Where blobs live and how to reach them. Built by each entry point from its settings."""

    endpoint_url: str | None
    bucket: str
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    region: str = "us-east-1"
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    max_attempts: int = 3


def _client(location: S3Location) -> S3Client:
    config = Config(
        region_name=location.region,
        s3={"addressing_style": "path"},
        connect_timeout=location.connect_timeout,
        read_timeout=location.read_timeout,
        retries={"max_attempts": location.max_attempts, "mode": "standard"},
        # We verify content hashes ourselves; botocore's default checksums halve GET throughput.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=location.endpoint_url,
        aws_access_key_id=location.access_key_id,
        aws_secret_access_key=location.secret_access_key,
        config=config,
    )


class BlobStore:
    """Blob objects in one bucket of an S3-compatible store."""

    def __init__(self, location: S3Location) -> None:
        self.location = location
        self._s3 = _client(location)

    def _where(self) -> str:
        return f"bucket {self.location.bucket!r} at {self.location.endpoint_url or 'AWS S3'}"

    def check_bucket(self) -> None:
        """Raise unless the bucket exists and our credentials may use it."""
        try:
            self._s3.head_bucket(Bucket=self.location.bucket)
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise BucketNotFound(f"{self._where()} does not exist") from exc
            raise StorageUnavailable(f"{self._where()} refused the request ({code or exc})") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise StorageUnavailable(f"{self._where()} is unreachable: {exc}") from exc

    def ensure_bucket(self) -> bool:
        """Create the bucket if it is missing; return whether it was created."""
        try:
            self.check_bucket()
            return False
        except BucketNotFound:
            pass
        try:
            self._s3.create_bucket(Bucket=self.location.bucket)
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return False
            raise StorageUnavailable(f"could not create {self._where()} ({code or exc})") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise StorageUnavailable(f"{self._where()} is unreachable: {exc}") from exc
        return True
