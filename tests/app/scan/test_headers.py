"""The `# Name:` / `# Description:` / `# @param` header grammar of shell and python scripts."""

from __future__ import annotations

from app.scan.headers import HEADER_BYTES, parse_header
from app.scan.params import Parameter


def header_of(text: str, path: str = "x.sh") -> tuple[dict[str, Parameter], list[tuple[int | None, str]]]:
    header = parse_header(path, text.encode())
    return {p.name: p for p in header.parameters}, [(p.line, p.message) for p in header.problems]


def test_name_description_and_params_in_the_original_format() -> None:
    header = parse_header(
        "scripts/disk_cleanup.sh",
        (
            "#!/bin/bash\n"
            "# Name: 磁盘清理\n"
            "# Description: 清理过期日志\n"
            "#\n"
            "# @param path text 要清理的目录 (required)\n"
            "# @param days 保留天数\n"
            "# @param env 环境 (dev/staging/prod)\n"
            "\n"
            "set -euo pipefail\n"
        ).encode(),
    )
    assert header.found
    assert (header.name, header.description) == ("磁盘清理", "清理过期日志")
    assert [p.to_json() for p in header.parameters] == [
        {
            "name": "path",
            "type": "text",
            "label": "要清理的目录",
            "description": "要清理的目录",
            "required": True,
            "default": None,
            "options": [],
            "validation": {"min": None, "max": None, "pattern": None, "min_length": None, "max_length": None},
        },
        {
            "name": "days",
            "type": "integer",
            "label": "保留天数",
            "description": "保留天数",
            "required": False,
            "default": None,
            "options": [],
            "validation": {"min": None, "max": None, "pattern": None, "min_length": None, "max_length": None},
        },
        {
            "name": "env",
            "type": "select",
            "label": "环境",
            "description": "环境",
            "required": False,
            "default": None,
            "options": ["dev", "staging", "prod"],
            "validation": {"min": None, "max": None, "pattern": None, "min_length": None, "max_length": None},
        },
    ]
    assert header.problems == ()


def test_keys_take_any_case_and_the_chinese_colon() -> None:
    header = parse_header("x.sh", "# name：备份\n# DESCRIPTION: nightly backup\n".encode())
    assert (header.name, header.description) == ("备份", "nightly backup")
    assert parse_header("x.sh", "# 名称: 巡检\n# 说明：每日巡检\n".encode()).name == "巡检"


def test_type_forms_bare_bracketed_braced_and_aliases() -> None:
    params, problems = header_of(
        "# @param a int A\n"
        "# @param b [bool] B\n"
        "# @param c {number} C\n"
        "# @param d string D\n"
        "# @param e secret E\n"
        "# @param f [choice] F (x/y)\n"
        "# @param g multiselect G (x|y|z)\n"
        "# @param h textarea\n"
        "# @param i Port: where to listen\n"
    )
    assert {name: p.type for name, p in params.items()} == {
        "a": "integer",
        "b": "boolean",
        "c": "float",
        "d": "text",
        "e": "password",
        "f": "select",
        "g": "multiselect",
        "h": "textarea",
        "i": "integer",
    }
    assert params["g"].options == ("x", "y", "z")
    assert params["h"].label == "h"
    assert problems == []


def test_trailing_groups_in_any_order_with_full_width_parentheses_and_defaults() -> None:
    params, problems = header_of(
        "# @param env 环境 (必填) (dev/prod)\n"
        "# @param mode 模式（快/慢）（必填）\n"
        "# @param port 端口 (default: 8080)\n"
        "# @param keep 保留天数（默认为 7）（可选）\n"
        "# @param level Log level (debug/info) default=info\n"
        "# @param on [bool] Enabled (default=yes)\n"
    )
    assert (params["env"].type, params["env"].options, params["env"].required) == ("select", ("dev", "prod"), True)
    assert (params["mode"].options, params["mode"].required, params["mode"].description) == (("快", "慢"), True, "模式")
    assert (params["port"].type, params["port"].default) == ("integer", 8080)
    assert (params["keep"].default, params["keep"].required) == (7, False)
    assert (params["level"].type, params["level"].default) == ("select", "info")
    assert params["on"].default is True
    assert problems == []


