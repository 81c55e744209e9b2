"""Match pages: the coordinators' review queue with accept and reject forms, and each party's own matches."""

import logging
from urllib.parse import urlsplit

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from sqlalchemy import select
from wtforms import HiddenField, SelectField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length

from financing.core.errors import Conflict, Forbidden, ValidationFailed
from financing.extensions import db
from financing.funders.models import Funder
from financing.funders.services import funder_for_user
from financing.matching.models import Match
from financing.matching.services import (
    MAX_REASON_LENGTH, OPEN_FOR_REVIEW, MatchFilters, accept_match, get_match, list_matches, reject_match,
)
from financing.projects.forms import region_choices, theme_choices

logger = logging.getLogger(__name__)

bp = Blueprint("matching", __name__)

FILTER_NAMES = ("status", "region", "theme", "funder_id", "project_id")
MAX_PAGE = 100_000


class MatchFilterForm(FlaskForm):
    """The GET filters of the review page, whose values MatchFilters checks."""

    class Meta:
        csrf = False

    status = SelectField(_l("Status"), validate_choice=False, choices=[
        SelectChoice("", _l("Any status")), SelectChoice("suggested", _l("Suggested")),
        SelectChoice("stale", _l("Stale")), SelectChoice("accepted", _l("Accepted")),
        SelectChoice("rejected", _l("Rejected")),
    ])
    region = SelectField(_l("Region"), validate_choice=False)
    theme = SelectField(_l("Theme"), validate_choice=False)
    funder_id = SelectField(_l("Funder"), validate_choice=False)
    project_id = HiddenField()


class AcceptForm(FlaskForm):
    reason = TextAreaField(_l("Reason (optional)"), validators=[Length(max=MAX_REASON_LENGTH)])
    # Path of the review page to go back to, with its filters.
    next = HiddenField()


class RejectForm(FlaskForm):
    reason = TextAreaField(_l("Reason"), validators=[
        DataRequired(message=_l("Give a reason for the rejection.")), Length(max=MAX_REASON_LENGTH),
    ])
    next = HiddenField()


DECISION_FORMS = {"accept": AcceptForm, "reject": RejectForm}


def decision_form(decision: str, match_id: int, **kwargs) -> FlaskForm:
    # A prefix per match keeps the field ids unique on the review page, where every row has its forms.
    return DECISION_FORMS[decision](prefix=f"{decision}-{match_id}", **kwargs)


def page_arg() -> int:
    return min(max(request.args.get("page", 1, type=int), 1), MAX_PAGE)


def require_coordinator() -> None:
    if not current_user.is_coordinator:
        raise Forbidden(_("Only coordinators can review matches."))


def safe_back(target: str | None) -> str:
    """Return the target when it is a path on this site, else the review page."""
    if target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc and target.startswith("/") and not target.startswith("//") and "\\" not in target:
            return target
    return url_for("matching.review")


def filter_form(args) -> MatchFilterForm:
    form = MatchFilterForm(args)
    form.region.choices = [SelectChoice("", _("Any region"))] + region_choices()
    form.theme.choices = [SelectChoice("", _("Any theme"))] + theme_choices()
    funders = db.session.execute(
        select(Funder.id, Funder.name).where(Funder.id.in_(select(Match.funder_id))).order_by(Funder.name, Funder.id)
    ).all()
    form.funder_id.choices = [SelectChoice("", _("Any funder"))] + [SelectChoice(str(funder_id), name) for funder_id, name in funders]
    return form


def render_review(form: MatchFilterForm, matches: list[Match], total: int, page: int, args: dict, status: int = 200):
    back = request.full_path.rstrip("?")
    forms = {
        match.id: (decision_form("accept", match.id, next=back), decision_form("reject", match.id, next=back))
        for match in matches if match.status in OPEN_FOR_REVIEW
    }
    return render_template(
        "matching/review.html", form=form, matches=matches, forms=forms, total=total,
        page=page, per_page=current_app.config["PER_PAGE"], args=args,
    ), status


@bp.get("/matches")
@login_required
def review():
    """List matches for coordinators, best score first, with filters and review forms."""
    require_coordinator()
    form = filter_form(request.args)
    args = {name: request.args[name] for name in FILTER_NAMES if request.args.get(name)}
    try:
        filters = MatchFilters.from_args(request.args)
    except ValidationFailed as error:
        for name, message in error.fields.items():
            form[name].errors = [message]
        return render_review(form, [], 0, 1, args, status=422)
    page = page_arg()
    matches, total = list_matches(current_user, filters, page, current_app.config["PER_PAGE"])
    return render_review(form, matches, total, page, args)


def decide(match_id: int, decision: str):
    """Accept or reject one match from the review page, then go back to it."""
    require_coordinator()
    form = decision_form(decision, match_id)
    if form.validate():
        try:
            if decision == "accept":
                match = accept_match(current_user, match_id, form.reason.data or "")
            else:
                match = reject_match(current_user, match_id, form.reason.data or "")
        except ValidationFailed as error:
            db.session.rollback()
            form.reason.errors = [error.fields.get("reason", error.message)]
        except Conflict as error:
            db.session.rollback()
            flash(error.message, "error")
            return redirect(safe_back(form.next.data), 303)
        else:
            db.session.commit()
            if decision == "accept":
                flash(_("Match of %(project)s with %(funder)s accepted.", project=match.project.title, funder=match.funder.name), "success")
            else:
                flash(_("Match of %(project)s with %(funder)s rejected.", project=match.project.title, funder=match.funder.name), "success")
            return redirect(safe_back(form.next.data), 303)

    # Invalid input: show this match alone with the form, the error and the text as typed.
    match = get_match(current_user, match_id)
    forms = {"accept": decision_form("accept", match_id, formdata=None, next=form.next.data),
             "reject": decision_form("reject", match_id, formdata=None, next=form.next.data)}
    forms[decision] = form
    return render_template("matching/decision.html", match=match, forms=forms, back=safe_back(form.next.data)), 422


@bp.post("/matches/<int:match_id>/accept")
@login_required
def accept(match_id: int):
    return decide(match_id, "accept")


@bp.post("/matches/<int:match_id>/reject")
@login_required
def reject(match_id: int):
    return decide(match_id, "reject")


@bp.get("/matches/mine")
@login_required
def mine():
    """Show donors the projects that fit their funder and owners the funders that fit their projects."""
    if current_user.is_coordinator:
        return redirect(url_for("matching.review"))
    if current_user.role not in ("donor", "owner"):
        raise Forbidden(_("Only donors and project owners have their own matches."))
    funder = funder_for_user(current_user, create=False) if current_user.role == "donor" else None
    page = page_arg()
    matches, total = list_matches(current_user, MatchFilters(), page, current_app.config["PER_PAGE"])
    return render_template(
        "matching/mine.html", matches=matches, total=total, page=page,
        per_page=current_app.config["PER_PAGE"], funder=funder, donor=current_user.role == "donor",
    )
