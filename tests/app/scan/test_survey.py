"""AWX surveys (YAML and JSON) as normalized parameters; malformed surveys as problems with lines."""

from __future__ import annotations

import json

import yaml

from app.scan.survey import parse_survey
from tests.support.original_system import SERVER_NAME_QUESTION

SURVEY_YAML = """\
name: Nginx 部署
description: Deploy nginx
spec:
  - type: text
    variable: server_name
    question_name: Server name
    question_description: 域名
    required: true
    default: example.com
    min: 3
    max: 253
  - type: integer
    variable: listen_port
    question_name: 监听端口
    required: false
    default: 80
    min: 1
    max: 65535
  - type: multiplechoice
    variable: env
    question_name: Environment
    choices: "dev\\nstaging\\nprod"
    default: staging
  - type: multiselect
    variable: modules
    question_name: Modules
    choices: [gzip, ssl, http2]
    default: "gzip\\nssl"
  - type: password
    variable: admin_password
    question_name: Admin password
    default: $encrypted$
    min: 8
    max: 64
  - type: float
    variable: ratio
    question_name: Ratio
    min: 0
    max: 1.5
  - type: textarea
    variable: motd
    question_name: Message
"""


def test_an_awx_survey_maps_onto_the_normalized_schema() -> None:
    survey = parse_survey("playbooks/nginx/survey.yml", SURVEY_YAML.encode())
    assert (survey.name, survey.description, survey.problems) == ("Nginx 部署", "Deploy nginx", ())
    params = {p.name: p.to_json() for p in survey.parameters}
    assert list(params) == ["server_name", "listen_port", "env", "modules", "admin_password", "ratio", "motd"]
    assert params["server_name"] == {
        "name": "server_name",
        "type": "text",
        "label": "Server name",
        "description": "域名",
        "required": True,
        "default": "example.com",
        "options": [],
        "validation": {"min": None, "max": None, "pattern": None, "min_length": 3, "max_length": 253},
    }
    assert params["listen_port"]["validation"] == {
        "min": 1,
        "max": 65535,
        "pattern": None,
        "min_length": None,
        "max_length": None,
    }
    assert (params["listen_port"]["label"], params["listen_port"]["default"]) == ("监听端口", 80)
    assert (params["env"]["type"], params["env"]["options"], params["env"]["default"]) == (
        "select",
        ["dev", "staging", "prod"],
        "staging",
    )
    assert (params["modules"]["type"], params["modules"]["default"]) == ("multiselect", ["gzip", "ssl"])
    assert params["admin_password"]["default"] is None  # AWX's placeholder is no value
    by_name = {p.name: p for p in survey.parameters}
    assert by_name["admin_password"].validation.min_length == 8
    assert (by_name["ratio"].validation.min, by_name["ratio"].validation.max) == (0.0, 1.5)
    assert params["motd"]["type"] == "textarea"


def test_the_json_variant_gives_the_same_parameters() -> None:
    as_json = json.dumps(yaml.safe_load(SURVEY_YAML), ensure_ascii=False, indent=2).encode()
    from_yaml = parse_survey("d/survey.yml", SURVEY_YAML.encode())
    from_json = parse_survey("d/survey.json", as_json)
    assert (from_json.name, from_json.parameters, from_json.problems) == (from_yaml.name, from_yaml.parameters, ())


def test_malformed_yaml_is_one_problem_at_its_line() -> None:
    text = "name: x\nspec:\n  - type: text\n    variable: a\n   bad: indent\n"
    survey = parse_survey("p/survey.yaml", text.encode())
    assert survey.parameters == ()
    [problem] = survey.problems
    assert (problem.file, problem.line) == ("p/survey.yaml", 5)
    assert problem.message.startswith("invalid YAML:")


def test_malformed_json_is_one_problem_at_its_line() -> None:
    survey = parse_survey("p/survey.json", b'{\n  "name": "x",\n  "spec": [\n    {"type": "text",}\n  ]\n}\n')
    [problem] = survey.problems
    assert problem.line == 4
    assert problem.message.startswith("invalid JSON:")


def test_a_survey_without_spec_or_not_a_mapping() -> None:
    missing = parse_survey("p/survey.yml", b"name: Only a name\n")
    assert missing.name == "Only a name"
    assert [(p.line, p.message) for p in missing.problems] == [
        (None, "the survey has no 'spec' list; the template has no parameters")
    ]
    assert [p.line for p in parse_survey("p/survey.yml", b"name: x\nspec: nope\n").problems] == [2]
    assert parse_survey("p/survey.yml", b"- a\n- b\n").problems[0].message.startswith("a survey is a mapping")
    assert parse_survey("p/survey.yml", b"").problems[0].line == 1
    assert "not UTF-8" in parse_survey("p/survey.yml", b"name: \xff\n").problems[0].message


