"""The users commands create accounts and API tokens as the design's CLI describes."""

from sqlalchemy import func, select

from financing.accounts.models import ApiToken, User
from financing.accounts.services import hash_token, user_for_token


def test_users_create_with_password(app, db):
    result = app.test_cli_runner().invoke(
        args=["users", "create", "Ana@Example.org", "--role", "owner", "--password", "long enough pw", "--organisation", "ARCEP Burkina Faso"]
    )

    assert result.exit_code == 0, result.output
    user = db.session.scalar(select(User).where(User.email == "ana@example.org"))
    assert user.role == "owner"
    assert user.organisation.name == "ARCEP Burkina Faso"
    assert "long enough pw" not in user.password_hash
    assert "Password:" not in result.output


def test_users_create_generates_password(app, db):
    result = app.test_cli_runner().invoke(args=["users", "create", "c@example.org", "--role", "coordinator"])

    assert result.exit_code == 0, result.output
    assert "Password: " in result.output


def test_users_create_rejects_bad_input(app, db):
    runner = app.test_cli_runner()

    bad_role = runner.invoke(args=["users", "create", "x@example.org", "--role", "king"])
    bad_email = runner.invoke(args=["users", "create", "not-an-email", "--role", "donor", "--password", "long enough pw"])
    short_password = runner.invoke(args=["users", "create", "y@example.org", "--role", "donor", "--password", "short"])

    assert bad_role.exit_code != 0
    assert "king" in bad_role.output
    assert bad_email.exit_code != 0
    assert "not-an-email" in bad_email.output
    assert short_password.exit_code != 0
    assert "at least 12 characters" in short_password.output
    assert db.session.scalar(select(func.count()).select_from(User)) == 0


def test_users_create_duplicate_email(app, db):
    runner = app.test_cli_runner()
    runner.invoke(args=["users", "create", "d@example.org", "--role", "donor", "--password", "long enough pw"])

    again = runner.invoke(args=["users", "create", "D@example.org", "--role", "donor", "--password", "long enough pw"])

    assert again.exit_code != 0
    assert "already exists" in again.output
    assert db.session.scalar(select(func.count()).select_from(User)) == 1


def test_users_token_stores_only_hash(app, db, make_user):
    user = make_user("donor")

    result = app.test_cli_runner().invoke(args=["users", "token", user.email])

    assert result.exit_code == 0, result.output
    token = result.output.strip()
    row = db.session.scalar(select(ApiToken))
    assert row.token_hash == hash_token(token)
    assert token not in (row.token_hash, row.prefix)
    assert user_for_token(token).id == user.id
    assert user_for_token(token + "x") is None


def test_users_token_unknown_email(app, db):
    result = app.test_cli_runner().invoke(args=["users", "token", "nobody@example.org"])

    assert result.exit_code != 0
    assert "nobody@example.org" in result.output
