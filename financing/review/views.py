"""The coordinators' review page: one tab per queue, with bulk decisions on the ticked rows."""

import logging

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_babel import ngettext
from flask_login import current_user, login_required
from sqlalchemy.exc import SQLAlchemyError

from financing.core.errors import Conflict, ValidationFailed
from financing.extensions import db
from financing.pledges.services import act_on_many
from financing.pledges.views import parse_id
from financing.projects.forms import ReturnForm
from financing.review.forms import BulkDecisionForm
from financing.review.services import QUEUES, decide_matches, diffs_for, publish_many, queue_counts, queue_page

logger = logging.getLogger(__name__)

bp = Blueprint("review", __name__)

MAX_PAGE = 100_000
TAB_LABELS = {
    "projects": _l("Awaiting publication"),
    "resubmitted": _l("Resubmitted"),
    "matches": _l("Match suggestions"),
    "pledges": _l("Pledges to confirm"),
    "disputes": _l("Card payments in dispute"),
}
# The buttons of each tab's bulk form. The disputes tab has none, because Stripe's webhooks
# close a dispute.
BULK_ACTIONS = {
    "projects": ("publish",),
    "resubmitted": ("publish",),
    "matches": ("accept", "reject"),
    "pledges": ("confirm", "cancel"),
}


@bp.app_context_processor
def review_navigation():
    return {"review_queue_total": review_queue_total}


def review_queue_total() -> int | None:
    """Count what waits in all queues for the navigation, or return None when the count fails."""
    try:
        return sum(queue_counts().values())
    except SQLAlchemyError as error:
        # The error pages extend the same layout, so a failing count must not fail them too.
        db.session.rollback()
        logger.warning("review queue count failed user=%s: %s", current_user.id, error.__class__.__name__)
        return None


def require_coordinator() -> None:
    if not current_user.is_coordinator:
        abort(403, _("Only coordinators can use the review queues."))


def tab_arg() -> str:
    tab = request.args.get("tab") or QUEUES[0]
    if tab not in QUEUES:
        abort(400, _("Tab %(value)r is unknown: use one of %(tabs)s.", value=tab, tabs=", ".join(QUEUES)))
    return tab


def page_arg() -> int:
    raw = request.args.get("page", "1")
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_PAGE:
        abort(400, _("Page %(value)r is not valid: use a whole number from 1.", value=raw))
    return int(raw)


def reason_label(tab: str) -> str:
    if tab == "matches":
        return _("Reason (required to reject)")
    return _("Reason (required to cancel)")


def render_queue(tab: str, page: int, form: BulkDecisionForm | None = None, status: int = 200,
                 errors: list[str] | None = None, blocked: list[int] | None = None):
    per_page = current_app.config["PER_PAGE"]
    items, total = queue_page(tab, page, per_page)
    if form is None:
        form = BulkDecisionForm(formdata=None)
    form.reason.label.text = reason_label(tab)
    if request.method == "GET" and request.args.get("select") == "page":
        selected = {item.id for item in items}
    else:
        selected = {parse_id(value) for value in form.selected.data or []} - {None}
    return_forms = {}
    if tab in ("projects", "resubmitted"):
        return_forms = {project.id: ReturnForm(formdata=None, prefix=f"return-{project.id}") for project in items}
    return render_template(
        "review/index.html", tab=tab, tabs=QUEUES, labels=TAB_LABELS, counts=queue_counts(),
        items=items, total=total, page=page, per_page=per_page, form=form,
        actions=BULK_ACTIONS.get(tab, ()), selected=selected, errors=errors or [], blocked=set(blocked or []),
        diffs=diffs_for(items) if tab == "resubmitted" else {}, return_forms=return_forms,
    ), status


@bp.get("/review")
@login_required
def index():
    require_coordinator()
    return render_queue(tab_arg(), page_arg())


def apply_decision(tab: str, action: str, ids: list[int], reason: str) -> str:
    """Run one bulk decision and return the message to flash; the caller commits."""
    if tab in ("projects", "resubmitted"):
        projects = publish_many(current_user, ids)
        return ngettext("Published %(num)d project.", "Published %(num)d projects.", len(projects))
    if tab == "matches":
        matches = decide_matches(current_user, ids, action, reason)
        if action == "accept":
            return ngettext("Accepted %(num)d match.", "Accepted %(num)d matches.", len(matches))
        return ngettext("Rejected %(num)d match.", "Rejected %(num)d matches.", len(matches))
    pledges = act_on_many(current_user, ids, action, reason)
    if action == "confirm":
        return ngettext("Confirmed %(num)d pledge.", "Confirmed %(num)d pledges.", len(pledges))
    return ngettext("Cancelled %(num)d pledge.", "Cancelled %(num)d pledges.", len(pledges))


@bp.post("/review/<any(projects, resubmitted, matches, pledges):tab>")
@login_required
def decide(tab: str):
    require_coordinator()
    page = page_arg()
    form = BulkDecisionForm()
    if not form.validate_on_submit():
        messages = [text for texts in form.errors.values() for text in texts]
        return render_queue(tab, page, form, 422, messages)

    ids = []
    for value in form.selected.data or []:
        object_id = parse_id(value)
        if object_id is None:
            form.selected.errors = [*form.selected.errors, _("Id %(value)r is not a number.", value=value)]
        else:
            ids.append(object_id)
    action = form.action.data or ""
    if action not in BULK_ACTIONS[tab]:
        form.action.errors = [_("Unknown action %(value)r: use %(actions)s.", value=action, actions=" or ".join(BULK_ACTIONS[tab]))]
    if form.selected.errors or form.action.errors:
        return render_queue(tab, page, form, 422, [*form.selected.errors, *form.action.errors])

    try:
        message = apply_decision(tab, action, ids, form.reason.data or "")
    except (ValidationFailed, Conflict) as error:
        db.session.rollback()
        logger.info("bulk %s on %s rejected ids=%s user=%s status=%s: %s", action, tab, ids, current_user.id, error.status, error.message)
        if "reason" in error.fields:
            form.reason.errors = [*form.reason.errors, error.fields["reason"]]
        blocked = getattr(error, "object_ids", None) or getattr(error, "pledge_ids", None)
        return render_queue(tab, page, form, error.status, [error.message], blocked)
    db.session.commit()

    flash(message, "success")
    return redirect(url_for("review.index", tab=tab), 303)
