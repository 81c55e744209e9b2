"""Personal API token endpoints: the user's tokens, a new token shown once, and revocation."""

from flask import jsonify, url_for
from marshmallow import fields, validate

from financing.accounts.services import MAX_TOKEN_NAME_LENGTH, TOKEN_SCOPES, create_token, list_tokens, revoke_token, token_scopes
from financing.api import bp
from financing.api.auth import granted_scopes, require_scope, require_user
from financing.api.docs import ID, LOCATION, operation
from financing.api.inputs import load_body, load_query, page_response
from financing.api.schemas import InputSchema, OutputSchema, PageArgsSchema, PageSchema
from financing.extensions import db

NO_STORE = {"Cache-Control": "no-store"}


class TokenSchema(OutputSchema):
    id = fields.Integer()
    name = fields.String()
    prefix = fields.String(metadata={"description": "The first characters of the token, to recognise it."})
    scopes = fields.Function(
        lambda row: [scope for scope in TOKEN_SCOPES if scope in token_scopes(row)],
        metadata={"type": "array", "items": {"type": "string", "enum": list(TOKEN_SCOPES)}},
    )
    created_at = fields.DateTime()
    last_used_at = fields.DateTime(allow_none=True, metadata={"description": "Recorded at most once a minute."})
    revoked_at = fields.DateTime(allow_none=True)


class NewTokenSchema(TokenSchema):
    token = fields.String(metadata={"description": "The token itself. It is shown in this response only; the platform stores its hash."})


class TokenPageSchema(PageSchema):
    items = fields.List(fields.Nested(TokenSchema))


class TokenInputSchema(InputSchema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=MAX_TOKEN_NAME_LENGTH),
                         metadata={"description": "A label such as the name of the script that uses the token."})
    scopes = fields.List(
        fields.String(validate=validate.OneOf(TOKEN_SCOPES)), required=True,
        validate=validate.Length(min=1, max=len(TOKEN_SCOPES)),
        metadata={"description": "read for GET requests, pledge to create or cancel one's own pledges, "
                                 "manage for every other change."},
    )


token_schema = TokenSchema()


@bp.get("/v1/tokens")
@operation(
    "List your API tokens", "tokens", query=PageArgsSchema, response=TokenPageSchema, auth="required",
    description="Newest first, revoked tokens included. The tokens themselves are never shown again.",
)
def list_tokens_view():
    user = require_user()
    args = load_query(PageArgsSchema())
    tokens = list_tokens(user)
    start = (args["page"] - 1) * args["per_page"]
    return jsonify(page_response(token_schema, tokens[start:start + args["per_page"]], len(tokens), args))


@bp.post("/v1/tokens")
@operation(
    "Create an API token", "tokens", body=TokenInputSchema, response=NewTokenSchema, status=201,
    auth="required", response_headers=(LOCATION,),
    description="The response contains the token, shown only this once. A request authenticated by a token can grant only "
                "scopes that its own token has.",
)
def create_token_view():
    user = require_user()
    data = load_body(TokenInputSchema())
    if granted_scopes() is not None:
        for scope in data["scopes"]:
            require_scope(scope)
    row, token = create_token(user, data["name"], data["scopes"])
    db.session.commit()
    headers = {**NO_STORE, "Location": url_for("api.list_tokens_view")}
    return jsonify({**token_schema.dump(row), "token": token}), 201, headers


@bp.delete(f"/v1/tokens/<{ID}:token_id>")
@operation(
    "Revoke an API token", "tokens", status=204, auth="required",
    description="Revokes one of your own tokens, also the one that sends this request; revoking it "
                "again changes nothing. Another user's token gets 404.",
)
def revoke_token_view(token_id: int):
    user = require_user()
    revoke_token(user, token_id)
    db.session.commit()
    return "", 204

