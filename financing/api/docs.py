"""Metadata that each API view carries for the OpenAPI document."""

from dataclasses import dataclass, field
from typing import Callable

from marshmallow import Schema

# URL converter of object ids: larger numbers get 404 instead of overflowing SQLite's
# 64-bit integers.
MAX_ID = 2**63 - 1
ID = f"int(max={MAX_ID})"


@dataclass(frozen=True)
class Operation:
    """Description of one view in the OpenAPI document.

    `auth` is "public" (credentials optional) or "required". `errors` lists the error
    statuses that the other settings do not imply: "required" adds 401, a body adds 400
    and 422, and a query schema adds 422. `also` lists other success statuses, with their
    descriptions, that return the same `response` schema.
    """

    summary: str
    tag: str
    response: type[Schema] | None = None
    status: int = 200
    query: type[Schema] | None = None
    body: type[Schema] | None = None
    body_required: bool = True
    auth: str = "public"
    errors: tuple[int, ...] = ()
    also: tuple[tuple[int, str], ...] = ()
    headers: tuple[dict, ...] = field(default_factory=tuple)
    description: str = ""


def operation(summary: str, tag: str, **options) -> Callable:
    """Attach an Operation to a view function; put it below the route decorator."""
    def attach(view: Callable) -> Callable:
        view.api_operation = Operation(summary, tag, **options)
        return view
    return attach
