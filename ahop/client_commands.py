"""Client commands for people at a terminal: `ahop repo …` and `ahop template …` over the HTTP API.

They read AHOP_API_URL and AHOP_TOKEN (`set -a; . .ahop/dev.env; set +a` after `make run`), print tables, and
print the API's JSON with `--json` for scripts. An API error exits 2 (bad input), 1 (not found/conflict) or
3 (a service unavailable), with the API's message.
"""

from __future__ import annotations

import json
from collections.abc import Container
from typing import TYPE_CHECKING, Any, TextIO

import click
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from ahop.console import EXIT_BAD_INPUT, EXIT_PROBLEMS, EXIT_UNAVAILABLE, fail, load_settings

if TYPE_CHECKING:
    import httpx


class ClientSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AHOP_", extra="ignore")

    api_url: str = "http://127.0.0.1:8000"
    token: SecretStr | None = None
    client_timeout: float = Field(default=300.0, gt=0)


def client_settings() -> ClientSettings:
    """The API's address and token from the environment; exits 2 when no token is set."""
    settings = load_settings(ClientSettings)
    if settings.token is None:
        fail("set AHOP_TOKEN (and AHOP_API_URL) to call the API; `make run` writes both to .ahop/dev.env", 2)
    return settings


def auth_headers(settings: ClientSettings) -> dict[str, str]:
    token = settings.token.get_secret_value() if settings.token else ""
    return {"Authorization": f"Bearer {token}"}


def check_answer(response: httpx.Response, bad_input: Container[int] = (400, 401, 403, 422)) -> None:
    """Exit with the API's message when it answered an error: 2 for `bad_input` statuses, 3 unavailable, else 1."""
    if response.status_code < 400:
        return
    try:
        body = response.json()
        detail = body.get("detail", response.text)
        errors = body.get("extra", {}).get("errors", []) if isinstance(body.get("extra"), dict) else []
    except ValueError:
        detail, errors = response.text, []
    lines = [f"{response.status_code}: {detail}", *(f"  {e['field']}: {e['message']}" for e in errors)]
    code = EXIT_UNAVAILABLE if response.status_code in (502, 503) else (
        EXIT_BAD_INPUT if response.status_code in bad_input else EXIT_PROBLEMS)  # fmt: skip
    fail("\n".join(lines), code)


