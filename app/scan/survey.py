"""AWX surveys of Ansible directories (`survey.yml`, `survey.yaml` or `survey.json`) as normalized parameters.

Format: `{name, description, spec: [{type, variable, question_name, question_description, required, default,
choices, min, max}]}`. Each spec item becomes one `Parameter`:

- `variable` → name (an item without a valid one is skipped, with a problem); `question_name` → label (else the
  variable); `question_description` → description.
- `type`: AWX's text, textarea, password, integer, float, multiplechoice (→ select) and multiselect, or any name or
  alias of `params.TYPE_ALIASES`. A missing or unknown type is a problem, and the type is inferred from the
  variable, label and description (`params.infer_type`).
- `choices`: a list, or one string with a choice per line (AWX) → options; only the choice types keep them.
- `min`/`max` (AWX semantics): the value's bounds for integer and float → `validation.min`/`max`; the length's for
  text, textarea and password → `validation.min_length`/`max_length`; ignored for the choice types.
- `min_length`/`max_length` (the original system's keys): the length's bounds of text, textarea and password, and
  the number of choices of a multiselect, as `app.services.task_params` enforces them. They win over `min`/`max`
  when both are given (a disagreement is a problem). On other types, or negative, they are problems and ignored;
  a `min_length` above the `max_length` is a problem and neither is kept (no value could pass).
- `required`: true/false, missing means not required. `default`: coerced to the type (a multiselect default may be
  a string with a choice per line); AWX's `$encrypted$` placeholder for a password is no default.

Malformed YAML or JSON is one problem at the line where the parser stopped; a problem with one spec item names
the item's first line (known from the YAML node tree, which JSON is read through too when it can be).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from app.scan.params import (
    NAME,
    TYPE_NAMES,
    Parameter,
    ParamType,
    Problem,
    Validation,
    coerce_default,
    coerce_number,
    infer_type,
    resolve_type,
)

SURVEY_NAMES = ("survey.yml", "survey.yaml", "survey.json")
"""In order of preference when a directory holds more than one."""
SURVEY_BYTES = 1 << 20
AWX_ENCRYPTED = "$encrypted$"
MAX_SURVEY_DEPTH = 32
"""How deep mappings and lists of a survey may nest; a survey needs three or four levels."""
_LENGTH_TYPES = frozenset({"text", "textarea", "password", "multiselect"})
_LENGTH_KEYS = ("min_length", "max_length")


@dataclass(frozen=True)
class Survey:
    """What a survey file says: the template's name and description, its parameters, and what was wrong."""

    name: str
    description: str
    parameters: tuple[Parameter, ...]
    problems: tuple[Problem, ...]


def parse_survey(path: str, data: bytes) -> Survey:
    """The survey at `path` (its whole content); never raises on content."""
    problems: list[Problem] = []
    document = _load(path, data, problems)
    if problems:
        return Survey("", "", (), tuple(problems))
    if (cleaned := _without_nul(document)) != document:
        problems.append(Problem(path, None, "the survey holds NUL characters; they were left out"))
        document = cleaned
    if not isinstance(document, dict):
        problems.append(Problem(path, 1, "a survey is a mapping with name, description and spec; found no mapping"))
        return Survey("", "", (), tuple(problems))
    name = _text_field(document, "name", path, problems)
    description = _text_field(document, "description", path, problems)
    spec_line, item_lines = _spec_lines(data)
    spec = document.get("spec")
    parameters: dict[str, Parameter] = {}
    if spec is None:
        problems.append(Problem(path, None, "the survey has no 'spec' list; the template has no parameters"))
    elif not isinstance(spec, list):
        problems.append(Problem(path, spec_line, f"'spec' is a {type(spec).__name__}, not a list of questions"))
    else:
        for index, item in enumerate(spec):
            line = item_lines.get(index)
            parameter = _parameter(path, line, item, problems)
            if parameter is not None and parameters.setdefault(parameter.name, parameter) is not parameter:
                problems.append(Problem(path, line, f"variable {parameter.name!r} is asked twice; the first wins"))
    return Survey(name, description, tuple(parameters.values()), tuple(problems))


