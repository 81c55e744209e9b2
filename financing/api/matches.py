"""Match endpoints: the list of suggestions each role may see, and the coordinators' review."""

from flask import jsonify

from financing.api import bp
from financing.api.auth import require_coordinator, require_user
from financing.api.docs import ID, operation
from financing.api.inputs import load_body, load_query, page_response
from financing.api.schemas import MatchArgsSchema, MatchPageSchema, MatchSchema, OptionalReasonSchema, ReasonSchema
from financing.extensions import db
from financing.matching.services import MatchFilters, accept_match, get_match, list_matches, reject_match

match_schema = MatchSchema()

FILTERS = ("status", "region", "theme", "project_id", "funder_id")


@bp.get("/v1/matches")
@operation(
    "List match suggestions", "matches", query=MatchArgsSchema, response=MatchPageSchema,
    auth="required", errors=(403,),
    description="Best score first. Coordinators see every match; donors the matches of their funder "
                "on public projects; owners those of their organisation's projects. Donors and "
                "owners do not see rejected matches.",
)
def list_matches_view():
    user = require_user()
    args = load_query(MatchArgsSchema())
    filters = MatchFilters(**{name: args.get(name) for name in FILTERS})
    items, total = list_matches(user, filters, args["page"], args["per_page"])
    return jsonify(page_response(match_schema, items, total, args))


@bp.get(f"/v1/matches/<{ID}:match_id>")
@operation("Read a match suggestion", "matches", response=MatchSchema, auth="required", errors=(403, 404))
def get_match_view(match_id: int):
    return jsonify(match_schema.dump(get_match(require_user(), match_id)))


@bp.post(f"/v1/matches/<{ID}:match_id>/accept")
@operation(
    "Accept a match suggestion", "matches", body=OptionalReasonSchema, body_required=False,
    response=MatchSchema, auth="required", errors=(403, 404, 409),
)
def accept_match_view(match_id: int):
    user = require_coordinator()
    data = load_body(OptionalReasonSchema(), allow_empty=True)
    match = accept_match(user, match_id, data["reason"])
    db.session.commit()
    return jsonify(match_schema.dump(match))


@bp.post(f"/v1/matches/<{ID}:match_id>/reject")
@operation(
    "Reject a match suggestion with a reason", "matches", body=ReasonSchema, response=MatchSchema,
    auth="required", errors=(403, 404, 409),
)
def reject_match_view(match_id: int):
    user = require_coordinator()
    data = load_body(ReasonSchema())
    match = reject_match(user, match_id, data["reason"])
    db.session.commit()
    return jsonify(match_schema.dump(match))
