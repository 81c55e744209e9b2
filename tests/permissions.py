"""The permission matrix: every route and method of the app, and the exact status each identity gets.

tests/test_permissions.py sends each row's request as each identity and checks the status.
A path or body names the objects it needs in braces, such as "/projects/{draft_project}".
The test replaces each name with the id of that object in a fresh database:

    draft_project, submitted_project, published_project   projects of owner, each with one need
    need                                                   the need of published_project
    other_project, other_need                              other_owner's published project and its need
    pledge                                                 donor's pledge on `need`, awaiting confirmation
    confirmed_pledge                                       donor's pledge on `need`, confirmed
    other_pledge                                           other_donor's pledge on `other_need`
    funder, other_funder                                   the funder profiles of donor and other_donor
    match                                                  a suggested match of published_project with `funder`
    match_fund                                             a match fund of `funder`
    run, run_row                                           an allocation run with one row (`funder` to `need`)
    notification                                           an unread notification of donor
    token                                                  a second API token of donor

A string that is only a name, such as "{pledge}" in a JSON body, becomes the integer id.

The identities: owner and other_owner belong to two organisations, donor and other_donor
have a funder profile each, and coordinator and admin have no organisation. Page requests
send form fields with the user's session. API requests (paths under /api/) send JSON with
an API token of the user that has every scope. Writes send a minimal valid request, so the
identity allowed to act gets its success status and the others are rejected before any
change.
"""

from dataclasses import dataclass, field

from tests.conftest import PASSWORD

IDENTITIES = ("anonymous", "owner", "other_owner", "donor", "other_donor", "coordinator", "admin")

# An anonymous page request that needs a login is redirected to the login page.
LOGIN = 302
UNAUTHORIZED = 401


@dataclass(frozen=True)
class Row:
    method: str
    path: str
    expected: dict[str, int]
    # JSON body for API paths, form fields for pages.
    data: dict | None = None
    # Uploaded files of a page form: field name -> (file name, text).
    files: dict[str, tuple[str, str]] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    # False when an anonymous 302 is not the redirect to the login page.
    login_redirect: bool = True
    # Identity -> objects whose title or amounts a successful response must not contain.
    hidden: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def api(self) -> bool:
        return self.path.startswith("/api/")

    @property
    def name(self) -> str:
        return f"{self.method} {self.path}"


def statuses(anonymous: int, owner: int, other_owner: int, donor: int, other_donor: int, coordinator: int, admin: int) -> dict[str, int]:
    return dict(zip(IDENTITIES, (anonymous, owner, other_owner, donor, other_donor, coordinator, admin)))


def public(status: int = 200) -> dict[str, int]:
    """Anyone, signed in or not, gets the same status."""
    return statuses(status, status, status, status, status, status, status)


def signed_in(status: int, anonymous: int = LOGIN) -> dict[str, int]:
    """Every account gets `status`, and anonymous requests need a login."""
    return statuses(anonymous, status, status, status, status, status, status)


def coordinators(status: int, anonymous: int = LOGIN) -> dict[str, int]:
    """Coordinators and admins get `status`, owners and donors 403."""
    return statuses(anonymous, 403, 403, 403, 403, status, status)


def owners(status: int, anonymous: int = LOGIN) -> dict[str, int]:
    """Both project owners get `status`, donors, coordinators and admins 403."""
    return statuses(anonymous, status, status, 403, 403, 403, 403)


def donors(status: int, anonymous: int = LOGIN) -> dict[str, int]:
    """Both donors get `status`, owners, coordinators and admins 403."""
    return statuses(anonymous, 403, 403, status, status, 403, 403)


def fund_managers(status: int, anonymous: int = LOGIN) -> dict[str, int]:
    """The donor of match_fund's funder and coordinators get `status`. Everyone else gets 404, as for a missing fund."""
    return statuses(anonymous, 404, 404, status, 404, status, status)


def pledge_viewers(status: int, anonymous: int = LOGIN) -> dict[str, int]:
    """Donor's pledge on owner's project is for donor, owner and coordinators. other_owner and other_donor get 404."""
    return statuses(anonymous, status, 404, status, 404, status, status)


def hide(objects: tuple[str, ...], *identities: str) -> dict[str, tuple[str, ...]]:
    """Name the objects that lists must leave out for these identities."""
    return {identity: objects for identity in identities}


