"""Header comments of shell (`.sh`) and python (`.py`) scripts: `# Name:`, `# Description:` and `# @param` lines.

Where. The header is the run of comment and blank lines at the top of the file, within its first 100 lines; it
ends at the first line that is neither. A shebang (`#!`) and an encoding line are comments like any other. Only `#`
comments count, in python too: a module docstring ends the header, so the header goes above it. Lines are UTF-8;
a PEP 263 `coding:` line in the first two lines names another encoding, and a line that is not UTF-8 is read as
GB18030 (GBK) with a problem.

Grammar of one comment line, after its leading `#`s and spaces (keys in any case, `:` or the Chinese `：`):

    Name: TEXT                      also `名称:`
    Description: TEXT               also `Desc:`, `描述:`, `说明:`
    @param NAME [TYPE] [DESCRIPTION] [(A/B/C)] [(required)] [(default: VALUE)]

`@param`:

- NAME is `[A-Za-z_][A-Za-z0-9_-]*` (a trailing `:` is dropped). A second @param of one name is a problem.
- TYPE is `[type]` or `{type}`, or a bare first word that names a type or an alias (`params.TYPE_ALIASES`). A
  bracketed word that names no type is a problem (with its line) and the type is then inferred. A description
  that begins with a type's name (`text to show`) is read as that type: bracket the type, or write one.
  With no type, `params.infer_type` decides.
- Trailing groups, in `()` or `（）`, in any order, each at most once, peeled from the end:
  `(a/b/c)` the options (separated by `/` or `|`, at least two, none empty, and no space on only one side of a
  separator, so `(e.g. /var/log)` stays prose) — only when the type is omitted, select or multiselect, else the
  group stays in the description; `(required)`, `(必填)`, `(必须)`, `(必需)` make the parameter required
  (`(optional)`, `(可选)`, `(选填)` say the default: not required); `(default: VALUE)` or `(default=VALUE)`,
  `(默认: VALUE)`, `(默认值：VALUE)`, `(默认为 VALUE)`, or a last word `default=VALUE`, give the default.
- What remains is the description (leading `-` or `:` dropped); the label is the description, or the name.

Nothing here raises on content: every malformed line becomes a `Problem` with its file and line.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

from app.scan.params import (
    NAME,
    TYPE_NAMES,
    Parameter,
    ParamType,
    Problem,
    coerce_default,
    infer_type,
    resolve_type,
)

HEADER_LINES = 100
HEADER_BYTES = 64 * 1024
"""Bytes read from a script: 100 header lines fit with room to spare."""

_KEY = re.compile(r"(name|名称|description|desc|描述|说明)\s*[:：]\s*(.*)", re.IGNORECASE)
_PARAM = re.compile(r"@param(?:\s+(.*))?", re.IGNORECASE)
_CODING = re.compile(rb"^[ \t\f]*#.*?coding[:=][ \t]*([-\w.]+)")
_BRACKETED_TYPE = re.compile(r"[\[{]\s*([^\]}]*?)\s*[\]}]\s*(.*)")
_GROUP_AT_END = re.compile(r"(.*)[(（]\s*([^()（）]*?)\s*[)）]\s*")
_DEFAULT_GROUP = re.compile(r"(?:default\s*[:：=]|默认值?\s*(?:[:：=]|为|是))\s*(.*)", re.IGNORECASE)
_DEFAULT_WORD = re.compile(r"(.*?)\s*\bdefault=(\S+)", re.IGNORECASE)
_SEPARATOR = "/|／｜"
_LOPSIDED = re.compile(rf"\s[{_SEPARATOR}]\S|\S[{_SEPARATOR}]\s")
_REQUIRED = frozenset({"required", "必填", "必须", "必需"})
_OPTIONAL = frozenset({"optional", "可选", "选填"})


@dataclass(frozen=True)
class Header:
    """What a script's header says; `found` when it has at least one Name, Description or @param line."""

    found: bool
    name: str
    description: str
    parameters: tuple[Parameter, ...]
    problems: tuple[Problem, ...]


def parse_header(path: str, data: bytes) -> Header:
    """The header of the script at `path` from its first bytes (`HEADER_BYTES` are enough)."""
    if len(data) >= HEADER_BYTES:
        data = data[: data.rfind(b"\n") + 1]  # a cut last line is no line
    data = data.removeprefix(codecs.BOM_UTF8)
    raw_lines = data.split(b"\n")[:HEADER_LINES]
    encoding = _declared_encoding(raw_lines[:2])
    found = False
    fields: dict[str, tuple[str, int]] = {}
    parameters: dict[str, Parameter] = {}
    problems: list[Problem] = []
    for number, raw in enumerate(raw_lines, 1):
        stripped = raw.strip()
        if not stripped:
            continue
        if not stripped.startswith(b"#"):
            break
        if stripped.startswith(b"#!"):
            continue
        body = _decode(stripped, encoding, path, number, problems).lstrip("#").strip()
        if key_match := _KEY.fullmatch(body):
            found = True
            key = "name" if key_match.group(1).lower() in ("name", "名称") else "description"
            value = key_match.group(2).strip()
            if key in fields:
                problems.append(Problem(path, number, f"a second {key} line; the first (line {fields[key][1]}) wins"))
            elif value:
                fields[key] = (value, number)
        elif param_match := _PARAM.fullmatch(body):
            found = True
            parameter = _parse_param(path, number, (param_match.group(1) or "").strip(), problems)
            if parameter is not None and parameters.setdefault(parameter.name, parameter) is not parameter:
                problems.append(Problem(path, number, f"@param {parameter.name} is declared twice; the first wins"))
    return Header(
        found=found,
        name=fields.get("name", ("", 0))[0],
        description=fields.get("description", ("", 0))[0],
        parameters=tuple(parameters.values()),
        problems=tuple(problems),
    )


