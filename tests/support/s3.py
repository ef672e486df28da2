"""A plain boto3 client of a bucket's server: to look at or change objects behind the store's back, as an
operator's S3 tool (or a fault) would."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

from storage.blobstore import S3Location


def s3_client(location: S3Location, **config: Any) -> Any:
    """A boto3 S3 client of the location's server and credentials; `config` as botocore's `Config` takes it."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=location.endpoint_url,
        aws_access_key_id=location.access_key_id,
        aws_secret_access_key=location.secret_access_key,
        region_name=location.region,
        config=Config(**config),
    )
