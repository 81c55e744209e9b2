"""The owners' page that creates many draft projects from one CSV file."""

import logging

from flask import Blueprint, flash, redirect, render_template, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_babel import ngettext
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired

from financing.core.errors import Forbidden, ValidationFailed
from financing.extensions import db
from financing.projects.csv_import import COLUMNS, MAX_ROWS, REQUIRED_COLUMNS, CsvImportFailed, import_projects_csv

logger = logging.getLogger(__name__)

bp = Blueprint("project_import", __name__)

# Largest upload read, in bytes: several thousand rows with long descriptions.
MAX_UPLOAD_BYTES = 5 * 1024 * 1024
# Errors listed on the page for one upload; the summary still counts them all.
MAX_LISTED_ERRORS = 300


class ProjectImportForm(FlaskForm):
    """A CSV file of projects; read and checked by financing.projects.csv_import."""

    file = FileField(_l("CSV file"), validators=[FileRequired(message=_l("Choose a CSV file to upload."))])


def require_owner() -> None:
    if current_user.role != "owner":
        raise Forbidden(_("Only project owners can import projects."))


def render_import(form: ProjectImportForm, status: int = 200, errors=None):
    errors = errors or []
    return render_template(
        "projects/import.html", form=form, columns=COLUMNS, required=REQUIRED_COLUMNS,
        max_rows=MAX_ROWS, max_megabytes=MAX_UPLOAD_BYTES // (1024 * 1024),
        errors=errors[:MAX_LISTED_ERRORS], hidden_errors=max(len(errors) - MAX_LISTED_ERRORS, 0),
    ), status


@bp.get("/projects/import")
@login_required
def index():
    require_owner()
    return render_import(ProjectImportForm(formdata=None))


@bp.post("/projects/import")
@login_required
def upload():
    require_owner()
    form = ProjectImportForm()
    if not form.validate_on_submit():
        return render_import(form, 422)

    filename = form.file.data.filename or "upload"
    data = form.file.data.stream.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        logger.info("project csv import rejected user=%s file=%r: larger than %s bytes", current_user.id, filename, MAX_UPLOAD_BYTES)
        form.file.errors = [_("The file %(name)s is larger than %(size)s MB: split it into smaller files.", name=filename, size=MAX_UPLOAD_BYTES // (1024 * 1024))]
        return render_import(form, 422)

    try:
        projects = import_projects_csv(current_user, data)
    except CsvImportFailed as error:
        db.session.rollback()
        form.file.errors = [error.message]
        return render_import(form, 422, error.errors)
    except ValidationFailed as error:
        db.session.rollback()
        form.file.errors = [error.message, *error.fields.values()]
        return render_import(form, 422)
    db.session.commit()

    flash(ngettext(
        "Imported %(num)d project from %(name)s as a draft. Submit it for review when it is ready.",
        "Imported %(num)d projects from %(name)s as drafts. Submit each for review when it is ready.",
        len(projects), name=filename,
    ), "success")
    return redirect(url_for("projects.mine"))
