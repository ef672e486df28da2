"""`scan_git` on fixture repositories in the original system's formats, read from the object database."""

from __future__ import annotations

import json
import os
from pathlib import Path

import git
import pytest

from app.scan.candidates import Candidate
from app.scan.errors import ScanError
from app.scan.gitsource import scan_git
from tests.support import repositories
from tests.support.candidates import where_and_what
from tests.support.original_system import CHOSE_DEPLOY_NGINX, SERVER_NAME_QUESTION
from tests.support.repositories import commit_all

DISK_CLEANUP = """\
#!/bin/bash
# Name: 磁盘清理
# Description: 清理过期的日志和临时文件
#
# @param report_dir 报告输出目录
# @param listen_port Port of the status page
# @param db_password 数据库密码
# @param api_token
# @param env 目标环境 (dev/staging/prod) (required)
# @param passport_no 护照号码
# @param retry_count
# @param keep 保留天数 (default: 7)

set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
"""

NGINX_SURVEY = """\
name: Nginx 部署
description: 安装并配置 nginx
spec:
  - type: text
    variable: server_name
    question_name: 域名
    required: true
  - type: multiplechoice
    variable: env
    question_name: 环境
    choices: [dev, prod]
    default: dev
"""

REDIS_SURVEY = {
    "name": "Redis",
    "description": "Redis install",
    "spec": [
        {"type": "integer", "variable": "port", "question_name": "端口", "required": True, "default": 6379},
        {"type": "multiplechoice", "variable": "mode", "question_name": "模式", "choices": "standalone\ncluster"},
    ],
}

BROKEN_SURVEY = "name: broken\nspec:\n  - type: text\n    variable: a\n  - [unclosed\n"


def write(root: Path, path: str, text: str, *, executable: bool = False) -> None:
    target = root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    target.chmod(0o755 if executable else 0o644)


def build_ops_repository(root: Path) -> None:
    """Scripts and playbooks laid out as the original system's repositories keep them."""
    write(root, "README.md", "# ops scripts\n")
    # a script alone in its directory, with a lib/ of helpers and a symlink beside it
    write(root, "scripts/disk_cleanup/disk_cleanup.sh", DISK_CLEANUP, executable=True)
    write(root, "scripts/disk_cleanup/lib/common.sh", '# Description: shared helpers\nlog() { echo "$@"; }\n')
    (root / "scripts/disk_cleanup/cleanup.sh").symlink_to("disk_cleanup.sh")
    # two scripts in one directory, one by its header, one by its executable bit; a sourced helper is neither
    write(root, "scripts/db/backup.sh", "#!/bin/bash\n# Name: DB backup\n# @param db_name [string] 数据库名\n")
    write(root, "scripts/db/restore.sh", "#!/bin/bash\necho restore\n", executable=True)
    write(root, "scripts/db/functions.sh", "#!/bin/bash\nhelper() { :; }\n")
    # a python script with the same header, alone in its directory, with a generic name
    write(
        root,
        "tools/inspect/main.py",
        '#!/usr/bin/env python3\n# Name: 巡检\n# @param timeout 超时 (default: 30)\n"""Inspect hosts."""\n',
    )
    # a malformed header line: reported with its line, the rest parsed
    write(root, "bad/header.sh", "#!/bin/sh\n# Name: Bad\n# @param mode [strng] Mode\n# @param port\n")
    # libraries and tooling are never candidates, whatever their headers say
    write(root, "lib/shared.sh", "# Name: shared\n# @param x X\n", executable=True)
    write(root, ".github/ci.sh", "#!/bin/sh\n", executable=True)
    write(root, "deploy.sh", "#!/bin/sh\n# Name: Deploy everything\n", executable=True)
    # Ansible directories: yml, json, malformed, and one without spec or playbook
    write(root, "playbooks/nginx/survey.yml", NGINX_SURVEY)
    write(root, "playbooks/nginx/playbook.yml", "- hosts: all\n  roles: [nginx]\n")
    write(root, "playbooks/nginx/main.yml", "# not the entry: playbook.yml comes first\n")
    write(root, "playbooks/nginx/roles/nginx/tasks/main.yml", "- name: install\n  package: name=nginx\n")
    write(root, "playbooks/nginx/files/reload.sh", "#!/bin/sh\n# Name: reload\n", executable=True)
    write(root, "playbooks/redis/survey.json", json.dumps(REDIS_SURVEY, ensure_ascii=False, indent=2))
    write(root, "playbooks/redis/site.yml", "- hosts: redis\n")
    write(root, "playbooks/broken/survey.yaml", BROKEN_SURVEY)
    write(root, "playbooks/broken/deploy.yml", "- hosts: all\n")
    write(root, "playbooks/nospec/survey.yml", "name: No spec\n")