def test_bad_items_are_problems_at_the_item_line_and_the_rest_is_kept() -> None:
    text = """\
spec:
  - type: text
    variable: ok
  - type: strng
    variable: db_password
  - variable: retry_count
  - type: multiplechoice
    variable: mode
  - question_name: no variable
    type: text
  - "just text"
  - type: integer
    variable: port
    default: eighty
    min: low
    required: perhaps
  - type: text
    variable: ok
"""
    survey = parse_survey("a/survey.yml", text.encode())
    assert [(p.name, p.type) for p in survey.parameters] == [
        ("ok", "text"),
        ("db_password", "password"),
        ("retry_count", "integer"),
        ("mode", "text"),
        ("port", "integer"),
    ]
    assert [(p.line, p.message.split(";")[0]) for p in survey.problems] == [
        (4, "db_password: unknown type 'strng'"),
        (6, "retry_count: no type"),
        (7, "mode: a select needs choices"),
        (9, "variable None is not a valid name"),
        (11, "a spec item is not a mapping"),
        (12, "port: default 'eighty' is not an integer"),
        (12, "port: 'required' is 'perhaps', not true or false"),
        (12, "port: 'min' 'low' is not an integer"),
        (17, "variable 'ok' is asked twice"),
    ]


ORIGINAL_SURVEY = (
    "name: Nginx部署配置\nspec:\n"
    + SERVER_NAME_QUESTION
    + """\
  - type: textarea
    variable: motd
    max_length: 80
  - type: password
    variable: admin_password
    min_length: 12
    min: 12
  - type: multiselect
    variable: modules
    choices: [gzip, ssl, http2]
    min_length: 1
    max_length: 2
"""
)


def test_the_original_systems_min_length_and_max_length_are_kept() -> None:
    survey = parse_survey("test/playbooks/survey.yml", ORIGINAL_SURVEY.encode())
    assert survey.problems == ()
    lengths = {p.name: (p.validation.min_length, p.validation.max_length) for p in survey.parameters}
    assert lengths == {
        "server_name": (3, 255),
        "motd": (None, 80),
        "admin_password": (12, None),
        "modules": (1, 2),
    }


def test_length_limits_that_cannot_apply_are_problems() -> None:
    text = """\
spec:
  - {type: integer, variable: port, min: 1, max_length: 5}
  - {type: boolean, variable: force, min_length: 1}
  - {type: text, variable: a, min: 2, min_length: 3}
  - {type: text, variable: b, min_length: -1, max_length: many}
  - {type: text, variable: c, min_length: 9, max_length: 3}
"""
    survey = parse_survey("s/survey.yml", text.encode())
    limits = {p.name: p.validation for p in survey.parameters}
    assert (limits["port"].min, limits["port"].max_length) == (1, None)
    assert (limits["a"].min_length, limits["b"].min_length, limits["b"].max_length) == (3, None, None)
    assert (limits["c"].min_length, limits["c"].max_length) == (None, None)
    assert [(p.line, p.message) for p in survey.problems] == [
        (2, "port: 'max_length' applies to text, textarea, password and multiselect, not integer; ignored"),
        (3, "force: 'min_length' applies to text, textarea, password and multiselect, not boolean; ignored"),
        (4, "a: 'min' 2 and 'min_length' 3 disagree; min_length is used"),
        (5, "b: 'min_length' -1 is negative; ignored"),
        (5, "b: 'max_length' 'many' is not an integer; ignored"),
        (6, "c: min_length 9 is above max_length 3: no value could pass; both ignored"),
    ]


def test_a_survey_with_yaml_aliases_is_refused_before_it_is_built() -> None:
    """A billion-laughs survey: nine levels of nine aliases each would stand for 9**9 strings."""
    levels = ["a0: &x0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    levels += [f"a{n}: &x{n} [{', '.join([f'*x{n - 1}'] * 9)}]" for n in range(1, 9)]
    text = "\n".join(levels) + "\nspec:\n  - {variable: v, type: text, default: *x8}\n"
    survey = parse_survey("survey.yml", text.encode())
    assert survey.parameters == ()
    assert [(p.line, p.message) for p in survey.problems] == [(2, "a YAML alias (*x0); a survey may not use aliases")]


def test_a_survey_nested_too_deep_is_a_problem_not_a_crash() -> None:
    for path, text in (
        ("survey.json", '{"spec": ' + "[" * 100_000 + "]" * 100_000 + "}"),
        ("survey.yml", "spec: " + "[" * 100_000 + "]" * 100_000 + "\n"),
        ("survey.json", '{"spec": [{"variable": "v", "default": ' + "[" * 40 + "]" * 40 + "}]}"),
    ):
        survey = parse_survey(path, text.encode())
        assert survey.parameters == (), path
        assert [p.message for p in survey.problems] == ["nested deeper than 32 levels; not read"], path


def test_nul_characters_are_left_out_of_a_survey_and_said() -> None:
    text = json.dumps(
        {"name": "n\0", "spec": [{"variable": "v", "type": "text", "question_name": "Q\0?", "default": "a\0b"}]}
    )
    survey = parse_survey("survey.json", text.encode())
    (parameter,) = survey.parameters
    assert (survey.name, parameter.label, parameter.default) == ("n", "Q?", "ab")
    assert [p.message for p in survey.problems] == ["the survey holds NUL characters; they were left out"]