UNPUBLISHED = ("draft_project", "submitted_project")
DONOR_PLEDGES = ("pledge", "confirmed_pledge")
# Lists of pledges contain only the pledges of the identity's own funder or to its own projects.
PLEDGES_OF_OTHERS = {**hide(DONOR_PLEDGES, "other_owner", "other_donor"), **hide(("other_pledge",), "owner", "donor")}


def api_public(status: int = 200) -> dict[str, int]:
    return public(status)


def api_signed_in(status: int) -> dict[str, int]:
    return signed_in(status, anonymous=UNAUTHORIZED)


def api_coordinators(status: int) -> dict[str, int]:
    return coordinators(status, anonymous=UNAUTHORIZED)


PROJECT_FORM = {
    "title": "Solar-powered telecentres for Kitui",
    "summary": "Telecentres in five market towns.",
    "countries": ["KE"],
    "themes": ["public-access"],
    "needs-0-title": "Equipment",
    "needs-0-goal": "50000.00",
    "needs-0-currency": "EUR",
}
PROJECT_CSV = "title,need_title,goal,currency\nCommunity radio for Garissa,Transmitters,20000.00,EUR\n"
RATE_CSV = "base,quote,rate,valid_from\nCHF,EUR,1.05,2026-01-02\n"
RATE = {"base": "GBP", "quote": "EUR", "rate": "1.17", "valid_from": "2026-01-02"}


