"""What the OpenAPI document says beyond the handlers' signatures: the bearer scheme and every error answered.

`document_answers(app)` completes the document Litestar builds from the handlers. Every operation that takes a
token gets `security: [{bearer: []}]` (DESIGN §7), and every operation lists the statuses it can answer besides its
success, each with the one error body `Error` that `app.api.errors` writes. Which statuses follows from the code
around each handler, so most of them are derived, not listed:

- an operation that takes a token (a `principal`): 401 (no token, or an unknown, revoked or expired one), 422 (a
  query parameter or header that is not valid), 503 (the token is looked up in the database, which may be down);
- an operation with a path parameter: 404 (the object is looked up in the caller's tenant; an id of the wrong form
  matches no route);
- an operation with a request body: 400 (the body is no JSON), 413 (larger than the request body limit) and 422;
- and what the operation's own code raises, from `RAISES`: 403 where it requires a role, 404 for an id given in the
  body, 409, 502 (a Git remote failed) and 503 (Redis or S3).

Litestar's default, 400 with its validation body on every operation, goes: validation answers 422 here. An unexpected
exception (500) is a bug and is documented nowhere. A test holds `RAISES` to every operation of the app, both ways.
"""

from __future__ import annotations

from litestar import Litestar
from litestar.openapi.spec import (
    Components,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Reference,
    Schema,
    SecurityScheme,
)
from litestar.routes import HTTPRoute

from app.api.errors import MAX_LISTED_PROBLEMS

BEARER = "bearer"
ERROR_SCHEMA = "Error"

Key = tuple[str, str]
"""An operation: its method and its path as the document writes it."""

TEMPLATE = "/api/v1/task-templates/{template_id}"
REPOSITORY = "/api/v1/git-repositories/{repository_id}"
TASK = "/api/v1/tasks/{task_id}"
CREDENTIAL = "/api/v1/credentials/{credential_id}"
HOST = "/api/v1/hosts/{host_id}"

RAISES: dict[Key, tuple[int, ...]] = {
    ("GET", "/health/live"): (),
    ("GET", "/health/ready"): (),  # its 503 has a body of its own, declared by the handler
    ("GET", "/api/v1/git-repositories"): (),
    ("POST", "/api/v1/git-repositories"): (403, 409),
    ("GET", REPOSITORY): (),
    ("PUT", REPOSITORY): (403, 409),
    ("DELETE", REPOSITORY): (403,),
    ("POST", f"{REPOSITORY}/sync"): (403, 502),
    ("POST", f"{REPOSITORY}/scan-templates"): (403, 502),
    ("GET", "/api/v1/credentials"): (),
    ("POST", "/api/v1/credentials"): (403, 409),
    ("GET", CREDENTIAL): (),
    ("PUT", CREDENTIAL): (403, 409),
    ("DELETE", CREDENTIAL): (403, 409),
    ("GET", "/api/v1/hosts"): (),
    ("POST", "/api/v1/hosts"): (403, 409),
    ("POST", "/api/v1/hosts/import"): (403, 409),
    ("GET", HOST): (),
    ("PUT", HOST): (403, 409),
    ("DELETE", HOST): (403,),
    ("POST", f"{HOST}/scan-keys"): (403, 502),
    ("GET", "/api/v1/task-templates"): (),
    ("POST", "/api/v1/task-templates"): (403, 409, 502, 503),
    ("GET", TEMPLATE): (),
    ("GET", f"{TEMPLATE}/versions"): (),
    ("PUT", TEMPLATE): (403,),
    ("DELETE", TEMPLATE): (403, 409),
    ("POST", f"{TEMPLATE}/sync"): (403, 409, 502, 503),
    ("POST", f"{TEMPLATE}/prefetch"): (403, 409, 503),
    ("GET", "/api/v1/artifacts/{digest}"): (),
    ("GET", "/api/v1/artifacts/{digest}/blob"): (409, 503),  # 409: the stored object fails its check
    ("GET", "/api/v1/workers"): (503,),
    ("GET", "/api/v1/tasks"): (),
    ("POST", "/api/v1/tasks"): (403, 404, 409),
    ("GET", TASK): (),
    ("POST", f"{TASK}/cancel"): (403, 409, 503),
    ("GET", f"{TASK}/logs"): (503,),
    ("GET", f"{TASK}/hosts"): (),
    ("POST", "/api/v1/admin/gc"): (403, 409),
    ("POST", "/api/v1/admin/verify"): (403, 404),
    ("GET", "/api/v1/admin/runs"): (403,),
    ("GET", "/api/v1/admin/runs/{run_id}"): (403,),
}
"""The statuses each operation's own code can answer, besides those derived from its form (see above)."""

