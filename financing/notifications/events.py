"""The events that notify people, each with its recipients, message values and link.

Services call these in the transaction that makes the change: project owners hear of their
projects' review outcome, and both the funder's donors and the project's owners hear of
pledges and accepted matches.
"""

from financing.matching.models import Match
from financing.notifications.services import funder_users, notify, organisation_users, site_path
from financing.pledges.models import Pledge
from financing.projects.models import Project

# Pledge actions of the state machine that notify, by the kind they send.
PLEDGE_ACTION_KINDS = {
    "confirm": "pledge_confirmed",
    "pay": "pledge_confirmed",
    "disburse": "pledge_disbursed",
    "refund": "pledge_refunded",
    "dispute_lost": "pledge_refunded",
}


def project_published(project: Project) -> int:
    return notify(
        organisation_users(project.organisation_id), "project_published",
        {"project": project.title}, site_path("projects.detail", project_id=project.id),
    )


def project_returned(project: Project) -> int:
    return notify(
        organisation_users(project.organisation_id), "project_returned",
        {"project": project.title, "reason": project.return_reason or ""},
        site_path("projects.detail", project_id=project.id),
    )


def pledge_event(pledge: Pledge, kind: str, amount_minor: int, currency: str) -> int:
    """Notify the pledge's funder and the project's owners; the amount is the event's, such as a tranche."""
    project = pledge.need.project
    recipients = funder_users(pledge.funder) + organisation_users(project.organisation_id)
    # int(): sums on PostgreSQL come back as Decimal, which JSON cannot store.
    params = {"project": project.title, "funder": pledge.funder.name, "amount_minor": int(amount_minor), "currency": currency}
    return notify(recipients, kind, params, site_path("pledges.detail", pledge_id=pledge.id))


def pledge_transition(pledge: Pledge, action: str, amount_minor: int) -> int:
    """Notify a pledge transition that people care about; `amount_minor` is in the need's currency."""
    kind = PLEDGE_ACTION_KINDS.get(action)
    if kind is None:
        return 0
    return pledge_event(pledge, kind, amount_minor, pledge.need.currency)


def match_accepted(match: Match) -> int:
    recipients = funder_users(match.funder) + organisation_users(match.project.organisation_id)
    params = {"project": match.project.title, "funder": match.funder.name}
    return notify(recipients, "match_accepted", params, site_path("projects.detail", project_id=match.project_id))
