"""Account rules: registration, password checks, organisations and API tokens."""

import hashlib
import logging
import secrets
from collections.abc import Iterable
from datetime import timedelta
from functools import cache

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import func, select, update
from werkzeug.security import check_password_hash, generate_password_hash

from financing.accounts.models import ROLES, ApiToken, Organisation, User
from financing.accounts.passwords import is_common_password
from financing.audit import services as audit
from financing.core.errors import Conflict, Forbidden, NotFound, ValidationFailed
from financing.core.time import utcnow
from financing.extensions import db

logger = logging.getLogger(__name__)

MIN_PASSWORD_LENGTH = 12
COMMON_PASSWORD_MESSAGE = "This password is on a list of commonly used passwords. Choose one that others are unlikely to use."
# Column lengths of the account fields that people type, checked before the insert so that
# SQLite (which ignores VARCHAR lengths) and PostgreSQL give the same 422.
MAX_EMAIL_LENGTH = 254
MAX_NAME_LENGTH = 200
MAX_ORGANISATION_LENGTH = 300
# Roles that anyone may choose when registering; coordinators and admins are appointed.
SELF_SERVICE_ROLES = ("owner", "donor")
TOKEN_PREFIX = "fin_"
# Scopes of personal API tokens: read for GET requests, pledge to create or cancel one's own
# pledges, manage for every other change.
TOKEN_SCOPES = ("read", "pledge", "manage")
MAX_TOKEN_NAME_LENGTH = 100


def normalise_email(email: str) -> str:
    try:
        return validate_email(email.strip(), check_deliverability=False).normalized.lower()
    except EmailNotValidError as error:
        raise ValidationFailed(f"Invalid email {email!r}: {error}", {"email": f"Invalid email {email!r}."})


def check_password(password: str) -> None:
    """Raise ValidationFailed for a password that is too short or on the common-password list."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValidationFailed(
            f"Password must have at least {MIN_PASSWORD_LENGTH} characters.",
            {"password": f"Use at least {MIN_PASSWORD_LENGTH} characters."},
        )
    if is_common_password(password):
        raise ValidationFailed(COMMON_PASSWORD_MESSAGE, {"password": COMMON_PASSWORD_MESSAGE})


def check_lengths(**values: tuple[str | None, int]) -> None:
    """Raise ValidationFailed naming each field whose value (text, maximum) is longer than its maximum."""
    errors = {}
    for field, (value, maximum) in values.items():
        if value is not None and len(value) > maximum:
            errors[field] = f"Use at most {maximum} characters; this has {len(value)}."
    if errors:
        raise ValidationFailed("Some fields are too long: " + ", ".join(errors) + ".", errors)


def get_or_create_organisation(name: str, kind: str = "other", iati_ref: str | None = None) -> Organisation:
    name = name.strip()
    organisation = db.session.scalar(select(Organisation).where(func.lower(Organisation.name) == name.lower()))
    if organisation is None:
        organisation = Organisation(name=name, kind=kind, iati_ref=iati_ref)
        db.session.add(organisation)
        db.session.flush()
        logger.info("organisation created id=%s", organisation.id)
    return organisation


def create_user(
    email: str, password: str, role: str, name: str = "", organisation: str | None = None, *, actor: User | None = None,
) -> User:
    """Create an account with a hashed password; raise ValidationFailed or Conflict.

    `actor` is the admin who creates it; None (self-registration, commands) is recorded as the system.
    """
    check_lengths(
        email=(email.strip(), MAX_EMAIL_LENGTH), name=(name.strip(), MAX_NAME_LENGTH),
        organisation=((organisation or "").strip(), MAX_ORGANISATION_LENGTH),
    )
    email = normalise_email(email)
    if role not in ROLES:
        raise ValidationFailed(f"Unknown role {role!r}.", {"role": f"Role {role!r} must be one of {', '.join(ROLES)}."})
    check_password(password)
    if db.session.scalar(select(User.id).where(User.email == email)) is not None:
        raise Conflict(f"An account for {email} already exists.", {"email": f"An account for {email} already exists."})
    user = User(email=email, name=name.strip(), role=role, password_hash=generate_password_hash(password))
    if organisation and organisation.strip():
        user.organisation = get_or_create_organisation(organisation)
    db.session.add(user)
    db.session.flush()
    audit.record(actor, "create", "user", user.id, after={"email": email, "role": role, "organisation_id": user.organisation_id})
    logger.info("user created id=%s role=%s", user.id, role)
    return user


def authenticate(email: str, password: str) -> User | None:
    """Return the active user with these credentials, or None."""
    try:
        email = normalise_email(email)
    except ValidationFailed:
        return None
    user = db.session.scalar(select(User).where(User.email == email))
    if user is None:
        # Hash anyway, so that the response time does not tell which emails have accounts.
        check_password_hash(_unknown_user_hash(), password)
    if user is None or not user.active or not check_password_hash(user.password_hash, password):
        logger.info("login failed email_hash=%s", hashlib.sha256(email.encode()).hexdigest()[:12])
        return None
    return user


@cache
def _unknown_user_hash() -> str:
    return generate_password_hash(secrets.token_urlsafe(16))


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def normalise_scopes(scopes: Iterable[str] | str) -> tuple[str, ...]:
    """Return the scopes in the order of TOKEN_SCOPES; raise ValidationFailed for none or an unknown one.

    A string is read as space-separated scope names, the form stored on ApiToken.
    """
    values = scopes.split() if isinstance(scopes, str) else list(scopes)
    for value in values:
        if value not in TOKEN_SCOPES:
            message = f"Unknown scope {value!r}: use {', '.join(TOKEN_SCOPES)}."
            raise ValidationFailed(message, {"scopes": message})
    if not values:
        message = f"Choose at least one scope of {', '.join(TOKEN_SCOPES)}."
        raise ValidationFailed(message, {"scopes": message})
    return tuple(scope for scope in TOKEN_SCOPES if scope in values)


def create_token(user: User, name: str = "", scopes: Iterable[str] | str = TOKEN_SCOPES) -> tuple[ApiToken, str]:
    """Create a personal API token; return the row and the token text, shown only once.

    Raise ValidationFailed for a blank or too long name and for unknown scopes.
    """
    name = (name or "").strip()
    if not name:
        raise ValidationFailed("Token name is required.", {"name": "Give the token a name, such as the script that will use it."})
    if len(name) > MAX_TOKEN_NAME_LENGTH:
        message = f"Token name has {len(name)} characters; the maximum is {MAX_TOKEN_NAME_LENGTH}."
        raise ValidationFailed(message, {"name": message})
    granted = normalise_scopes(scopes)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(user_id=user.id, name=name, token_hash=hash_token(token), prefix=token[:12], scopes=" ".join(granted))
    db.session.add(row)
    db.session.flush()
    # Recorded as the user's own action, which it is on the account page; the token text is never stored.
    audit.record(user, "create", "api_token", row.id, after={"user_id": user.id, "name": name, "prefix": row.prefix, "scopes": row.scopes})
    logger.info("api token created id=%s user=%s scopes=%s", row.id, user.id, row.scopes)
    return row, token


def token_scopes(row: ApiToken) -> frozenset[str]:
    """Return the scopes a token grants; names that are no longer known are dropped."""
    return frozenset(row.scopes.split()) & frozenset(TOKEN_SCOPES)


def find_token(token: str) -> ApiToken | None:
    """Return the unrevoked token row of an active user, recording when it was last used.

    The last-use time is written and committed at most once a minute per token, so a
    read-only request still records it and a busy client does not write on every call.
    Call it before the request changes anything, because the commit includes the session.
    """
    row = db.session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
    if row is None or row.revoked_at is not None or not row.user.active:
        return None
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at > timedelta(minutes=1):
        db.session.execute(update(ApiToken).where(ApiToken.id == row.id).values(last_used_at=now))
        db.session.commit()
    return row


def user_for_token(token: str) -> User | None:
    """Return the user of an unrevoked token, recording its use as `find_token` does."""
    row = find_token(token)
    return row.user if row is not None else None


def list_tokens(user: User) -> list[ApiToken]:
    """Return the user's tokens, revoked ones included, newest first."""
    query = select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.created_at.desc(), ApiToken.id.desc())
    return list(db.session.scalars(query))


