"""The candidate rule and original_path suggestion of `scan`, on listings given directly."""

from __future__ import annotations

from app.scan.candidates import Candidate, ScanFile, scan
from app.scan.headers import HEADER_BYTES
from app.scan.playbooks import PLAYBOOK_BYTES
from app.scan.survey import SURVEY_BYTES
from storage.canonical import Limits
from storage.tarformat import archive_size
from tests.support.candidates import where_and_what
from tests.support.original_system import CHOSE_DEPLOY_NGINX


class Tree:
    """A listing with contents, and a record of what the scan read."""

    def __init__(self, files: dict[str, str | bytes], executable: frozenset[str] = frozenset()) -> None:
        self.contents = {path: text.encode() if isinstance(text, str) else text for path, text in files.items()}
        self.executable = executable
        self.reads: list[tuple[str, int]] = []

    def listing(self) -> list[ScanFile]:
        return [ScanFile(path, len(data), executable=path in self.executable) for path, data in self.contents.items()]

    def read(self, path: str, limit: int) -> bytes:
        self.reads.append((path, limit))
        return self.contents[path][:limit]

    def scan(self) -> dict[str, Candidate]:
        return {candidate.path: candidate for candidate in scan(self.listing(), self.read)}


def test_only_script_headers_and_surveys_are_read_within_their_limits() -> None:
    tree = Tree(
        {
            "big/data.bin": b"\0" * 100_000,
            "big/notes.md": "# Name: not a script\n",
            "big/run.sh": "#!/bin/sh\n# Name: Run\n" + "echo\n" * 50_000,
            "play/survey.yml": "spec: []\n",
            "play/main.yml": "- hosts: all\n",
            "play/tasks/x.sh": "# Name: part of the playbook\n",
            "lib/tool.py": "# Name: library\n",
        },
        executable=frozenset({"big/run.sh", "lib/tool.py"}),
    )
    found = tree.scan()
    assert sorted(found) == ["big/run.sh", "play"]
    assert tree.reads == [("big/run.sh", HEADER_BYTES), ("play/survey.yml", SURVEY_BYTES)]
    assert found["big/run.sh"].size == sum(len(data) for path, data in tree.contents.items() if path.startswith("big/"))


def test_a_directory_holding_another_candidate_below_it_gives_the_file_alone() -> None:
    found = Tree(
        {
            "ops/check.sh": "# Name: check\n",
            "ops/helpers.txt": "x\n",
            "ops/roles/survey.json": '{"spec": []}',
            "ops/roles/site.yml": "- hosts: all\n",
            "solo/deep/solo.sh": "# Name: solo\n",
            "solo/deep/conf/a.ini": "a=1\n",
        }
    ).scan()
    assert found["ops/check.sh"].original_path == "ops/check.sh"
    assert found["ops/roles"].original_path == "ops/roles"
    assert (found["solo/deep/solo.sh"].original_path, found["solo/deep/solo.sh"].file_count) == ("solo/deep", 2)


def test_an_ansible_repository_root_takes_in_every_script() -> None:
    found = Tree(
        {
            "survey.yaml": "name: Whole Site\nspec: []\n",
            "site.yml": "- hosts: all\n",
            "scripts/helper.sh": "# Name: helper\n",
        },
        executable=frozenset({"scripts/helper.sh"}),
    ).scan()
    assert list(found) == [""]
    root = found[""]
    assert where_and_what(root) == ("", "site.yml", "whole_site", "Whole Site")
    assert root.file_count == 3


def test_several_surveys_in_one_directory_and_an_oversized_one() -> None:
    found = Tree(
        {
            "a/survey.json": '{"spec": []}',
            "a/survey.yml": "name: A\nspec: []\n",
            "a/playbook.yml": "- hosts: all\n",
            "b/survey.yml": "#" * (SURVEY_BYTES + 1),
            "b/main.yml": "- hosts: all\n",
        }
    ).scan()
    assert found["a"].name == "A"
    assert [(p.file, p.message) for p in found["a"].problems] == [
        ("a/survey.json", "ignored: survey.yml is the survey used")
    ]
    assert [p.message for p in found["b"].problems] == ["1,048,577 bytes; a survey may have 1,048,576"]


