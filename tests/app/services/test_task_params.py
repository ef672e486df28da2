"""An operator's task parameters checked against a template's schema: presence, defaults, coercion, limits, masking."""

from __future__ import annotations

from typing import Any

import pytest

from app.errors import InvalidInput
from app.scan.params import Parameter, ParamType, Validation
from app.scan.survey import parse_survey
from app.services.task_params import MASK, MAX_TOTAL_BYTES, MAX_VALUE_BYTES, masked, password_names, validate_params


def param(name: str, kind: ParamType = "text", **fields: Any) -> dict[str, Any]:
    """One schema entry exactly as a template version stores it (`Parameter.to_json`)."""
    limits = {key: fields.pop(key) for key in ("min", "max", "pattern", "min_length", "max_length") if key in fields}
    if isinstance(fields.get("default"), list):
        fields["default"] = tuple(fields["default"])
    if "options" in fields:
        fields["options"] = tuple(fields["options"])
    return Parameter(name=name, type=kind, label=name, validation=Validation(**limits), **fields).to_json()


def problems(schema: list[dict[str, Any]], given: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(InvalidInput) as caught:
        validate_params(schema, given)
    return caught.value.fields


def one(kind: ParamType, raw: Any, **fields: Any) -> Any:
    """The value parameter `p` of type `kind` runs with when given `raw`."""
    return validate_params([param("p", kind, **fields)], {"p": raw})["p"]


def problem(kind: ParamType, raw: Any, **fields: Any) -> str:
    """What is wrong with `raw` for parameter `p` of type `kind`."""
    return problems([param("p", kind, **fields)], {"p": raw})["params.p"]


# Presence and defaults


def test_unknown_names_are_refused_with_the_declared_names() -> None:
    schema = [param("host"), param("port", "integer")]
    assert problems(schema, {"host": "a", "hsot": "b"}) == {
        "params.hsot": "unknown parameter; expected one of: host, port"
    }
    assert problems([], {"x": "1"}) == {"params.x": "unknown parameter; this template takes no parameters"}


def test_every_bad_field_is_reported_at_once_and_named_in_the_message() -> None:
    schema = [param("count", "integer", min=1), param("env", "select", options=["red", "green"]), param("path")]
    with pytest.raises(InvalidInput) as caught:
        validate_params(schema, {"count": "0", "env": "blue", "extra": "x"})
    assert caught.value.fields == {
        "params.count": "must be at least 1, got 0",
        "params.env": "'blue' is not one of: red, green",
        "params.extra": "unknown parameter; expected one of: count, env, path",
    }
    assert "params.count: must be at least 1, got 0" in str(caught.value)
    assert "params.env: 'blue' is not one of: red, green" in str(caught.value)


def test_a_missing_required_parameter_without_default_is_an_error_saying_what_is_expected() -> None:
    schema = [
        param("path", required=True),
        param("days", "integer", required=True),
        param("env", "select", required=True, options=["dev", "prod"]),
    ]
    assert problems(schema, {}) == {
        "params.path": "is required and the template gives no default; expected text",
        "params.days": "is required and the template gives no default; expected an integer",
        "params.env": "is required and the template gives no default; expected one of: dev, prod",
    }


def test_defaults_are_applied_coerced_and_optional_parameters_without_one_are_left_out() -> None:
    schema = [
        param("days", "integer", required=True, default=7),
        param("ratio", "float", default=2),
        param("dry_run", "boolean", default=False),
        param("tags", "multiselect", options=["a", "b", "c"], default=["a", "c"]),
        param("note"),
    ]
    result = validate_params(schema, {})
    assert result == {"days": 7, "ratio": 2.0, "dry_run": False, "tags": ["a", "c"]}
    assert isinstance(result["ratio"], float)


def test_a_stored_string_default_is_coerced_like_a_given_value() -> None:
    schema = [{"name": "days", "type": "integer", "required": False, "default": " 30 ", "validation": {}}]
    assert validate_params(schema, {}) == {"days": 30}


def test_a_default_that_breaks_the_templates_own_limits_is_reported_for_that_parameter() -> None:
    schema = [param("days", "integer", default=0, min=1)]
    assert problems(schema, {}) == {
        "params.days": "the template's default is invalid (must be at least 1, got 0); give a value"
    }
    assert validate_params(schema, {"days": "3"}) == {"days": 3}


def test_null_means_not_given() -> None:
    schema = [param("days", "integer", default=7), param("note"), param("path", required=True)]
    assert problems(schema, {"days": None, "note": None, "path": None}) == {
        "params.path": "is required and the template gives no default; expected text"
    }
    assert validate_params(schema, {"days": None, "note": None, "path": "/var/log"}) == {"days": 7, "path": "/var/log"}


def test_a_blank_string_is_not_given_for_typed_parameters_but_a_value_for_text() -> None:
    schema = [
        param("days", "integer", default=7),
        param("verbose", "boolean"),
        param("env", "select", options=["dev"]),
        param("note"),
    ]
    assert validate_params(schema, {"days": "", "verbose": " ", "env": "", "note": ""}) == {"days": 7, "note": ""}


def test_a_required_parameter_must_not_be_empty() -> None:
    schema = [param("path", required=True), param("hosts", "multiselect", required=True, options=["a", "b"])]
    assert problems(schema, {"path": "", "hosts": " , "}) == {
        "params.path": "is required and must not be empty; expected text",
        "params.hosts": "is required and must not be empty; expected one or more of: a, b",
    }


def test_output_follows_schema_order_not_the_order_given() -> None:
    schema = [param("a"), param("b"), param("c")]
    assert list(validate_params(schema, {"c": "3", "a": "1", "b": "2"})) == ["a", "b", "c"]


# Coercion


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("42", 42), (" 42 ", 42), ("-3", -3), ("+5", 5), (42, 42), (42.0, 42)],
)
def test_integer_accepts(raw: Any, expected: int) -> None:
    value = one("integer", raw)
    assert value == expected
    assert type(value) is int


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("abc", "'abc' is not an integer"),
        ("4.2", "'4.2' is not an integer"),
        ("1e3", "'1e3' is not an integer"),
        (4.2, "4.2 is not an integer"),
        (True, "True is not an integer"),
        ([1], "[1] is not an integer"),
    ],
)
def test_integer_refuses(raw: Any, message: str) -> None:
    assert problem("integer", raw) == message


