"""A plain boto3 client of a bucket's server: to look at or change objects behind the store's back, as an
operator's S3 tool (or a fault) would."""

from __future__ import annotations

import secrets
from typing import Any

import boto3
from botocore.config import Config

from app.devstack.stack import LocalStack
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


def fresh_bucket(stack: LocalStack, prefix: str = "t") -> S3Location:
    """A new, empty bucket on the session's S3 server (creating one takes about a second)."""
    bucket = f"{prefix}-{secrets.token_hex(6)}"
    stack.ensure_bucket(bucket)
    return stack.s3_location(bucket)
