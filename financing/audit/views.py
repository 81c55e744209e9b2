"""Audit pages: the coordinators' filtered log, and the history of one object for those it concerns."""

import logging
from decimal import Decimal, InvalidOperation

from flask import Blueprint, current_app, render_template, request, url_for
from flask_babel import gettext as _
from flask_login import current_user, login_required

from financing.accounts.services import get_user_by_email
from financing.audit.access import MAX_ID, check_history_access, may_read_history
from financing.audit.forms import OBJECT_TYPE_LABELS, SYSTEM, AuditFilterForm
from financing.audit.models import AuditEntry
from financing.audit.services import AuditFilters, history, known_actions, list_entries
from financing.core.errors import Forbidden, ValidationFailed
from financing.money import format_money, minor_units
from financing.reference import UnknownCurrency

logger = logging.getLogger(__name__)

bp = Blueprint("audit", __name__)

FILTER_NAMES = ("object_type", "object_id", "action", "user", "since", "until")
MAX_PAGE = 100_000
# Entries shown in the history section of a detail page; the history page shows them all.
RECENT = 10
# Endpoint and argument name of the page of each object type that has one.
OBJECT_PAGES = {
    "project": ("projects.detail", "project_id"),
    "pledge": ("pledges.detail", "pledge_id"),
    "match_fund": ("match_funds.detail", "fund_id"),
    "funder": ("funders.detail", "funder_id"),
}


def page_arg() -> int:
    return min(max(request.args.get("page", 1, type=int), 1), MAX_PAGE)


def _actor_filter(form: AuditFilterForm) -> tuple[int | None, bool]:
    """Resolve the user filter to (actor id, system only); put an error on the field when no account matches."""
    text = (form.user.data or "").strip()
    if not text:
        return None, False
    if text.lower() == SYSTEM:
        return None, True
    if text.isascii() and text.isdigit() and 0 < int(text) <= MAX_ID:
        return int(text), False
    try:
        user = get_user_by_email(text)
    except ValidationFailed:
        user = None
    if user is None:
        form.user.errors = [*form.user.errors, _("No account has the email or id %(value)r.", value=text)]
        return None, False
    return user.id, False


def _filters(form: AuditFilterForm) -> AuditFilters | None:
    """Build the filters from a valid form, or return None with the errors on the form."""
    valid = form.validate()
    actor_id, system = _actor_filter(form)
    if not valid or form.user.errors:
        return None
    filters = AuditFilters(
        object_type=form.object_type.data or None,
        object_id=int(form.object_id.data) if (form.object_id.data or "").strip() else None,
        action=form.action.data or None, actor_id=actor_id, system=system,
        since=form.since.data, until=form.until.data,
    )
    try:
        return filters.check()
    except ValidationFailed as error:
        form.until.errors = [*form.until.errors, error.fields["until"]]
        return None


@bp.get("/audit")
@login_required
def index():
    """List every recorded change for coordinators, newest first, with filters."""
    if not current_user.is_coordinator:
        raise Forbidden(_("Only coordinators can read the audit log."))
    form = AuditFilterForm(request.args)
    form.set_choices(known_actions())
    args = {name: request.args[name] for name in FILTER_NAMES if request.args.get(name)}
    page, per_page = page_arg(), current_app.config["PER_PAGE"]

    filters = _filters(form)
    if filters is None:
        logger.info("audit filters rejected fields=%s user=%s", ",".join(sorted(form.errors)), current_user.id)
        return render_template("audit/index.html", form=form, entries=[], total=0, page=1, per_page=per_page, args=args), 422
    entries, total = list_entries(filters, page, per_page)
    return render_template("audit/index.html", form=form, entries=entries, total=total, page=page, per_page=per_page, args=args)


@bp.get("/audit/<any(project, pledge, match, match_fund, exchange_rate, funder, user, api_token):obj_type>/<int:obj_id>")
@login_required
def object_history(obj_type: str, obj_id: int):
    """Show every change of one object to the users whose object it is, and to coordinators."""
    check_history_access(current_user, obj_type, obj_id)
    entries = history(obj_type, obj_id)
    return render_template("audit/history.html", obj_type=obj_type, obj_id=obj_id, entries=entries)


@bp.app_context_processor
def audit_helpers():
    return {"recent_history": recent_history, "audit_object_link": object_link, "audit_type_label": type_label}


def recent_history(obj_type: str, obj_id: int) -> list[AuditEntry] | None:
    """Return the latest entries of an object for the current user, or None when its history is not theirs."""
    if not may_read_history(current_user, obj_type, obj_id):
        return None
    return history(obj_type, obj_id, limit=RECENT)


def object_link(obj_type: str, obj_id: int) -> str | None:
    """Return the path of the object's own page, or None for types without one."""
    page = OBJECT_PAGES.get(obj_type)
    if page is None:
        return None
    endpoint, argument = page
    return url_for(endpoint, **{argument: obj_id})


def type_label(obj_type: str) -> str:
    return str(OBJECT_TYPE_LABELS.get(obj_type, obj_type))


@bp.app_template_filter("audit_value")
def audit_value(value) -> str:
    """Show one stored value: amounts formatted, lists joined, and a dash for none."""
    if value is None or value == "" or value == []:
        return "–"
    if isinstance(value, bool):
        return _("yes") if value else _("no")
    if isinstance(value, dict) and set(value) == {"amount", "currency"}:
        try:
            minor = int(Decimal(value["amount"]).scaleb(minor_units(value["currency"])))
            return format_money(minor, value["currency"])
        except (InvalidOperation, UnknownCurrency):
            return f"{value['amount']} {value['currency']}"
    if isinstance(value, list):
        return ", ".join(audit_value(item) for item in value)
    if isinstance(value, dict):
        return "; ".join(f"{key}: {audit_value(item)}" for key, item in value.items())
    return str(value)


@bp.app_template_filter("audit_changes")
def audit_changes(entry: AuditEntry) -> list[tuple[str, str, str]]:
    """List an entry's changed fields as (field, before, after) text."""
    before, after = entry.before or {}, entry.after or {}
    # Fields left empty when an object is created say nothing, so they are not listed.
    names = [name for name in dict.fromkeys([*before, *after]) if name in before or after.get(name) not in (None, "", [])]
    return [(name, audit_value(before.get(name)) if name in before else "", audit_value(after.get(name))) for name in names]

