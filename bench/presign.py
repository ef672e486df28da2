"""Presigned URLs for the command-line side of a benchmark: `curl` reaches the store with no credentials of its own."""

from __future__ import annotations

from collections.abc import Iterable

import boto3
from botocore.config import Config

from storage.blobstore import S3Location

VALID_FOR = 6 * 3600
"""Seconds; longer than any benchmark run."""


def presigned_urls(location: S3Location, method: str, keys: Iterable[str]) -> list[str]:
    """A URL for `method` ("get_object", "put_object") of each key in the location's bucket, signed with its
    endpoint and credentials."""
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=location.endpoint_url,
        aws_access_key_id=location.access_key_id,
        aws_secret_access_key=location.secret_access_key,
        config=Config(region_name=location.region, signature_version="s3v4", s3={"addressing_style": "path"}),
    )
    try:
        return [
            client.generate_presigned_url(method, Params={"Bucket": location.bucket, "Key": key}, ExpiresIn=VALID_FOR)
            for key in keys
        ]
    finally:
        client.close()
