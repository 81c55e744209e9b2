"""Account rules: registration, password checks, organisations and API tokens."""

import hashlib
import logging
import secrets
from datetime import timedelta

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import func, select, update
from werkzeug.security import check_password_hash, generate_password_hash

from financing.accounts.models import ROLES, ApiToken, Organisation, User
from financing.core.errors import Conflict, ValidationFailed
from financing.core.time import utcnow
from financing.extensions import db

logger = logging.getLogger(__name__)

MIN_PASSWORD_LENGTH = 10
# Roles that anyone may choose when registering; coordinators and admins are appointed.
SELF_SERVICE_ROLES = ("owner", "donor")
TOKEN_PREFIX = "fin_"


def normalise_email(email: str) -> str:
    try:
        return validate_email(email.strip(), check_deliverability=False).normalized.lower()
    except EmailNotValidError as error:
        raise ValidationFailed(f"Invalid email {email!r}: {error}", {"email": f"Invalid email {email!r}."})


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValidationFailed(
            f"Password must have at least {MIN_PASSWORD_LENGTH} characters.",
            {"password": f"Use at least {MIN_PASSWORD_LENGTH} characters."},
        )


def get_or_create_organisation(name: str, kind: str = "other", iati_ref: str | None = None) -> Organisation:
    name = name.strip()
    organisation = db.session.scalar(select(Organisation).where(func.lower(Organisation.name) == name.lower()))
    if organisation is None:
        organisation = Organisation(name=name, kind=kind, iati_ref=iati_ref)
        db.session.add(organisation)
        db.session.flush()
        logger.info("organisation created id=%s", organisation.id)
    return organisation


def create_user(email: str, password: str, role: str, name: str = "", organisation: str | None = None) -> User:
    """Create an account with a hashed password; raise ValidationFailed or Conflict."""
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
    logger.info("user created id=%s role=%s", user.id, role)
    return user


def authenticate(email: str, password: str) -> User | None:
    """Return the active user with these credentials, or None."""
    try:
        email = normalise_email(email)
    except ValidationFailed:
        return None
    user = db.session.scalar(select(User).where(User.email == email))
    if user is None or not user.active or not check_password_hash(user.password_hash, password):
        logger.info("login failed email_hash=%s", hashlib.sha256(email.encode()).hexdigest()[:12])
        return None
    return user


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(user: User, name: str = "", scopes: str = "read pledge manage") -> tuple[ApiToken, str]:
    """Create a personal API token; return the row and the token text, shown only once."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(user_id=user.id, name=name, token_hash=hash_token(token), prefix=token[:12], scopes=scopes)
    db.session.add(row)
    db.session.flush()
    logger.info("api token created id=%s user=%s", row.id, user.id)
    return row, token


def user_for_token(token: str) -> User | None:
    """Return the user of an unrevoked token, recording when it was last used.

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
    return row.user


def get_user_by_email(email: str) -> User | None:
    return db.session.scalar(select(User).where(User.email == normalise_email(email)))
