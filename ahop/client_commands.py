"""Client commands for people at a terminal: `ahop repo …` and `ahop template …` over the HTTP API.

They read AHOP_API_URL and AHOP_TOKEN (`set -a; . .ahop/dev.env; set +a` after `make run`), print tables (whole
values, tab-separated, off a terminal) or `key: value` lines for one object, and the API's JSON with `--json`.
Exit codes are those of `ahop.exit_codes`; a template is named by its code or its id.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.decorators import FC

from ahop.api_client import call_api, resolve_template
from ahop.console import echo_json, fail, show, show_one
from ahop.exit_codes import EXIT_BAD_INPUT
from worker.protocol import EXECUTIONS, RETRY_OUTCOMES, SCRIPT_TYPES

json_option = click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")


def retry_on_option(help_text: str, *words: str) -> Callable[[FC], FC]:
    """`--retry-on OUTCOME` (repeatable): an ending of an attempt that starts another one, or one of `words`."""
    return click.option("--retry-on", type=click.Choice([*RETRY_OUTCOMES, *words]), multiple=True, help=help_text)


def parameters_option(help_text: str) -> Callable[[FC], FC]:
    """`--parameters FILE` (`parameters_file`): a file that `read_parameters` reads."""
    return click.option(
        "--parameters",
        "parameters_file",
        type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
        help=help_text,
    )


def execution_options(command: FC) -> FC:
    """`--execution`, `--require-sudo/--no-require-sudo`, `--forks`, `--max-fail-percentage`: where and how a
    template's tasks run; each None when not given (`execution_fields` keeps those given)."""
    for option in reversed(
        (
            click.option(
                "--execution",
                type=click.Choice(EXECUTIONS),
                default=None,
                help="Where its tasks run: on the worker, or on the inventory hosts a task names "
                "(default on import: targets for ansible, worker otherwise).",
            ),
            click.option(
                "--require-sudo/--no-require-sudo",
                default=None,
                help="On targets: run the entry as root through sudo.",
            ),
            click.option(
                "--forks", type=click.IntRange(1, 1000), default=None, help="On targets: hosts run at once (1-1000)."
            ),
            click.option(
                "--max-fail-percentage",
                type=click.IntRange(0, 100),
                default=None,
                help="On targets: percent of hosts that may fail while the task succeeds (0-100).",
            ),
        )
    ):
        command = option(command)
    return command


def execution_fields(
    execution: str | None, require_sudo: bool | None, forks: int | None, max_fail_percentage: int | None
) -> dict[str, Any]:
    """The request fields of the `execution_options` given."""
    given = {
        "execution": execution,
        "require_sudo": require_sudo,
        "forks": forks,
        "max_fail_percentage": max_fail_percentage,
    }
    return {key: value for key, value in given.items() if value is not None}


@click.group()
def repo() -> None:
    """Git repositories (through the API)."""


REPO_COLUMNS = ["id", "name", "url", "branch", "auth_kind"]


def read_secret(path: Path) -> str:
    """A token or key from a file (`-`: standard input), so that no secret is ever on the command line."""
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}", EXIT_BAD_INPUT)
    if not text.strip():
        fail(f"{'standard input' if str(path) == '-' else path} holds no secret", EXIT_BAD_INPUT)
    return text.strip() if "PRIVATE KEY" not in text else text


def credentials_of(token_file: Path | None, ssh_key_file: Path | None, username: str) -> dict[str, str] | None:
    """The `credentials` object of the repository API from the credential options; None when none is given."""
    if token_file is not None and ssh_key_file is not None:
        fail("give one of --token-file and --ssh-key-file, not both", EXIT_BAD_INPUT)
    if token_file is not None:
        return {"kind": "https_token", "secret": read_secret(token_file), "username": username}
    if ssh_key_file is not None:
        return {"kind": "ssh_key", "secret": read_secret(ssh_key_file), "username": username}
    if username:
        fail("--username goes with --token-file or --ssh-key-file", EXIT_BAD_INPUT)
    return None


