"""Project pages: browse and detail for everyone, writing for owners, publish and return for coordinators.

The list of projects awaiting review is a tab of the review queues (financing.review).
"""

import logging

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_login import current_user, login_required

from financing.core.cache import lists_projects, public_page, shows_projects
from financing.core.errors import Conflict, ValidationFailed
from financing.extensions import db
from financing.pledges.services import deadline_passed, needs_totals
from financing.projects.forms import EMPTY_NEED_ROWS, STATUS_LABELS, ProjectFilterForm, ProjectForm, ReturnForm, form_data_of
from financing.projects.models import Project
from financing.projects.services import (
    DETAIL_LOADS,
    EDITABLE,
    LIST_LOADS,
    ProjectFilters,
    check_owner,
    create_project,
    get_project,
    paginate,
    publish_project,
    return_project,
    search_query,
    submit_project,
    update_project,
    validate,
    withdraw_project,
)

logger = logging.getLogger(__name__)

bp = Blueprint("projects", __name__)

# Form errors the service reports under a name that the form shows elsewhere.
FORM_FIELD_OF = {"sectors": "other_sectors"}
SUBMITTABLE = ("draft", "returned")
MAX_PAGE = 100_000
WITHDRAWABLE = ("draft", "submitted", "returned", "published")


@bp.app_context_processor
def project_labels():
    return {"project_status_labels": STATUS_LABELS}


def require_owner() -> None:
    if current_user.role != "owner":
        abort(403, _("Only project owners can do this."))


def require_coordinator() -> None:
    if not current_user.is_coordinator:
        abort(403, _("Only coordinators can do this."))


def _viewer():
    return current_user._get_current_object()


def _page_number() -> int:
    raw = request.args.get("page", "1")
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_PAGE:
        abort(400, _("Page %(value)r is not valid: use a whole number from 1.", value=raw))
    return int(raw)


# Browse and detail -----------------------------------------------------------------------

@bp.get("/projects")
@public_page
def browse():
    form = ProjectFilterForm(formdata=request.args)
    if not form.validate():
        logger.info("browse filters rejected fields=%s", ",".join(sorted(form.errors)))
        return render_template("projects/browse.html", form=form, projects=[], total=0, page=1, per_page=1, invalid=True), 400

    filters = ProjectFilters(
        region=form.region.data or None,
        country=form.country.data or None,
        theme=form.theme.data or None,
        sector=form.sector.data or None,
        status=form.status.data or None,
        q=(form.q.data or "").strip() or None,
        sort=form.sort.data,
    )
    page = form.page.data or 1
    per_page = current_app.config["PER_PAGE"]
    query = search_query(filters, public=True).options(*LIST_LOADS)
    projects, total = paginate(query, page, per_page, count_key=("projects", True, filters))
    lists_projects(project.id for project in projects)
    return render_template(
        "projects/browse.html", form=form, projects=projects, total=total, page=page, per_page=per_page, invalid=False,
    )


@bp.get("/projects/<int:project_id>")
@public_page
def detail(project_id: int):
    project = get_project(project_id, _viewer(), loads=DETAIL_LOADS)
    shows_projects([project.id])
    return _render_detail(project)


def _render_detail(project: Project, return_form: ReturnForm | None = None):
    viewer = _viewer()
    is_owner = viewer.role == "owner" and viewer.organisation_id == project.organisation_id
    totals = needs_totals([need.id for need in project.needs])
    needs = [_need_view(need, project, viewer, totals[need.id]) for need in project.needs]
    can_review = viewer.is_coordinator and project.status == "submitted"
    if can_review and return_form is None:
        # Built only when shown: a form writes a CSRF token to the session, which keeps the
        # page out of the page cache (financing.core.cache).
        return_form = ReturnForm(formdata=None, prefix=f"return-{project.id}")
    return render_template(
        "projects/detail.html",
        project=project,
        needs=needs,
        is_owner=is_owner,
        can_edit=is_owner and project.status in EDITABLE,
        can_submit=is_owner and project.status in SUBMITTABLE,
        can_withdraw=is_owner and project.status in WITHDRAWABLE,
        can_review=can_review,
        return_form=return_form,
    )


def _need_view(need, project: Project, viewer, totals: dict[str, int]) -> dict:
    """Collect what the detail page shows for one funding need, given its pledge totals."""
    passed = deadline_passed(need)
    accepts = (
        project.status == "published"
        and not passed
        and (need.status == "open" or (need.status == "funded" and need.allow_overfunding))
    )
    return {
        "need": need,
        "confirmed": totals["confirmed"],
        "deadline_passed": passed,
        "accepts_pledges": accepts,
        "can_pledge": accepts and viewer.role == "donor",
    }


# Writing projects ------------------------------------------------------------------------

@bp.route("/projects/new", methods=["GET", "POST"])
@login_required
def new():
    require_owner()
    form = ProjectForm()
    if request.method == "POST":
        project = _save(form, None)
        if project is not None:
            flash(_("Project %(title)r is saved as a draft. Submit it for review when it is ready.", title=project.title), "success")
            return redirect(url_for("projects.detail", project_id=project.id))
        return render_template("projects/form.html", form=form, project=None), 422
    return render_template("projects/form.html", form=form, project=None)


