"""Reading requests and writing list responses: JSON bodies, query strings and pages."""

import json
from decimal import Decimal

from flask import request
from marshmallow import Schema
from werkzeug.exceptions import RequestEntityTooLarge

from financing.api.errors import MalformedBody

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
    return data


def load_body(schema: Schema, allow_empty: bool = False) -> dict:
    """Parse the JSON body and load it with `schema`; ValidationError becomes a 422."""
    return schema.load(json_body(allow_empty))


def load_query(schema: Schema) -> dict:
    """Load the query string with `schema`; a parameter given twice keeps its first value."""
    return schema.load(request.args.to_dict())


def page_response(schema: Schema, items: list, total: int, args: dict) -> dict:
    """Build the list document {"items", "page", "per_page", "total"}."""
    return {
        "items": schema.dump(items, many=True),
        "page": args["page"],
        "per_page": args["per_page"],
        "total": total,
    }
