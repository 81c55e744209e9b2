"""Reading requests and writing list responses: JSON bodies, query strings and pages."""

import json
from decimal import Decimal

from flask import request
from marshmallow import Schema
from werkzeug.exceptions import RequestEntityTooLarge

from financing.api.errors import MalformedBody
from financing.core.errors import ValidationFailed

# Largest request body read, in bytes; a project with its needs and description fits easily.
MAX_BODY_BYTES = 1024 * 1024
_JSON_TYPES = {list: "array", str: "string", int: "number", Decimal: "number", bool: "boolean", type(None): "null"}


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a valid JSON number")


def json_body(allow_empty: bool = False) -> dict:
    """Parse the body as a JSON object whose numbers become int or Decimal, never float.

    Raise MalformedBody (400) for invalid JSON, NaN or Infinity, or anything but an object.
    """
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise RequestEntityTooLarge(f"The request body is larger than {MAX_BODY_BYTES} bytes.")
    raw = request.get_data(cache=True)
    if not raw.strip():
        if allow_empty:
            return {}
        raise MalformedBody("The request body is empty: send a JSON object.")
    try:
        data = json.loads(raw, parse_float=Decimal, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as error:
        raise MalformedBody(f"The request body is not valid JSON: {error}.") from error
    if not isinstance(data, dict):
        found = _JSON_TYPES.get(type(data), "value")
        raise MalformedBody(f"The request body must be a JSON object, not a JSON {found}.")
    check_text(data)
    return data


def text_problem(value: str) -> str | None:
    """Return why a string cannot be stored as text, or None when it can.

    PostgreSQL text cannot hold the NUL character, and UTF-8 cannot encode a lone surrogate
    such as the JSON escape "\\ud800".
    """
    if "\x00" in value:
        return "contains the NUL character (\\u0000), which text fields cannot store"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone UTF-16 surrogate, which is not a character"
    return None


def check_text(data) -> None:
    """Raise ValidationFailed naming the first key or string of a JSON document that cannot be stored.

    The walk uses a stack instead of recursion, because json.loads accepts documents nested
    almost as deep as Python's recursion limit.
    """
    stack: list[tuple[str, object]] = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            problem = text_problem(value)
            if problem:
                name = path or "body"
                raise ValidationFailed(f"Field {name} {problem}.", {name: f"The value {problem}."})
        elif isinstance(value, dict):
            for key, item in value.items():
                problem = text_problem(key)
                if problem:
                    raise ValidationFailed(f"A field name {problem}.", {path or "body": f"A field name {problem}."})
                stack.append((f"{path}.{key}" if path else key, item))
        elif isinstance(value, list):
            stack.extend((f"{path}.{index}" if path else str(index), item) for index, item in enumerate(value))


def load_body(schema: Schema, allow_empty: bool = False) -> dict:
    """Parse the JSON body and load it with `schema`; ValidationError becomes a 422."""
    return schema.load(json_body(allow_empty))


def load_query(schema: Schema) -> dict:
    """Load the query string with `schema`; a parameter given twice keeps its first value."""
    args = request.args.to_dict()
    check_text(args)
    return schema.load(args)


def page_response(schema: Schema, items: list, total: int, args: dict) -> dict:
    """Build the list document {"items", "page", "per_page", "total"}."""
    return {
        "items": schema.dump(items, many=True),
        "page": args["page"],
        "per_page": args["per_page"],
        "total": total,
    }
