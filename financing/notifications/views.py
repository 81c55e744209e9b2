"""Notification pages: the in-app list with mark-read forms, the settings page, and the delivery command."""

import logging
import time

import click
from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import ngettext
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from sqlalchemy.exc import OperationalError
from wtforms import BooleanField

from financing.extensions import db
from financing.notifications import services
from financing.notifications.delivery import deliver_due
from financing.notifications.messages import KIND_LABELS, reason, summary
from financing.notifications.models import KINDS

logger = logging.getLogger(__name__)

bp = Blueprint("notifications", __name__)

MAX_PAGE = 100_000


class MarkReadForm(FlaskForm):
    """A button that marks one or all notifications read; only the CSRF token travels."""


def settings_form_class() -> type[FlaskForm]:
    """Build the settings form: one email and one in-app checkbox per kind."""

    class SettingsForm(FlaskForm):
        pass

    for kind in KINDS:
        setattr(SettingsForm, f"email_{kind}", BooleanField(_("Email")))
        setattr(SettingsForm, f"in_app_{kind}", BooleanField(_("On the site")))
    return SettingsForm


@bp.app_context_processor
def notification_helpers():
    return {"unread_notification_count": unread_notification_count}


def unread_notification_count() -> int:
    """Count the current user's unread notifications for the nav; 0 when the database is down."""
    if not current_user.is_authenticated:
        return 0
    try:
        return services.unread_count(current_user)
    except OperationalError as error:
        # The nav is also drawn on the "database unavailable" page, which must not fail itself.
        db.session.rollback()
        logger.warning("unread notification count unavailable user=%s: %s", current_user.id, error.__class__.__name__)
        return 0


def page_arg() -> int:
    return min(max(request.args.get("page", 1, type=int), 1), MAX_PAGE)


@bp.get("/notifications")
@login_required
def index():
    page, per_page = page_arg(), current_app.config["PER_PAGE"]
    notifications, total = services.list_notifications(current_user, page, per_page)
    items = [{"notification": item, "text": summary(item.kind, item.params), "reason": reason(item.params)} for item in notifications]
    return render_template(
        "notifications/index.html", items=items, total=total, page=page, per_page=per_page,
        unread=services.unread_count(current_user), form=MarkReadForm(),
    )


@bp.post("/notifications/<int:notification_id>/read")
@login_required
def mark_read(notification_id: int):
    form = MarkReadForm()
    if not form.validate_on_submit():
        flash(_("The form expired. Try again."), "error")
        return redirect(url_for("notifications.index")), 303
    services.mark_read(current_user, notification_id)
    db.session.commit()
    return redirect(url_for("notifications.index", page=request.args.get("page", type=int)), 303)


@bp.post("/notifications/read-all")
@login_required
def mark_all_read():
    form = MarkReadForm()
    if not form.validate_on_submit():
        flash(_("The form expired. Try again."), "error")
        return redirect(url_for("notifications.index")), 303
    count = services.mark_all_read(current_user)
    db.session.commit()
    flash(ngettext("%(num)d notification marked read.", "%(num)d notifications marked read.", count), "success")
    return redirect(url_for("notifications.index"), 303)


@bp.route("/notifications/settings", methods=["GET", "POST"])
@login_required
def settings():
    form_class = settings_form_class()
    if request.method == "GET":
        current = services.preferences_of(current_user)
        data = {f"{channel}_{kind}": choice[channel] for kind, choice in current.items() for channel in ("email", "in_app")}
        form = form_class(data=data)
    else:
        form = form_class()
    if form.validate_on_submit():
        choices = {kind: {"email": form[f"email_{kind}"].data, "in_app": form[f"in_app_{kind}"].data} for kind in KINDS}
        services.set_preferences(current_user, choices)
        db.session.commit()
        flash(_("Your notification settings are saved."), "success")
        return redirect(url_for("notifications.settings"), 303)
    rows = [(kind, KIND_LABELS[kind], form[f"email_{kind}"], form[f"in_app_{kind}"]) for kind in KINDS]
    status = 422 if request.method == "POST" else 200
    return render_template("notifications/settings.html", form=form, rows=rows), status


@bp.cli.command("deliver")
@click.option("--every", type=click.IntRange(min=1), default=None, help="Repeat every this many seconds until stopped; once when omitted.")
def deliver_command(every: int | None):
    """Send the due notification emails, retries included."""
    while True:
        report = deliver_due()
        click.echo(f"Sent {len(report.sent)}, retrying {len(report.retrying)}, failed {len(report.failed)}, cancelled {len(report.cancelled)}.")
        if every is None:
            return
        time.sleep(every)
