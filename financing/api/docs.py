"""Metadata that each API view carries for the OpenAPI document and the token scope check."""

from dataclasses import dataclass, field
from typing import Callable

from marshmallow import Schema
from werkzeug.exceptions import NotFound
from werkzeug.routing import BaseConverter

# Largest object id: primary keys are 32-bit integers on PostgreSQL.
MAX_ID = 2**31 - 1
# URL converter of object ids in API routes; see IdConverter.
ID = "id"


class IdConverter(BaseConverter):
    """An object id in a URL: digits only, and 404 when larger than MAX_ID.

    Werkzeug's int converter with max=... makes the rule not match instead, and a path that
    another method's rule matches then gets 405 rather than 404. Raising NotFound here gives
    404 whatever the method, and keeps a too large id away from PostgreSQL, which would raise.
    """

    regex = r"\d+"

    def to_python(self, value: str) -> int:
        number = int(value)
        if number > MAX_ID:
            raise NotFound(f"Id {value} is out of range: ids are at most {MAX_ID}.")
        return number

    def to_url(self, value: int) -> str:
        return str(int(value))

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# The Location header of a 201 response, as an OpenAPI header object.
LOCATION = ("Location", {"description": "URL of the new resource.", "schema": {"type": "string"}})


@dataclass(frozen=True)
class Operation:
    """Description of one view in the OpenAPI document.

    `auth` is "public" (credentials optional) or "required". `errors` lists the error
    statuses that the other settings do not imply: "required" adds 401, a body adds 400
    and 422, a query schema adds 422, a path parameter adds 404, and a scope adds 403
    because a token may lack it. `also` lists other success statuses, with their
    descriptions, that return the same `response` schema. `scope` is the token scope the
    operation needs: "" means read for GET and manage for other methods, None means none.
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
    scope: str | None = ""
    # True when the view checks the scope itself because it depends on the user, as for
    # cancelling a pledge; `scope` is then the one documented.
    scope_in_view: bool = False
    # Response headers of the success status, as OpenAPI header objects by name.
    response_headers: tuple[tuple[str, dict], ...] = ()
    # Media type of a success response without a `response` schema, such as "text/csv";
    # None documents no content.
    content_type: str | None = None

    def token_scope(self, method: str) -> str | None:
        """Return the token scope this operation needs for an HTTP method, or None."""
        if self.scope is None:
            return None
        if self.scope:
            return self.scope
        return "read" if method.upper() in READ_METHODS else "manage"


def operation(summary: str, tag: str, **options) -> Callable:
    """Attach an Operation to a view function; put it below the route decorator."""
    def attach(view: Callable) -> Callable:
        view.api_operation = Operation(summary, tag, **options)
        return view
    return attach