@pytest.fixture
def ops_repo(tmp_path: Path) -> Path:
    root = tmp_path / "ops"
    root.mkdir()
    build_ops_repository(root)
    commit_all(root, message="scripts")
    return root


def scan_by_path(repo_dir: Path, rev: str = "main") -> dict[str, Candidate]:
    with git.Repo(repo_dir) as repo:
        return {candidate.path: candidate for candidate in scan_git(repo, rev)}


def tree_size(root: Path, *paths: str) -> int:
    return sum(
        len(os.readlink(path)) if path.is_symlink() else path.stat().st_size
        for top in paths
        for path in [root / top, *(root / top).rglob("*")]
        if path.is_symlink() or path.is_file()
    )


def test_the_candidates_of_an_ops_repository(ops_repo: Path) -> None:
    found = scan_by_path(ops_repo)
    assert sorted(found) == [
        "bad/header.sh",
        "deploy.sh",
        "playbooks/broken",
        "playbooks/nginx",
        "playbooks/nospec",
        "playbooks/redis",
        "scripts/db/backup.sh",
        "scripts/db/restore.sh",
        "scripts/disk_cleanup/disk_cleanup.sh",
        "tools/inspect/main.py",
    ]
    json.dumps([candidate.to_json() for candidate in found.values()])  # plain JSON all the way down


def test_a_script_alone_in_its_directory_is_the_directory(ops_repo: Path) -> None:
    candidate = scan_by_path(ops_repo)["scripts/disk_cleanup/disk_cleanup.sh"]
    assert (candidate.original_path, candidate.entry_file) == ("scripts/disk_cleanup", "disk_cleanup.sh")
    assert (candidate.code, candidate.name, candidate.script_type) == ("disk_cleanup", "磁盘清理", "shell")
    assert candidate.description == "清理过期的日志和临时文件"
    assert candidate.file_count == 3  # the script, lib/common.sh and the symlink
    assert candidate.size == tree_size(ops_repo, "scripts/disk_cleanup")
    assert candidate.problems == ()


def test_inference_in_a_real_header(ops_repo: Path) -> None:
    candidate = scan_by_path(ops_repo)["scripts/disk_cleanup/disk_cleanup.sh"]
    assert {p.name: p.type for p in candidate.parameters} == {
        "report_dir": "text",
        "listen_port": "integer",
        "db_password": "password",
        "api_token": "password",
        "env": "select",
        "passport_no": "text",
        "retry_count": "integer",
        "keep": "integer",
    }
    env = next(p for p in candidate.parameters if p.name == "env")
    assert (env.options, env.required, env.label) == (("dev", "staging", "prod"), True, "目标环境")
    assert next(p for p in candidate.parameters if p.name == "keep").default == 7


def test_two_scripts_in_one_directory_are_each_the_file_alone(ops_repo: Path) -> None:
    found = scan_by_path(ops_repo)
    backup, restore = found["scripts/db/backup.sh"], found["scripts/db/restore.sh"]
    assert where_and_what(backup) == ("scripts/db/backup.sh", "backup.sh", "backup", "DB backup")
    assert (backup.file_count, backup.size) == (1, tree_size(ops_repo, "scripts/db/backup.sh"))
    assert [(p.name, p.type, p.label) for p in backup.parameters] == [("db_name", "text", "数据库名")]
    assert (restore.original_path, restore.name, restore.parameters) == ("scripts/db/restore.sh", "restore", ())


