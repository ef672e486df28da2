"""`ahop template …` against a real `ahop serve` process: show as key/value lines, JSON with non-ASCII text as it
is, whole values off a terminal, update, versions, use, delete, and templates named by code or id."""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path

import httpx

from app.db.models import Role
from tests.support.cli import ahop
from tests.support.repositories import commit_all
from tests.support.tenants import Caller, token_of

NAME = "磁盘清理"
DESCRIPTION = "清理过期的日志文件"


def _import(url: str, caller: Caller, root: Path, code: str) -> dict[str, object]:
    """A template named in Chinese, whose directory holds a second script to switch to."""
    repo = root / "cn-origin"
    (repo / "cleanup").mkdir(parents=True)
    (repo / "cleanup" / "run.sh").write_text("echo run\n")
    (repo / "cleanup" / "other.sh").write_text(f"echo other {secrets.token_hex(8)}\n")  # the tree cache is shared
    commit_all(repo, message="cleanup")
    headers = caller[Role.ADMIN]
    added = httpx.post(f"{url}/api/v1/git-repositories", json={"name": "cn", "url": str(repo)}, headers=headers)
    assert added.status_code == 201, added.text
    body = {
        "name": NAME,
        "description": DESCRIPTION,
        "code": code,
        "script_type": "shell",
        "entry_file": "run.sh",
        "original_path": "cleanup",
        "repository_id": added.json()["id"],
    }
    imported = httpx.post(f"{url}/api/v1/task-templates", json=body, headers=headers, timeout=60)
    assert imported.status_code == 201, imported.text
    return dict(imported.json())


def test_show_prints_key_value_lines_and_json_keeps_chinese_readable(
    api_url: str,
    alice: Caller,
    tmp_path: Path,
) -> None:
    template = _import(api_url, alice, tmp_path, "disk_cleanup")
    token = token_of(alice, Role.ADMIN)
    digest = str(template["artifact"]["digest"])  # type: ignore[index]

    shown = ahop(api_url, token, "template", "show", "disk_cleanup")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert f"id: {template['id']}" in lines
    assert f"name: {NAME}" in lines
    assert f"description: {DESCRIPTION}" in lines
    assert f"artifact.digest: {digest}" in lines
    assert "source_git_info.branch: main" in lines
    assert all(re.match(r"^[a-z_.]+: ", line) for line in lines), lines
    assert ahop(api_url, token, "template", "show", str(template["id"])).stdout == shown.stdout  # by id too

    as_json = ahop(api_url, token, "template", "show", "disk_cleanup", "--json")
    assert NAME in as_json.stdout  # not \\uXXXX escapes
    assert DESCRIPTION in as_json.stdout
    assert json.loads(as_json.stdout)["name"] == NAME
    listed = ahop(api_url, token, "template", "list", "--json")
    assert NAME in listed.stdout

    table = ahop(api_url, token, "template", "list")  # stdout is a pipe here: whole values, tab-separated
    header, *rows = table.stdout.splitlines()
    assert header.split("\t")[:3] == ["id", "code", "name"]
    (row,) = rows
    cells = row.split("\t")
    assert cells[:3] == [str(template["id"]), "disk_cleanup", NAME]
    assert digest in cells
    assert len(digest) == len("sha256:") + 64


