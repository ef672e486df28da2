"""Type inference (whole English words, Chinese substrings), type aliases and default coercion."""

from __future__ import annotations

import pytest

from app.scan.params import (
    PARAM_TYPES,
    TYPE_ALIASES,
    Parameter,
    Validation,
    coerce_default,
    coerce_number,
    infer_type,
    resolve_type,
    words,
)


@pytest.mark.parametrize(
    ("name", "description", "expected"),
    [
        ("report_dir", "", "text"),  # "report" holds "port" but is no port
        ("report_dir", "Where reports go", "text"),
        ("listen_port", "", "integer"),
        ("db_password", "", "password"),
        ("api_token", "", "password"),
        ("passport_no", "", "text"),  # "passport" holds "pass" and "port"
        ("passport_no", "护照号码", "text"),  # 号码 is no 密码
        ("retry_count", "", "integer"),
        ("keep_days", "", "integer"),
        ("connectTimeout", "", "integer"),  # camelCase splits into words
        ("DB_PASSWORD", "", "password"),
        ("dbPwd", "", "password"),
        ("client_secret", "", "password"),
        ("tokenizer", "", "text"),
        ("countdown_label", "", "text"),
        ("supports", "Supported ports of the service", "text"),  # "ports" is not the word "port"
        ("target", "SSH port of the target", "integer"),
        ("key", "The API token", "password"),
        ("conn", "数据库密码", "password"),
        ("conn", "访问口令", "password"),
        ("auth", "API 令牌", "password"),
        ("cert", "私钥的密钥", "password"),
        ("listen", "监听端口", "integer"),
        ("n", "保留天数", "integer"),
        ("wait", "超时时间（秒）", "integer"),
        ("loops", "重试次数", "integer"),
        ("workers", "进程数量", "integer"),
        ("token_timeout", "", "password"),  # a secret keyword wins: masking too much is the safe mistake
        ("host", "目标主机", "text"),
    ],
)
def test_inference_matches_whole_english_words_and_chinese_substrings(
    name: str, description: str, expected: str
) -> None:
    assert infer_type(name, description, has_options=False) == expected


def test_an_option_list_makes_a_select_before_any_keyword() -> None:
    assert infer_type("env", "", has_options=True) == "select"
    assert infer_type("token_type", "", has_options=True) == "select"


def test_words_split_names_and_sentences() -> None:
    assert words("db_password") == {"db", "password"}
    assert words("dbPassword") == {"db", "password"}
    assert words("APIToken-v2") == {"api", "token", "v", "2"}
    assert words("The listen port, 1-65535") == {"the", "listen", "port", "1", "65535"}


def test_every_type_and_alias_resolves_in_any_case() -> None:
    for name in PARAM_TYPES:
        assert resolve_type(name.upper()) == name
    for alias, name in TYPE_ALIASES.items():
        assert resolve_type(alias) == name
    assert resolve_type("Int") == "integer"
    assert resolve_type("number") == "float"
    assert resolve_type("multiplechoice") == "select"
    assert resolve_type("strng") is None


@pytest.mark.parametrize(
    ("kind", "raw", "options", "expected", "error"),
    [
        ("integer", "8080", (), 8080, None),
        ("integer", 8080, (), 8080, None),
        ("integer", "80.5", (), None, "not an integer"),
        ("integer", True, (), None, "not an integer"),
        ("float", "0.75", (), 0.75, None),
        ("float", 2, (), 2.0, None),
        ("float", "nan", (), None, "not a number"),
        ("boolean", "yes", (), True, None),
        ("boolean", "OFF", (), False, None),
        ("boolean", "maybe", (), None, "not a boolean"),
        ("select", "prod", ("dev", "prod"), "prod", None),
        ("select", "qa", ("dev", "prod"), None, "not among the options dev/prod"),
        ("multiselect", "a,c", ("a", "b", "c"), ("a", "c"), None),
        ("multiselect", "a\nb", ("a", "b", "c"), ("a", "b"), None),
        ("multiselect", ["b"], ("a", "b"), ("b",), None),
        ("multiselect", "a,z", ("a", "b"), None, "z not among"),
        ("text", 42, (), "42", None),
        ("text", "", (), None, None),
        ("password", None, (), None, None),
        ("text", {"a": 1}, (), None, "not a single value"),
    ],
)
def test_defaults_are_coerced_to_their_type(
    kind: str, raw: object, options: tuple[str, ...], expected: object, error: str | None
) -> None:
    value, problem = coerce_default(kind, raw, options)  # type: ignore[arg-type]
    assert value == expected
    if error is None:
        assert problem is None
    else:
        assert problem is not None
        assert error in problem


def test_numbers_for_bounds() -> None:
    assert coerce_number("10", integer=True) == (10, None)
    assert coerce_number(3.0, integer=True) == (3, None)
    assert coerce_number("", integer=False) == (None, None)
    assert coerce_number("ten", integer=False)[1] == "'ten' is not a number"


def test_parameter_json_has_the_normalized_schema() -> None:
    parameter = Parameter(
        name="flags",
        type="multiselect",
        label="Flags",
        options=("a", "b"),
        default=("a",),
        validation=Validation(min_length=1),
    )
    assert parameter.to_json() == {
        "name": "flags",
        "type": "multiselect",
        "label": "Flags",
        "description": "",
        "required": False,
        "default": ["a"],
        "options": ["a", "b"],
        "validation": {"min": None, "max": None, "pattern": None, "min_length": 1, "max_length": None},
    }