def credential_options(command: Any) -> Any:
    """`--token-file`, `--ssh-key-file` and `--username`: how a repository's credentials are given."""
    secret_file = click.Path(path_type=Path, dir_okay=False, allow_dash=True)
    for option in reversed(
        [
            click.option("--token-file", type=secret_file, help="A file holding an HTTPS access token ('-': stdin)."),
            click.option("--ssh-key-file", type=secret_file, help="A file holding an SSH private key ('-': stdin)."),
            click.option("--username", default="", help="The user name for the token (default: x-access-token)."),
        ]
    ):
        command = option(command)
    return command


@repo.command("add")
@click.argument("name")
@click.argument("url")
@click.option("--branch", default=None, help="The branch templates come from (default: the remote's default branch).")
@credential_options
@json_option
def repo_add(
    name: str,
    url: str,
    branch: str | None,
    token_file: Path | None,
    ssh_key_file: Path | None,
    username: str,
    as_json: bool,
) -> None:
    """Add repository NAME at URL. The server reads the remote at once: a URL that is not a repository or a branch
    it lacks is refused (exit 2) and nothing is added."""
    payload: dict[str, Any] = {"name": name, "url": url}
    if branch is not None:
        payload["branch"] = branch
    if (credentials := credentials_of(token_file, ssh_key_file, username)) is not None:
        payload["credentials"] = credentials
    show(call_api("POST", "/api/v1/git-repositories", payload), as_json, REPO_COLUMNS)


@repo.command("update")
@click.argument("repository_id", type=int)
@click.option("--name", default=None, help="A new name.")
@click.option("--url", default=None, help="A new URL (read by the server before it is recorded).")
@click.option("--branch", default=None, help="A new branch (checked at the remote before it is recorded).")
@credential_options
@click.option("--clear-credentials", is_flag=True, help="Forget the repository's credentials.")
@json_option
def repo_update(
    repository_id: int,
    name: str | None,
    url: str | None,
    branch: str | None,
    token_file: Path | None,
    ssh_key_file: Path | None,
    username: str,
    clear_credentials: bool,
    as_json: bool,
) -> None:
    """Change a repository's name, URL, branch or credentials; what is not given stays as it is."""
    payload: dict[str, Any] = {
        key: value for key, value in (("name", name), ("url", url), ("branch", branch)) if value is not None
    }
    if (credentials := credentials_of(token_file, ssh_key_file, username)) is not None:
        if clear_credentials:
            fail("give new credentials or --clear-credentials, not both", EXIT_BAD_INPUT)
        payload["credentials"] = credentials
    if clear_credentials:
        payload["clear_credentials"] = True
    if not payload:
        fail("nothing to change: give --name, --url, --branch, credentials or --clear-credentials", EXIT_BAD_INPUT)
    show(call_api("PUT", f"/api/v1/git-repositories/{repository_id}", payload), as_json, REPO_COLUMNS)


@repo.command("delete")
@click.argument("repository_id", type=int)
def repo_delete(repository_id: int) -> None:
    """Delete a repository and its mirror; templates imported from it keep working (they hold snapshots)."""
    call_api("DELETE", f"/api/v1/git-repositories/{repository_id}")
    click.echo(f"repository {repository_id} deleted")


@repo.command("list")
@json_option
def repo_list(as_json: bool) -> None:
    """List repositories."""
    show(
        call_api("GET", "/api/v1/git-repositories?page_size=500"),
        as_json,
        ["id", "name", "url", "branch", "head_commit", "synced_at"],
    )


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
        echo_json(result)
        return
    show(result["candidates"], False, ["original_path", "code", "script_type", "entry_file", "file_count"])
    for candidate in result["candidates"]:
        for problem in candidate.get("problems", []):
            click.echo(f"  {problem['file']}:{problem.get('line') or '-'}: {problem['message']}", err=True)


@click.group()
def template() -> None:
    """Task templates: import, list, show, sync and prefetch through the API; backfill straight in the database."""


TEMPLATE_COLUMNS = [
    "id",
    "code",
    "name",
    "script_type",
    "execution",
    "pool",
    "version",
    "artifact.digest",
    "source_git_info.commit_sha",
]