def test_parentheses_that_are_prose_stay_in_the_description() -> None:
    params, _ = header_of(
        "# @param log_dir Log directory (e.g. /var/log)\n"
        "# @param url Endpoint (http://host/x)\n"
        "# @param n [int] Workers (1/2/4)\n"
        "# @param note Free text (see docs)\n"
    )
    assert (params["log_dir"].type, params["log_dir"].description) == ("text", "Log directory (e.g. /var/log)")
    assert params["url"].type == "text"
    assert (params["n"].type, params["n"].options, params["n"].description) == ("integer", (), "Workers (1/2/4)")
    assert params["note"].description == "Free text (see docs)"


def test_malformed_lines_are_problems_with_their_line_and_parsing_goes_on() -> None:
    params, problems = header_of(
        "#!/bin/sh\n"
        "# Name: demo\n"
        "# @param mode [strng] Run mode\n"
        "# @param\n"
        "# @param 9lives nope\n"
        "# @param kind [select] Kind without options\n"
        "# @param port 端口 (default: eighty)\n"
        "# @param mode again\n"
        "# Name: other\n"
        "# @param last_one [int] still parsed\n"
    )
    assert list(params) == ["mode", "kind", "port", "last_one"]
    assert params["mode"].type == "text"  # the unknown type is reported and the type inferred
    assert (params["kind"].type, params["port"].default) == ("text", None)
    lines = [line for line, _ in problems]
    assert lines == [3, 4, 5, 6, 7, 8, 9]
    assert "unknown type 'strng'" in problems[0][1]
    assert "without a name" in problems[1][1]
    assert "'9lives' is not a valid name" in problems[2][1]
    assert "needs its options" in problems[3][1]
    assert "'eighty' is not an integer" in problems[4][1]
    assert "declared twice" in problems[5][1]
    assert "the first (line 2) wins" in problems[6][1]


def test_the_header_ends_at_the_first_line_that_is_no_comment() -> None:
    params, _ = header_of("#!/bin/bash\n\n# @param a A\nset -e\n# @param b B\n")
    assert list(params) == ["a"]


def test_python_headers_are_hash_comments_above_the_docstring() -> None:
    header = parse_header(
        "tool.py",
        b'#!/usr/bin/env python3\n# -*- coding: utf-8 -*-\n# Name: Tool\n# @param count how many\n"""Doc."""\n'
        b"# @param late ignored\n",
    )
    assert header.name == "Tool"
    assert [(p.name, p.type) for p in header.parameters] == [("count", "integer")]
    assert not parse_header("doc.py", b'"""Name: not a header\n@param x\n"""\n').found


def test_only_the_first_hundred_lines_are_read() -> None:
    params, _ = header_of("#\n" * 98 + "# @param a A\n# @param b B\n# @param c C\n")
    assert list(params) == ["a", "b"]


def test_a_file_without_header_lines_is_not_found() -> None:
    header = parse_header("x.sh", b"#!/bin/bash\n# just a comment\necho hi\n")
    assert not header.found
    assert (header.name, header.parameters, header.problems) == ("", (), ())


def test_encodings_declared_gbk_and_a_cut_last_line() -> None:
    declared = parse_header("x.py", "# coding: gbk\n# Name: 备份\n".encode("gbk"))
    assert (declared.name, declared.problems) == ("备份", ())
    undeclared = parse_header("x.sh", "# Name: 备份\n".encode("gbk"))
    assert undeclared.name == "备份"
    assert [(p.line, "GB18030" in p.message) for p in undeclared.problems] == [(1, True)]
    cut = ("# @param a A\n" + "#" * (HEADER_BYTES * 2)).encode()[:HEADER_BYTES]
    assert [p.name for p in parse_header("x.sh", cut).parameters] == ["a"]
    assert parse_header("x.sh", "\ufeff# Name: bom\n".encode()).name == "bom"


def test_nul_characters_are_left_out_of_a_header_line_and_said() -> None:
    found, problems = header_of("#!/bin/bash\n# Name: clean\0up\n# @param days integer keep\0 this\necho\n")
    assert found["days"].description == "keep this"
    assert problems == [
        (2, "this line holds NUL characters; they were left out"),
        (3, "this line holds NUL characters; they were left out"),
    ]
