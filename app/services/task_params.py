"""The parameters a task runs with: an operator's values checked against a template version's parameter schema.

The schema is the list of `app.scan.params.Parameter.to_json` dicts stored with the version. `validate_params`
checks every given value, applies defaults and returns the values coerced to their declared types, in schema order.
It reports EVERY bad field at once in one `InvalidInput`, keyed `params.<name>`.

Presence:

- A name the schema does not declare is refused ("unknown parameter; expected one of: a, b").
- `None` (JSON null) is "not given". So is a blank string for integer, float, boolean and select, where it cannot
  be a value (`-p count=` on the CLI). For text, textarea and password `""` is a value; for multiselect `""` is
  the empty choice, like `[]`.
- A parameter not given takes its default, which goes through the same coercion and checks as a given value (a
  template whose default breaks its own limits is reported for that parameter, so the operator can give a value).
  A default of null, `""` or `[]` is no default. With no default, a required parameter is an error and an optional one
  is left out of the result.
- A required text, textarea, password or multiselect parameter must not end up empty (`""`, `[]`, `" , "`).

Coercion (operators' values are JSON, often strings from `-p key=value`):

    integer      an int, a JSON number with no fraction (42.0), or a string of digits with an optional sign and
                 surrounding spaces (" 42 "); not "4.2", not "1e3", and a boolean is no integer
    float        an int or float, or a string Python's float() reads ("1.5", "3" → 3.0); never nan or inf
    boolean      a JSON boolean, the ints 1 and 0, or true/false, yes/no, y/n, on/off, 1/0 in any case
    select       a string (stripped); a number is compared as its str(), a boolean as "true"/"false" (the form
                 defaults take in `app.scan.params`)
    multiselect  a list of such scalars, or one string of choices separated by commas (or by newlines when it has
                 any, as AWX writes them); parts are stripped, empty parts dropped, and duplicates removed keeping
                 the first occurrence's order
    text         a string, kept verbatim (spaces may matter, above all in passwords); a number becomes its str(),
    textarea     a boolean "true"/"false"; lists and objects are refused
    password

Checks (`validation`): `min`/`max` bound integer and float values, inclusive. `min_length`/`max_length` bound the
characters of text, textarea and password values, and the number of choices of a multiselect. `pattern` must
`re.fullmatch` a text, textarea or password value; it is compiled only when a value needs it, and a pattern that
is no valid regular expression is a problem of that parameter. A select value must be one of `options`, and so must
each choice of a multiselect.

Size: a worker hands every value to the script as one `--name value` argument (shell, python) and one
`AHOP_PARAM_<NAME>=value` environment string (every script type, Ansible too), as the text the script sees
(true/false, choices joined with commas). Linux refuses to start a program with one such string over 128 KiB
(MAX_ARG_STRLEN) or with arguments and environment over ARG_MAX together (2 MiB with the usual 8 MiB stack), and the
task could never start. So a value is refused when its text exceeds `MAX_VALUE_BYTES` (96 KiB of UTF-8, which leaves
room for `AHOP_PARAM_<NAME>=`), and a task when all its values together exceed `MAX_TOTAL_BYTES` (512 KiB: twice
that, once in the arguments and once in the environment, stays at half of ARG_MAX). Larger inputs belong in a file
the script fetches.

Messages say what was wrong and what is expected, and never repeat a password's value. `masked` hides password values
for logs and API responses.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.errors import InvalidInput
from app.scan.params import _FALSE, _TRUE, PARAM_TYPES, coerce_number

MAX_VALUE_BYTES = 96 * 1024
"""The most UTF-8 bytes one parameter's text may have (see "Size" above)."""
MAX_TOTAL_BYTES = 512 * 1024
"""The most UTF-8 bytes the texts of all of a task's parameters may have together."""

MASK = "********"
"""What a password's value is replaced with in logs and API responses."""

Value = str | int | float | bool | list[str]

_TEXT_TYPES = frozenset({"text", "textarea", "password"})
_BLANK_IS_ABSENT = frozenset({"integer", "float", "boolean", "select"})
_BOOLEAN_WORDS = "true/false, yes/no, y/n, on/off or 1/0"


class _Bad(Exception):
    """One parameter's problem, raised while coercing or checking its value and collected by `validate_params`."""