@template.command("import")
@click.option("--repo", "repository_id", type=int, required=True, help="Repository id.")
@click.option("--path", "original_path", required=True, help="Directory or file in the repository.")
@click.option("--entry", "entry_file", required=True, help="Entry file, relative to --path.")
@click.option("--code", required=True)
@click.option("--name", required=True)
@click.option("--type", "script_type", type=click.Choice(SCRIPT_TYPES), required=True)
@click.option("--description", default="")
@click.option("--timeout", type=int, default=3600, show_default=True)
@click.option("--pool", default="default", show_default=True, help="Worker pool that runs its tasks.")
@click.option("--max-attempts", type=int, default=1, show_default=True, help="Attempts a task gets in all (1-10).")
@retry_on_option("An outcome that starts another attempt (repeatable); none by default.")
@execution_options
@parameters_option("A JSON list of parameters to record instead of the scanned ones ('-': stdin).")
@json_option
def template_import(
    repository_id: int,
    original_path: str,
    entry_file: str,
    code: str,
    name: str,
    script_type: str,
    description: str,
    timeout: int,
    pool: str,
    max_attempts: int,
    retry_on: tuple[str, ...],
    execution: str | None,
    require_sudo: bool | None,
    forks: int | None,
    max_fail_percentage: int | None,
    parameters_file: Path | None,
    as_json: bool,
) -> None:
    """Import a template from a repository path at its branch head.

    Its parameters are those the scan shows (the entry's `@param` header, or the directory's survey) unless
    --parameters gives others."""
    payload = {
        "repository_id": repository_id,
        "original_path": original_path,
        "entry_file": entry_file,
        "code": code,
        "name": name,
        "script_type": script_type,
        "description": description,
        "timeout": timeout,
        "pool": pool,
        "max_attempts": max_attempts,
        "retry_on": list(retry_on),
        **execution_fields(execution, require_sudo, forks, max_fail_percentage),
    }
    if parameters_file is not None:
        payload["parameters"] = read_parameters(parameters_file)
    imported = call_api("POST", "/api/v1/task-templates", payload)
    show(imported, as_json, TEMPLATE_COLUMNS)
    if not as_json:
        print_parameters(imported)


def read_parameters(path: Path) -> list[Any]:
    """The parameter list of a JSON file (`-`: standard input), as `template show --json` prints `parameters`."""
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
        parameters = json.loads(text)
    except OSError as exc:
        fail(f"--parameters: cannot read {path}: {exc.strerror}", EXIT_BAD_INPUT)
    except ValueError as exc:
        fail(f"--parameters: {path} is not JSON: {exc}", EXIT_BAD_INPUT)
    if not isinstance(parameters, list):
        fail(
            f'--parameters: {path} must hold a JSON list of parameters, [{{"name": ..., "type": ...}}, ...]',
            EXIT_BAD_INPUT,
        )
    return parameters


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
@click.argument("template_ref", metavar="TEMPLATE")
@json_option
def template_show(template_ref: str, as_json: bool) -> None:
    """Show one template (TEMPLATE: its code or id) as `key: value` lines."""
    show_one(call_api("GET", f"/api/v1/task-templates/{resolve_template(template_ref)}"), as_json)


@template.command("sync")
@click.argument("template_ref", metavar="TEMPLATE")
@json_option
def template_sync(template_ref: str, as_json: bool) -> None:
    """Re-import a template (its code or id) from its recorded path at the branch head."""
    show(
        call_api("POST", f"/api/v1/task-templates/{resolve_template(template_ref)}/sync"),
        as_json,
        ["changed", "version"],
    )


@template.command("prefetch")
@click.argument("template_ref", metavar="TEMPLATE")
@json_option
def template_prefetch(template_ref: str, as_json: bool) -> None:
    """Ask the live workers of the template's pool to fetch its current content now."""
    answer = call_api("POST", f"/api/v1/task-templates/{resolve_template(template_ref)}/prefetch")
    if as_json:
        echo_json(answer)
        return
    click.echo(answer["detail"] + (": " + ", ".join(answer["workers"]) if answer["workers"] else ""))


@click.command("list")
@json_option
def worker_list(as_json: bool) -> None:
    """The workers the API knows: live or dead, their pools, running tasks and store (asks AHOP_API_URL)."""
    answer = call_api("GET", "/api/v1/workers")
    columns = ["id", "live", "pools", "running", "cache_entries", "cache_bytes", "downloads", "last_seen", "version"]
    show(answer, as_json, columns)
