"""The normalized parameter schema that headers and surveys both produce, and the type inference of DESIGN §3.

Schema (`Parameter.to_json`): `{name, type, label, description, required, default, options,
validation: {min, max, pattern, min_length, max_length}}`, type one of `PARAM_TYPES`.

Type names. A header or survey may name a type by its normalized name or by an alias (case-insensitive):

    text         str, string
    textarea     multiline, longtext
    password     secret, passwd
    integer      int
    float        number, double, decimal
    select       choice, enum, multiplechoice (AWX's name)
    multiselect  multichoice
    boolean      bool, flag

Inference, when no type is given (the first rule that matches wins):

1. an option list `(a/b/c)` → select;
2. a password keyword → password;
3. an integer keyword → integer;
4. otherwise text.

English keywords match WHOLE words: the words of the parameter name (split on `_`, `-`, `.` and camelCase) and of the
description, so `report_dir` is no port and `passport_no` no password, while `retry_count` is an integer. Chinese
keywords match as substrings of the description (Chinese has no spaces between words). Password is tried before
integer: a parameter that mentions a secret (`token_timeout`) is masked, which is the safe way to be wrong.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

ParamType = Literal["text", "textarea", "password", "integer", "float", "select", "multiselect", "boolean"]
PARAM_TYPES: tuple[ParamType, ...] = get_args(ParamType)
TYPE_ALIASES: dict[str, ParamType] = {
    "str": "text",
    "string": "text",
    "multiline": "textarea",
    "longtext": "textarea",
    "secret": "password",
    "passwd": "password",
    "int": "integer",
    "number": "float",
    "double": "float",
    "decimal": "float",
    "choice": "select",
    "enum": "select",
    "multiplechoice": "select",
    "multichoice": "multiselect",
    "bool": "boolean",
    "flag": "boolean",
}
TYPE_NAMES = ", ".join(PARAM_TYPES)

PASSWORD_WORDS = frozenset({"password", "passwd", "pwd", "passphrase", "secret", "token"})
PASSWORD_CHINESE = ("密码", "口令", "令牌", "密钥", "秘钥")
INTEGER_WORDS = frozenset({"port", "count", "days", "timeout"})
INTEGER_CHINESE = ("端口", "数量", "天数", "超时", "次数", "个数")

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
"""A parameter name: it becomes `--name` for scripts and `AHOP_PARAM_<NAME>` in their environment."""

_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_TRUE = frozenset({"true", "yes", "y", "on", "1"})
_FALSE = frozenset({"false", "no", "n", "off", "0"})

Number = int | float
DefaultValue = str | int | float | bool | tuple[str, ...] | None
"""A default as JSON will carry it; a multiselect's default is the tuple of its chosen options."""


def json_object(fields: list[tuple[str, Any]]) -> dict[str, object]:
    """`dataclasses.asdict`'s dict_factory for the scan's values: their fields in the order they are declared,
    tuples (parameters, options, a multiselect's default) as the lists that JSON carries."""
    return {name: list(value) if isinstance(value, tuple) else value for name, value in fields}


@dataclass(frozen=True)
class Problem:
    """Something wrong with one candidate, at a file and (when known) a 1-based line; the scan goes on."""

    file: str
    line: int | None
    message: str

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self, dict_factory=json_object)


@dataclass(frozen=True)
class Validation:
    """Limits on a value: `min`/`max` for numbers, `min_length`/`max_length` and `pattern` for text."""

    min: Number | None = None
    max: Number | None = None
    pattern: str | None = None
    min_length: int | None = None
    max_length: int | None = None

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self, dict_factory=json_object)


@dataclass(frozen=True)
class Parameter:
    """One parameter of a template in the normalized schema."""

    name: str
    type: ParamType
    label: str
    description: str = ""
    required: bool = False
    default: DefaultValue = None
    options: tuple[str, ...] = ()
    validation: Validation = field(default_factory=Validation)

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self, dict_factory=json_object)


def resolve_type(word: str) -> ParamType | None:
    """The normalized type that `word` names (a type or an alias, any case), or None."""
    lowered = word.strip().lower()
    for name in PARAM_TYPES:
        if lowered == name:
            return name
    return TYPE_ALIASES.get(lowered)


def words(text: str) -> set[str]:
    """Lower-case ASCII words of a name or a sentence: `db_password`, `dbPassword`, `DB-PASSWORD` → db, password."""
    return {match.lower() for match in _WORD.findall(text)}


def infer_type(name: str, description: str, *, has_options: bool) -> ParamType:
    """The type of a parameter whose header or survey gives none (rules in the module docstring)."""
    if has_options:
        return "select"
    found = words(name) | words(description)
    if found & PASSWORD_WORDS or any(keyword in description for keyword in PASSWORD_CHINESE):
        return "password"
    if found & INTEGER_WORDS or any(keyword in description for keyword in INTEGER_CHINESE):
        return "integer"
    return "text"


def coerce_number(raw: object, *, integer: bool) -> tuple[Number | None, str | None]:
    """`raw` (from YAML, JSON or a header) as an int or a float; (None, None) when absent, (None, why) when bad."""
    if raw is None or raw == "":
        return None, None
    kind = "an integer" if integer else "a number"
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        return None, f"{raw!r} is not {kind}"
    if isinstance(raw, str):
        text = raw.strip()
        if integer:
            return (int(text), None) if _INTEGER.fullmatch(text) else (None, f"{raw!r} is not {kind}")
        try:
            raw = float(text)
        except ValueError:
            return None, f"{raw!r} is not {kind}"
    if isinstance(raw, float) and not math.isfinite(raw):
        return None, f"{raw!r} is not {kind}"
    if integer:
        if isinstance(raw, float) and not raw.is_integer():
            return None, f"{raw!r} is not {kind}"
        return int(raw), None
    return float(raw), None


def coerce_default(kind: ParamType, raw: object, options: tuple[str, ...]) -> tuple[DefaultValue, str | None]:
    """A default given as text or as a YAML/JSON value, as the parameter's type holds it; (None, why) when it
    does not fit. A multiselect default is a list, or one string of choices separated by newlines (AWX) or
    commas (headers)."""
    if raw is None or raw == "":
        return None, None
    if isinstance(raw, dict):
        return None, f"default {raw!r} is not a single value"
    if kind in ("integer", "float"):
        number, error = coerce_number(raw, integer=kind == "integer")
        return number, error and f"default {error}"
    if kind == "boolean":
        if isinstance(raw, bool):
            return raw, None
        lowered = str(raw).strip().lower()
        if lowered in _TRUE or lowered in _FALSE:
            return lowered in _TRUE, None
        return None, f"default {raw!r} is not a boolean (true/false, yes/no, 1/0)"
    if kind == "multiselect":
        if isinstance(raw, list):
            chosen = tuple(_scalar_text(item) for item in raw)
        else:
            text = _scalar_text(raw)
            chosen = tuple(part.strip() for part in re.split("\n" if "\n" in text else ",", text) if part.strip())
        missing = [item for item in chosen if item not in options]
        if missing:
            return None, f"default {', '.join(missing)} not among the options {'/'.join(options)}"
        return chosen, None
    if isinstance(raw, list):
        return None, f"default {raw!r} is not a single value"
    text = _scalar_text(raw)
    if kind == "select" and text not in options:
        return None, f"default {text!r} is not among the options {'/'.join(options)}"
    return text, None


def _scalar_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip()
