"""Candidate templates of a tree (DESIGN §3): which files and directories are candidates, and what each suggests.

The tree comes in as a listing (`ScanFile`) and a reader of file prefixes, so the same logic scans a Git tree
without a checkout (`app.scan.gitsource.scan_git`) or anything else that can list and read.

Candidates:

- Ansible: every directory, the root too, holding a regular file `survey.yml`, `survey.yaml` or `survey.json`
  (`app.scan.survey`). Its `original_path` is the directory; its entry is the first of playbook.yml, main.yml,
  site.yml, deploy.yml there, else the first other `*.yml`/`*.yaml` by name, preferring one that holds plays, with
  a note saying which was chosen (`app.scan.playbooks.choose_entry`); no YAML file at all is a problem.
- Playbook: a `*.yml`/`*.yaml` file outside Ansible directories that holds a list of plays (`app.scan.playbooks`:
  which paths are read, and how little), as an Ansible candidate without parameters. Its `original_path` is its
  directory, the root too (a playbook needs the roles, vars and files beside it), shared by the playbooks of that
  directory, when no script or Ansible directory lies in it or below; otherwise the file alone. `entry_file` is
  the file's name.
- Script: a regular file named `*.sh` (shell) or `*.py` (python) that is executable (Git mode 100755) or has a
  header (a Name, Description or @param line, `app.scan.headers`), except
  - files inside an Ansible candidate: they belong to its playbook;
  - files a role or a playbook puts on hosts: under `roles/<role>/files/` or `roles/<role>/templates/`, or under
    the `files/` or `templates/` beside a playbook;
  - files with a directory named lib, libs, vendor, node_modules or __pycache__, or any hidden (`.`) component,
    on their path: helpers and tooling, which go along with the script that sits above them;
  - `__init__.py`.
  Symlinks are never candidates.
- A script's `original_path` is its directory when no other candidate lies in that directory or below it, and the
  directory is not the repository's root (a whole repository is rarely one template); otherwise the file alone.
  Its `entry_file` is the file's name either way.
- `code`: the file's stem, or the directory's name for an Ansible directory, for a script whose candidate is its
  directory and whose stem says nothing (run, main, ...), and for a playbook alone in the directory it takes whose
  stem says nothing (site, playbook, main, ...); lower-cased, other characters than `[a-z0-9_-]` become `_`; a name
  of none of those characters gives `template-<8 hex of the path's sha256>`.
  `name`: the header's or survey's, else the code.
- `size` and `file_count`: the regular files and symlinks under `original_path`, counted as the canonical tar will
  count them (a symlink's size is its target's length). A Git submodule there is a problem: import refuses it.
- Given the server's import limits, a candidate whose tar would be too large or hold too many files has a problem
  with the figures (`app.scan.limits`), as the import would refuse it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from app.scan.headers import HEADER_BYTES, Header, parse_header
from app.scan.limits import LimitCheck
from app.scan.params import Parameter, Problem, json_object
from app.scan.playbooks import (
    DEFAULT_PLAYBOOKS,
    PLAYBOOK_BYTES,
    choose_entry,
    holds_plays,
    is_playbook_content,
    may_be_playbook,
)
from app.scan.survey import SURVEY_BYTES, SURVEY_NAMES, Survey, parse_survey
from storage.canonical import Limits
from worker.protocol import ScriptType

SCRIPT_SUFFIXES: dict[str, ScriptType] = {".sh": "shell", ".py": "python"}
PLAYBOOKS = DEFAULT_PLAYBOOKS
LIBRARY_DIRS = frozenset({"lib", "libs", "vendor", "node_modules", "__pycache__"})
GENERIC_STEMS = frozenset({"run", "main", "start", "entry", "index", "script"})
GENERIC_PLAYBOOK_STEMS = GENERIC_STEMS | {"site", "playbook"}

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
        return dataclasses.asdict(self, dict_factory=json_object)


def scan(files: Iterable[ScanFile], read: Reader, limits: Limits | None = None) -> list[Candidate]:
    """The candidates of the tree listed by `files`, sorted by path; reads only scripts' headers, surveys and
    the first bytes of YAML files that may be playbooks. With `limits` (the server's import limits), a
    candidate the import would refuse for its size or file count says so in its problems."""
    tree = _Tree(list(files), read, limits)
    surveys = {directory: [name for name in names if name in SURVEY_NAMES] for directory, names in tree.names.items()}
    surveys = {directory: names for directory, names in surveys.items() if names}

    def in_ansible_directory(path: str) -> bool:
        return not _ancestors(_split(path)[0]).isdisjoint(surveys)

    playbooks: dict[str, list[str]] = {}
    for path in sorted(tree.regular):
        if may_be_playbook(path) and not in_ansible_directory(path) and holds_plays(read(path, PLAYBOOK_BYTES)):
            directory, name = _split(path)
            playbooks.setdefault(directory, []).append(name)
    scripts = {}
    for path, file in sorted(tree.regular.items()):
        if _script_type(path) is None or in_ansible_directory(path) or is_playbook_content(path, playbooks):
            continue
        header = parse_header(path, read(path, HEADER_BYTES))
        if file.executable or header.found:
            scripts[path] = header
    held: Counter[str] = Counter()
    for location in [_split(path)[0] for path in scripts] + list(surveys) + list(playbooks):
        held.update(_ancestors(location))

    found = [_script(path, header, held, tree) for path, header in scripts.items()]
    found.extend(_ansible(directory, names, tree) for directory, names in surveys.items())
    for directory, names in playbooks.items():
        found.extend(_playbook(directory, name, names, held, tree) for name in names)
    return sorted(found, key=lambda candidate: candidate.path)


class _Tree:
    """The tree being scanned, indexed once: its files, directories and sizes, and what the import would pack."""

    def __init__(self, listing: list[ScanFile], read: Reader, limits: Limits | None) -> None:
        self.read = read
        self.regular = {file.path: file for file in listing if not file.is_symlink and not file.is_submodule}
        self.names: dict[str, list[str]] = {}
        """The regular files' names in each directory, sorted."""
        for path in sorted(self.regular):
            directory, name = _split(path)
            self.names.setdefault(directory, []).append(name)
        self.submodules = [file.path for file in listing if file.is_submodule]
        self.totals = _totals(listing)
        packed = [(file.path, 0 if file.is_symlink else file.size) for file in listing if not file.is_submodule]
        self.limits = LimitCheck(packed, limits)

    def extent(self, original_path: str, whole_directory: bool) -> tuple[int, int, tuple[Problem, ...]]:
        """Size and file count of `original_path` (a directory, or a file alone), and what the import would
        refuse in it: Git submodules, and the server's limits."""
        if not whole_directory:
            return self.regular[original_path].size, 1, self.limits.problems(original_path, False)
        size, count = self.totals.get(original_path, (0, 0))
        problems = _submodule_problems(self.submodules, original_path) + self.limits.problems(original_path, True)
        return size, count, problems


def _script(path: str, header: Header, held: Counter[str], tree: _Tree) -> Candidate:
    directory, name = _split(path)
    whole_directory = directory != "" and held[directory] == 1
    original = directory if whole_directory else path
    stem = name.rsplit(".", 1)[0]
    code = _code(_split(directory)[1] if whole_directory and stem.lower() in GENERIC_STEMS else stem, path)
    size, count, problems = tree.extent(original, whole_directory)
    return Candidate(
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
        problems=header.problems + problems,
    )


def _ansible(directory: str, names: list[str], tree: _Tree) -> Candidate:
    chosen, *ignored = sorted(names, key=SURVEY_NAMES.index)
    survey_path = _join(directory, chosen)
    problems = [Problem(_join(directory, other), None, f"ignored: {chosen} is the survey used") for other in ignored]
    if tree.regular[survey_path].size > SURVEY_BYTES:
        size = tree.regular[survey_path].size
        survey = Survey(
            "", "", (), (Problem(survey_path, None, f"{size:,} bytes; a survey may have {SURVEY_BYTES:,}"),)
        )
    else:
        survey = parse_survey(survey_path, tree.read(survey_path, SURVEY_BYTES))
    problems.extend(survey.problems)
    entry, notes = choose_entry(directory, tree.names[directory], tree.read)
    problems.extend(notes)
    if entry is None:
        where = f"in {directory}" if directory else "at the repository root"
        expected = f"one of {', '.join(PLAYBOOKS)}, or another *.yml/*.yaml"
        problems.append(Problem(survey_path, None, f"no playbook {where}: expected {expected}"))
    code = _code(_split(directory)[1] or survey.name, survey_path)
    size, count, refused = tree.extent(directory, True)
    return Candidate(
        path=directory,
        original_path=directory,
        code=code,
        name=survey.name or code,
        description=survey.description,
        script_type="ansible",
        entry_file=entry,
        parameters=survey.parameters,
        size=size,
        file_count=count,
        problems=tuple(problems) + refused,
    )


def _playbook(directory: str, name: str, names: list[str], held: Counter[str], tree: _Tree) -> Candidate:
    # A playbook needs the roles, vars and files beside it: it takes its directory (the root too), shared with
    # the other playbooks there (`names`), when no script or Ansible directory lies in it or below.
    whole_directory = held[directory] == 1
    path = _join(directory, name)
    original = directory if whole_directory else path
    stem = name.rsplit(".", 1)[0]
    says_nothing = whole_directory and len(names) == 1 and stem.lower() in GENERIC_PLAYBOOK_STEMS
    code = _code(_split(directory)[1] or stem if says_nothing else stem, path)
    size, count, problems = tree.extent(original, whole_directory)
    return Candidate(
        path=path,
        original_path=original,
        code=code,
        name=code,
        description="",
        script_type="ansible",
        entry_file=name,
        parameters=(),
        size=size,
        file_count=count,
        problems=problems,
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


def _submodule_problems(submodules: list[str], directory: str) -> tuple[Problem, ...]:
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