@dataclass(frozen=True)
class _Param:
    """One entry of the stored schema, read once, tolerant of keys a stored version lacks."""

    name: str
    kind: str
    required: bool
    default: Any
    options: tuple[str, ...]
    min: int | float | None
    max: int | float | None
    pattern: str | None
    min_length: int | None
    max_length: int | None

    @classmethod
    def from_json(cls, entry: Mapping[str, Any]) -> _Param:
        limits = entry.get("validation") or {}
        return cls(
            name=str(entry["name"]),
            kind=str(entry.get("type") or "text"),
            required=bool(entry.get("required", False)),
            default=entry.get("default"),
            options=tuple(str(option) for option in entry.get("options") or ()),
            min=limits.get("min"),
            max=limits.get("max"),
            pattern=limits.get("pattern"),
            min_length=limits.get("min_length"),
            max_length=limits.get("max_length"),
        )


def validate_params(schema: list[dict[str, Any]], given: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters a task runs with: defaults applied, values coerced to their declared type, in schema order.

    Raises `InvalidInput` listing every bad field at once, keyed `params.<name>` (rules in the module docstring).
    """
    params = [_Param.from_json(entry) for entry in schema]
    declared = [param.name for param in params]
    problems: dict[str, str] = {}
    result: dict[str, Any] = {}
    for param in params:
        try:
            value = _resolve(param, given.get(param.name))
        except _Bad as exc:
            problems[f"params.{param.name}"] = str(exc)
            continue
        if value is None:
            continue
        size = len(_script_text(value).encode("utf-8", "surrogatepass"))
        if size > MAX_VALUE_BYTES:
            problems[f"params.{param.name}"] = (
                f"is {size} bytes as the script receives it; at most {MAX_VALUE_BYTES} bytes (96 KiB) fit in one "
                "argument or environment variable"
            )
            continue
        result[param.name] = value
    for name in given:
        if name not in declared:
            expected = f"expected one of: {', '.join(declared)}" if declared else "this template takes no parameters"
            problems[f"params.{name}"] = f"unknown parameter; {expected}"
    total = sum(len(_script_text(value).encode("utf-8", "surrogatepass")) for value in result.values())
    if not problems and total > MAX_TOTAL_BYTES:
        problems["params"] = (
            f"the values are {total} bytes together as the script receives them; at most {MAX_TOTAL_BYTES} bytes "
            "(512 KiB) fit in the arguments and the environment of one script"
        )
    if problems:
        listed = "; ".join(f"{field}: {problem}" for field, problem in problems.items())
        raise InvalidInput(f"invalid task parameters: {listed}", problems)
    return result


def _script_text(value: Value) -> str:
    """The text a script receives for `value`, as the worker's runner writes it (`worker.runner._param_texts`)."""
    items = value if isinstance(value, list) else [value]
    return ",".join(("true" if item else "false") if isinstance(item, bool) else str(item) for item in items)


def password_names(schema: list[dict[str, Any]]) -> list[str]:
    """Names of the password parameters, in schema order: their values are masked in logs and API responses."""
    return [str(entry["name"]) for entry in schema if entry.get("type") == "password"]


def masked(schema: list[dict[str, Any]], params: Mapping[str, Any]) -> dict[str, Any]:
    """`params` with every password parameter's value replaced by `MASK`; other values and the order unchanged."""
    secret = set(password_names(schema))
    return {name: MASK if name in secret else value for name, value in params.items()}


def _resolve(param: _Param, raw: Any) -> Value | None:
    """The value `param` runs with, or None when it is optional, not given and has no default."""
    if not _is_absent(param.kind, raw):
        return _checked(param, raw)
    if param.default is None or param.default in ("", []):
        if param.required:
            raise _Bad(f"is required and the template gives no default; expected {_expected(param)}")
        return None
    try:
        return _checked(param, param.default)
    except _Bad as exc:
        raise _Bad(f"the template's default is invalid ({exc}); give a value") from exc


def _is_absent(kind: str, raw: Any) -> bool:
    return raw is None or (kind in _BLANK_IS_ABSENT and isinstance(raw, str) and not raw.strip())


def _checked(param: _Param, raw: Any) -> Value:
    if param.kind not in PARAM_TYPES:
        raise _Bad(f"the template declares the unknown type {param.kind!r}; the template must be fixed")
    value = _coerce(param, raw)
    if param.required and value in ("", []):
        raise _Bad(f"is required and must not be empty; expected {_expected(param)}")
    _check_limits(param, value)
    return value


def _coerce(param: _Param, raw: Any) -> Value:
    if param.kind in ("integer", "float"):
        return _number(raw, integer=param.kind == "integer")
    if param.kind == "boolean":
        return _boolean(raw)
    if param.kind == "select":
        choice = _option_text(raw)
        if choice not in param.options:
            raise _Bad(f"{choice!r} is not one of: {_options(param)}")
        return choice
    if param.kind == "multiselect":
        return _choices(param, raw)
    return _text(raw)


def _number(raw: Any, *, integer: bool) -> int | float:
    kind = "an integer" if integer else "a number"
    try:
        number, error = coerce_number(raw, integer=integer)
    except (ValueError, OverflowError) as exc:  # int() of 4300+ digits, float() of a huge int
        raise _Bad(f"the value is too large for {kind}") from exc
    if error is not None or number is None:
        # coerce_number names the float it parsed ("inf"); the operator should see what they typed ("1e400").
        raise _Bad(f"{raw!r} is not {kind}")
    return number


def _boolean(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int | str):
        word = str(raw).strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise _Bad(f"{raw!r} is not a boolean; expected {_BOOLEAN_WORDS}")


def _option_text(raw: Any) -> str:
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, str):
        return raw.strip()
    if isinstance(raw, int | float):
        return str(raw)
    raise _Bad(f"expected a single choice, got a {_json_kind(raw)}")


