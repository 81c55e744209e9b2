"""Funder endpoints: the public list of funder profiles and one profile."""

from flask import jsonify

from financing.api import bp
from financing.api.docs import ID, operation
from financing.api.inputs import load_query, page_response
from financing.api.schemas import FunderArgsSchema, FunderPageSchema, FunderSchema
from financing.funders.services import get_funder
from financing.funders.views import funder_query
from financing.projects.services import paginate

funder_schema = FunderSchema()


@bp.get("/v1/funders")
@operation("List funders", "funders", query=FunderArgsSchema, response=FunderPageSchema)
def list_funders():
    args = load_query(FunderArgsSchema())
    query = funder_query(region=args.get("region"), theme=args.get("theme"), kind=args.get("kind"))
    items, total = paginate(query, args["page"], args["per_page"])
    return jsonify(page_response(funder_schema, items, total, args))


@bp.get(f"/v1/funders/<{ID}:funder_id>")
@operation("Read a funder profile", "funders", response=FunderSchema, errors=(404,))
def get_funder_view(funder_id: int):
    return jsonify(funder_schema.dump(get_funder(funder_id)))
