"""The object key layout of the bucket, in one place.

    blobs/sha256/<first two hex>/<64 hex>.tar.zst

The two-character fan-out keeps listings and per-prefix request rates spread on stores that partition by prefix.
Nothing else in the bucket is ours: a listing of `BLOB_PREFIX` is the complete set of blobs.
"""

from __future__ import annotations

import re

from storage.digest import Digest

BLOB_PREFIX = "blobs/sha256/"
BLOB_SUFFIX = ".tar.zst"
_KEY = re.compile(r"blobs/sha256/([0-9a-f]{2})/([0-9a-f]{64})\.tar\.zst")


def blob_key(digest: Digest) -> str:
    """The object key of the blob holding `digest`."""
    return f"{BLOB_PREFIX}{digest.hex[:2]}/{digest.hex}{BLOB_SUFFIX}"


def digest_from_key(key: str) -> Digest | None:
    """The digest a blob key names, or None for a key outside the layout."""
    match = _KEY.fullmatch(key)
    if match is None or not match.group(2).startswith(match.group(1)):
        return None
    return Digest(match.group(2))
