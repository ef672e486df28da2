"""The API as its tests hold it: the application in-process behind Litestar's test client."""

from __future__ import annotations

from typing import Any

from litestar import Litestar
from litestar.testing import AsyncTestClient

Client = AsyncTestClient[Litestar]


def errors(response: Any) -> dict[str, str]:
    """A 422's fields and their messages."""
    assert response.status_code == 422, response.text
    return {item["field"]: item["message"] for item in response.json()["extra"]["errors"]}
