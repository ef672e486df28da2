"""The candidate rule and original_path suggestion of `scan`, on listings given directly."""

from __future__ import annotations

from app.scan.candidates import Candidate, ScanFile, scan
from app.scan.headers import HEADER_BYTES
from app.scan.survey import SURVEY_BYTES


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
    assert (root.original_path, root.code, root.name, root.entry_file, root.file_count) == (
        "",
        "whole_site",
        "Whole Site",
        "site.yml",
        3,
    )


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