def revoke_token(user: User, token_id: int) -> ApiToken:
    """Revoke one of the user's own tokens; revoking it again changes nothing.

    Raise NotFound for an unknown id and for another user's token.
    """
    # Ids beyond a 32-bit integer would make PostgreSQL raise instead of finding nothing.
    row = db.session.get(ApiToken, token_id) if 0 < token_id < 2**31 else None
    if row is None or row.user_id != user.id:
        raise NotFound(f"Token {token_id} not found among your tokens.")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        db.session.flush()
        audit.record(user, "revoke", "api_token", row.id, {"revoked_at": None}, {"revoked_at": row.revoked_at})
        logger.info("api token revoked id=%s user=%s", row.id, user.id)
    return row


def change_role(actor: User, user_id: int, role: str, reason: str = "") -> User:
    """Give an account another role; only admins may, and not to their own account.

    Raise Forbidden for other actors, NotFound for an unknown account, and ValidationFailed
    for an unknown role. Setting the role it already has changes nothing.
    """
    if actor.role != "admin":
        raise Forbidden("Only admins can change roles.")
    if role not in ROLES:
        raise ValidationFailed(f"Unknown role {role!r}.", {"role": f"Role {role!r} must be one of {', '.join(ROLES)}."})
    user = db.session.get(User, user_id) if 0 < user_id < 2**31 else None
    if user is None:
        raise NotFound(f"Account {user_id} not found.")
    if user.id == actor.id:
        raise Forbidden("Admins cannot change their own role; ask another admin.")
    if user.role != role:
        audit.record(actor, "change_role", "user", user.id, {"role": user.role}, {"role": role}, reason)
        logger.info("role changed user=%s from=%s to=%s by=%s", user.id, user.role, role, actor.id)
        user.role = role
        db.session.flush()
    return user


def get_user_by_email(email: str) -> User | None:
    return db.session.scalar(select(User).where(User.email == normalise_email(email)))