def test_an_integer_too_long_to_parse_is_an_error_not_a_crash() -> None:
    assert problem("integer", "9" * 5000) == "the value is too large for an integer"
    assert problem("float", 10**400) == "the value is too large for a number"


@pytest.mark.parametrize(("raw", "expected"), [("1.5", 1.5), ("3", 3.0), (" -0.25 ", -0.25), (3, 3.0), (2.5, 2.5)])
def test_float_accepts(raw: Any, expected: float) -> None:
    value = one("float", raw)
    assert value == expected
    assert type(value) is float


@pytest.mark.parametrize("raw", ["nan", "inf", "-Infinity", "1e400", float("nan"), "x", False])
def test_float_refuses_non_finite_and_non_numbers(raw: Any) -> None:
    assert problem("float", raw) == f"{raw!r} is not a number"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True),
        ("FALSE", False),
        ("Yes", True),
        ("no", False),
        ("y", True),
        ("N", False),
        ("on", True),
        (" off ", False),
        ("1", True),
        ("0", False),
        (True, True),
        (False, False),
        (1, True),
        (0, False),
    ],
)
def test_boolean_accepts(raw: Any, expected: bool) -> None:
    assert one("boolean", raw) is expected


@pytest.mark.parametrize("raw", ["maybe", "2", 2, 1.0, ["true"]])
def test_boolean_refuses_with_the_accepted_words(raw: Any) -> None:
    assert problem("boolean", raw) == f"{raw!r} is not a boolean; expected true/false, yes/no, y/n, on/off or 1/0"


def test_select_compares_numbers_and_booleans_as_their_text() -> None:
    assert one("select", 3, options=["1", "3"]) == "3"
    assert one("select", " 3 ", options=["1", "3"]) == "3"
    assert one("select", True, options=["true", "false"]) == "true"
    assert problem("select", ["1"], options=["1"]) == "expected a single choice, got a list"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (["b", "a"], ["b", "a"]),
        ("a, c", ["a", "c"]),
        ("a,,b,", ["a", "b"]),
        ("a\nb, c\n", ["a", "b, c"]),
        ("c,a,c,a", ["c", "a"]),
        ([1, "b"], ["1", "b"]),
        ("", []),
        ([], []),
    ],
)
def test_multiselect_accepts_lists_and_separated_strings_and_drops_duplicates(raw: Any, expected: list[str]) -> None:
    assert one("multiselect", raw, options=["a", "b", "c", "1", "b, c"]) == expected


def test_multiselect_names_every_choice_not_among_the_options() -> None:
    options = ["red", "green"]
    assert problem("multiselect", "red,blue", options=options) == "'blue' is not among: red, green"
    assert problem("multiselect", ["pink", "blue"], options=options) == "'pink', 'blue' are not among: red, green"
    assert problem("multiselect", {"red": 1}, options=options) == (
        "expected a list of choices or a comma-separated string, got a JSON object"
    )
    assert problem("multiselect", [["red"]], options=options) == "expected a single choice, got a list"


def test_text_keeps_strings_verbatim_converts_scalars_and_refuses_structures() -> None:
    assert one("text", "  two spaces ") == "  two spaces "
    assert one("textarea", 42) == "42"
    assert one("text", 1.5) == "1.5"
    assert one("text", True) == "true"
    assert one("password", 1234) == "1234"
    assert problem("text", ["a"]) == "expected text, got a list"
    assert problem("textarea", {"a": 1}) == "expected text, got a JSON object"


# Limits


def test_number_bounds_are_inclusive() -> None:
    assert one("integer", "1", min=1, max=10) == 1
    assert one("integer", "10", min=1, max=10) == 10
    assert problem("integer", "11", min=1, max=10) == "must be at most 10, got 11"
    assert one("float", "0.5", min=0.5) == 0.5
    assert problem("float", "0.25", min=0.5) == "must be at least 0.5, got 0.25"