PAGES = [
    # Public pages, and the login and registration forms.
    Row("GET", "/", public(), hidden=hide(UNPUBLISHED, *IDENTITIES)),
    Row("GET", "/healthz", public()),
    Row("GET", "/stats", public()),
    Row("GET", "/projects", public(), hidden=hide(UNPUBLISHED, *IDENTITIES)),
    Row("GET", "/projects/{published_project}", public()),
    # Unpublished projects are for their organisation and coordinators only. Others get 404, as for a missing project.
    Row("GET", "/projects/{draft_project}", statuses(404, 200, 404, 404, 404, 200, 200)),
    Row("GET", "/funders", public()),
    Row("GET", "/funders/{funder}", public()),
    # Signed-in users go on to the home page.
    Row("GET", "/login", statuses(200, 302, 302, 302, 302, 302, 302)),
    # Valid credentials of owner: every client ends up signed in as owner.
    Row("POST", "/login", public(302), data={"email": "owner@example.org", "password": PASSWORD}, login_redirect=False),
    Row("POST", "/logout", public(302), login_redirect=False),
    # Signed-in users may register another account too; the session then switches to it.
    Row("GET", "/register", public()),
    Row("POST", "/register", public(302), login_redirect=False, data={
        "email": "new.donor@example.org", "name": "New Donor", "password": PASSWORD,
        "confirm": PASSWORD, "role": "donor", "organisation": "",
    }),

    # The account page and personal API tokens. A token of another user is 404, as for a missing one.
    Row("GET", "/account", signed_in(200), hidden=hide(("token",), "owner", "other_owner", "other_donor", "coordinator", "admin")),
    Row("POST", "/account/tokens", signed_in(201), data={"name": "Reporting script", "scopes": ["read"]}),
    Row("POST", "/account/tokens/{token}/revoke", statuses(LOGIN, 404, 404, 302, 404, 404, 404)),

    # Notifications are personal: another user's notification is 404 for everyone, coordinators included.
    Row("GET", "/notifications", signed_in(200)),
    Row("POST", "/notifications/{notification}/read", statuses(LOGIN, 404, 404, 303, 404, 404, 404)),
    Row("POST", "/notifications/read-all", signed_in(303)),
    Row("GET", "/notifications/settings", signed_in(200)),
    Row("POST", "/notifications/settings", signed_in(303), data={"email_pledge_made": "y", "in_app_pledge_made": "y"}),

    # Projects: owners write their own organisation's projects, and coordinators publish and return them.
    Row("GET", "/projects/mine", owners(200), hidden=hide(UNPUBLISHED, "other_owner")),
    Row("GET", "/projects/new", owners(200)),
    Row("POST", "/projects/new", owners(302), data=PROJECT_FORM),
    Row("GET", "/projects/{draft_project}/edit", statuses(LOGIN, 200, 404, 403, 403, 403, 403)),
    Row("POST", "/projects/{draft_project}/edit", statuses(LOGIN, 302, 404, 403, 403, 403, 403), data=PROJECT_FORM),
    Row("POST", "/projects/{draft_project}/submit", statuses(LOGIN, 302, 404, 403, 403, 403, 403)),
    # A published project is visible to everyone, so another owner gets 403 rather than 404.
    Row("POST", "/projects/{published_project}/withdraw", statuses(LOGIN, 302, 403, 403, 403, 403, 403)),
    Row("POST", "/projects/{submitted_project}/publish", coordinators(302)),
    Row("POST", "/projects/{submitted_project}/return", coordinators(302),
        data={"return-{submitted_project}-reason": "Add a budget for each need."}),
    Row("GET", "/projects/import", owners(200)),
    Row("POST", "/projects/import", owners(302), files={"file": ("projects.csv", PROJECT_CSV)}),

    # Funder profiles: each donor edits its own, which needs no id in the path.
    Row("GET", "/funders/profile", donors(200)),
    Row("POST", "/funders/profile", donors(302),
        data={"name": "Connectivity Fund", "kind": "institution", "currency": "EUR", "regions": ["africa"]}),

    # Pledges: donors pledge, and coordinators confirm, cancel, disburse and refund.
    Row("GET", "/needs/{need}/pledge", donors(200)),
    Row("POST", "/needs/{need}/pledge", donors(302), data={
        "currency": "EUR", "amount": "100.00", "kind": "commitment",
        "idempotency_key": "0b5b9a3e-58f2-4a4b-9d8c-2f1f6c2e7a10",
    }),
    Row("GET", "/pledges/mine", donors(200), hidden=PLEDGES_OF_OTHERS),
    # The owner of the project may read the pledges made to it.
    Row("GET", "/pledges/{pledge}", pledge_viewers(200)),
    Row("GET", "/pledges/checkout/return?pledge={pledge}&result=paid", pledge_viewers(200)),
    Row("POST", "/pledges/{pledge}/confirm", coordinators(302)),
    Row("POST", "/pledges/{pledge}/cancel", coordinators(302), data={"cancel-{pledge}-reason": "Entered twice."}),
    Row("POST", "/pledges/{confirmed_pledge}/disburse", coordinators(302), data={"disburse-{confirmed_pledge}-amount": "100.00"}),
    Row("GET", "/pledges/review", coordinators(200)),
    Row("POST", "/pledges/review", coordinators(302), data={"bulk-pledge": ["{pledge}"], "bulk-action": "confirm"}),
    Row("GET", "/pledges/{confirmed_pledge}/refund", coordinators(200)),
    # Card payments are off in TestConfig, so even a coordinator's refund is a 409 conflict.
    # tests/test_payments.py covers refunds against a fake Stripe.
    Row("POST", "/pledges/{confirmed_pledge}/refund", coordinators(409), data={"amount": "10.00"}),
    # TestConfig sets no STRIPE_WEBHOOK_SECRET, so the webhook is 503 for every caller.
    # tests/test_payments.py checks its signatures.
    Row("POST", "/payments/stripe/webhook", public(503), data={"id": "evt_test", "type": "charge.refunded"}),

    # Match funds: donors manage their funder's funds, coordinators any fund.
    Row("GET", "/match-funds", statuses(LOGIN, 403, 403, 200, 200, 200, 200), hidden=hide(("match_fund",), "other_donor")),
    Row("GET", "/match-funds/new", statuses(LOGIN, 403, 403, 200, 200, 200, 200)),
    # Coordinators pick the funder. The donors' form has no funder field, so the value is ignored.
    Row("POST", "/match-funds/new", statuses(LOGIN, 403, 403, 302, 302, 302, 302), data={
        "name": "Broadband match", "factor": "1", "currency": "EUR", "total_cap": "5000.00", "funder_id": "{funder}",
    }),
    Row("GET", "/match-funds/{match_fund}", fund_managers(200)),
    Row("POST", "/match-funds/{match_fund}/active", fund_managers(302), data={"active": "0"}),

    # Matches: coordinators review them. Owners and donors see their own list, and coordinators go on to the review page.
    Row("GET", "/matches", coordinators(200)),
    Row("GET", "/matches/mine", statuses(LOGIN, 200, 200, 200, 200, 302, 302), hidden=hide(("match",), "other_owner", "other_donor")),
    Row("POST", "/matches/{match}/accept", coordinators(303)),
    Row("POST", "/matches/{match}/reject", coordinators(303), data={"reject-{match}-reason": "Outside the funder's regions."}),
    Row("GET", "/allocation", coordinators(200)),
    Row("POST", "/allocation/runs", coordinators(303)),
    Row("POST", "/allocation/runs/{run}/accept", coordinators(303), data={"row_ids": ["{run_row}"]}),

    # Coordinators' pages.
    Row("GET", "/dashboard", coordinators(200)),
    Row("GET", "/review", coordinators(200)),
    Row("POST", "/review/projects", coordinators(303), data={"bulk-selected": ["{submitted_project}"], "bulk-action": "publish"}),
    Row("GET", "/rates", coordinators(200)),
    Row("POST", "/rates", coordinators(302), data=RATE),
    Row("POST", "/rates/import", coordinators(302), files={"upload-file": ("rates.csv", RATE_CSV)}),
    Row("GET", "/audit", coordinators(200)),
    # Object histories: the project's owners, the pledge's or fund's donor, and coordinators.
    # A visible object of others is 403, an unpublished one 404.
    Row("GET", "/audit/project/{published_project}", statuses(LOGIN, 200, 403, 403, 403, 200, 200)),
    Row("GET", "/audit/project/{draft_project}", statuses(LOGIN, 200, 404, 404, 404, 200, 200)),
    Row("GET", "/audit/pledge/{pledge}", statuses(LOGIN, 403, 404, 200, 404, 200, 200)),
    Row("GET", "/audit/match_fund/{match_fund}", fund_managers(200)),
]