def call_api(method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
    """One API request; its JSON answer, or exit as `check_answer` says (3 when the API does not answer)."""
    import httpx

    settings = client_settings()
    try:
        response = httpx.request(method, settings.api_url.rstrip("/") + path, json=payload,
                                 headers=auth_headers(settings), timeout=settings.client_timeout)  # fmt: skip
    except httpx.HTTPError as exc:
        fail(f"the API at {settings.api_url} did not answer: {exc}", EXIT_UNAVAILABLE)
    check_answer(response)
    return response.json() if response.content else None


def show(data: Any, as_json: bool, columns: list[str]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    rows = data["items"] if isinstance(data, dict) and "items" in data else data if isinstance(data, list) else [data]
    table = Table(*columns)
    for row in rows:
        table.add_row(*(_cell(row, column) for column in columns))
    Console().print(table)
    if isinstance(data, dict) and "total" in data:
        click.echo(f"{len(rows)} of {data['total']}")


def _cell(row: dict[str, Any], column: str) -> str:
    value: Any = row
    for part in column.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)


json_option = click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")


@click.group()
def repo() -> None:
    """Git repositories (through the API)."""


@repo.command("add")
@click.argument("name")
@click.argument("url")
@click.option("--branch", default="main", show_default=True)
@json_option
def repo_add(name: str, url: str, branch: str, as_json: bool) -> None:
    """Add repository NAME at URL."""
    show(call_api("POST", "/api/v1/git-repositories", {"name": name, "url": url, "branch": branch}), as_json,
         ["id", "name", "url", "branch"])  # fmt: skip


@repo.command("list")
@json_option
def repo_list(as_json: bool) -> None:
    """List repositories."""
    show(call_api("GET", "/api/v1/git-repositories?page_size=500"), as_json,
         ["id", "name", "url", "branch", "head_commit", "synced_at"])  # fmt: skip


@repo.command("sync")
@click.argument("repository_id", type=int)
@json_option
def repo_sync(repository_id: int, as_json: bool) -> None:
    """Fetch the repository's branch; print the commit it now points at."""
    show(call_api("POST", f"/api/v1/git-repositories/{repository_id}/sync"), as_json, ["id", "commit"])


@repo.command("scan")
@click.argument("repository_id", type=int)
@json_option
def repo_scan(repository_id: int, as_json: bool) -> None:
    """Sync, then list the template candidates at the branch head."""
    result = call_api("POST", f"/api/v1/git-repositories/{repository_id}/scan-templates")
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    show(result["candidates"], False, ["original_path", "code", "script_type", "entry_file", "file_count"])
    for candidate in result["candidates"]:
        for problem in candidate.get("problems", []):
            click.echo(f"  {problem['file']}:{problem.get('line') or '-'}: {problem['message']}", err=True)


@click.group()
def template() -> None:
    """Task templates: import, list, show, sync and prefetch through the API; backfill straight in the database."""


TEMPLATE_COLUMNS = ["id", "code", "name", "script_type", "pool", "version", "artifact.digest",
                    "source_git_info.commit_sha"]  # fmt: skip


@template.command("import")
@click.option("--repo", "repository_id", type=int, required=True, help="Repository id.")
@click.option("--path", "original_path", required=True, help="Directory or file in the repository.")
@click.option("--entry", "entry_file", required=True, help="Entry file, relative to --path.")
@click.option("--code", required=True)
@click.option("--name", required=True)
@click.option("--type", "script_type", type=click.Choice(["shell", "python", "ansible"]), required=True)
@click.option("--description", default="")
@click.option("--timeout", type=int, default=3600, show_default=True)
@click.option("--pool", default="default", show_default=True, help="Worker pool that runs its tasks.")
@click.option("--max-attempts", type=int, default=1, show_default=True, help="Attempts a task gets in all (1-10).")
@click.option("--retry-on", type=click.Choice(["failed", "timeout", "lost"]), multiple=True,
              help="An outcome that starts another attempt (repeatable); none by default.")  # fmt: skip
@click.option("--parameters", "parameters_file", type=click.File("r"), default=None,
              help="A JSON list of parameters to record instead of the scanned ones; - for stdin.")  # fmt: skip
@json_option
def template_import(repository_id: int, original_path: str, entry_file: str, code: str, name: str,
                    script_type: str, description: str, timeout: int, pool: str, max_attempts: int,
                    retry_on: tuple[str, ...], parameters_file: TextIO | None, as_json: bool) -> None:  # fmt: skip
    """Import a template from a repository path at its branch head.

    Its parameters are those the scan shows (the entry's `@param` header, or the directory's survey) unless
    --parameters gives others."""
    payload = {"repository_id": repository_id, "original_path": original_path, "entry_file": entry_file,
               "code": code, "name": name, "script_type": script_type, "description": description,
               "timeout": timeout, "pool": pool, "max_attempts": max_attempts, "retry_on": list(retry_on)}  # fmt: skip
    if parameters_file is not None:
        payload["parameters"] = _parameter_schema(parameters_file)
    imported = call_api("POST", "/api/v1/task-templates", payload)
    show(imported, as_json, TEMPLATE_COLUMNS)
    if not as_json:
        print_parameters(imported)


def _parameter_schema(source: TextIO) -> list[Any]:
    try:
        schema = json.load(source)
    except ValueError as exc:
        fail(f"--parameters: {source.name} is not JSON: {exc}", EXIT_BAD_INPUT)
    if not isinstance(schema, list):
        fail(f"--parameters: {source.name} holds a {type(schema).__name__}; expected a list of parameters",
             EXIT_BAD_INPUT)  # fmt: skip
    return schema


def print_parameters(template: dict[str, Any]) -> None:
    """The parameters a template's current version takes, a line each, and where the schema came from."""
    parameters = template.get("parameters") or []
    source = template.get("parameters_source") or "unknown"
    if not parameters:
        click.echo(f"parameters ({source}): none")
        return
    click.echo(f"parameters ({source}):")
    for parameter in parameters:
        facts = [parameter.get("type", "text")]
        if parameter.get("required"):
            facts.append("required")
        if parameter.get("default") is not None:
            facts.append(f"default {parameter['default']}")
        if parameter.get("options"):
            facts.append("one of " + "/".join(parameter["options"]))
        about = f" — {parameter['description']}" if parameter.get("description") else ""
        click.echo(f"  {parameter['name']}: {', '.join(facts)}{about}")


@template.command("list")
@click.option("--search", default=None)
@json_option
def template_list(search: str | None, as_json: bool) -> None:
    """List templates."""
    from urllib.parse import urlencode

    query = urlencode({"page_size": 500, **({"search": search} if search else {})})
    show(call_api("GET", f"/api/v1/task-templates?{query}"), as_json, TEMPLATE_COLUMNS)


@template.command("show")
@click.argument("template_id", type=int)
@json_option
def template_show(template_id: int, as_json: bool) -> None:
    """Show one template."""
    show(call_api("GET", f"/api/v1/task-templates/{template_id}"), as_json, [*TEMPLATE_COLUMNS, "entry_file"])


@template.command("sync")
@click.argument("template_id", type=int)
@json_option
def template_sync(template_id: int, as_json: bool) -> None:
    """Re-import a template from its recorded path at the branch head."""
    show(call_api("POST", f"/api/v1/task-templates/{template_id}/sync"), as_json, ["changed", "version"])


@template.command("prefetch")
@click.argument("template_id", type=int)
@json_option
def template_prefetch(template_id: int, as_json: bool) -> None:
    """Ask the live workers of the template's pool to fetch its current content now."""
    answer = call_api("POST", f"/api/v1/task-templates/{template_id}/prefetch")
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    click.echo(answer["detail"] + (": " + ", ".join(answer["workers"]) if answer["workers"] else ""))


@click.command("list")
@json_option
def worker_list(as_json: bool) -> None:
    """The workers the API knows: live or dead, their pools, running tasks and store (asks AHOP_API_URL)."""
    answer = call_api("GET", "/api/v1/workers")
    columns = ["id", "live", "pools", "running", "cache_entries", "cache_bytes", "downloads", "last_seen", "version"]
    show(answer, as_json, columns)