@bp.route("/projects/<int:project_id>/edit", methods=["GET", "POST"])
@login_required
def edit(project_id: int):
    require_owner()
    project = get_project(project_id, _viewer())
    check_owner(_viewer(), project)
    if project.status not in EDITABLE:
        flash(_("A %(status)s project cannot be edited.", status=STATUS_LABELS[project.status].lower()), "error")
        return redirect(url_for("projects.detail", project_id=project.id))

    if request.method == "POST":
        form = ProjectForm()
        saved = _save(form, project)
        if saved is not None:
            flash(_("Your changes to %(title)r are saved.", title=saved.title), "success")
            return redirect(url_for("projects.detail", project_id=saved.id))
        return render_template("projects/form.html", form=form, project=project), 422

    form = ProjectForm(formdata=None, obj=form_data_of(project))
    form.add_empty_rows(max(EMPTY_NEED_ROWS - 1, 0))
    return render_template("projects/form.html", form=form, project=project)


def _save(form: ProjectForm, project: Project | None) -> Project | None:
    """Create or update from a posted form; return the project, or None with errors on the form."""
    form_valid = form.validate()
    data, errors, rows = form.to_input()
    if not form_valid or errors:
        # Run the service's checks too, so that the user sees every problem at once.
        try:
            validate(data)
        except ValidationFailed as error:
            errors = {**error.fields, **errors}
        _show_errors(form, errors, rows, _("The project has invalid fields. Each problem is described next to its field below."))
        logger.info("project form rejected project=%s user=%s fields=%s", project.id if project else None, current_user.id, ",".join(sorted(errors) or sorted(form.errors)))
        return None

    try:
        if project is None:
            project = create_project(_viewer(), data, source="form")
        else:
            project = update_project(_viewer(), project, data)
        db.session.commit()
    except (ValidationFailed, Conflict) as error:
        db.session.rollback()
        _show_errors(form, error.fields, rows, error.message)
        logger.info("project save rejected project=%s user=%s fields=%s", project.id if project else None, current_user.id, ",".join(sorted(error.fields)))
        return None
    return project


def _show_errors(form: ProjectForm, errors: dict[str, str], rows: list[int], summary: str) -> None:
    """Put the summary on top and each error next to its field, or on top when it has none."""
    form.needs_errors = []
    form.form_errors.append(summary)
    for key, message in errors.items():
        field = _field_for(form, key, rows)
        if key == "needs":
            form.needs_errors.append(message)
        elif field is not None:
            if message not in field.errors:
                field.errors = [*field.errors, message]
        elif key != "status" and message not in form.form_errors:
            # A Conflict's "status" entry contains the current status, which the summary names.
            form.form_errors.append(message)


def _field_for(form: ProjectForm, key: str, rows: list[int]):
    if key.startswith("needs."):
        parts = key.split(".")
        if len(parts) != 3 or not parts[1].isdigit() or int(parts[1]) >= len(rows):
            return None
        entry = form.needs.entries[rows[int(parts[1])]].form
        return entry._fields.get(parts[2])
    return form._fields.get(FORM_FIELD_OF.get(key, key))


# Workflow --------------------------------------------------------------------------------

@bp.post("/projects/<int:project_id>/submit")
@login_required
def submit(project_id: int):
    require_owner()
    project = get_project(project_id, _viewer())
    _act(lambda: submit_project(_viewer(), project), _("Project %(title)r is submitted for review.", title=project.title), project)
    return redirect(url_for("projects.detail", project_id=project.id))


@bp.post("/projects/<int:project_id>/withdraw")
@login_required
def withdraw(project_id: int):
    require_owner()
    project = get_project(project_id, _viewer())
    _act(lambda: withdraw_project(_viewer(), project), _("Project %(title)r is withdrawn.", title=project.title), project)
    return redirect(url_for("projects.detail", project_id=project.id))


@bp.post("/projects/<int:project_id>/publish")
@login_required
def publish(project_id: int):
    require_coordinator()
    project = get_project(project_id, _viewer())
    _act(lambda: publish_project(_viewer(), project), _("Project %(title)r is published.", title=project.title), project)
    return redirect(url_for("review.index"))


@bp.post("/projects/<int:project_id>/return", endpoint="return")
@login_required
def return_(project_id: int):
    require_coordinator()
    project = get_project(project_id, _viewer())
    form = ReturnForm(prefix=f"return-{project.id}")
    if not form.validate_on_submit():
        logger.info("return form rejected project=%s user=%s", project.id, current_user.id)
        return _render_detail(project, return_form=form), 422
    _act(lambda: return_project(_viewer(), project, form.reason.data), _("Project %(title)r is returned to its owner.", title=project.title), project)
    return redirect(url_for("review.index"))


def _act(change, success_message: str, project: Project) -> bool:
    """Run one workflow step and commit it, or flash why the service rejected it."""
    try:
        change()
        db.session.commit()
    except (ValidationFailed, Conflict) as error:
        db.session.rollback()
        logger.info("project action rejected project=%s user=%s: %s", project.id, current_user.id, error.message)
        flash(error.message, "error")
        return False
    flash(success_message, "success")
    return True


# Lists for owners and coordinators -------------------------------------------------------

@bp.get("/projects/mine")
@login_required
def mine():
    require_owner()
    page = _page_number()
    per_page = current_app.config["PER_PAGE"]
    projects, total = [], 0
    if current_user.organisation_id is not None:
        query = search_query(ProjectFilters(organisation_id=current_user.organisation_id), public=False)
        query = query.order_by(None).order_by(Project.updated_at.desc(), Project.id.desc()).options(*LIST_LOADS)
        projects, total = paginate(query, page, per_page)
    return render_template("projects/mine.html", projects=projects, total=total, page=page, per_page=per_page)
