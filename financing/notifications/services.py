"""Notification rules: who hears of an event, each user's choices, and the in-app list.

`notify` writes in the caller's transaction: the in-app rows and the outbox messages commit
or roll back with the event they announce. Delivery of the outbox starts after the commit,
in the job of `financing.notifications.delivery`.
"""

import logging
from collections.abc import Iterable, Mapping

from flask import current_app
from sqlalchemy import func, select, update

from financing.accounts.models import User
from financing.core.errors import NotFound, ValidationFailed
from financing.core.time import utcnow
from financing.extensions import db
from financing.funders.models import Funder
from financing.jobs import enqueue_after_commit
from financing.notifications.models import KINDS, Notification, NotificationPreference, OutboxMessage

logger = logging.getLogger(__name__)

DELIVERY_JOB = "notifications.deliver"


def site_path(endpoint: str, **values) -> str:
    """Build the path of a page, such as "/projects/7", without a request (for jobs and services)."""
    return current_app.url_map.bind("localhost").build(endpoint, values)


# Recipients


def organisation_users(organisation_id: int | None) -> list[User]:
    """Return the active accounts of an organisation, such as a project's owners."""
    if organisation_id is None:
        return []
    query = select(User).where(User.organisation_id == organisation_id, User.active.is_(True)).order_by(User.id)
    return list(db.session.scalars(query))


def funder_users(funder: Funder) -> list[User]:
    """Return the active donor accounts that act for a funder: its organisation's, or its own user."""
    users = organisation_users(funder.organisation_id)
    if funder.user is not None and funder.user.active:
        users.append(funder.user)
    return users


# Writing


def preferences_for(user_ids: list[int], kind: str) -> dict[int, NotificationPreference]:
    rows = db.session.scalars(
        select(NotificationPreference).where(NotificationPreference.user_id.in_(user_ids), NotificationPreference.kind == kind)
    )
    return {row.user_id: row for row in rows}


def notify(users: Iterable[User], kind: str, params: Mapping, link: str = "") -> int:
    """Add the in-app notifications and emails of one event to the current transaction.

    `params` contains the values of the message as JSON: "project" and "funder" names, and an
    amount as "amount_minor" with its "currency". `link` is the site path the message points
    to. Each active user gets the channels that its preferences allow, once even when listed
    twice. Returns the number of users notified on at least one channel.
    """
    if kind not in KINDS:
        raise ValueError(f"Unknown notification kind {kind!r}; known kinds: {', '.join(KINDS)}.")
    recipients = {user.id: user for user in users if user is not None and user.active}
    if not recipients:
        return 0
    preferences = preferences_for(list(recipients), kind)
    params = dict(params)
    notified = emails = 0
    for user_id in sorted(recipients):
        preference = preferences.get(user_id)
        wants_email = preference is None or preference.email
        wants_in_app = preference is None or preference.in_app
        if wants_in_app:
            db.session.add(Notification(user_id=user_id, kind=kind, params=params, link=link, created_at=utcnow()))
        if wants_email:
            db.session.add(OutboxMessage(user_id=user_id, kind=kind, params=params, link=link, created_at=utcnow(), next_attempt_at=utcnow()))
            emails += 1
        notified += wants_in_app or wants_email
    if emails:
        enqueue_after_commit(DELIVERY_JOB)
    logger.info("notification queued kind=%s users=%s emails=%s link=%s", kind, notified, emails, link)
    return notified


# Preferences


def preferences_of(user: User) -> dict[str, dict[str, bool]]:
    """Return the user's choices for every kind as {kind: {"email": bool, "in_app": bool}}."""
    stored = {row.kind: row for row in db.session.scalars(select(NotificationPreference).where(NotificationPreference.user_id == user.id))}
    return {
        kind: {"email": stored[kind].email, "in_app": stored[kind].in_app} if kind in stored else {"email": True, "in_app": True}
        for kind in KINDS
    }


def set_preferences(user: User, choices: Mapping[str, Mapping[str, bool]]) -> None:
    """Store the user's choices per kind; kinds left out keep their current choice."""
    unknown = sorted(set(choices) - set(KINDS))
    if unknown:
        message = f"Unknown notification kind {unknown[0]!r}."
        raise ValidationFailed(message, {"kind": message})
    stored = {row.kind: row for row in db.session.scalars(select(NotificationPreference).where(NotificationPreference.user_id == user.id))}
    for kind, choice in choices.items():
        row = stored.get(kind)
        if row is None:
            row = NotificationPreference(user_id=user.id, kind=kind)
            db.session.add(row)
        row.email = bool(choice.get("email"))
        row.in_app = bool(choice.get("in_app"))
    db.session.flush()
    logger.info("notification preferences saved user=%s kinds=%s", user.id, len(choices))


# The in-app list


def unread_count(user: User) -> int:
    return db.session.scalar(
        select(func.count()).select_from(Notification).where(Notification.user_id == user.id, Notification.read_at.is_(None))
    ) or 0


def list_notifications(user: User, page: int, per_page: int) -> tuple[list[Notification], int]:
    """Return one page of the user's notifications, newest first, and their total count."""
    base = select(Notification).where(Notification.user_id == user.id)
    total = db.session.scalar(select(func.count()).select_from(base.subquery())) or 0
    items = db.session.scalars(
        base.order_by(Notification.created_at.desc(), Notification.id.desc()).limit(per_page).offset((page - 1) * per_page)
    )
    return list(items), total


def mark_read(user: User, notification_id: int) -> Notification:
    """Mark one of the user's notifications read; raise NotFound for anyone else's."""
    notification = db.session.get(Notification, notification_id) if 0 < notification_id < 2**31 else None
    if notification is None or notification.user_id != user.id:
        raise NotFound(f"Notification {notification_id} not found.")
    if notification.read_at is None:
        notification.read_at = utcnow()
        db.session.flush()
    return notification


def mark_all_read(user: User) -> int:
    """Mark every unread notification of the user read; return how many changed."""
    result = db.session.execute(
        update(Notification)
        .where(Notification.user_id == user.id, Notification.read_at.is_(None))
        .values(read_at=utcnow())
    )
    logger.info("notifications marked read user=%s count=%s", user.id, result.rowcount)
    return result.rowcount