def _load(path: str, data: bytes, problems: list[Problem]) -> object:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        problems.append(Problem(path, line, "the survey is not UTF-8 text"))
        return None
    if path.endswith(".json"):
        try:
            return _checked(path, json.loads(text), problems)
        except json.JSONDecodeError as exc:
            problems.append(Problem(path, exc.lineno, f"invalid JSON: {exc.msg} (column {exc.colno})"))
            return None
        except RecursionError:
            problems.append(Problem(path, None, f"nested deeper than {MAX_SURVEY_DEPTH} levels; not read"))
            return None
    try:
        if (refused := _refused_yaml(text)) is not None:
            problems.append(Problem(path, *refused))
            return None
        return _checked(path, yaml.safe_load(text), problems)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = "; ".join(part for part in (exc.context, exc.problem) if part)
        problems.append(Problem(path, mark.line + 1 if mark else None, f"invalid YAML: {what}"))
    except yaml.YAMLError as exc:
        problems.append(Problem(path, None, f"invalid YAML: {exc}"))
    return None


def _refused_yaml(text: str) -> tuple[int | None, str] | None:
    """(line, why) when the YAML uses an alias or nests deeper than `MAX_SURVEY_DEPTH`, found from its events
    before anything is built: aliases let a few bytes stand for an exponentially large document, and deep nesting
    makes the loader recurse until Python gives up. A survey needs neither."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            return _line(event), f"a YAML alias (*{event.anchor}); a survey may not use aliases"
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_SURVEY_DEPTH:
                return _line(event), f"nested deeper than {MAX_SURVEY_DEPTH} levels; not read"
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return None


def _line(event: yaml.Event) -> int | None:
    return event.start_mark.line + 1 if event.start_mark is not None else None


def _checked(path: str, document: object, problems: list[Problem]) -> object:
    """`document`, or None with a problem when it nests deeper than `MAX_SURVEY_DEPTH`."""
    if _depth(document) > MAX_SURVEY_DEPTH:
        problems.append(Problem(path, None, f"nested deeper than {MAX_SURVEY_DEPTH} levels; not read"))
        return None
    return document


def _depth(document: object) -> int:
    """How deep mappings and lists nest in `document` (a scalar: 0), walked without recursion."""
    deepest, pending = 0, [(document, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, dict | list):
            deepest = max(deepest, depth)
            pending.extend((item, depth + 1) for item in (value.values() if isinstance(value, dict) else value))
    return deepest


def _without_nul(document: Any) -> Any:
    """The document with NUL left out of its strings (no database text holds one); its depth is bounded."""
    if isinstance(document, str):
        return document.replace("\0", "")
    if isinstance(document, dict):
        return {_without_nul(key): _without_nul(value) for key, value in document.items()}
    if isinstance(document, list):
        return [_without_nul(item) for item in document]
    return document


def _spec_lines(data: bytes) -> tuple[int | None, dict[int, int]]:
    """The 1-based lines of `spec` and of each of its items, from the YAML node tree (JSON too, mostly); none
    when the text does not compose as YAML."""
    try:
        root = yaml.compose(data.decode("utf-8-sig"), Loader=yaml.SafeLoader)
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError):
        return None, {}
    if not isinstance(root, yaml.MappingNode):
        return None, {}
    for key, value in root.value:
        if isinstance(key, yaml.ScalarNode) and key.value == "spec":
            items = value.value if isinstance(value, yaml.SequenceNode) else []
            return value.start_mark.line + 1, {index: item.start_mark.line + 1 for index, item in enumerate(items)}
    return None, {}


def _text_field(document: dict[object, object], key: str, path: str, problems: list[Problem]) -> str:
    value = document.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        problems.append(Problem(path, None, f"the survey's {key!r} is not text; ignored"))
        return ""
    return value.strip()


def _parameter(path: str, line: int | None, item: object, problems: list[Problem]) -> Parameter | None:
    if not isinstance(item, dict):
        problems.append(Problem(path, line, "a spec item is not a mapping; skipped"))
        return None
    variable = item.get("variable")
    if not isinstance(variable, str) or not NAME.fullmatch(variable):
        problems.append(Problem(path, line, f"variable {variable!r} is not a valid name; the question is skipped"))
        return None
    label = str(item.get("question_name") or "").strip() or variable
    description = str(item.get("question_description") or "").strip()

    def report(message: str) -> None:
        problems.append(Problem(path, line, f"{variable}: {message}"))

    choices = _choices(item.get("choices"), report)
    raw_type = item.get("type")
    declared = resolve_type(raw_type) if isinstance(raw_type, str) else None
    kind: ParamType = declared or infer_type(variable, f"{label} {description}", has_options=bool(choices))
    if declared is None:
        given = "no type" if raw_type is None else f"unknown type {raw_type!r}"
        report(f"{given}; expected one of {TYPE_NAMES} or multiplechoice; the type was inferred as {kind}")
    if kind in ("select", "multiselect") and not choices:
        report(f"a {kind} needs choices; taken as text")
        kind = "text"
    options = choices if kind in ("select", "multiselect") else ()
    raw_default = item.get("default")
    if kind == "password" and raw_default == AWX_ENCRYPTED:
        raw_default = None  # AWX exports stored passwords as this placeholder, never as the value
    default, error = coerce_default(kind, raw_default, options)
    if error:
        report(f"{error}; no default taken")
    return Parameter(
        name=variable,
        type=kind,
        label=label,
        description=description,
        required=_required(item.get("required"), report),
        default=default,
        options=options,
        validation=_validation(kind, item, report),
    )


def _choices(raw: object, report: Callable[[str], None]) -> tuple[str, ...]:
    if raw is None or raw == "":
        return ()
    if isinstance(raw, str):
        items = raw.split("\n")
    elif isinstance(raw, list) and all(isinstance(item, str | int | float) for item in raw):
        items = [str(item) for item in raw]
    else:
        report("'choices' is neither a list nor text with a choice per line; ignored")
        return ()
    return tuple(dict.fromkeys(item.strip() for item in items if item.strip()))


def _required(raw: object, report: Callable[[str], None]) -> bool:
    if raw is None or isinstance(raw, bool):
        return bool(raw)
    if isinstance(raw, str) and raw.strip().lower() in ("true", "false"):
        return raw.strip().lower() == "true"
    report(f"'required' is {raw!r}, not true or false; taken as false")
    return False


def _validation(kind: ParamType, item: dict[object, object], report: Callable[[str], None]) -> Validation:
    if kind not in _LENGTH_TYPES:
        for key in _LENGTH_KEYS:
            if item.get(key) not in (None, ""):
                report(f"{key!r} applies to text, textarea, password and multiselect, not {kind}; ignored")
    if kind in ("integer", "float"):
        low, high = (_number(item, key, integer=kind == "integer", report=report) for key in ("min", "max"))
        return Validation(min=low, max=high)
    if kind not in _LENGTH_TYPES:
        return Validation()
    shortest = _length(kind, item, "min_length", "min", report)
    longest = _length(kind, item, "max_length", "max", report)
    if shortest is not None and longest is not None and shortest > longest:
        report(f"min_length {shortest} is above max_length {longest}: no value could pass; both ignored")
        return Validation()
    return Validation(min_length=shortest, max_length=longest)


def _length(
    kind: ParamType, item: dict[object, object], key: str, awx_key: str, report: Callable[[str], None]
) -> int | None:
    """A length bound: `key` (min_length, max_length) when given, else AWX's `awx_key` (min, max) for text."""
    named = _number(item, key, integer=True, report=report)
    awx = None if kind == "multiselect" else _number(item, awx_key, integer=True, report=report)
    if named is not None and awx is not None and named != awx:
        report(f"{awx_key!r} {awx} and {key!r} {named} disagree; {key} is used")
    length = named if named is not None else awx
    if length is not None and length < 0:
        report(f"{key if named is not None else awx_key!r} {length} is negative; ignored")
        return None
    return None if length is None else int(length)


def _number(
    item: dict[object, object], key: str, *, integer: bool, report: Callable[[str], None]
) -> int | float | None:
    value, error = coerce_number(item.get(key), integer=integer)
    if error:
        report(f"{key!r} {error}; ignored")
    return value
