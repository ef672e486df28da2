"""Property-based: no request the OpenAPI document allows, or nearly allows, gets a server error.

Schemathesis reads the application's own `/schema/openapi.json` and, for every operation, sends requests built
from it (valid ones and ones that break it: wrong types, out-of-range numbers, odd strings) to a real uvicorn
serving the real application over the session's PostgreSQL, Redis and S3, with an admin token of a tenant that
holds a repository and an imported template. Each answer must not be a 5xx (but for a 502 that reports a Git
remote's failure) and must have a status the document lists for the operation. The examples per operation are
bounded and shrinking is off, so the whole run takes about a minute; a failure names the operation and the exact
request to reproduce it.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import hypothesis
import schemathesis
import uvicorn
from hypothesis import HealthCheck, Phase
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import status_code_conformance

from app.db.models import Role
from app.main import create_app
from app.settings import AppSettings
from tests.support.tenants import Caller
from tests.support.waiting import until

EXAMPLES_PER_OPERATION = 25
"""Per operation and generation mode (valid, invalid): enough to reach every field, bounded for a 2-core machine."""
UPSTREAM_FAILED = 502
"""What the API answers when a Git remote that the request names fails (`app.errors.Upstream`): the remote's
error, reported as such, not one of the server's own. Generated repositories have URLs like "0", so imports, syncs
and scans of them meet it."""


@dataclass(frozen=True)
class Served:
    url: str
    openapi: dict[str, Any]


@asynccontextmanager
async def serving(settings: AppSettings) -> AsyncIterator[Served]:
    """The application on a real uvicorn on a free port of 127.0.0.1, stopped (and waited for) at the end."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    host, port = listener.getsockname()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning", lifespan="on"))
    serve = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        await until(lambda: _started(server, serve), "uvicorn to start")
        url = f"http://{host}:{port}"
        openapi = await asyncio.to_thread(_openapi, url)
        yield Served(url, openapi)
    finally:
        server.should_exit = True
        await serve
        listener.close()


async def _started(server: uvicorn.Server, serve: asyncio.Task[None]) -> bool:
    if serve.done():
        serve.result()  # a server that could not start says why
    return server.started


def _openapi(url: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/schema/openapi.json", timeout=30)
    response.raise_for_status()
    return dict(response.json())


@dataclass
class Findings:
    server_errors: list[str] = field(default_factory=list)
    """Per operation and generation mode, the first request answered with a 5xx, with its reproduction."""
    undocumented: set[str] = field(default_factory=set)
    """`METHOD /path: status` for every status an operation answered that its document does not list."""


def fuzz(served: Served, headers: dict[str, str]) -> Findings:
    """Generated requests for every operation, valid and invalid ones, against the served application."""
    schema = schemathesis.openapi.from_dict(served.openapi)
    findings = Findings()
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"schemathesis cannot read an operation of the document: {result.err()}"
        operation = result.ok()
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            try:
                _run(operation.as_strategy(generation_mode=mode), served.url, headers, findings.undocumented)
            except FailureGroup as exc:
                findings.server_errors.append(f"{operation.label} ({mode.value}): {exc}")
            except hypothesis.errors.Unsatisfiable:
                if mode.is_positive:
                    raise
                # An operation without parameters or body has no request that breaks its schema.
    return findings


def _run(strategy: Any, url: str, headers: dict[str, str], undocumented: set[str]) -> None:
    @hypothesis.settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: the first failing request is reported as it is
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(case=strategy)
    def check(case: schemathesis.Case[Any]) -> None:
        response = case.call(base_url=url, headers=headers, timeout=30)
        if response.status_code != UPSTREAM_FAILED:
            case.validate_response(response, checks=[not_a_server_error], headers=headers)  # stops at the first 5xx
        try:
            case.validate_response(response, checks=[status_code_conformance], headers=headers)
        except FailureGroup:  # recorded and reported at the end; generation goes on to look for server errors
            undocumented.add(f"{case.operation.label}: {response.status_code}")

    check()


async def test_no_request_gets_a_server_error_or_an_undocumented_status(
    api_settings: AppSettings, alice: Caller, template: dict[str, Any]
) -> None:
    del template  # alice holds a repository and a template, so generated ids can find real rows
    async with serving(api_settings) as served:
        findings = await asyncio.to_thread(fuzz, served, alice[Role.ADMIN])
    assert not findings.server_errors, "\n\n".join(findings.server_errors)
    assert not findings.undocumented, "statuses the OpenAPI document does not list:\n" + "\n".join(
        sorted(findings.undocumented)
    )
