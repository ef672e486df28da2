"""Wire conventions shared by every resource: pages of items, ISO 8601 UTC timestamps."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Generic, TypeVar

from litestar.params import QueryParameter
from pydantic import BaseModel, field_serializer

ItemT = TypeVar("ItemT")


class Page(BaseModel, Generic[ItemT]):
    items: list[ItemT]
    total: int
    page: int
    page_size: int


PageNumber = Annotated[int, QueryParameter(ge=1)]
PageSize = Annotated[int, QueryParameter(ge=1, le=500)]


class Timestamped(BaseModel):
    """Timestamps go out as ISO 8601 in UTC with a `Z`, whatever the database's session time zone."""

    @field_serializer("*", when_used="json")
    def _utc(self, value: object) -> object:
        if isinstance(value, datetime):
            return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
        return value
