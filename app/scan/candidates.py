"""Candidate templates of a tree (DESIGN §3): which files and directories are candidates, and what each suggests.

The tree comes in as a listing (`ScanFile`) and a reader of file prefixes, so the same logic scans a Git tree
without a checkout (`app.scan.gitsource.scan_git`) or anything else that can list and read.

Candidates:

- Ansible: every directory, the root too, holding a regular file `survey.yml`, `survey.yaml` or `survey.json`
  (`app.scan.survey`). Its `original_path` is the directory; its entry is the first of playbook.yml, main.yml,
  site.yml, deploy.yml there (none is a problem).
- Script: a regular file named `*.sh` (shell) or `*.py` (python) that is executable (Git mode 100755) or has a
  header (a Name, Description or @param line, `app.scan.headers`), except
  - files inside an Ansible candidate: they belong to its playbook;
  - files with a directory named lib, libs, vendor, node_modules or __pycache__, or any hidden (`.`) component,
    on their path: helpers and tooling, which go along with the script that sits above them;
  - `__init__.py`.
  Symlinks are never candidates.
- A script's `original_path` is its directory when no other candidate lies in that directory or below it, and the
  directory is not the repository's root (a whole repository is rarely one template); otherwise the file alone.
  Its `entry_file` is the file's name either way.
- `code`: the file's stem, or the directory's name for an Ansible candidate and for a script whose candidate is
  its directory and whose stem says nothing (run, main, ...); lower-cased, other characters than `[a-z0-9_-]`
  become `_`; a name of none of those characters gives `template-<8 hex of the path's sha256>`.
  `name`: the header's or survey's, else the code.
- `size` and `file_count`: the regular files and symlinks under `original_path`, counted as the canonical tar will
  count them (a symlink's size is its target's length). A Git submodule there is a problem: import refuses it.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from app.scan.headers import HEADER_BYTES, parse_header
from app.scan.params import Parameter, Problem
from app.scan.survey import SURVEY_BYTES, SURVEY_NAMES, Survey, parse_survey

ScriptType = Literal["shell", "python", "ansible"]
SCRIPT_SUFFIXES: dict[str, ScriptType] = {".sh": "shell", ".py": "python"}
PLAYBOOKS = ("playbook.yml", "main.yml", "site.yml", "deploy.yml")
LIBRARY_DIRS = frozenset({"lib", "libs", "vendor", "node_modules", "__pycache__"})
GENERIC_STEMS = frozenset({"run", "main", "start", "entry", "index", "script"})

Reader = Callable[[str, int], bytes]
"""`read(path, limit)`: at most `limit` bytes from the start of the file at `path`."""

_NOT_CODE = re.compile(r"[^a-z0-9_-]+")


@dataclass(frozen=True)
class ScanFile:
    """One entry of the tree being scanned, at its `/`-separated path from the root."""

    path: str
    size: int
    executable: bool = False
    is_symlink: bool = False
    is_submodule: bool = False


@dataclass(frozen=True)
class Candidate:
    """A template the tree offers, as the import form would be pre-filled with it."""

    path: str
    """The script file, or the Ansible directory ('' for the root)."""
    original_path: str
    code: str
    name: str
    description: str
    script_type: ScriptType
    entry_file: str | None
    """Relative to `original_path`; None for an Ansible directory without a playbook."""
    parameters: tuple[Parameter, ...]
    size: int
    file_count: int
    problems: tuple[Problem, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "original_path": self.original_path,
            "code": self.code,
            "name": self.name,
            "description": self.description,
            "script_type": self.script_type,
            "entry_file": self.entry_file,
            "parameters": [parameter.to_json() for parameter in self.parameters],
            "size": self.size,
            "file_count": self.file_count,
            "problems": [problem.to_json() for problem in self.problems],
        }


def scan(files: Iterable[ScanFile], read: Reader) -> list[Candidate]:
    """The candidates of the tree listed by `files`, sorted by path; reads only scripts' headers and surveys."""
    listing = list(files)
    regular = {file.path: file for file in listing if not file.is_symlink and not file.is_submodule}
    submodules = [file.path for file in listing if file.is_submodule]
    surveys: dict[str, list[str]] = {}
    for path in sorted(regular):
        directory, name = _split(path)
        if name in SURVEY_NAMES:
            surveys.setdefault(directory, []).append(name)
    scripts = {}
    for path, file in sorted(regular.items()):
        if _script_type(path) is None or not _ancestors(_split(path)[0]).isdisjoint(surveys):
            continue
        header = parse_header(path, read(path, HEADER_BYTES))
        if file.executable or header.found:
            scripts[path] = header
    held: Counter[str] = Counter()
    for location in [_split(path)[0] for path in scripts] + list(surveys):
        held.update(_ancestors(location))
    totals = _totals(listing)

    found = []
    for path, header in scripts.items():
        directory, name = _split(path)
        whole_directory = directory != "" and held[directory] == 1
        original = directory if whole_directory else path
        stem = name.rsplit(".", 1)[0]
        code = _code(_split(directory)[1] if whole_directory and stem.lower() in GENERIC_STEMS else stem, path)
        size, count = totals[directory] if whole_directory else (regular[path].size, 1)
        found.append(
            Candidate(
                path=path,
                original_path=original,
                code=code,
                name=header.name or code,
                description=header.description,
                script_type=_script_type(path) or "shell",
                entry_file=name,
                parameters=header.parameters,
                size=size,
                file_count=count,
                problems=header.problems + _submodule_problems(submodules, original if whole_directory else None),
            )
        )
    for directory, names in surveys.items():
        found.append(_ansible(directory, names, regular, read, totals[directory], submodules))
    return sorted(found, key=lambda candidate: candidate.path)