def _choices(param: _Param, raw: Any) -> list[str]:
    if isinstance(raw, str):
        parts = raw.split("\n") if "\n" in raw else raw.split(",")
        items = [part.strip() for part in parts]
    elif isinstance(raw, list | tuple):
        items = [_option_text(item) for item in raw]
    else:
        raise _Bad(f"expected a list of choices or a comma-separated string, got a {_json_kind(raw)}")
    chosen = list(dict.fromkeys(item for item in items if item))
    missing = [item for item in chosen if item not in param.options]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise _Bad(f"{', '.join(repr(item) for item in missing)} {verb} not among: {_options(param)}")
    return chosen


def _text(raw: Any) -> str:
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, str | int | float):
        return str(raw)
    raise _Bad(f"expected text, got a {_json_kind(raw)}")


def _check_limits(param: _Param, value: Value) -> None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        if param.min is not None and value < param.min:
            raise _Bad(f"must be at least {param.min}, got {value}")
        if param.max is not None and value > param.max:
            raise _Bad(f"must be at most {param.max}, got {value}")
    elif isinstance(value, list):
        _check_length(param, len(value), "choice")
    elif isinstance(value, str) and param.kind in _TEXT_TYPES:
        _check_length(param, len(value), "character")
        _check_pattern(param, value)


def _check_length(param: _Param, count: int, unit: str) -> None:
    if param.min_length is not None and count < param.min_length:
        raise _Bad(f"must have at least {_count(param.min_length, unit)}, got {count}")
    if param.max_length is not None and count > param.max_length:
        raise _Bad(f"must have at most {_count(param.max_length, unit)}, got {count}")


def _check_pattern(param: _Param, value: str) -> None:
    if not param.pattern:
        return
    try:
        pattern = re.compile(param.pattern)
    except re.error as exc:
        raise _Bad(
            f"the template's pattern {param.pattern!r} is not a valid regular expression ({exc}); "
            "the template must be fixed"
        ) from exc
    if pattern.fullmatch(value) is None:
        # A password's value must not reach logs or API responses, not even in an error.
        shown = "the value" if param.kind == "password" else repr(value)
        raise _Bad(f"{shown} does not match the pattern {param.pattern!r}")


def _expected(param: _Param) -> str:
    if param.kind == "integer":
        return "an integer"
    if param.kind == "float":
        return "a number"
    if param.kind == "boolean":
        return _BOOLEAN_WORDS
    if param.kind == "select":
        return f"one of: {_options(param)}"
    if param.kind == "multiselect":
        return f"one or more of: {_options(param)}"
    return "text"


def _options(param: _Param) -> str:
    return ", ".join(param.options) or "(the template lists no options)"


def _count(number: int, unit: str) -> str:
    return f"{number} {unit}" if number == 1 else f"{number} {unit}s"


def _json_kind(raw: Any) -> str:
    if isinstance(raw, Mapping):
        return "JSON object"
    if isinstance(raw, list | tuple):
        return "list"
    return type(raw).__name__