def _declared_encoding(first_lines: list[bytes]) -> str:
    for line in first_lines:
        if match := _CODING.match(line):
            try:
                return codecs.lookup(match.group(1).decode("ascii")).name
            except LookupError:
                return "utf-8"
    return "utf-8"


def _decode(line: bytes, encoding: str, path: str, number: int, problems: list[Problem]) -> str:
    if b"\0" in line:  # no text a database can hold has one; it is dropped, and said
        problems.append(Problem(path, number, "this line holds NUL characters; they were left out"))
        line = line.replace(b"\0", b"")
    try:
        return line.decode(encoding)
    except UnicodeDecodeError:
        problems.append(Problem(path, number, f"this line is not {encoding}; it was read as GB18030 (GBK)"))
        return line.decode("gb18030", errors="replace")


def _parse_param(path: str, number: int, text: str, problems: list[Problem]) -> Parameter | None:
    usage = "expected `# @param NAME [type] description (a/b/c) (required)`"
    if not text:
        problems.append(Problem(path, number, f"@param without a name; {usage}"))
        return None
    name, _, rest = _first_word(text)
    name = name.rstrip(":：")
    if not NAME.fullmatch(name):
        problems.append(Problem(path, number, f"@param name {name!r} is not a valid name ([A-Za-z_][A-Za-z0-9_-]*)"))
        return None
    declared: ParamType | None = None
    unknown_type: str | None = None
    if bracketed := _BRACKETED_TYPE.fullmatch(rest):
        word, rest = bracketed.groups()
        declared = resolve_type(word)
        if declared is None:
            unknown_type = word
    elif rest:
        first, _, after = _first_word(rest)
        if (declared := resolve_type(first)) is not None:
            rest = after
    takes_options = declared in (None, "select", "multiselect")
    rest, options, required, default_raw = _peel_groups(rest, takes_options=takes_options)
    description = rest.strip().lstrip("-–—:：").strip()
    kind = declared or infer_type(name, description, has_options=options is not None)
    if unknown_type is not None:
        problems.append(
            Problem(
                path,
                number,
                f"@param {name}: unknown type {unknown_type!r}; expected one of {TYPE_NAMES} "
                f"(or an alias); the type was inferred as {kind}",
            )
        )
    if kind in ("select", "multiselect") and not options:
        problems.append(Problem(path, number, f"@param {name}: a {kind} needs its options as (a/b/c); taken as text"))
        kind = "text"
    default, error = coerce_default(kind, default_raw, options or ())
    if error:
        problems.append(Problem(path, number, f"@param {name}: {error}; no default taken"))
    return Parameter(
        name=name,
        type=kind,
        label=description or name,
        description=description,
        required=required,
        default=default,
        options=options or (),
    )


def _first_word(text: str) -> tuple[str, str, str]:
    """(first word, the whitespace after it, the rest) of `text`."""
    parts = re.split(r"(\s+)", text.strip(), maxsplit=1)
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else (parts[0], "", "")


def _peel_groups(text: str, *, takes_options: bool) -> tuple[str, tuple[str, ...] | None, bool, str | None]:
    """Trailing option, required and default groups off `text`: (the rest, options, required, default)."""
    options: tuple[str, ...] | None = None
    required = False
    default: str | None = None
    seen: set[str] = set()
    while True:
        if group := _GROUP_AT_END.fullmatch(text):
            before, content = group.groups()
            lowered = content.lower()
            if "required" not in seen and (lowered in _REQUIRED or lowered in _OPTIONAL):
                seen.add("required")
                required = lowered in _REQUIRED
                text = before
                continue
            if "default" not in seen and (given := _DEFAULT_GROUP.fullmatch(content)):
                seen.add("default")
                default = given.group(1).strip()
                text = before
                continue
            if takes_options and options is None and (listed := _options(content)):
                options = listed
                text = before
                continue
            break
        if "default" not in seen and (word := _DEFAULT_WORD.fullmatch(text)):
            seen.add("default")
            text, default = word.group(1), word.group(2)
            continue
        break
    return text, options, required, default


def _options(content: str) -> tuple[str, ...] | None:
    if not any(separator in content for separator in _SEPARATOR) or _LOPSIDED.search(content):
        return None
    items = [item.strip() for item in re.split(f"[{_SEPARATOR}]", content)]
    if len(items) < 2 or not all(items):
        return None
    return tuple(dict.fromkeys(items))