def test_lengths_count_characters_of_text_and_choices_of_a_multiselect() -> None:
    assert one("text", "日本語", max_length=3) == "日本語"
    assert problem("text", "abcd", max_length=3) == "must have at most 3 characters, got 4"
    assert problem("password", "abc", min_length=8) == "must have at least 8 characters, got 3"
    options = ["a", "b", "c"]
    assert problem("multiselect", "a", options=options, min_length=2) == "must have at least 2 choices, got 1"
    assert problem("multiselect", "a,b,c", options=options, max_length=1) == "must have at most 1 choice, got 3"


def test_a_surveys_min_length_and_max_length_bound_the_task_parameters() -> None:
    survey = """\
spec:
  - {type: text, variable: server_name, required: true, min_length: 3, max_length: 20}
  - {type: textarea, variable: motd, max_length: 5}
  - {type: password, variable: admin_password, min_length: 8}
"""
    schema = [p.to_json() for p in parse_survey("test/playbooks/survey.yml", survey.encode()).parameters]
    assert validate_params(schema, {"server_name": "example.com"}) == {"server_name": "example.com"}
    assert problems(schema, {"server_name": "ab", "motd": "hello!", "admin_password": "short"}) == {
        "params.server_name": "must have at least 3 characters, got 2",
        "params.motd": "must have at most 5 characters, got 6",
        "params.admin_password": "must have at least 8 characters, got 5",
    }
    assert "must have at most 20 characters" in problems(schema, {"server_name": "x" * 21})["params.server_name"]


def test_pattern_must_match_the_whole_value() -> None:
    assert one("text", "abc-1", pattern=r"[a-z]+-\d") == "abc-1"
    assert problem("text", "abc-1x", pattern=r"[a-z]+-\d") == r"'abc-1x' does not match the pattern '[a-z]+-\\d'"


def test_an_invalid_pattern_is_a_problem_of_that_parameter_not_a_crash() -> None:
    schema = [param("name", pattern="[a-z"), param("days", "integer")]
    found = problems(schema, {"name": "abc", "days": "x"})
    assert found["params.name"].startswith("the template's pattern '[a-z' is not a valid regular expression")
    assert found["params.days"] == "'x' is not an integer"
    assert validate_params(schema, {"days": "2"}) == {"days": 2}


def test_a_password_value_never_appears_in_an_error() -> None:
    schema = [param("pw", "password", pattern=r"[a-z]+", max_length=20), param("token", "password")]
    with pytest.raises(InvalidInput) as caught:
        validate_params(schema, {"pw": "Hunter2-secret", "token": ["s3cr3t"]})
    assert caught.value.fields["params.pw"] == "the value does not match the pattern '[a-z]+'"
    text = str(caught.value) + repr(caught.value.fields)
    assert "Hunter2" not in text
    assert "s3cr3t" not in text


# Masking


def test_password_values_are_masked_and_others_kept_in_order() -> None:
    schema = [param("user"), param("db_password", "password"), param("port", "integer"), param("api", "password")]
    assert password_names(schema) == ["db_password", "api"]
    params = validate_params(schema, {"user": "root", "db_password": "hunter2", "port": "5432"})
    assert masked(schema, params) == {"user": "root", "db_password": MASK, "port": 5432}
    assert MASK == "********"
    assert params["db_password"] == "hunter2"


# Size: what a script can receive as one argument and one environment variable


def test_a_value_up_to_96_kib_is_taken_and_one_byte_more_is_refused_naming_the_limit() -> None:
    assert one("text", "x" * MAX_VALUE_BYTES) == "x" * MAX_VALUE_BYTES
    message = problem("text", "x" * (MAX_VALUE_BYTES + 1))
    assert message.startswith(f"is {MAX_VALUE_BYTES + 1} bytes as the script receives it; at most 98304 bytes")


def test_a_value_is_measured_in_the_utf8_bytes_a_script_receives() -> None:
    characters = MAX_VALUE_BYTES // 2 + 1  # two bytes each in UTF-8: within the limit in characters, over in bytes
    assert "98304 bytes" in problem("textarea", "é" * characters)
    assert one("textarea", "é" * (MAX_VALUE_BYTES // 2)) == "é" * (MAX_VALUE_BYTES // 2)


def test_all_values_of_a_task_together_are_bounded_by_512_kib() -> None:
    schema = [param(name) for name in "abcdef"]
    largest = {name: "x" * MAX_VALUE_BYTES for name in "abcde"} | {"f": "x" * (MAX_TOTAL_BYTES - 5 * MAX_VALUE_BYTES)}
    assert validate_params(schema, largest) == largest
    found = problems(schema, largest | {"f": largest["f"] + "x"})
    assert found == {
        "params": f"the values are {MAX_TOTAL_BYTES + 1} bytes together as the script receives them; at most "
        "524288 bytes (512 KiB) fit in the arguments and the environment of one script"
    }
