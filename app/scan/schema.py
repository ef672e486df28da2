"""The parameter schema of one template as the scan reads it: `read_schema`.

An import or a sync that is not given parameters takes the schema a scan shows for the same path and entry:
- shell and python: the `@param` lines of the entry file's header (`app.scan.headers`);
- ansible: the survey beside the playbook (`survey.yml`, `survey.yaml` or `survey.json`, in that order of
  preference, in the template's directory; `app.scan.survey`); a directory without one has no parameters.

It reads the objects straight from the Git object database (no work tree, no listing of the tree), at most as many
bytes as the scan reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import git

from app.scan.headers import HEADER_BYTES, parse_header
from app.scan.params import Parameter, Problem
from app.scan.survey import SURVEY_BYTES, SURVEY_NAMES, parse_survey


@dataclass(frozen=True)
class ScannedSchema:
    """The parameters read, and what was wrong with the header or survey they came from (as the scan says it)."""

    parameters: tuple[Parameter, ...]
    problems: tuple[Problem, ...]
    read_from: str | None
    """The file the schema was read from (its path in the repository), or None when there was none to read."""

    def parameters_json(self) -> list[dict[str, object]]:
        return [parameter.to_json() for parameter in self.parameters]


def read_schema(
    repo: git.Repo, tree_id: str, original_path: str, entry_file: str, script_type: str, *, is_file: bool
) -> ScannedSchema:
    """The schema of the template whose content is the tree (or, `is_file`, the single blob) `tree_id`, found at
    `original_path` in the repository, with `entry_file` relative to it."""
    if script_type == "ansible":
        if is_file:
            return ScannedSchema((), (), None)
        for name in SURVEY_NAMES:
            data = _read_member(repo, tree_id, name, SURVEY_BYTES + 1)
            if data is None:
                continue
            path = _join(original_path, name)
            if len(data) > SURVEY_BYTES:
                problem = Problem(path, None, f"over {SURVEY_BYTES:,} bytes; a survey may have {SURVEY_BYTES:,}")
                return ScannedSchema((), (problem,), path)
            survey = parse_survey(path, data)
            return ScannedSchema(survey.parameters, survey.problems, path)
        return ScannedSchema((), (), None)
    if is_file:
        data = _read_blob(repo, tree_id, HEADER_BYTES)
        path = original_path
    else:
        data = _read_member(repo, tree_id, entry_file, HEADER_BYTES)
        path = _join(original_path, entry_file)
    if data is None:
        return ScannedSchema((), (), None)
    header = parse_header(path, data)
    return ScannedSchema(header.parameters, header.problems, path)


def _read_member(repo: git.Repo, tree_id: str, member: str, limit: int) -> bytes | None:
    """At most `limit` bytes of the regular file `member` (a `/`-separated path) of the tree, or None."""
    try:
        item = git.Tree(repo, bytes.fromhex(tree_id), mode=0o040000, path="") / member
    except KeyError:
        return None
    if item.type != "blob" or item.mode == 0o120000:  # a directory, a submodule or a symlink: nothing to read
        return None
    return _read_blob(repo, item.hexsha, limit)


def _read_blob(repo: git.Repo, blob_id: str, limit: int) -> bytes:
    stream = repo.odb.stream(bytes.fromhex(blob_id))
    return bytes(stream.read(min(limit, stream.size)))


def _join(directory: str, name: str) -> str:
    return f"{directory}/{name}" if directory else name
