"""Command-line interface: `flask --app wsgi users|demo|iati|match ...`."""

import logging
import secrets
from pathlib import Path

import click
from flask import Flask
from flask.cli import AppGroup

from financing.core.errors import DomainError
from financing.extensions import db

logger = logging.getLogger(__name__)

users = AppGroup("users", help="Manage accounts.")
demo = AppGroup("demo", help="Demo data.")
iati = AppGroup("iati", help="IATI import and export.")
match = AppGroup("match", help="Match suggestions.")


def _fail(error: DomainError) -> None:
    db.session.rollback()
    details = "; ".join(f"{name}: {message}" for name, message in error.fields.items())
    raise click.ClickException(f"{error.message} {details}".strip())


@users.command("create")
@click.argument("email")
@click.option("--role", required=True, type=click.Choice(["owner", "donor", "coordinator", "admin"]), help="Role of the account.")
@click.option("--password", help="Password; a random one is generated and printed when omitted.")
@click.option("--organisation", help="Organisation name; created when it does not exist.")
@click.option("--name", default="", help="Display name.")
def users_create(email, role, password, organisation, name):
    """Create an account."""
    from financing.accounts.services import create_user

    generated = password is None
    password = password or secrets.token_urlsafe(12)
    try:
        user = create_user(email, password, role, name=name, organisation=organisation)
        db.session.commit()
    except DomainError as error:
        _fail(error)
    click.echo(f"Created {role} {user.email} (id {user.id}).")
    if generated:
        click.echo(f"Password: {password}")


@users.command("token")
@click.argument("email")
@click.option("--name", default="cli", help="Label shown on the account page.")
def users_token(email, name):
    """Create a personal API token for EMAIL and print it once."""
    from financing.accounts.services import create_token, get_user_by_email

    try:
        user = get_user_by_email(email)
    except DomainError as error:
        _fail(error)
    if user is None:
        raise click.ClickException(f"No account for {email}.")
    _, token = create_token(user, name=name)
    db.session.commit()
    click.echo(token)


@demo.command("load")
def demo_load():
    """Load the ITU WSIS C2 demo projects, organisations and one account per role."""
    from financing.demo import load_demo

    try:
        accounts = load_demo()
        db.session.commit()
    except DomainError as error:
        _fail(error)
    click.echo("Demo data loaded. Accounts (email / password / role):")
    for email, password, role in accounts:
        click.echo(f"  {email}  {password}  {role}")


@iati.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
def iati_import(paths):
    """Import IATI activity files; each file is all or nothing."""
    from financing.iati.importer import ImportFailed, import_file

    failed = False
    for path in paths:
        try:
            report = import_file(path)
        except ImportFailed as error:
            failed = True
            click.echo(f"{path}: failed: {error}", err=True)
            continue
        click.echo(f"{path}: {report}")
    if failed:
        raise click.ClickException("Some files were not imported; see the messages above.")


@iati.command("export")
@click.argument("file", type=click.Path(dir_okay=False, writable=True, path_type=Path))
@click.option(
    "--schema-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder with iati-activities-schema.xsd, iati-common.xsd and xml.xsd; the written file is validated against it.",
)
def iati_export(file, schema_dir):
    """Write the published and funded projects as IATI 2.03 activity XML to FILE."""
    from lxml import etree

    from financing.exports.iati import load_schema, schema_errors, write_export

    try:
        count = write_export(file)
    except OSError as error:
        raise click.ClickException(f"Cannot write {file}: {error.strerror or error}.") from error
    click.echo(f"Wrote {count} activities to {file}.")
    if schema_dir is not None:
        try:
            schema = load_schema(schema_dir)
        except (OSError, etree.LxmlError) as error:
            raise click.ClickException(f"Cannot load the IATI schema from {schema_dir}: {error}") from error
        errors = schema_errors(schema, file)
        for error in errors[:20]:
            click.echo(f"{file}: {error}", err=True)
        if errors:
            raise click.ClickException(f"{file} does not validate against the IATI schema: {len(errors)} errors.")
        click.echo(f"{file} validates against the IATI schema in {schema_dir}.")


@match.command("run")
@click.option("--project", "project_id", type=int, help="Recompute only this project's suggestions.")
@click.option("--funder", "funder_id", type=int, help="Recompute only this funder's suggestions.")
def match_run(project_id, funder_id):
    """Recompute match suggestions."""
    from financing.matching.engine import run_matching

    try:
        report = run_matching(project_id=project_id, funder_id=funder_id)
        db.session.commit()
    except DomainError as error:
        _fail(error)
    click.echo(str(report))


@match.command("learn")
@click.option("--funder", "funder_id", type=int, help="Learn only this funder's profile.")
def match_learn(funder_id):
    """Learn funder preferences from the IATI activities they fund."""
    from financing.matching.profiles import learn_profiles

    try:
        report = learn_profiles(funder_id)
        db.session.commit()
    except DomainError as error:
        _fail(error)
    click.echo(str(report))


def register_commands(app: Flask) -> None:
    for group in (users, demo, iati, match):
        app.cli.add_command(group)
