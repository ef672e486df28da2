"""The API as its tests hold it: the application in-process behind Litestar's test client."""

from __future__ import annotations

from typing import Any

from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.db.models import Role
from tests.support.tenants import Caller

Client = AsyncTestClient[Litestar]


def errors(response: Any) -> dict[str, str]:
    """A 422's fields and their messages."""
    assert response.status_code == 422, response.text
    return {item["field"]: item["message"] for item in response.json()["extra"]["errors"]}


async def add_as_the_only_writer(
    client: Client, collection: str, body: dict[str, Any], change: dict[str, Any], owner: Caller, other: Caller
) -> dict[str, Any]:
    """Adds `body` to `collection` as `owner`'s admin, after checking that its viewers and operators may not, and
    that `other` tenant's admin can then neither read, change (with `change`) nor delete what was added: to another
    tenant it does not exist. Answers what was added."""
    for role in (Role.VIEWER, Role.OPERATOR):
        assert (await client.post(collection, json=body, headers=owner[role])).status_code == 403
    answer = await client.post(collection, json=body, headers=owner[Role.ADMIN])
    assert answer.status_code == 201, answer.text
    added = dict(answer.json())
    url = f"{collection}/{added['id']}"
    assert (await client.get(url, headers=other[Role.ADMIN])).status_code == 404
    assert (await client.put(url, json=change, headers=other[Role.ADMIN])).status_code == 404
    assert (await client.delete(url, headers=other[Role.ADMIN])).status_code == 404
    return added