def test_which_files_are_scripts() -> None:
    found = Tree(
        {
            "a/plain.py": "import os\n",
            "a/__init__.py": "# Name: package\n",
            "a/tool.py": "print('hi')\n",
            "b/.hidden.sh": "# Name: hidden\n",
            "c/vendor/x.sh": "# Name: vendored\n",
            "c/node_modules/y.sh": "# Name: npm\n",
            "d/script.bash": "# Name: other suffix\n",
            "e/磁盘清理.sh": "# Name: 磁盘清理\n",
        },
        executable=frozenset({"a/tool.py"}),
    ).scan()
    assert sorted(found) == ["a/tool.py", "e/磁盘清理.sh"]
    chinese = found["e/磁盘清理.sh"]
    assert chinese.code.startswith("template-")
    assert len(chinese.code) == len("template-") + 8
    assert chinese.name == "磁盘清理"


def test_symlinks_are_counted_but_never_candidates() -> None:
    listing = [
        ScanFile("s/real.sh", 10, executable=True),
        ScanFile("s/link.sh", 7, is_symlink=True),
        ScanFile("s/survey.yml", 9, is_symlink=True),
    ]
    contents = {"s/real.sh": b"#!/bin/sh\n"}
    [candidate] = scan(listing, lambda path, limit: contents[path][:limit])
    assert (candidate.path, candidate.original_path, candidate.size, candidate.file_count) == (
        "s/real.sh",
        "s",
        26,
        3,
    )


def test_an_ansible_directory_without_a_default_playbook_names_the_one_chosen() -> None:
    tree = Tree(
        {
            "test/playbooks/survey.yml": "name: Nginx部署配置\nspec: []\n",
            "test/playbooks/test_realtime.yml": "- hosts: all\n",
            "test/playbooks/deploy_nginx.yml": "- name: Deploy nginx\n  hosts: web\n",
            "test/playbooks/templates/nginx_site.conf.j2": "server {}\n",
        }
    )
    [candidate] = tree.scan().values()
    assert (candidate.path, candidate.original_path, candidate.entry_file) == (
        "test/playbooks",
        "test/playbooks",
        "deploy_nginx.yml",
    )
    assert [(p.file, p.message) for p in candidate.problems] == [CHOSE_DEPLOY_NGINX]


def test_a_playbook_without_a_survey_is_a_candidate_without_parameters() -> None:
    tree = Tree(
        {
            "ansible/web/site.yml": "- hosts: web\n  roles: [nginx]\n",
            "ansible/web/roles/nginx/tasks/main.yml": "- name: install\n  package: name=nginx\n",
            "ansible/web/group_vars/all.yml": "- hosts: not a play, a vars file\n",
            "ops/deploy_db.yml": "- hosts: db\n",
            "ops/upgrade_db.yaml": "- import_playbook: deploy_db.yml\n",
            "ops/vars.yml": "db_port: 5432\n",
            "ops/requirements.yml": "- src: geerlingguy.postgresql\n",
            "mixed/check.sh": "#!/bin/sh\n# Name: check\n",
            "mixed/patch.yml": "- hosts: all\n",
            ".github/workflows/ci.yml": "on: push\n",
            "docker-compose.yml": "services: {}\n",
        }
    )
    found = tree.scan()
    assert sorted(found) == [
        "ansible/web/site.yml",
        "mixed/check.sh",
        "mixed/patch.yml",
        "ops/deploy_db.yml",
        "ops/upgrade_db.yaml",
    ]
    web = found["ansible/web/site.yml"]
    assert where_and_what(web) == ("ansible/web", "site.yml", "web", "web")
    assert (web.script_type, web.parameters, web.problems, web.file_count) == ("ansible", (), (), 3)
    deploy, upgrade = found["ops/deploy_db.yml"], found["ops/upgrade_db.yaml"]
    # two playbooks of one directory share it, each with its own entry
    assert [(c.original_path, c.entry_file, c.code) for c in (deploy, upgrade)] == [
        ("ops", "deploy_db.yml", "deploy_db"),
        ("ops", "upgrade_db.yaml", "upgrade_db"),
    ]
    # beside a script, each is the file alone, as two scripts are
    assert (found["mixed/patch.yml"].original_path, found["mixed/check.sh"].original_path) == (
        "mixed/patch.yml",
        "mixed/check.sh",
    )
    read = {path for path, _ in tree.reads}
    assert {path for path in read if path.endswith((".yml", ".yaml"))} == {
        "ops/deploy_db.yml",
        "ops/upgrade_db.yaml",
        "ops/vars.yml",
        "ops/requirements.yml",
        "mixed/patch.yml",
        "ansible/web/site.yml",
        "docker-compose.yml",
    }
    assert {limit for path, limit in tree.reads if path.endswith((".yml", ".yaml"))} == {PLAYBOOK_BYTES}


