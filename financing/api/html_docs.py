"""The HTML reference of the API at /api/docs, rendered on the server from the OpenAPI document.

The page needs no JavaScript and loads nothing from other sites: operations are grouped by
tag, with their parameters, request bodies and responses, and every schema of the document
is listed with its properties.
"""

from dataclasses import dataclass, field

from flask import render_template

from financing.api import bp
from financing.api.docs import operation
from financing.api.openapi import SCOPE_TEXT, cached_spec

SCHEMA_REF = "#/components/schemas/"
METHOD_ORDER = ("get", "post", "put", "patch", "delete")


@dataclass
class TypeText:
    """A schema written for people: its type as text and, for a named schema, its name to link to."""

    text: str
    link: str | None = None
    enum: list = field(default_factory=list)


@dataclass
class Property:
    name: str
    type: TypeText
    required: bool
    description: str


@dataclass
class SchemaDoc:
    name: str
    description: str
    properties: list[Property]


@dataclass
class Parameter:
    name: str
    location: str
    required: bool
    type: TypeText
    description: str


@dataclass
class Response:
    status: str
    description: str
    media_type: str | None
    type: TypeText | None


@dataclass
class OperationDoc:
    method: str
    path: str
    anchor: str
    summary: str
    description: str
    scope: str | None
    login_required: bool
    parameters: list[Parameter]
    body: TypeText | None
    body_required: bool
    responses: list[Response]


@dataclass
class TagDoc:
    name: str
    description: str
    operations: list[OperationDoc]


def describe_type(schema: dict) -> TypeText:
    """Write a JSON schema's type as text, such as "array of Project" or "string (date), nullable"."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix(SCHEMA_REF)
        return TypeText(name, link=name)
    if len(schema.get("allOf", ())) == 1:
        inner = describe_type(schema["allOf"][0])
        return _with_nullable(inner, schema)
    for combiner in ("oneOf", "anyOf"):
        if combiner in schema:
            parts = [describe_type(part) for part in schema[combiner]]
            return _with_nullable(TypeText(" or ".join(part.text for part in parts)), schema)
    kind = schema.get("type", "any")
    if kind == "array":
        items = describe_type(schema.get("items", {}))
        result = TypeText(f"array of {items.text}", link=items.link, enum=items.enum)
    elif kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        values = describe_type(schema["additionalProperties"])
        result = TypeText(f"object of {values.text}", link=values.link)
    else:
        result = TypeText(f"{kind} ({schema['format']})" if "format" in schema else kind, enum=list(schema.get("enum", [])))
    return _with_nullable(result, schema)


def _with_nullable(result: TypeText, schema: dict) -> TypeText:
    if schema.get("nullable"):
        result.text += ", nullable"
    return result


def _limits(schema: dict) -> str:
    """Write a schema's bounds, such as "1 to 100" or "at most 300 characters"."""
    notes = []
    if "minimum" in schema or "maximum" in schema:
        notes.append(f"{schema.get('minimum', '…')} to {schema.get('maximum', '…')}")
    if "maxLength" in schema:
        notes.append(f"at most {schema['maxLength']} characters")
    if "maxItems" in schema:
        notes.append(f"at most {schema['maxItems']} items")
    return "; ".join(notes)


def _description(schema: dict) -> str:
    limits = _limits(schema)
    text = schema.get("description", "")
    return f"{text} ({limits})".strip() if limits else text


def schema_docs(spec: dict) -> list[SchemaDoc]:
    """List the named schemas of the document with their properties, required ones first."""
    result = []
    for name, schema in sorted(spec.get("components", {}).get("schemas", {}).items()):
        required = set(schema.get("required", ()))
        properties = [
            Property(prop_name, describe_type(prop), prop_name in required, _description(prop))
            for prop_name, prop in schema.get("properties", {}).items()
        ]
        properties.sort(key=lambda prop: not prop.required)
        result.append(SchemaDoc(name, schema.get("description", ""), properties))
    return result


def _parameters(item: dict, operation_spec: dict) -> list[Parameter]:
    parameters = [*item.get("parameters", ()), *operation_spec.get("parameters", ())]
    return [
        Parameter(
            parameter["name"], parameter["in"], parameter.get("required", False),
            describe_type(parameter.get("schema", {})), _description({**parameter.get("schema", {}), **parameter}),
        )
        for parameter in parameters
    ]


def _responses(operation_spec: dict) -> list[Response]:
    result = []
    for status, response in sorted(operation_spec.get("responses", {}).items()):
        content = response.get("content", {})
        media_type = next(iter(content), None)
        schema = content[media_type].get("schema") if media_type else None
        result.append(Response(status, response.get("description", ""), media_type, describe_type(schema) if schema else None))
    return result


def operation_doc(path: str, method: str, item: dict, operation_spec: dict) -> OperationDoc:
    body = operation_spec.get("requestBody")
    body_schema = body["content"]["application/json"]["schema"] if body else None
    security = operation_spec.get("security", [])
    scope = operation_spec.get("x-token-scope")
    description = operation_spec.get("description", "")
    if scope in SCOPE_TEXT:
        # The page states the scope on a line of its own, so the sentence the document adds goes.
        description = description.removesuffix(SCOPE_TEXT[scope]).strip()
    return OperationDoc(
        method=method.upper(), path=path, anchor=operation_spec.get("operationId", f"{method}-{path}"),
        summary=operation_spec.get("summary", ""), description=description,
        scope=scope, login_required=bool(security) and {} not in security,
        parameters=_parameters(item, operation_spec),
        body=describe_type(body_schema) if body_schema else None, body_required=bool(body and body.get("required")),
        responses=_responses(operation_spec),
    )


def tag_docs(spec: dict) -> list[TagDoc]:
    """Group the document's operations by tag, in the order of its tags, then by path and method."""
    tags = [TagDoc(tag["name"], tag.get("description", ""), []) for tag in spec.get("tags", ())]
    by_name = {tag.name: tag for tag in tags}
    for path, item in sorted(spec.get("paths", {}).items()):
        for method in METHOD_ORDER:
            if method not in item:
                continue
            operation_spec = item[method]
            name = (operation_spec.get("tags") or ["other"])[0]
            if name not in by_name:
                by_name[name] = TagDoc(name, "", [])
                tags.append(by_name[name])
            by_name[name].operations.append(operation_doc(path, method, item, operation_spec))
    return [tag for tag in tags if tag.operations]


@bp.get("/docs")
@operation("HTML reference of this API", "meta", scope=None, content_type="text/html")
def reference_page():
    spec = cached_spec()
    return render_template(
        "api/docs.html", info=spec["info"], version=spec["openapi"], tags=tag_docs(spec),
        schemas=schema_docs(spec), security=spec.get("components", {}).get("securitySchemes", {}),
    )
