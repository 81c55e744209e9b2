"""Import every model so that metadata and Alembic see all tables."""

from financing.accounts.models import ApiToken, Organisation, User  # noqa: F401
from financing.audit.models import AuditEntry  # noqa: F401
from financing.funders.models import Funder, FunderPreference  # noqa: F401
from financing.matching.allocation_models import AllocationRow, AllocationRun  # noqa: F401
from financing.matching.models import Match  # noqa: F401
from financing.notifications.models import Notification, NotificationPreference, OutboxMessage  # noqa: F401
from financing.payments.models import StripeEvent  # noqa: F401
from financing.pledges.models import ExchangeRate, MatchFund, MatchFundRule, Pledge, PledgeEvent  # noqa: F401
from financing.projects.models import FundingNeed, Project, ProjectTag  # noqa: F401
from financing.review.models import ProjectSnapshot  # noqa: F401
