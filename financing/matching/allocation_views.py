"""Allocation page: coordinators start a run, read its proposal and accept rows as matches."""

import logging

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_babel import ngettext
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from wtforms import HiddenField, SelectMultipleField

from financing.core.errors import Conflict, Forbidden, ValidationFailed
from financing.extensions import db
from financing.matching.allocation import AllocationError, accept_rows, get_run, list_rows, run_allocation, run_totals

logger = logging.getLogger(__name__)

bp = Blueprint("allocation", __name__)

ROWS_PER_PAGE = 50
MAX_PAGE = 100_000


class StartRunForm(FlaskForm):
    """The button that starts a run; the form carries only its CSRF token."""


class AcceptRowsForm(FlaskForm):
    # The row ids come from the checkboxes of the table; the service checks they belong to the run.
    row_ids = SelectMultipleField(_l("Rows to accept"), coerce=int, validate_choice=False)
    page = HiddenField()


def require_coordinator() -> None:
    if not current_user.is_coordinator:
        raise Forbidden(_("Only coordinators can use allocation runs."))


def page_arg(value) -> int:
    try:
        page = int(value)
    except (TypeError, ValueError):
        return 1
    return min(max(page, 1), MAX_PAGE)


def render_page(run_id: int | None, page: int, form: AcceptRowsForm | None = None, errors: list[str] | None = None,
                selected: set[int] | None = None, status: int = 200):
    run = get_run(current_user, run_id)
    rows, total, totals = [], 0, None
    if run is not None:
        rows, total = list_rows(run, page, ROWS_PER_PAGE)
        totals = run_totals(run)
    if selected is None:
        selected = {row.id for row in rows if not row.accepted} if request.args.get("select") == "page" else set()
    return render_template(
        "allocation/index.html", run=run, rows=rows, total=total, totals=totals, page=page,
        per_page=ROWS_PER_PAGE, start_form=StartRunForm(), accept_form=form or AcceptRowsForm(formdata=None, page=page),
        errors=errors or [], selected=selected,
    ), status


@bp.get("/allocation")
@login_required
def index():
    """Show the latest run (or ?run=<id>) with its totals, progress and rows to accept."""
    require_coordinator()
    run_id = request.args.get("run", type=int)
    return render_page(run_id, page_arg(request.args.get("page")))


@bp.post("/allocation/runs")
@login_required
def start():
    """Start an allocation run and show its proposal."""
    require_coordinator()
    form = StartRunForm()
    if not form.validate():
        flash(_("The form expired. Start the run again."), "error")
        return redirect(url_for("allocation.index"), 303)
    try:
        # NOTE: the run is solved inside the request. The benchmark's 10,000 needs and 500 funders
        # take about 45 seconds, beyond gunicorn's default 30-second worker timeout, so large
        # platforms need this moved to an RQ job.
        run = run_allocation(current_user)
    except (ValueError, AllocationError) as error:
        db.session.rollback()
        logger.error("allocation run failed user=%s: %s", current_user.id, error)
        flash(_("The allocation run failed: %(error)s", error=str(error)), "error")
        return redirect(url_for("allocation.index"), 303)
    db.session.commit()
    if run.status == "failed":
        flash(_("The solver found no proposal (%(status)s): %(message)s", status=run.solver_status, message=run.solver_message), "error")
    else:
        flash(ngettext("Allocation run %(id)s proposes %(num)d amount.", "Allocation run %(id)s proposes %(num)d amounts.",
                       len(run.rows), id=run.id), "success")
    return redirect(url_for("allocation.index", run=run.id), 303)


@bp.post("/allocation/runs/<int:run_id>/accept")
@login_required
def accept(run_id: int):
    """Accept the ticked rows of a run as matches, then go back to the same page of rows."""
    require_coordinator()
    form = AcceptRowsForm()
    page = page_arg(form.page.data)
    if not form.validate():
        # A value that is not a whole number fails the coercion of row_ids.
        errors = [error for messages in form.errors.values() for error in messages]
        return render_page(run_id, page, form, [_("The ticked rows could not be read: %(error)s", error=errors[0])], set(), 422)
    selected = set(form.row_ids.data or [])
    try:
        result = accept_rows(current_user, run_id, selected)
    except ValidationFailed as error:
        db.session.rollback()
        return render_page(run_id, page, form, [error.fields.get("row_ids", error.message)], selected, 422)
    except Conflict as error:
        db.session.rollback()
        return render_page(run_id, page, form, [error.message], selected, 409)
    db.session.commit()
    if result.accepted:
        flash(ngettext("Accepted %(num)d row: its funder and project owner now see the match as accepted.",
                       "Accepted %(num)d rows: their funders and project owners now see the matches as accepted.",
                       len(result.accepted)), "success")
    if result.already:
        flash(ngettext("%(num)d ticked row was accepted before and was left as it was.",
                       "%(num)d ticked rows were accepted before and were left as they were.", len(result.already)), "info")
    return redirect(url_for("allocation.index", run=run_id, page=page), 303)
