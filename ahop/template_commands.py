"""`ahop template update | delete | versions | use`: change a template through the API (TEMPLATE: code or id).

Name, description, timeout, pool, retry policy and where and how it runs (execution, sudo, forks,
max_fail_percentage) change in place; entry file, script type and parameters add a
version (the server decides, `PUT /api/v1/task-templates/{id}`). `use` makes an earlier version current again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ahop.api_client import call_api, find_template, resolve_template
from ahop.client_commands import (
    execution_fields,
    execution_options,
    json_option,
    parameters_option,
    read_parameters,
    retry_on_option,
)
from ahop.console import echo_json, echo_table, fail, show_one
from ahop.exit_codes import EXIT_BAD_INPUT
from worker.protocol import SCRIPT_TYPES

VERSION_COLUMNS = [
    "current",
    "version",
    "script_type",
    "entry_file",
    "artifact.digest",
    "source.commit_sha",
    "created_at",
]


def _changed(template_id: int, payload: dict[str, Any], as_json: bool) -> None:
    show_one(call_api("PUT", f"/api/v1/task-templates/{template_id}", payload), as_json)


@click.command("update")
@click.argument("template_ref", metavar="TEMPLATE")
@click.option("--name", default=None)
@click.option("--description", default=None)
@click.option("--timeout", type=click.IntRange(min=1), default=None, help="Seconds a task may run.")
@click.option("--pool", default=None, help="Worker pool that runs its tasks.")
@click.option("--max-attempts", type=click.IntRange(1, 10), default=None, help="Attempts a task gets in all.")
@retry_on_option("An outcome that starts another attempt (repeatable; 'none' retries nothing).", "none")
@execution_options
@click.option("--entry-file", default=None, help="Entry file, relative to the template's path (adds a version).")
@click.option(
    "--script-type",
    type=click.Choice(SCRIPT_TYPES),
    default=None,
    help="How the entry file runs (adds a version).",
)
@parameters_option("A JSON file with the parameter list ('-': stdin) (adds a version).")
@json_option
def template_update(
    template_ref: str,
    name: str | None,
    description: str | None,
    timeout: int | None,
    pool: str | None,
    max_attempts: int | None,
    retry_on: tuple[str, ...],
    execution: str | None,
    require_sudo: bool | None,
    forks: int | None,
    max_fail_percentage: int | None,
    entry_file: str | None,
    script_type: str | None,
    parameters_file: Path | None,
    as_json: bool,
) -> None:
    """Change a template; print it as it now is. What is not given stays as it is."""
    if "none" in retry_on and len(retry_on) > 1:
        fail("--retry-on none retries nothing; it goes alone", EXIT_BAD_INPUT)
    given = {
        "name": name,
        "description": description,
        "timeout": timeout,
        "pool": pool,
        "max_attempts": max_attempts,
        "entry_file": entry_file,
        "script_type": script_type,
    }
    payload: dict[str, Any] = {key: value for key, value in given.items() if value is not None}
    payload.update(execution_fields(execution, require_sudo, forks, max_fail_percentage))
    if retry_on:
        payload["retry_on"] = [] if retry_on == ("none",) else list(retry_on)
    if parameters_file is not None:
        payload["parameters"] = read_parameters(parameters_file)
    if not payload:
        fail("nothing to change: give at least one option (see `ahop template update --help`)", EXIT_BAD_INPUT)
    _changed(resolve_template(template_ref), payload, as_json)


@click.command("use")
@click.argument("template_ref", metavar="TEMPLATE")
@click.argument("version", type=click.IntRange(min=1))
@json_option
def template_use(template_ref: str, version: int, as_json: bool) -> None:
    """Make VERSION the template's current version again (new tasks run it)."""
    _changed(resolve_template(template_ref), {"version": version}, as_json)


@click.command("versions")
@click.argument("template_ref", metavar="TEMPLATE")
@json_option
def template_versions(template_ref: str, as_json: bool) -> None:
    """List a template's versions, newest first; `*` marks the current one."""
    template = find_template(template_ref)
    versions = call_api("GET", f"/api/v1/task-templates/{template['id']}/versions")
    if as_json:
        echo_json(versions)
        return
    rows = [{**item, "current": "*" if item["version"] == template["version"] else ""} for item in versions]
    echo_table(rows, VERSION_COLUMNS)


@click.command("delete")
@click.argument("template_ref", metavar="TEMPLATE")
def template_delete(template_ref: str) -> None:
    """Delete a template (refused while unfinished tasks use it). Tasks that ran it keep their record."""
    template = find_template(template_ref)
    call_api("DELETE", f"/api/v1/task-templates/{template['id']}")
    click.echo(f"template {template['id']} ({template['code']}) deleted")
