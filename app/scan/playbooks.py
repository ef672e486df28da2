"""Ansible playbooks in a tree (DESIGN §3): which YAML files hold plays, and which one an Ansible directory runs.

A playbook is a `*.yml` or `*.yaml` file whose YAML is a list of plays: its first document is a sequence whose first
item is a mapping with a `hosts` or an `import_playbook` key (`ansible.builtin.import_playbook` too). Only the
first `PLAYBOOK_BYTES` are read and only the first item is judged, so a prefix cut mid-file still decides. That
tells a playbook from the other YAML of an Ansible project: a role's task list (mappings without `hosts`), vars,
inventories, Galaxy requirements, CI and compose files (mappings, or items without `hosts`).

Which files are worth reading (`may_be_playbook`) goes by the path alone: a `.yml`/`.yaml` name that is neither
hidden nor a survey, on a path without a hidden component and without a directory whose files are never plays:
`roles` (all of a role is the role's), `tasks`, `handlers`, `defaults`, `vars`, `meta`, `files`, `templates`,
`group_vars`, `host_vars`, `inventory`, `inventories`, `library`, `module_utils`, `filter_plugins`, `plugins`,
`collections`, `molecule`, and the library directories of scripts (`lib`, `vendor`, `node_modules`, ...).

The entry of an Ansible directory (`choose_entry`): the first of `DEFAULT_PLAYBOOKS` there; else the original
system's fallback, the first `*.yml`/`*.yaml` of the directory that is not a survey, ordered by name (the UTF-8
bytes of the name, as the canonical tar orders paths). One refinement: a file that holds no plays (say
`requirements.yml`) is passed over for a later one that does, and taken only when no file holds plays. Either
way a note on the candidate says which file was chosen, why, and which others there were.

Files that belong to a role or a playbook and are never templates of their own (`is_playbook_content`): anything
under `roles/<role>/files/` or `roles/<role>/templates/`, and under the `files/` or `templates/` directory beside a
playbook (in the directory that holds it), where Ansible looks them up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import yaml

from app.scan.params import Problem
from app.scan.survey import SURVEY_NAMES

PLAYBOOK_BYTES = 64 << 10
DEFAULT_PLAYBOOKS = ("playbook.yml", "main.yml", "site.yml", "deploy.yml")
"""The entry of an Ansible directory, in order of preference, when it holds one of them."""
YAML_SUFFIXES = (".yml", ".yaml")
PLAY_KEYS = frozenset({"hosts", "import_playbook", "ansible.builtin.import_playbook"})
NOT_PLAYBOOK_DIRS = frozenset(
    {
        "roles",
        "tasks",
        "handlers",
        "defaults",
        "vars",
        "meta",
        "files",
        "templates",
        "group_vars",
        "host_vars",
        "inventory",
        "inventories",
        "library",
        "module_utils",
        "filter_plugins",
        "plugins",
        "collections",
        "molecule",
        "lib",
        "libs",
        "vendor",
        "node_modules",
        "__pycache__",
    }
)
CONTENT_DIRS = frozenset({"files", "templates"})
"""What a role or a playbook copies or renders onto hosts: never templates of their own."""

Reader = Callable[[str, int], bytes]


def is_yaml_name(name: str) -> bool:
    """A `*.yml` or `*.yaml` file name (the suffix alone is no name)."""
    return any(name.endswith(suffix) and name != suffix for suffix in YAML_SUFFIXES)


def may_be_playbook(path: str) -> bool:
    """Whether the file at `path` is worth reading to see if it holds plays (rules in the module docstring)."""
    *directories, name = path.split("/")
    if not is_yaml_name(name) or name.startswith(".") or name in SURVEY_NAMES:
        return False
    return not any(part.startswith(".") or part in NOT_PLAYBOOK_DIRS for part in directories)


def holds_plays(data: bytes) -> bool:
    """Whether YAML text (maybe only its first bytes) is a list of plays: its first item is a mapping with a
    `hosts` or `import_playbook` key. Never raises on content."""
    text = data.decode("utf-8-sig", errors="replace")
    depth = 0  # collections open: 1 inside the list, 2 inside the first play
    nodes = 0  # nodes completed directly inside the first play: a key at each even count, a value at each odd
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.StreamStartEvent | yaml.DocumentStartEvent):
                continue
            if depth < 2:
                wanted = yaml.SequenceStartEvent if depth == 0 else yaml.MappingStartEvent
                if not isinstance(event, wanted):
                    return False  # no list, an empty one, or a list of something else than mappings
                depth += 1
                continue
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                continue
            if isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
                if depth == 1:
                    return False  # the first play ended without a play key
            elif depth == 2 and nodes % 2 == 0 and isinstance(event, yaml.ScalarEvent) and event.value in PLAY_KEYS:
                return True
            if depth == 2:
                nodes += 1
    except yaml.YAMLError:
        return False  # malformed before a play key, or cut off by the prefix before one
    return False


def choose_entry(directory: str, names: Iterable[str], read: Reader) -> tuple[str | None, tuple[Problem, ...]]:
    """The playbook an Ansible directory runs, chosen among the `names` of its files, and a note when the
    choice was the fallback's (rules in the module docstring). (None, ()) when no file could be the entry."""
    present = set(names)
    for name in DEFAULT_PLAYBOOKS:
        if name in present:
            return name, ()
    yamls = sorted(
        (name for name in present if is_yaml_name(name) and name not in SURVEY_NAMES), key=lambda n: n.encode()
    )
    if not yamls:
        return None, ()
    skipped = []
    for name in yamls:
        if holds_plays(read(_join(directory, name), PLAYBOOK_BYTES)):
            chosen, reason = name, "the first *.yml/*.yaml by name that holds plays"
            break
        skipped.append(name)
    else:
        chosen, reason = yamls[0], "the first *.yml/*.yaml by name, though none of them holds plays"
        skipped = []
    if skipped:
        reason += f" (passed over {', '.join(skipped)}: no plays)"
    others = [name for name in yamls if name != chosen and name not in skipped]
    listed = f" (others: {', '.join(others)})" if others else ""
    message = f"no {'/'.join(DEFAULT_PLAYBOOKS)}; chose {chosen}, {reason}{listed}"
    return chosen, (Problem(_join(directory, chosen), None, message),)


def is_playbook_content(path: str, playbook_directories: Iterable[str]) -> bool:
    """Whether the file at `path` is content a role or a playbook puts on hosts (`files/`, `templates/`)."""
    parts = path.split("/")[:-1]
    if any(part in CONTENT_DIRS and index >= 2 and parts[index - 2] == "roles" for index, part in enumerate(parts)):
        return True
    # A playbook looks up what its tasks copy and render in `files/` and `templates/` beside it.
    directories = set(playbook_directories)
    return any(part in CONTENT_DIRS and "/".join(parts[:index]) in directories for index, part in enumerate(parts))


def _join(directory: str, name: str) -> str:
    return f"{directory}/{name}" if directory else name
