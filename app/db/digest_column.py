"""The SQL type of every digest column: a `Digest` in Python, its 64 lowercase hex characters in the row.

The rows keep the bare hex that the migrations' check constraints require (`sha256:` is implied); code above the
database only ever sees a validated `Digest`, so the textual form is written in one place (`str(digest)`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import String
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from storage.digest import Digest


class DigestColumn(TypeDecorator[Digest]):
    """`String(64)` holding `Digest.hex`; binds accept only a `Digest`, so a stray string fails loudly, not silently."""

    impl = String(64)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        if not isinstance(value, Digest):
            raise TypeError(f"a digest column takes a Digest, got {type(value).__name__} {value!r}")
        return value.hex

    def process_result_value(self, value: Any, dialect: Dialect) -> Digest | None:
        return None if value is None else Digest(value)
