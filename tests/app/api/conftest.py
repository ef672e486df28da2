"""Fixtures of the API tests: a tenant's template to aim requests at, and no task left for a later test to pick up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.api import Client
from tests.support.task_fixtures import cancel_unfinished_tasks  # noqa: F401  (autouse: every API test)
from tests.support.templates import import_template
from tests.support.tenants import Caller


@pytest.fixture
async def template(client: Client, alice: Caller, origin: Path) -> dict[str, Any]:
    """A template of alice's with a text and a multiselect parameter."""
    parameters: list[dict[str, Any]] = [
        {"name": "note", "type": "text"},
        {"name": "tags", "type": "multiselect", "options": ["a", "b"]},
    ]
    return await import_template(client, alice, origin, code="guarded", parameters=parameters)