def test_a_python_script_with_a_generic_name_takes_its_directory_as_code(ops_repo: Path) -> None:
    candidate = scan_by_path(ops_repo)["tools/inspect/main.py"]
    assert (candidate.script_type, candidate.original_path, candidate.entry_file) == (
        "python",
        "tools/inspect",
        "main.py",
    )
    assert (candidate.code, candidate.name) == ("inspect", "巡检")
    assert [(p.name, p.type, p.default) for p in candidate.parameters] == [("timeout", "integer", 30)]


def test_a_script_at_the_root_is_the_file_alone(ops_repo: Path) -> None:
    candidate = scan_by_path(ops_repo)["deploy.sh"]
    assert (candidate.original_path, candidate.entry_file, candidate.file_count) == ("deploy.sh", "deploy.sh", 1)


def test_a_malformed_header_is_a_problem_with_its_line_and_the_scan_goes_on(ops_repo: Path) -> None:
    candidate = scan_by_path(ops_repo)["bad/header.sh"]
    assert [(p.name, p.type) for p in candidate.parameters] == [("mode", "text"), ("port", "integer")]
    [problem] = candidate.problems
    assert (problem.file, problem.line) == ("bad/header.sh", 3)
    assert "unknown type 'strng'" in problem.message


def test_ansible_directories_with_yml_and_json_surveys(ops_repo: Path) -> None:
    found = scan_by_path(ops_repo)
    nginx, redis = found["playbooks/nginx"], found["playbooks/redis"]
    assert where_and_what(nginx) == ("playbooks/nginx", "playbook.yml", "nginx", "Nginx 部署")
    assert (nginx.script_type, nginx.description, nginx.problems) == ("ansible", "安装并配置 nginx", ())
    assert [(p.name, p.type, p.required, p.options) for p in nginx.parameters] == [
        ("server_name", "text", True, ()),
        ("env", "select", False, ("dev", "prod")),
    ]
    assert (nginx.file_count, nginx.size) == (5, tree_size(ops_repo, "playbooks/nginx"))
    assert (redis.entry_file, redis.name, redis.problems) == ("site.yml", "Redis", ())
    assert [(p.name, p.type, p.default, p.options) for p in redis.parameters] == [
        ("port", "integer", 6379, ()),
        ("mode", "select", None, ("standalone", "cluster")),
    ]


def test_malformed_and_incomplete_surveys_are_problems_on_their_candidate(ops_repo: Path) -> None:
    found = scan_by_path(ops_repo)
    broken = found["playbooks/broken"]
    assert (broken.entry_file, broken.parameters) == ("deploy.yml", ())
    [problem] = broken.problems
    assert (problem.file, problem.line) == ("playbooks/broken/survey.yaml", 6)
    assert problem.message.startswith("invalid YAML")
    nospec = found["playbooks/nospec"]
    assert (nospec.name, nospec.entry_file, nospec.parameters) == ("No spec", None, ())
    assert [(p.file, p.line, p.message) for p in nospec.problems] == [
        ("playbooks/nospec/survey.yml", None, "the survey has no 'spec' list; the template has no parameters"),
        (
            "playbooks/nospec/survey.yml",
            None,
            "no playbook in playbooks/nospec: expected one of playbook.yml, main.yml, site.yml, deploy.yml, "
            "or another *.yml/*.yaml",
        ),
    ]


def test_the_object_database_is_read_not_the_work_tree_and_a_bare_mirror_scans_the_same(
    ops_repo: Path, tmp_path: Path
) -> None:
    before = [candidate.to_json() for candidate in scan_by_path(ops_repo).values()]
    write(ops_repo, "scripts/new/new.sh", "# Name: uncommitted\n", executable=True)
    (ops_repo / "deploy.sh").unlink()
    assert [candidate.to_json() for candidate in scan_by_path(ops_repo).values()] == before
    mirror = tmp_path / "mirror.git"
    git.Repo.clone_from(ops_repo, mirror, mirror=True).close()
    assert [candidate.to_json() for candidate in scan_by_path(mirror).values()] == before


