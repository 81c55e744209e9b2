"""Project endpoints: the public list, create and update with needs, and the publishing workflow."""

from flask import jsonify, url_for

from financing.api import bp
from financing.api.auth import require_coordinator, require_user, viewer
from financing.api.docs import ID, LOCATION, operation
from financing.api.inputs import load_body, load_query, page_response
from financing.api.schemas import (
    EmptySchema,
    ProjectInputSchema,
    ProjectListArgsSchema,
    ProjectPageSchema,
    ProjectPatchSchema,
    ProjectSchema,
    ReasonSchema,
)
from financing.core.cache import lists_projects, public_page, shows_projects
from financing.core.errors import ValidationFailed
from financing.extensions import db
from financing.projects.models import Project
from financing.projects.services import (
    DETAIL_LOADS,
    LIST_LOADS,
    NeedInput,
    ProjectFilters,
    ProjectInput,
    create_project,
    get_project,
    paginate,
    publish_project,
    return_project,
    search_query,
    submit_project,
    update_project,
    withdraw_project,
)

project_schema = ProjectSchema()

FILTERS = ("region", "country", "theme", "sector", "status", "q", "sort")
SCALAR_FIELDS = ("title", "summary", "description", "countries", "regions", "themes", "sectors", "start_date", "end_date")


def _current_input(project: Project) -> ProjectInput:
    needs = [
        NeedInput(need.title, need.goal_minor, need.currency, need.deadline, need.allow_overfunding, need.id)
        for need in project.needs
    ]
    return ProjectInput(
        title=project.title, summary=project.summary, description=project.description,
        countries=project.countries, regions=project.regions, themes=project.themes,
        sectors=project.sectors, start_date=project.start_date, end_date=project.end_date, needs=needs,
    )


def project_input(data: dict, project: Project | None = None) -> ProjectInput:
    """Build the service input from loaded fields; fields left out keep the project's values."""
    result = _current_input(project) if project is not None else ProjectInput(title="")
    for name in SCALAR_FIELDS:
        if name in data:
            setattr(result, name, data[name])
    if "needs" in data:
        stored = {need.id: need for need in result.needs}
        result.needs = [need_input(item, stored.get(item.get("id"))) for item in data["needs"]]
    return result


def need_input(item: dict, stored: NeedInput | None) -> NeedInput:
    """Build a NeedInput; an existing need keeps the deadline and overfunding flag left out."""
    return NeedInput(
        title=item["title"],
        goal_minor=item["goal"].minor,
        currency=item["goal"].currency,
        deadline=item.get("deadline", stored.deadline if stored else None),
        allow_overfunding=item.get("allow_overfunding", stored.allow_overfunding if stored else False),
        id=item.get("id"),
    )


def _project_response(project: Project):
    return jsonify(project_schema.dump(project))


@bp.get("/v1/projects")
@public_page
@operation(
    "List projects", "projects", query=ProjectListArgsSchema, response=ProjectPageSchema, errors=(401,),
    description="Anonymous users, owners and donors see published, funded and closed projects; "
                "coordinators see every status. With mine=true the list holds the projects of your "
                "own organisation in every status, newest change first, and needs credentials. A region "
                "or theme filter also matches projects tagged with one of its countries or sectors.",
)
def list_projects():
    args = load_query(ProjectListArgsSchema())
    user = viewer()
    filters = ProjectFilters(**{name: args.get(name) for name in FILTERS})
    if args["mine"]:
        user = require_user()
        if user.organisation_id is None:
            return jsonify(page_response(project_schema, [], 0, args))
        filters.organisation_id = user.organisation_id
        public = False
        query = search_query(filters, public=False).order_by(None).order_by(Project.updated_at.desc(), Project.id.desc())
    else:
        public = not (user is not None and user.is_coordinator)
        query = search_query(filters, public=public)
    items, total = paginate(query.options(*LIST_LOADS), args["page"], args["per_page"], count_key=("projects", public, filters))
    lists_projects(project.id for project in items)
    return jsonify(page_response(project_schema, items, total, args))


@bp.post("/v1/projects")
@operation(
    "Create a draft project with its funding needs", "projects", body=ProjectInputSchema,
    response=ProjectSchema, status=201, auth="required", errors=(403,), response_headers=(LOCATION,),
)
def create_project_view():
    user = require_user()
    data = load_body(ProjectInputSchema())
    project = create_project(user, project_input(data), source="api")
    db.session.commit()
    location = url_for("api.get_project_view", project_id=project.id)
    return jsonify(project_schema.dump(project)), 201, {"Location": location}


@bp.get(f"/v1/projects/<{ID}:project_id>")
@public_page
@operation(
    "Read a project", "projects", response=ProjectSchema, errors=(404,),
    description="Unpublished projects are visible only to their organisation and to coordinators.",
)
def get_project_view(project_id: int):
    project = get_project(project_id, viewer(), loads=DETAIL_LOADS)
    shows_projects([project.id])
    return _project_response(project)


@bp.patch(f"/v1/projects/<{ID}:project_id>")
@operation(
    "Update a project", "projects", body=ProjectPatchSchema, response=ProjectSchema,
    auth="required", errors=(403, 404, 409),
    description="Fields left out keep their value. Editing a submitted project moves it back to draft.",
)
def update_project_view(project_id: int):
    user = require_user()
    project = get_project(project_id, user)
    data = load_body(ProjectPatchSchema())
    if not data:
        raise ValidationFailed("The request changes nothing: send at least one field.", {"body": "Send at least one field."})
    update_project(user, project, project_input(data, project))
    db.session.commit()
    return _project_response(project)


@bp.post(f"/v1/projects/<{ID}:project_id>/submit")
@operation(
    "Submit a project for review", "projects", body=EmptySchema, body_required=False,
    response=ProjectSchema, auth="required", errors=(403, 404, 409),
)
def submit_project_view(project_id: int):
    user = require_user()
    load_body(EmptySchema(), allow_empty=True)
    project = submit_project(user, get_project(project_id, user))
    db.session.commit()
    return _project_response(project)


@bp.post(f"/v1/projects/<{ID}:project_id>/publish")
@operation(
    "Publish a submitted project", "projects", body=EmptySchema, body_required=False,
    response=ProjectSchema, auth="required", errors=(403, 404, 409),
)
def publish_project_view(project_id: int):
    user = require_coordinator()
    load_body(EmptySchema(), allow_empty=True)
    project = publish_project(user, get_project(project_id, user))
    db.session.commit()
    return _project_response(project)


@bp.post(f"/v1/projects/<{ID}:project_id>/withdraw")
@operation(
    "Withdraw a project", "projects", body=EmptySchema, body_required=False,
    response=ProjectSchema, auth="required", errors=(403, 404, 409),
    description="The owner takes a project that is not yet funded off the platform: a draft, submitted, "
                "returned or published project becomes withdrawn.",
)
def withdraw_project_view(project_id: int):
    user = require_user()
    load_body(EmptySchema(), allow_empty=True)
    project = withdraw_project(user, get_project(project_id, user))
    db.session.commit()
    return _project_response(project)


@bp.post(f"/v1/projects/<{ID}:project_id>/return")
@operation(
    "Return a submitted project to its owner with a reason", "projects", body=ReasonSchema,
    response=ProjectSchema, auth="required", errors=(403, 404, 409),
)
def return_project_view(project_id: int):
    user = require_coordinator()
    data = load_body(ReasonSchema())
    project = return_project(user, get_project(project_id, user), data["reason"])
    db.session.commit()
    return _project_response(project)
