"""The client commands' side of the HTTP API: where it is, the token, one request, and the references an operator
types (a template's code or id, a task id or a unique prefix of one) resolved to what the API takes.

They read AHOP_API_URL and AHOP_TOKEN (`set -a; . .ahop/dev.env; set +a` after `make run`). An error answer exits
with the code `ahop.exit_codes.code_for_status` gives, printing the API's message (and each field it names) once.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlencode

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from ahop.console import fail, load_settings
from ahop.exit_codes import EXIT_BAD_INPUT, EXIT_UNAVAILABLE, code_for_status

if TYPE_CHECKING:
    import httpx

UUID_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
ID_PREFIX = re.compile(r"[0-9a-f][0-9a-f-]{0,35}")


class ClientSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AHOP_", extra="ignore")

    api_url: str = "http://127.0.0.1:8000"
    token: SecretStr | None = None
    client_timeout: float = Field(default=300.0, gt=0)


def client_settings() -> ClientSettings:
    """The API's address and token from the environment; exits 2 when no token is set."""
    settings = load_settings(ClientSettings)
    if settings.token is None:
        fail(
            "set AHOP_TOKEN (and AHOP_API_URL) to call the API; `make run` writes both to .ahop/dev.env", EXIT_BAD_INPUT
        )
    return settings


def auth_headers(settings: ClientSettings) -> dict[str, str]:
    token = settings.token.get_secret_value() if settings.token else ""
    return {"Authorization": f"Bearer {token}"}


def check_answer(response: httpx.Response) -> None:
    """Exit with the API's message when it answered an error, with the exit code its status maps to."""
    if response.status_code < 400:
        return
    try:
        body = response.json()
        detail = body.get("detail", response.text)
        errors = body.get("extra", {}).get("errors", []) if isinstance(body.get("extra"), dict) else []
    except ValueError:
        detail, errors = response.text, []
    lines = [f"{response.status_code}: {detail}", *(f"  {e['field']}: {e['message']}" for e in errors)]
    fail("\n".join(lines), code_for_status(response.status_code))


def did_not_answer(settings: ClientSettings, exc: Exception) -> NoReturn:
    fail(f"the API at {settings.api_url} did not answer: {exc}", EXIT_UNAVAILABLE)


def request(method: str, path: str, payload: dict[str, Any] | None = None) -> httpx.Response:
    """One API request, its answer whatever its status; exits 3 when the API does not answer."""
    import httpx

    settings = client_settings()
    try:
        return httpx.request(
            method,
            settings.api_url.rstrip("/") + path,
            json=payload,
            headers=auth_headers(settings),
            timeout=settings.client_timeout,
        )
    except httpx.HTTPError as exc:
        did_not_answer(settings, exc)


def call_api(method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
    """One API request; its JSON answer, or exit as `check_answer` says (3 when the API does not answer)."""
    response = request(method, path, payload)
    check_answer(response)
    return response.json() if response.content else None


def find_template(ref: str) -> dict[str, Any]:
    """The template `ref` names: its code (an exact match) or, for digits that are no template's code, its id.

    Exits 2 with "no template 'x'" when neither names one.
    """
    page = 1
    while True:
        query = urlencode({"search": ref, "page": page, "page_size": 500})
        found = call_api("GET", f"/api/v1/task-templates?{query}")
        for item in found["items"]:
            if item["code"] == ref:
                return dict(item)
        if page * found["page_size"] >= found["total"]:
            break
        page += 1
    if ref.isdigit():
        answer = request("GET", f"/api/v1/task-templates/{int(ref)}")
        if answer.status_code != 404:
            check_answer(answer)
            return dict(answer.json())
    fail(f"no template {ref!r} (give its code or id; `ahop template list` shows both)", EXIT_BAD_INPUT)


def resolve_template(ref: str) -> int:
    """The id of the template `ref` names (a code or an id); exits 2 when none does."""
    return int(find_template(ref)["id"])


def resolve_task(ref: str) -> str:
    """The id of the task `ref` names: a whole task id, or the start of exactly one (as a table may show it).

    Exits 2 when no task's id starts so, or when several do (naming them).
    """
    ref = ref.strip().lower().rstrip("…").rstrip(".")
    if UUID_TEXT.fullmatch(ref):
        return ref
    if not ID_PREFIX.fullmatch(ref):
        fail(f"{ref!r} is not a task id: expected a UUID or the start of one (hex digits and '-')", EXIT_BAD_INPUT)
    found = call_api("GET", f"/api/v1/tasks?{urlencode({'id_prefix': ref, 'page_size': 10})}")
    ids = [str(item["id"]) for item in found["items"]]
    if not ids:
        fail(f"no task {ref!r}", EXIT_BAD_INPUT)
    if found["total"] > 1:
        more = f" and {found['total'] - len(ids)} more" if found["total"] > len(ids) else ""
        fail(
            f"task id prefix {ref!r} is ambiguous: it starts {', '.join(ids)}{more}; give more of the id",
            EXIT_BAD_INPUT,
        )
    return ids[0]