def test_update_versions_use_and_delete(api_url: str, alice: Caller, tmp_path: Path) -> None:
    template = _import(api_url, alice, tmp_path, "cn_cleanup")
    token = token_of(alice, Role.ADMIN)

    renamed = ahop(
        api_url,
        token,
        "template",
        "update",
        "cn_cleanup",
        "--name",
        "日志清理",
        "--timeout",
        "60",
        "--retry-on",
        "lost",
        "--max-attempts",
        "2",
        "--json",
    )
    assert renamed.returncode == 0, renamed.stderr
    changed = json.loads(renamed.stdout)
    assert (changed["name"], changed["timeout"], changed["retry_on"]) == ("日志清理", 60, ["lost"])
    assert changed["version"] == 1  # name, timeout and retries change in place
    assert "日志清理" in renamed.stdout

    parameters = tmp_path / "parameters.json"
    parameters.write_text(json.dumps([{"name": "days", "type": "integer", "label": "保留天数"}]))
    switched = ahop(
        api_url, token, "template", "update", "cn_cleanup", "--entry-file", "other.sh", "--parameters", str(parameters)
    )
    assert switched.returncode == 0, switched.stderr
    assert "version: 2" in switched.stdout.splitlines()
    assert "entry_file: other.sh" in switched.stdout.splitlines()

    versions = ahop(api_url, token, "template", "versions", "cn_cleanup")
    assert versions.returncode == 0, versions.stderr
    header, *rows = versions.stdout.splitlines()
    assert header.split("\t")[:4] == ["current", "version", "script_type", "entry_file"]
    assert [row.split("\t")[:4] for row in rows] == [["*", "2", "shell", "other.sh"], ["", "1", "shell", "run.sh"]]

    used = ahop(api_url, token, "template", "use", str(template["id"]), "1", "--json")
    assert used.returncode == 0, used.stderr
    assert (json.loads(used.stdout)["version"], json.loads(used.stdout)["entry_file"]) == (1, "run.sh")
    listed = json.loads(ahop(api_url, token, "template", "versions", "cn_cleanup", "--json").stdout)
    assert [item["version"] for item in listed] == [2, 1]

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    cases = [
        (("template", "update", "cn_cleanup"), "nothing to change"),
        (("template", "update", "cn_cleanup", "--parameters", str(bad)), f"--parameters: {bad} is not JSON"),
        (("template", "update", "cn_cleanup", "--pool", "bad pool"), "pool"),
        (("template", "use", "cn_cleanup", "9"), "9"),
    ]
    for args, message in cases:
        refused = ahop(api_url, token, *args)
        assert refused.returncode == 2, (args, refused.stderr)
        assert message in refused.stderr, (args, refused.stderr)

    deleted = ahop(api_url, token, "template", "delete", "cn_cleanup")
    assert (deleted.returncode, deleted.stdout) == (0, f"template {template['id']} (cn_cleanup) deleted\n")
    gone = ahop(api_url, token, "template", "show", "cn_cleanup")
    assert (gone.returncode, gone.stderr.startswith("ahop: no template 'cn_cleanup'")) == (2, True), gone.stderr


def test_an_unknown_code_or_id_is_bad_input_everywhere(api_url: str, alice: Caller) -> None:
    token = token_of(alice, Role.ADMIN)
    for ref in ("no_such_code", "987654"):
        for args in (
            ("template", "show", ref),
            ("template", "sync", ref),
            ("template", "prefetch", ref),
            ("template", "update", ref, "--name", "x"),
            ("template", "delete", ref),
            ("template", "versions", ref),
            ("template", "use", ref, "1"),
            ("task", "run", ref),
            ("task", "list", "--template", ref),
        ):
            result = ahop(api_url, token, *args)
            assert result.returncode == 2, (args, result.stderr)
            assert result.stderr.startswith(f"ahop: no template '{ref}'"), (args, result.stderr)
            assert result.stderr.count("ahop:") == 1, result.stderr


def test_import_and_update_say_where_and_how_a_template_runs(api_url: str, alice: Caller, tmp_path: Path) -> None:
    template = _import(api_url, alice, tmp_path, "fanout")
    token = token_of(alice, Role.ADMIN)
    repository_id = str(template["source_git_info"]["repository_id"])  # type: ignore[index]
    imported = ahop(
        api_url,
        token,
        *("template", "import", "--repo", repository_id, "--path", "cleanup", "--entry", "run.sh"),
        *("--code", "playbook", "--name", "Playbook", "--type", "ansible", "--json"),
    )
    assert imported.returncode == 0, imported.stderr
    playbook = json.loads(imported.stdout)
    assert (playbook["execution"], playbook["forks"], playbook["max_fail_percentage"]) == ("targets", 5, 0)

    updated = ahop(
        api_url,
        token,
        *("template", "update", "fanout", "--execution", "targets", "--require-sudo"),
        *("--forks", "20", "--max-fail-percentage", "10", "--json"),
    )
    assert updated.returncode == 0, updated.stderr
    shown = json.loads(updated.stdout)
    assert (shown["execution"], shown["require_sudo"], shown["forks"], shown["max_fail_percentage"]) == (
        "targets",
        True,
        20,
        10,
    )
    back = ahop(api_url, token, "template", "update", "fanout", "--no-require-sudo", "--execution", "worker", "--json")
    assert back.returncode == 0, back.stderr
    assert (json.loads(back.stdout)["require_sudo"], json.loads(back.stdout)["execution"]) == (False, "worker")
    refused = ahop(api_url, token, "template", "update", "fanout", "--forks", "0")
    assert refused.returncode == 2, refused.stderr
    assert "--forks" in refused.stderr