def test_a_playbook_at_the_root_takes_the_whole_repository_unless_it_shares_it() -> None:
    alone = Tree({"site.yml": "- hosts: all\n", "roles/app/tasks/main.yml": "- debug: msg=x\n"}).scan()
    assert (alone["site.yml"].original_path, alone["site.yml"].code) == ("", "site")
    shared = Tree({"site.yml": "- hosts: all\n", "tools/fix.sh": "# Name: fix\n"}).scan()
    assert (shared["site.yml"].original_path, shared["site.yml"].file_count) == ("site.yml", 1)


def test_files_and_templates_of_roles_and_playbooks_are_not_scripts() -> None:
    found = Tree(
        {
            "roles/nginx/files/reload.sh": "#!/bin/sh\n# Name: reload nginx\n",
            "roles/nginx/templates/check.py": "# Name: rendered check\n",
            "roles/nginx/tasks/main.yml": "- name: reload\n  script: reload.sh\n",
            "deploy/site.yml": "- hosts: all\n",
            "deploy/files/bootstrap.sh": "# Name: bootstrap\n",
            "deploy/templates/cron/job.sh": "# Name: cron job\n",
            "scripts/files/cleanup.sh": "# Name: cleanup\n",
        },
        executable=frozenset({"roles/nginx/files/reload.sh"}),
    ).scan()
    assert sorted(found) == ["deploy/site.yml", "scripts/files/cleanup.sh"]
    assert found["deploy/site.yml"].original_path == "deploy"


def test_candidates_over_the_servers_limits_say_so_as_the_import_would() -> None:
    tree = Tree(
        {
            "big/big.sh": "# Name: big\n" + "#" * 20_000,
            "many/run.sh": "# Name: many\n",
            **{f"many/data/{index}.txt": "x" for index in range(5)},
            "small/small.sh": "# Name: small\n",
            "play/survey.yml": "spec: []\n",
            "play/main.yml": "- hosts: all\n",
            "play/files/blob.bin": "\0" * 30_000,
        }
    )
    listing, limits = tree.listing(), Limits(max_bytes=20_480, max_files=4)
    found = {candidate.path: candidate for candidate in scan(listing, tree.read, limits)}
    by_path = {path: [(p.file, p.message) for p in candidate.problems] for path, candidate in found.items()}
    bytes_problem = "the server imports at most 20,480 (AHOP_MAX_TEMPLATE_BYTES)"
    assert by_path == {
        "big/big.sh": [("big", f"makes a tar of 30,720 bytes; {bytes_problem}")],
        "many/run.sh": [("many", "6 files; the server imports at most 4 (AHOP_MAX_TEMPLATE_FILES)")],
        "small/small.sh": [],
        "play": [("play", f"makes a tar of 40,960 bytes; {bytes_problem}")],
    }
    # the figure is the one the import refuses with: the canonical tar of the candidate's files
    big = [("big.sh", len(tree.contents["big/big.sh"]))]
    assert archive_size(big) == 30_720
    assert all(not candidate.problems for candidate in scan(listing, tree.read))
