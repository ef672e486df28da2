"""The README's walkthrough, run as written: `make run`'s stack, then the commands of its code blocks in a shell.

The repository the README describes is built from the README itself (the script it shows), at a path that takes
the place of `/path/to/your/ops-scripts`. The commands run in a directory laid out as the project's (`.venv`,
`.ahop`), in a shell whose environment has no AHOP_ setting but what `.ahop/dev.env` gives. The only other words
replaced are the README's placeholders for what a reader copies from an earlier answer: TASK_ID and a digest.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.dev_runs import clean_env, remove_root_database, running_dev

README = Path(__file__).resolve().parent.parent / "README.md"
REPOSITORY_PLACEHOLDER = "/path/to/your/ops-scripts"
COMMAND_TIMEOUT = 180.0  # generous: only catches a hang
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(section: str) -> list[tuple[str, str]]:
    """The fenced code blocks (language, text) of the README section headed `## {section}`."""
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    return [(match[1], match[2]) for match in _FENCE.finditer(text[start : end if end != -1 else None])]


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=ops", "-c", "user.email=ops@example.com", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    """A directory laid out like the project's checkout after `make run`: `.venv` and `.ahop`."""
    root = tmp_path / "project"
    root.mkdir()
    (root / ".venv").symlink_to(sys.prefix)
    yield root
    remove_root_database(root / ".ahop")


def newcomer_env(home: Path) -> dict[str, str]:
    """A shell without AHOP_ settings, of a user whose home directory holds their repositories."""
    return {**clean_env(), "HOME": str(home)}


def shell(project: Path, script: str) -> subprocess.CompletedProcess[str]:
    """Run README lines in bash, in the project directory, stopping at the first that fails."""
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=project,
        env=newcomer_env(project.parent),
        text=True,
        capture_output=True,
        timeout=COMMAND_TIMEOUT,
    )


def ops_repository(path: Path) -> None:
    """The repository the README describes: `scripts/disk_cleanup/cleanup.sh` as the README shows it."""
    (script_language, script), *_ = blocks("A first template")
    assert script_language == "bash"
    directory = path / "scripts" / "disk_cleanup"
    directory.mkdir(parents=True)
    (directory / "cleanup.sh").write_text(script)
    (directory / "cleanup.sh").chmod(0o755)
    playbook = path / "playbooks" / "hello"
    playbook.mkdir(parents=True)
    (playbook / "survey.yml").write_text(
        "name: Hello\nspec:\n  - {variable: greeting, question_name: Greeting, type: text, required: true}\n"
    )
    (playbook / "playbook.yml").write_text(
        "- hosts: localhost\n  connection: local\n  gather_facts: false\n"
        "  tasks:\n    - debug:\n        msg: 'greeting={{ greeting }}'\n"
    )
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "ops scripts")


def test_the_readme_walkthrough_runs_as_written(project: Path, tmp_path: Path) -> None:
    repository = tmp_path / "ops-scripts"
    ops_repository(repository)
    load_env = "set -a; . .ahop/dev.env; set +a\n"

    with running_dev(project / ".ahop", newcomer_env(tmp_path)):
        (_, make_commands), (_, first_look) = blocks("Two commands")
        assert "make run" in make_commands
        health = shell(project, first_look)
        assert health.returncode == 0, health.stderr
        assert json.loads(health.stdout) == {"database": "ok", "redis": "ok", "s3": "ok"}

        _, first_template = blocks("A first template")[1]
        assert REPOSITORY_PLACEHOLDER in first_template
        imported = shell(project, first_template.replace(REPOSITORY_PLACEHOLDER, str(repository)))
        assert imported.returncode == 0, (imported.stdout, imported.stderr)
        assert "scripts/disk_cleanup" in imported.stdout  # the scan's candidate
        assert "parameters (scanned):" in imported.stdout
        assert "days: integer, required" in imported.stdout
        assert "disk_cleanup" in imported.stdout

        (_, running), *_ = blocks("Running a task")
        first, *others = running.strip().splitlines()
        ran = shell(project, load_env + first)
        assert ran.returncode == 0, (ran.stdout, ran.stderr)
        assert "looked for files older than 7 days" in ran.stdout
        task_id = re.search(r"ahop: task ([0-9a-f-]{36})", ran.stderr)
        assert task_id is not None, ran.stderr
        rest = shell(project, load_env + "\n".join(others).replace("TASK_ID", task_id[1]))
        assert rest.returncode == 0, (rest.stdout, rest.stderr)
        assert "looked for files older than 7 days" in rest.stdout  # the stored log
        assert "success" in rest.stdout

        template = json.loads(shell(project, load_env + ".venv/bin/ahop template list --json").stdout)["items"][0]
        digest = template["artifact"]["digest"].removeprefix("sha256:")
        (_, maintenance), *_ = blocks("Keeping the store clean and sound: GC, verify, retention")
        repair = next(line for line in maintenance.splitlines() if "--repair" in line)
        repaired = shell(project, load_env + repair.replace("sha256:…", f"sha256:{digest}"))
        assert repaired.returncode == 0, (repaired.stdout, repaired.stderr)
        by_hand = re.search(r"`(\.venv/bin/aws s3 cp .*? \| sha256sum)`", README.read_text())
        assert by_hand is not None
        checked = shell(project, load_env + by_hand[1].replace("ab/ab…", f"{digest[:2]}/{digest}"))
        assert checked.returncode == 0, checked.stderr
        assert checked.stdout.split()[0] == digest
        worker_store = shell(project, load_env + ".venv/bin/ahop worker verify")
        assert worker_store.returncode == 0, worker_store.stderr
        assert worker_store.stdout.startswith("1 entries ok in ")
        assert str(project / ".ahop" / "worker") in worker_store.stdout

        # An Ansible template of localhost plays runs on the worker `make run` started, when its import says so.
        playbook = shell(
            project,
            load_env + ".venv/bin/ahop template import --repo 1 --path playbooks/hello "
            "--entry playbook.yml --code hello --name Hello --type ansible --execution worker && "
            ".venv/bin/ahop task run hello -p greeting=bonjour",
        )
        assert playbook.returncode == 0, (playbook.stdout, playbook.stderr)
        assert "greeting=bonjour" in playbook.stdout