MEANING = {
    400: "The body is no JSON.",
    401: "No bearer token, or one that is unknown, revoked or expired.",
    403: "The token's role does not allow this.",
    404: "No such object in the caller's tenant (another tenant's objects are not found either).",
    409: "The object exists already, is still in use, or is not in a state that allows this.",
    413: "The body is larger than the server accepts.",
    422: f"Some input is not valid: `extra.errors` names each field (the first {MAX_LISTED_PROBLEMS}) and what is "
    "expected, `extra.count` says how many there were. Nothing was written.",
    502: "A Git remote or a host failed; `detail` has its message.",
    503: "The database, Redis or S3 did not answer; nothing was written.",
}

_STRING = Schema(type=OpenAPIType.STRING)
_INTEGER = Schema(type=OpenAPIType.INTEGER)
ERROR_BODY = Schema(
    type=OpenAPIType.OBJECT,
    required=["status_code", "detail"],
    properties={
        "status_code": _INTEGER,
        "detail": Schema(type=OpenAPIType.STRING, description="What was wrong, and what to do."),
        "extra": Schema(
            type=OpenAPIType.OBJECT,
            description="With 422: the problems.",
            properties={
                "errors": Schema(
                    type=OpenAPIType.ARRAY,
                    items=Schema(
                        type=OpenAPIType.OBJECT,
                        required=["field", "message"],
                        properties={"field": _STRING, "message": _STRING},
                    ),
                    description=f"The first {MAX_LISTED_PROBLEMS} problems: each field, and what is expected.",
                ),
                "count": Schema(type=OpenAPIType.INTEGER, description="How many problems there were in all."),
            },
        ),
    },
    description="Every error answer of the API.",
)
BEARER_SCHEME = SecurityScheme(
    type="http",
    scheme="bearer",
    description="A token of the caller's tenant (`ahop token create`); its role decides what it may do.",
)


def documented_statuses(method: str, path: str, *, authed: bool, path_params: bool, body: bool) -> set[int]:
    """The error statuses operation `method path` answers, from its form and from `RAISES`."""
    statuses = set(RAISES.get((method, path), ()))
    if authed:
        statuses |= {401, 422, 503}
    if path_params:
        statuses.add(404)
    if body:
        statuses |= {400, 413, 422}
    return statuses


def document_answers(app: Litestar) -> Litestar:
    """Add the bearer scheme and every operation's error answers to `app`'s OpenAPI document; answer `app`."""
    document = app.openapi_schema
    if document.components is None:
        document.components = Components()
    document.components.schemas = {**(document.components.schemas or {}), ERROR_SCHEMA: ERROR_BODY}
    document.components.security_schemes = {**(document.components.security_schemes or {}), BEARER: BEARER_SCHEME}
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or route.path_format not in (document.paths or {}):
            continue
        path_item = (document.paths or {})[route.path_format]
        for handler in route.route_handlers:
            signature = handler.parsed_fn_signature.parameters
            for method in handler.http_methods:
                operation = getattr(path_item, method.lower(), None)
                if not isinstance(operation, Operation):
                    continue  # not in the document (OPTIONS, or a handler left out of the schema)
                authed = "principal" in signature
                statuses = documented_statuses(
                    method,
                    route.path_format,
                    authed=authed,
                    path_params=bool(route.path_parameters),
                    body="data" in signature,
                )
                _set_errors(operation, statuses)
                if authed:
                    operation.security = [{BEARER: []}]
    return app


def _set_errors(operation: Operation, statuses: set[int]) -> None:
    responses = {code: answer for code, answer in (operation.responses or {}).items() if code != "400"}
    reference = Reference(ref=f"#/components/schemas/{ERROR_SCHEMA}")
    for status in sorted(statuses):
        responses.setdefault(
            str(status),
            OpenAPIResponse(
                description=MEANING[status], content={"application/json": OpenAPIMediaType(schema=reference)}
            ),
        )
    operation.responses = dict(sorted(responses.items()))