def _ansible(
    directory: str,
    names: list[str],
    regular: dict[str, ScanFile],
    read: Reader,
    totals: tuple[int, int],
    submodules: list[str],
) -> Candidate:
    chosen, *ignored = sorted(names, key=SURVEY_NAMES.index)
    survey_path = _join(directory, chosen)
    problems = [Problem(_join(directory, other), None, f"ignored: {chosen} is the survey used") for other in ignored]
    if regular[survey_path].size > SURVEY_BYTES:
        size = regular[survey_path].size
        survey = Survey(
            "", "", (), (Problem(survey_path, None, f"{size:,} bytes; a survey may have {SURVEY_BYTES:,}"),)
        )
    else:
        survey = parse_survey(survey_path, read(survey_path, SURVEY_BYTES))
    problems.extend(survey.problems)
    entry = next((name for name in PLAYBOOKS if _join(directory, name) in regular), None)
    if entry is None:
        where = f"in {directory}" if directory else "at the repository root"
        problems.append(Problem(survey_path, None, f"no playbook {where}: expected one of {', '.join(PLAYBOOKS)}"))
    code = _code(_split(directory)[1] or survey.name, survey_path)
    return Candidate(
        path=directory,
        original_path=directory,
        code=code,
        name=survey.name or code,
        description=survey.description,
        script_type="ansible",
        entry_file=entry,
        parameters=survey.parameters,
        size=totals[0],
        file_count=totals[1],
        problems=tuple(problems) + _submodule_problems(submodules, directory),
    )


def _script_type(path: str) -> ScriptType | None:
    directory, name = _split(path)
    parts = directory.split("/") if directory else []
    if name == "__init__.py" or name.startswith(".") or any(_is_hidden_or_library(part) for part in parts):
        return None
    return next((kind for suffix, kind in SCRIPT_SUFFIXES.items() if name.endswith(suffix) and name != suffix), None)


def _is_hidden_or_library(part: str) -> bool:
    return part.startswith(".") or part in LIBRARY_DIRS


def _totals(listing: list[ScanFile]) -> dict[str, tuple[int, int]]:
    """(bytes, files) of every directory, counting everything below it."""
    sizes: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for file in listing:
        if file.is_submodule:
            continue
        for directory in _ancestors(_split(file.path)[0]):
            sizes[directory] += file.size
            counts[directory] += 1
    return {directory: (sizes[directory], counts[directory]) for directory in counts}


def _submodule_problems(submodules: list[str], directory: str | None) -> tuple[Problem, ...]:
    if directory is None:
        return ()
    return tuple(
        Problem(path, None, "a Git submodule: the import of this original_path will refuse it")
        for path in submodules
        if not directory or path.startswith(directory + "/")
    )


def _code(preferred: str, path: str) -> str:
    """A template code from a name: lower-case `[a-z0-9_-]`; a name with none of those (磁盘清理.sh) gives
    `template-` and a digest of the path, stable from scan to scan."""
    if code := _NOT_CODE.sub("_", preferred.lower()).strip("_-"):
        return code
    return "template-" + hashlib.sha256(path.encode()).hexdigest()[:8]


def _split(path: str) -> tuple[str, str]:
    """(directory, name); the directory of a top-level file is ''."""
    directory, _, name = path.rpartition("/")
    return directory, name


def _join(directory: str, name: str) -> str:
    return f"{directory}/{name}" if directory else name


def _ancestors(directory: str) -> set[str]:
    """The directory and every one above it, the root ('') included."""
    return set(_walk_up(directory))


def _walk_up(directory: str) -> Iterator[str]:
    while directory:
        yield directory
        directory = _split(directory)[0]
    yield ""