def test_earlier_commits_and_unknown_revisions(ops_repo: Path) -> None:
    first = repositories.git(ops_repo, "rev-parse", "HEAD")
    write(ops_repo, "scripts/disk_cleanup/second.sh", "# Name: second\n")
    commit_all(ops_repo, message="scripts")
    assert scan_by_path(ops_repo)["scripts/disk_cleanup/disk_cleanup.sh"].original_path.endswith(".sh")
    assert scan_by_path(ops_repo, first)["scripts/disk_cleanup/disk_cleanup.sh"].original_path == "scripts/disk_cleanup"
    with git.Repo(ops_repo) as repo, pytest.raises(ScanError, match="revision 'nope' not found"):
        scan_git(repo, "nope")


def test_a_submodule_inside_a_candidate_is_a_problem(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    write(root, "jobs/sync/sync.sh", "#!/bin/sh\n", executable=True)
    commit = commit_all(root, message="scripts")
    repositories.git(root, "update-index", "--add", "--cacheinfo", f"160000,{commit},jobs/sync/vendor-tool")
    repositories.git(root, "commit", "-q", "-m", "add a gitlink")
    candidate = scan_by_path(root)["jobs/sync/sync.sh"]
    assert candidate.file_count == 1
    assert [(p.file, "submodule" in p.message) for p in candidate.problems] == [("jobs/sync/vendor-tool", True)]


def test_an_empty_repository_commit_has_no_candidates(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    commit_all(root, message="scripts")
    assert scan_by_path(root) == {}


ORIGINAL_SURVEY = (
    "name: Nginx部署配置\ndescription: 部署和配置Nginx Web服务器\nspec:\n"
    + SERVER_NAME_QUESTION
    + """\
  - type: integer
    variable: listen_port
    default: 80
    min: 1
    max: 65535
"""
)


def test_the_original_systems_layouts_scan_as_it_scanned_them(tmp_path: Path) -> None:
    root = tmp_path / "original"
    root.mkdir()
    # its test/playbooks: a survey, two playbooks of other names than the defaults, a template they render
    write(root, "test/playbooks/survey.yml", ORIGINAL_SURVEY)
    write(root, "test/playbooks/test_realtime.yml", "---\n- name: 实时日志\n  hosts: all\n  gather_facts: false\n")
    write(root, "test/playbooks/deploy_nginx.yml", "- name: 部署Nginx\n  hosts: all\n  become: true\n  tasks: []\n")
    write(root, "test/playbooks/templates/nginx_site.conf.j2", "server { listen {{ listen_port }}; }\n")
    write(root, "test/scripts/system_info.sh", "#!/bin/bash\n# Name: 系统信息\n", executable=True)
    # a playbook without a survey, whose role ships a script
    write(root, "ansible/site.yml", "- hosts: all\n  roles: [web]\n")
    write(root, "ansible/roles/web/tasks/main.yml", "- name: reload\n  script: reload.sh\n")
    write(root, "ansible/roles/web/files/reload.sh", "#!/bin/sh\n# Name: reload\n", executable=True)
    commit_all(root, message="scripts")
    found = scan_by_path(root)
    assert sorted(found) == ["ansible/site.yml", "test/playbooks", "test/scripts/system_info.sh"]
    nginx = found["test/playbooks"]
    assert (nginx.original_path, nginx.entry_file, nginx.name) == (
        "test/playbooks",
        "deploy_nginx.yml",
        "Nginx部署配置",
    )
    assert [(p.file, p.message) for p in nginx.problems] == [CHOSE_DEPLOY_NGINX]
    server_name = nginx.parameters[0].validation
    assert (server_name.min_length, server_name.max_length) == (3, 255)
    site = found["ansible/site.yml"]
    assert (site.script_type, site.original_path, site.entry_file, site.code, site.parameters) == (
        "ansible",
        "ansible",
        "site.yml",
        "ansible",
        (),
    )
    assert (site.file_count, site.size) == (3, tree_size(root, "ansible"))