API = [
    # Documentation and public reads.
    Row("GET", "/api/docs", api_public()),
    Row("GET", "/api/openapi.json", api_public()),
    Row("GET", "/api/v1/stats", api_public()),
    # Coordinators list every status.
    Row("GET", "/api/v1/projects", api_public(), hidden=hide(UNPUBLISHED, "anonymous", "owner", "other_owner", "donor", "other_donor")),
    Row("GET", "/api/v1/projects/{published_project}", api_public()),
    Row("GET", "/api/v1/projects/{draft_project}", statuses(404, 200, 404, 404, 404, 200, 200)),
    Row("GET", "/api/v1/funders", api_public()),
    Row("GET", "/api/v1/funders/{funder}", api_public()),
    Row("GET", "/api/v1/rates", api_public()),
    Row("GET", "/api/v1/rates/history", api_public()),

    # Projects: only owners write them, as on the pages.
    Row("POST", "/api/v1/projects", statuses(UNAUTHORIZED, 201, 201, 403, 403, 403, 403), data={
        "title": "Fibre for Mombasa schools",
        "needs": [{"title": "Fibre", "goal": {"amount": "30000.00", "currency": "EUR"}}],
    }),
    # Coordinators see drafts but do not write them, so they get a 403 where others get a 404.
    Row("PATCH", "/api/v1/projects/{draft_project}", statuses(UNAUTHORIZED, 200, 404, 404, 404, 403, 403),
        data={"summary": "Feasibility study of the backbone."}),
    Row("POST", "/api/v1/projects/{draft_project}/submit", statuses(UNAUTHORIZED, 200, 404, 404, 404, 403, 403)),
    Row("POST", "/api/v1/projects/{published_project}/withdraw", statuses(UNAUTHORIZED, 200, 403, 403, 403, 403, 403)),
    Row("POST", "/api/v1/projects/{submitted_project}/publish", api_coordinators(200)),
    Row("POST", "/api/v1/projects/{submitted_project}/return", api_coordinators(200), data={"reason": "Add a budget."}),

    # Funder profiles.
    Row("GET", "/api/v1/funders/me", donors(200, anonymous=UNAUTHORIZED)),
    Row("PATCH", "/api/v1/funders/me", donors(200, anonymous=UNAUTHORIZED), data={"description": "Grants for connectivity."}),
    Row("PATCH", "/api/v1/funders/{funder}", statuses(UNAUTHORIZED, 403, 403, 200, 403, 200, 200),
        data={"description": "Grants for connectivity."}),

    # Pledges.
    Row("GET", "/api/v1/pledges", api_signed_in(200), hidden=PLEDGES_OF_OTHERS),
    Row("POST", "/api/v1/pledges", donors(201, anonymous=UNAUTHORIZED),
        data={"need_id": "{need}", "amount": "100.00", "currency": "EUR", "kind": "commitment"},
        headers={"Idempotency-Key": "matrix-pledge-1"}),
    Row("GET", "/api/v1/pledges/{pledge}", pledge_viewers(200, anonymous=UNAUTHORIZED)),
    Row("GET", "/api/v1/pledges/{pledge}/events", pledge_viewers(200, anonymous=UNAUTHORIZED)),
    # Donors cancel their own pledges while they await confirmation.
    Row("POST", "/api/v1/pledges/{pledge}/cancel", statuses(UNAUTHORIZED, 403, 403, 200, 404, 200, 200), data={"reason": "Entered twice."}),
    Row("POST", "/api/v1/pledges/{pledge}/confirm", api_coordinators(200)),
    Row("POST", "/api/v1/pledges/{confirmed_pledge}/disburse", api_coordinators(200), data={"amount": "100.00"}),
    # Card payments are off in TestConfig, so even a coordinator's refund is a 409 conflict.
    Row("POST", "/api/v1/pledges/{confirmed_pledge}/refund", api_coordinators(409), data={"amount": "10.00"}),
    Row("POST", "/api/v1/pledges/bulk", api_coordinators(200), data={"action": "confirm", "pledge_ids": ["{pledge}"]}),

    # Match funds. A donor may name only its own funder, so other_donor gets 422 for donor's funder.
    Row("GET", "/api/v1/match-funds", statuses(UNAUTHORIZED, 403, 403, 200, 200, 200, 200), hidden=hide(("match_fund",), "other_donor")),
    Row("POST", "/api/v1/match-funds", statuses(UNAUTHORIZED, 403, 403, 201, 422, 201, 201), data={
        "name": "Broadband match", "funder_id": "{funder}", "factor": "1",
        "total_cap": {"amount": "5000.00", "currency": "EUR"},
    }),
    Row("GET", "/api/v1/match-funds/{match_fund}", fund_managers(200, anonymous=UNAUTHORIZED)),
    Row("GET", "/api/v1/match-funds/{match_fund}/pledges", fund_managers(200, anonymous=UNAUTHORIZED)),
    Row("POST", "/api/v1/match-funds/{match_fund}/activate", fund_managers(200, anonymous=UNAUTHORIZED)),
    Row("POST", "/api/v1/match-funds/{match_fund}/deactivate", fund_managers(200, anonymous=UNAUTHORIZED)),

    # Matches: the list is filtered per role, and a match of others is 404.
    Row("GET", "/api/v1/matches", api_signed_in(200), hidden=hide(("match",), "other_owner", "other_donor")),
    Row("GET", "/api/v1/matches/{match}", statuses(UNAUTHORIZED, 200, 404, 200, 404, 200, 200)),
    Row("POST", "/api/v1/matches/{match}/accept", api_coordinators(200)),
    Row("POST", "/api/v1/matches/{match}/reject", api_coordinators(200), data={"reason": "Outside the funder's regions."}),

    # Allocation runs and exports: coordinators only.
    Row("GET", "/api/v1/allocation/runs", api_coordinators(200)),
    Row("POST", "/api/v1/allocation/runs", api_coordinators(201)),
    Row("GET", "/api/v1/allocation/runs/{run}", api_coordinators(200)),
    Row("POST", "/api/v1/allocation/runs/{run}/accept", api_coordinators(200), data={"row_ids": ["{run_row}"]}),
    Row("GET", "/api/v1/exports/projects.csv", api_coordinators(200)),
    Row("GET", "/api/v1/exports/needs.csv", api_coordinators(200)),
    Row("GET", "/api/v1/exports/pledges.csv", api_coordinators(200)),
    Row("GET", "/api/v1/exports/funders.csv", api_coordinators(200)),
    Row("GET", "/api/v1/exports/iati.xml", api_coordinators(200)),

    # Exchange rates.
    Row("POST", "/api/v1/rates", api_coordinators(201), data=RATE),
    Row("POST", "/api/v1/rates/import", api_coordinators(200), data={"csv": RATE_CSV}),

    # Personal API tokens: a token of another user is 404, as for a missing one.
    Row("GET", "/api/v1/tokens", api_signed_in(200), hidden=hide(("token",), "owner", "other_owner", "other_donor", "coordinator", "admin")),
    Row("POST", "/api/v1/tokens", api_signed_in(201), data={"name": "Reporting script", "scopes": ["read"]}),
    Row("DELETE", "/api/v1/tokens/{token}", statuses(UNAUTHORIZED, 404, 404, 204, 404, 404, 404)),
]

ROWS = PAGES + API
