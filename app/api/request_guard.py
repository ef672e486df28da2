"""One check of every request's input before its handler runs: what PostgreSQL cannot store never reaches a use case.

PostgreSQL's text and jsonb cannot hold the NUL character, so a string holding one would fail deep inside a write
(a 500, after other rows of the request may have been written). And a JSON body nested thousands deep makes the
decoder or the validation recurse until Python gives up. This hook runs before any parameter is parsed, for every
route:

- every string the handler reads from the query or the path, and every string of the JSON body (object keys and
  values, at any depth, task parameters included) must not hold NUL (`\\x00`); each offending one is named by its
  place, like `parameters.0.name`, `params.days` or `search`. Query parameters the handler does not read are
  ignored, as they always were;
- a JSON body must not be nested deeper than `MAX_JSON_DEPTH` levels (objects and arrays; the body itself is
  level 1). The deepest request of this API, a template's parameter with a list default, nests four.

Both answer 422 through the validation handler (`app.api.errors`), with `extra.errors[].field` naming each place,
and nothing is written. A body that is no JSON at all answers 400, as Litestar answers it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from litestar import Request
from litestar.exceptions import ClientException, SerializationException, ValidationException

MAX_JSON_DEPTH = 32
"""How deep objects and arrays of a JSON body may nest; the body itself is level 1."""

NUL_MESSAGE = "must not contain the NUL character (\\u0000)"


async def refuse_unstorable_input(request: Request[Any, Any, Any]) -> None:
    """Raise `ValidationException` (422) naming every string that holds NUL and a body nested too deep."""
    problems: list[dict[str, str]] = []
    read = request.route_handler.parsed_fn_signature.parameters
    for name, value in request.query_params.multi_items():
        if name in read and "\x00" in value:
            problems.append(_problem(name, NUL_MESSAGE, "query"))
    for name, value in request.path_params.items():
        if isinstance(value, str) and "\x00" in value:
            problems.append(_problem(name, NUL_MESSAGE, "path"))
    if "data" in read and await request.body():
        problems.extend(_body_problems(await _decoded(request)))
    if problems:
        raise ValidationException("the request holds input that cannot be stored", extra=problems)


async def _decoded(request: Request[Any, Any, Any]) -> Any:
    """The JSON body, decoded once: the handler's own parsing reuses it."""
    try:
        return await request.json()
    except RecursionError:
        raise ValidationException(
            "the request body is nested too deep", extra=[_problem("body", _too_deep(), "body")]
        ) from None
    except SerializationException as exc:
        raise ClientException(str(exc)) from exc


def _body_problems(body: Any) -> Iterator[dict[str, str]]:
    """Every NUL-holding string and the first too-deep container of `body`, walked without recursion."""
    pending: list[tuple[str, Any, int]] = [("", body, 1)]
    while pending:
        place, value, depth = pending.pop()
        if isinstance(value, str):
            if "\x00" in value:
                yield _problem(place or "body", NUL_MESSAGE, "body")
            continue
        if not isinstance(value, dict | list):
            continue
        if depth > MAX_JSON_DEPTH:
            yield _problem(place or "body", _too_deep(), "body")
            return
        items = value.items() if isinstance(value, dict) else enumerate(value)
        children = []
        for key, child in items:
            child_place = f"{place}.{key}" if place else str(key)
            if isinstance(key, str) and "\x00" in key:
                yield _problem(child_place, f"the name {NUL_MESSAGE}", "body")
            children.append((child_place, child, depth + 1))
        pending.extend(reversed(children))  # report in document order


def _too_deep() -> str:
    return f"nested deeper than {MAX_JSON_DEPTH} levels of objects and arrays; expected at most {MAX_JSON_DEPTH}"


def _problem(field: str, message: str, source: str) -> dict[str, str]:
    return {"key": field, "message": message, "source": source}
