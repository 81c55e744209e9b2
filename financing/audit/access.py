"""Access checks for object histories: coordinators read any, owners and donors their own objects'."""

from financing.accounts.models import User
from financing.audit.models import OBJECT_TYPES
from financing.core.errors import Forbidden, NotFound
from financing.funders.services import check_can_edit, funder_for_user, get_funder
from financing.pledges.match_funds import get_match_fund
from financing.pledges.services import get_pledge
from financing.projects.services import get_project

# Ids beyond a 32-bit integer would make PostgreSQL raise instead of finding nothing.
MAX_ID = 2**31 - 1


def check_history_access(user: User, obj_type: str, obj_id: int) -> None:
    """Raise NotFound for an object the user cannot see, and Forbidden for one whose history is not theirs.

    Owners read the history of their organisation's projects, donors that of their funder's
    pledges, match funds and profile. Other objects' histories are for coordinators only.
    """
    if obj_type not in OBJECT_TYPES or not 0 < obj_id <= MAX_ID:
        raise NotFound(f"No history for {obj_type} {obj_id}.")
    if user.is_coordinator:
        return
    if obj_type == "project":
        project = get_project(obj_id, user)
        if user.role != "owner" or user.organisation_id != project.organisation_id:
            raise Forbidden("Only the project's owners and coordinators can read its history.")
    elif obj_type == "pledge":
        pledge = get_pledge(user, obj_id)
        funder = funder_for_user(user, create=False) if user.role == "donor" else None
        if funder is None or pledge.funder_id != funder.id:
            raise Forbidden("Only the pledge's donor and coordinators can read its history.")
    elif obj_type == "match_fund":
        get_match_fund(user, obj_id)
    elif obj_type == "funder":
        check_can_edit(user, get_funder(obj_id))
    else:
        raise Forbidden(f"Only coordinators can read the history of a {obj_type.replace('_', ' ')}.")


def may_read_history(user: User, obj_type: str, obj_id: int) -> bool:
    if not user.is_authenticated:
        return False
    try:
        check_history_access(user, obj_type, obj_id)
    except (Forbidden, NotFound):
        return False
    return True
