"""Wire conventions shared by every resource: pages of items, ISO 8601 UTC timestamps, and integer bounds.

Every integer a request gives is bounded by what the column it is compared with or stored in can hold, so a number
beyond it is refused with a 422 naming the field and the range instead of failing in PostgreSQL: ids of
repositories and templates are `bigint` (`RowId`, `IdPath`, `IdQuery`), version numbers and counts `integer`
(`VersionNumber`). Page numbers stop at the `integer` range too, which keeps their offset inside `bigint`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Generic, Self, TypeVar

from litestar.params import PathParameter, QueryParameter
from pydantic import BaseModel, Field, field_serializer

ItemT = TypeVar("ItemT")
ModelT = TypeVar("ModelT", bound=BaseModel)


class Page(BaseModel, Generic[ItemT]):
    items: list[ItemT]
    total: int
    page: int
    page_size: int


INT4_MAX = 2**31 - 1
"""The largest value of a PostgreSQL `integer` column."""
INT8_MAX = 2**63 - 1
"""The largest value of a PostgreSQL `bigint` column."""

RowId = Annotated[int, Field(ge=1, le=INT8_MAX)]
"""A body field naming a row by its `bigint` id."""
VersionNumber = Annotated[int, Field(ge=1, le=INT4_MAX)]
"""A body field naming a template version by its number (an `integer`)."""
IdPath = Annotated[int, PathParameter(ge=1, le=INT8_MAX)]
"""A path segment naming a row by its `bigint` id."""
IdQuery = Annotated[int | None, QueryParameter(ge=1, le=INT8_MAX)]
"""An optional query parameter naming a row by its `bigint` id."""

PageNumber = Annotated[int, QueryParameter(ge=1, le=INT4_MAX)]
PageSize = Annotated[int, QueryParameter(ge=1, le=500)]


class Timestamped(BaseModel):
    """Timestamps go out as ISO 8601 in UTC with a `Z`, whatever the database's session time zone."""

    @field_serializer("*", when_used="json")
    def _utc(self, value: object) -> object:
        if isinstance(value, datetime):
            return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
        return value


def read_fields(model: type[ModelT], source: object, **given: object) -> ModelT:
    """`model` with each field read off `source`'s attribute of the same name, but for the fields `given`.

    An answer mostly repeats a row or a record; naming only what it renames, computes or adds keeps the two from
    drifting apart field by field. Nested answers are read off attributes too.
    """
    read = {name: getattr(source, name) for name in model.model_fields if name not in given}
    return model.model_validate({**read, **given}, from_attributes=True)


class RowOut(Timestamped):
    """An answer that is one database row: each field is the row's column of the same name."""

    @classmethod
    def of(cls, row: object) -> Self:
        return read_fields(cls, row)
