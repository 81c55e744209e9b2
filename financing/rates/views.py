"""The coordinators' exchange rates page: current rates, history, one new rate and CSV upload."""

import logging

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_babel import format_date
from flask_babel import gettext as _
from flask_babel import ngettext
from flask_login import current_user, login_required
from sqlalchemy import select

from financing import reference
from financing.accounts.models import User
from financing.core.errors import Conflict, Forbidden, ValidationFailed
from financing.extensions import db
from financing.money import MoneyError, check_currency
from financing.projects.services import paginate
from financing.rates.forms import HistoryFilterForm, RateForm, RateUploadForm
from financing.rates.services import RateImportFailed, RowError, add_rate, current_rates, history_query, import_rates_csv, rate_text, today_utc

logger = logging.getLogger(__name__)

bp = Blueprint("rates", __name__)

# Largest CSV upload read, in bytes: some 20,000 rows of a usual rates file.
MAX_UPLOAD_BYTES = 1024 * 1024
# Errors listed on the page for one upload; the summary still counts them all.
MAX_LISTED_ERRORS = 200
MAX_PAGE = 100_000


@bp.app_template_filter("rate")
def rate_filter(value) -> str:
    return rate_text(value)


def require_coordinator() -> None:
    if not current_user.is_coordinator:
        raise Forbidden(_("Only coordinators can maintain exchange rates."))


def page_arg() -> int:
    page = request.args.get("page", 1, type=int)
    return min(max(page, 1), MAX_PAGE)


def history_filters(form: HistoryFilterForm) -> dict[str, str]:
    """Read the history filters; a bad code gets an error on its field and is not applied."""
    filters = {}
    for name in ("base", "quote"):
        value = (form[name].data or "").strip()
        if not value:
            continue
        try:
            filters[name] = check_currency(value, name)
        except MoneyError as error:
            form[name].errors = [*form[name].errors, error.message]
    return filters


def render_rates(form: RateForm | None = None, upload: RateUploadForm | None = None, status: int = 200,
                 upload_errors: list[RowError] | None = None, errors: list[str] | None = None):
    if form is None:
        form = RateForm(formdata=None, data={"valid_from": today_utc().isoformat()})
    upload = upload or RateUploadForm(formdata=None)
    history_form = HistoryFilterForm(formdata=request.args)
    history_form.validate()
    filters = history_filters(history_form)
    if history_form.errors and status == 200:
        status = 422

    page = page_arg()
    per_page = current_app.config["PER_PAGE"]
    history, total = paginate(history_query(**filters), page, per_page)
    current = current_rates()
    rows = [*history, *current]
    user_ids = {row.created_by_id for row in rows if row.created_by_id is not None}
    users = {user.id: user for user in db.session.scalars(select(User).where(User.id.in_(user_ids)))} if user_ids else {}
    upload_errors = upload_errors or []
    return render_template(
        "rates/index.html", form=form, upload=upload, history_form=history_form, current=current,
        history=history, total=total, page=page, per_page=per_page, users=users, today=today_utc(),
        pager_args={f"history-{name}": value for name, value in filters.items()},
        currencies=sorted(reference.currencies().values(), key=lambda currency: currency.code),
        upload_errors=upload_errors[:MAX_LISTED_ERRORS], hidden_errors=max(len(upload_errors) - MAX_LISTED_ERRORS, 0),
        errors=errors or [],
    ), status


@bp.get("/rates")
@login_required
def index():
    require_coordinator()
    return render_rates()


def add_field_errors(form, fields: dict[str, str]) -> list[str]:
    """Put errors next to their fields; return the messages that belong to no field."""
    unplaced = []
    for name, text in fields.items():
        if name in form:
            form[name].errors = [*form[name].errors, text]
        else:
            unplaced.append(text)
    return unplaced


@bp.post("/rates")
@login_required
def add():
    require_coordinator()
    form = RateForm()
    if not form.validate_on_submit():
        return render_rates(form=form, status=422)

    try:
        rate = add_rate(current_user, form.base.data, form.quote.data, form.rate.data, form.valid_from.data, replace=form.replace.data)
    except (ValidationFailed, Conflict) as error:
        db.session.rollback()
        logger.info("exchange rate rejected user=%s status=%s: %s", current_user.id, error.status, error.message)
        return render_rates(form=form, status=error.status, errors=add_field_errors(form, error.fields))
    db.session.commit()

    flash(_(
        "Stored the rate 1 %(base)s = %(rate)s %(quote)s, valid from %(day)s.",
        base=rate.base, quote=rate.quote, rate=rate_text(rate.rate), day=format_date(rate.valid_from, "medium"),
    ), "success")
    return redirect(url_for("rates.index"))


def decode_upload(data: bytes) -> str:
    """Decode an uploaded file as UTF-8, with or without a byte order mark.

    Raise RateImportFailed naming the line of the first byte that is not UTF-8.
    """
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        message = _("Line %(line)s is not UTF-8 text: save the file as CSV in UTF-8 and upload it again.", line=line)
        raise RateImportFailed([RowError(line, "file", "", message)]) from None


@bp.post("/rates/import")
@login_required
def upload():
    require_coordinator()
    form = RateUploadForm()
    if not form.validate_on_submit():
        return render_rates(upload=form, status=422)

    filename = form.file.data.filename or "upload"
    data = form.file.data.stream.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        logger.info("exchange rate import rejected user=%s file=%r: larger than %s bytes", current_user.id, filename, MAX_UPLOAD_BYTES)
        form.file.errors = [_("The file %(name)s is larger than %(size)s bytes: split it into smaller files.", name=filename, size=f"{MAX_UPLOAD_BYTES:,}")]
        return render_rates(upload=form, status=422)

    try:
        count = import_rates_csv(decode_upload(data), current_user, replace=form.replace.data)
    except RateImportFailed as error:
        db.session.rollback()
        form.file.errors = [error.message]
        return render_rates(upload=form, status=422, upload_errors=error.errors)
    except Conflict as error:
        db.session.rollback()
        logger.info("exchange rate import failed user=%s: %s", current_user.id, error.message)
        form.file.errors = [error.message]
        return render_rates(upload=form, status=409)
    db.session.commit()

    if count:
        flash(ngettext("Imported %(num)d rate from %(name)s.", "Imported %(num)d rates from %(name)s.", count, name=filename), "success")
    else:
        flash(_("%(name)s holds no new rate: every row equals a stored rate.", name=filename), "info")
    return redirect(url_for("rates.index"))
