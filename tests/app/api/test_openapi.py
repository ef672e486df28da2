"""The OpenAPI document declares the bearer scheme, and every status an operation answers, with the real error body."""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path
from typing import Any

import httpx
from litestar.testing import AsyncTestClient

from app.api.openapi import RAISES
from app.db.models import Role
from app.main import create_app
from app.settings import AppSettings
from tests.support.api import Client
from tests.support.tenants import Caller

METHODS = ("get", "put", "post", "delete", "patch")


async def _document(client: Client) -> dict[str, Any]:
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    return dict(response.json())


def _operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    }


async def test_the_bearer_scheme_is_declared_and_every_token_operation_requires_it(client: Client) -> None:
    document = await _document(client)

    assert document["components"]["securitySchemes"]["bearer"]["type"] == "http"
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for (method, path), operation in _operations(document).items():
        expected: list[dict[str, list[str]]] | None = [{"bearer": []}] if path.startswith("/api/v1/") else None
        assert operation.get("security") == expected, (method, path)


async def test_every_token_operation_documents_its_errors_with_the_error_body(client: Client) -> None:
    document = await _document(client)
    error = document["components"]["schemas"]["Error"]
    assert error["required"] == ["status_code", "detail"]
    problem = error["properties"]["extra"]["properties"]["errors"]["items"]
    assert set(problem["properties"]) == {"field", "message"}
    assert "count" in error["properties"]["extra"]["properties"]

    for (method, path), operation in _operations(document).items():
        if not path.startswith("/api/v1/"):
            continue
        statuses = set(operation["responses"])
        assert {"401", "422", "503"} <= statuses, (method, path, statuses)
        assert "400" not in statuses or "requestBody" in operation, (method, path)  # validation answers 422
        if "{" in path:
            assert "404" in statuses, (method, path)
        if "requestBody" in operation:
            assert {"400", "413"} <= statuses, (method, path)
        for status, answer in operation["responses"].items():
            if int(status) >= 400:
                schema = answer["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}, (method, path, status)


async def test_the_table_of_raised_statuses_names_exactly_the_operations_of_the_api(client: Client) -> None:
    assert set(RAISES) == set(_operations(await _document(client)))


def _operation_of(document: dict[str, Any], method: str, url: str) -> dict[str, Any]:
    """The documented operation that `method url` reached, found by matching the document's path templates."""
    path = url.split("?")[0]
    for template, item in document["paths"].items():
        if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), path) and method.lower() in item:
            return dict(item[method.lower()])
    raise AssertionError(f"{method} {path} is in no documented path")


def _check_documented(document: dict[str, Any], method: str, url: str, response: httpx.Response) -> None:
    operation = _operation_of(document, method, url)
    assert str(response.status_code) in operation["responses"], (method, url, response.status_code, response.text)
    if response.status_code >= 400:
        answer = response.json()
        assert isinstance(answer["status_code"], int)
        assert isinstance(answer["detail"], str)
        for problem in answer.get("extra", {}).get("errors", []):
            assert isinstance(problem["field"], str)
            assert isinstance(problem["message"], str)


async def test_every_status_the_api_answers_here_is_documented_for_its_operation(
    client: Client, alice: Caller, origin: Path
) -> None:
    document = await _document(client)
    repository = {"name": "ops", "url": str(origin)}
    viewer, operator, admin = alice[Role.VIEWER], alice[Role.OPERATOR], alice[Role.ADMIN]
    created = await client.post("/api/v1/git-repositories", json=repository, headers=admin)
    repository_id = created.json()["id"]
    again = await client.post("/api/v1/git-repositories", json=repository, headers=admin)
    assert again.status_code == 409, again.text
    _check_documented(document, "POST", "/api/v1/git-repositories", again)
    await asyncio.to_thread(origin.rename, origin.with_name("moved-away"))  # its syncs fail at the remote now: 502
    requests: list[tuple[str, str, dict[str, Any], int]] = [
        ("GET", "/api/v1/tasks", {}, 401),
        ("POST", "/api/v1/git-repositories", {"json": repository, "headers": viewer}, 403),
        ("POST", "/api/v1/git-repositories", {"json": {**repository, "name": "gone"}, "headers": admin}, 422),
        ("GET", "/api/v1/task-templates/987654321", {"headers": viewer}, 404),
        ("POST", "/api/v1/tasks", {"json": {"template_id": 987654321}, "headers": operator}, 404),
        ("POST", "/api/v1/tasks", {"json": {"template_id": "one"}, "headers": operator}, 422),
        ("GET", "/api/v1/artifacts/sha256:nothex", {"headers": viewer}, 422),
        ("POST", "/api/v1/tasks", {"content": b"{not json", "headers": operator}, 400),
        ("POST", "/api/v1/tasks", {"content": b" " * 11_000_000, "headers": operator}, 413),
        ("POST", f"/api/v1/git-repositories/{repository_id}/sync", {"headers": operator}, 502),
        ("GET", "/api/v1/admin/runs", {"headers": admin}, 403),
    ]
    for method, url, options, expected in requests:
        headers = {"Content-Type": "application/json", **options.pop("headers", {})}
        response = await client.request(method, url, headers=headers, **options)
        assert response.status_code == expected, (method, url, response.text[:500])
        _check_documented(document, method, url, response)


async def test_an_unavailable_service_answers_a_documented_503(api_settings: AppSettings, alice: Caller) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    settings = api_settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{closed}/0", "control_loop": False})
    async with AsyncTestClient(create_app(settings)) as client:
        document = await _document(client)
        response = await client.get("/api/v1/workers", headers=alice[Role.VIEWER])
    assert response.status_code == 503
    _check_documented(document, "GET", "/api/v1/workers", response)
