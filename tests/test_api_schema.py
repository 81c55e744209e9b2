"""Property-based tests of the whole JSON API with schemathesis, against its own OpenAPI document.

For every operation, schemathesis generates requests from the document: valid ones (positive
mode) and ones that break it (negative mode). Each response must not be a 5xx, must have a
status, content type, headers and body that the document allows for the operation, and an
invalid request must be rejected with a 4xx. Requests run as an anonymous client and as a
coordinator with a Bearer token, against seeded data whose ids the path parameters sometimes
take, so that requests reach the services instead of stopping at 404.

The short run here sends a few hundred requests. The long run, `fuzz` marker, sends at least
1,000; `benchmarks/api_fuzz.py` runs the same driver over HTTP and prints the figures.
"""

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import date

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
SEED = 20260101
# A body over the API's size limit gets 413, which rejects invalid data as well as 400 or 422 do.
REJECTION_STATUSES = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]
CONFIG = {"checks": {"negative_data_rejection": {"expected-statuses": REJECTION_STATUSES}}}
# Maximum characters of a failure kept in a report, because schemathesis quotes the whole request body.
MAX_FAILURE_TEXT = 3000
PASSWORD = "correct horse battery"


# Seed data --------------------------------------------------------------------------------


@dataclass
class Seeded:
    """Ids of the seeded objects by path parameter name, and the Authorization headers by identity."""

    ids: dict[str, list[int]]
    identities: dict[str, dict[str, str]]


def seed_platform() -> Seeded:
    """Create accounts, projects, funders, pledges, matches, a match fund, rates and a run; commit.

    Call inside an app context on empty tables.
    """
    from financing.accounts.services import create_token, create_user
    from financing.extensions import db
    from financing.funders.services import FunderInput, funder_for_user, update_funder
    from financing.matching.allocation import run_allocation
    from financing.matching.models import Match
    from financing.pledges.match_funds import MatchFundInput, create_match_fund
    from financing.pledges.services import act, create_pledge
    from financing.projects.services import NeedInput, ProjectInput, create_project, publish_project, submit_project
    from financing.rates.services import add_rate

    coordinator = create_user("coordinator@example.org", PASSWORD, "coordinator", name="Coordinator")
    owner = create_user("owner@example.org", PASSWORD, "owner", name="Owner", organisation="Ministry of ICT, Kenya")
    donor = create_user("donor@example.org", PASSWORD, "donor", name="Donor", organisation="European Commission")
    other_donor = create_user("bank@example.org", PASSWORD, "donor", name="Bank", organisation="World Bank")

    def project(title: str, status: str, countries: list[str], themes: list[str], needs: list[NeedInput]):
        created = create_project(owner, ProjectInput(
            title=title, summary=f"{title} summary.", description="Solar-powered **access points**.",
            countries=countries, themes=themes, sectors=["22040"], needs=needs,
        ))
        if status in ("submitted", "published"):
            submit_project(owner, created)
        if status == "published":
            publish_project(coordinator, created)
        return created

    published = project("Rural broadband for Kenya", "published", ["KE"], ["broadband"], [
        NeedInput("Feasibility study", 20_000_000, "EUR"),
        NeedInput("Fibre deployment", 480_000_000, "EUR", date(2099, 12, 31), True),
    ])
    backbone = project("West African backbone", "published", ["SN", "GH"], ["backbones"], [NeedInput("Landing station", 90_000_000, "USD")])
    draft = project("Spectrum plan", "draft", ["FJ"], ["spectrum"], [NeedInput("Study", 5_000_000, "EUR")])
    submitted = project("Policy harmonisation", "submitted", ["JM"], ["policy-harmonization"], [NeedInput("Workshops", 7_500_000, "EUR")])

    commission = funder_for_user(donor)
    update_funder(donor, commission, FunderInput(
        name="European Commission", regions=["africa"], themes=["broadband", "backbones"],
        ticket_min_minor=1_000_000, ticket_max_minor=100_000_000, annual_budget_minor=1_000_000_000,
    ))
    bank = funder_for_user(other_donor)
    update_funder(other_donor, bank, FunderInput(name="World Bank", regions=["africa"], themes=["broadband"]))
    fund = create_match_fund(other_donor, MatchFundInput(name="Africa broadband", factor="1", currency="EUR", total_cap="50000.00", regions=["africa"]))
    add_rate(coordinator, "USD", "EUR", "0.9259", date(2020, 1, 1))

    feasibility, fibre = published.needs
    waiting, _ = create_pledge(donor, feasibility.id, 1_000_000, "EUR", idempotency_key="seed-1")
    confirmed, _ = create_pledge(donor, fibre.id, 2_000_000, "EUR", idempotency_key="seed-2")
    act(coordinator, confirmed.id, "confirm")
    partly, _ = create_pledge(donor, fibre.id, 3_000_000, "EUR", idempotency_key="seed-3")
    act(coordinator, partly.id, "confirm")
    act(coordinator, partly.id, "disburse", amount_minor=1_000_000)

    parts = {"region": 1.0, "theme": 1.0, "ticket": 0.5, "capacity": 0.5, "time": 1.0}
    weights = {"region": 0.35, "theme": 0.35, "ticket": 0.15, "capacity": 0.1, "time": 0.05}
    matches = [
        Match(project_id=item.id, need_id=item.needs[0].id, funder_id=funder.id, score=score, parts=parts, weights=weights,
              explanation="Africa and broadband match.", status="suggested", inputs_digest="0" * 64)
        for item, funder, score in ((published, commission, 0.9), (published, bank, 0.7), (backbone, commission, 0.6))
    ]
    db.session.add_all(matches)
    db.session.flush()
    run = run_allocation(coordinator)

    tokens = {user.role: create_token(user, "schemathesis")[1] for user in (coordinator, owner, donor)}
    spare_rows = [create_token(coordinator, f"spare {number}")[0] for number in range(3)]
    db.session.commit()

    pledge_ids = [pledge.id for pledge in db.session.scalars(db.select(type(waiting)).order_by(type(waiting).id))]
    return Seeded(
        ids={
            "project_id": [published.id, backbone.id, draft.id, submitted.id],
            "funder_id": [commission.id, bank.id],
            "pledge_id": pledge_ids,
            "match_id": [match.id for match in matches],
            "fund_id": [fund.id],
            "run_id": [run.id],
            # The tokens the run sends are left out, so that it keeps its credentials.
            "token_id": [row.id for row in spare_rows],
            "need_id": [feasibility.id, fibre.id, backbone.needs[0].id],
            "row_id": [row.id for row in run.rows],
        },
        identities={"anonymous": {}, **{role: {"Authorization": f"Bearer {token}"} for role, token in tokens.items()}},
    )


# The driver -------------------------------------------------------------------------------


@dataclass
class FuzzReport:
    requests: int = 0
    statuses: Counter = field(default_factory=Counter)
    by_operation: Counter = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    unsatisfiable: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "requests": self.requests,
            "operations": len(self.by_operation),
            "server_errors": len(self.server_errors),
            "check_failures": len(self.failures),
            "statuses": {str(status): count for status, count in sorted(self.statuses.items())},
        }


def _path_strategy(operation, mode: GenerationMode, ids: dict[str, list[int]]):
    """Generate cases that use seeded ids for the path parameters half of the time."""
    generated = operation.as_strategy(generation_mode=mode)
    names = [parameter.name for parameter in operation.path_parameters]
    if not names or mode is GenerationMode.NEGATIVE or not all(name in ids for name in names):
        return generated
    fixed = st.fixed_dictionaries({name: st.sampled_from(ids[name]) for name in names}).flatmap(
        lambda values: operation.as_strategy(generation_mode=mode, path_parameters=values)
    )
    return st.one_of(generated, fixed)


# Body fields that name seeded objects: a single id, or a list of ids.
BODY_IDS = {"need_id": "need_id", "funder_id": "funder_id"}
BODY_ID_LISTS = {"pledge_ids": "pledge_id", "row_ids": "row_id"}


def _use_seeded_ids(case, ids: dict[str, list[int]], data) -> None:
    """Replace ids in a valid generated body by seeded ones half of the time, keeping the body valid."""
    if not isinstance(case.body, dict) or not data.draw(st.booleans(), label="use seeded ids"):
        return
    for name, kind in BODY_IDS.items():
        if isinstance(case.body.get(name), int) and ids.get(kind):
            case.body[name] = data.draw(st.sampled_from(ids[kind]), label=name)
    for name, kind in BODY_ID_LISTS.items():
        if isinstance(case.body.get(name), list) and case.body[name] and ids.get(kind):
            size = min(len(case.body[name]), len(ids[kind]))
            case.body[name] = data.draw(st.lists(st.sampled_from(ids[kind]), min_size=1, max_size=size, unique=True), label=name)


def _describe(case, response) -> str:
    body = response.text[:300] if response.text else ""
    return f"{case.method} {case.formatted_path} -> {response.status_code} {body}"


def fuzz_api(schema, seeded: Seeded, examples: int, identities: tuple[str, ...] = ("anonymous", "coordinator"),
             seed_value: int = SEED, base_url: str | None = None) -> FuzzReport:
    """Send up to `examples` generated requests per operation, mode and identity; record statuses and failures.

    Failures are collected instead of raised, so that one run reports all of them.
    """
    report = FuzzReport()
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for identity in identities:
                _fuzz_operation(operation, mode, seeded.identities[identity], seeded, examples, seed_value, base_url, report)
    return report


def _fuzz_operation(operation, mode, headers, seeded, examples, seed_value, base_url, report) -> None:
    strategy = _path_strategy(operation, mode, seeded.ids)

    @seed(seed_value)
    @settings(
        max_examples=examples, deadline=None, database=None, derandomize=False,
        phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy, data=st.data())
    def run(case, data):
        if mode is GenerationMode.POSITIVE:
            _use_seeded_ids(case, seeded.ids, data)
        kwargs = {"headers": headers}
        if base_url:
            kwargs["base_url"] = base_url
        response = case.call(**kwargs)
        report.requests += 1
        report.statuses[response.status_code] += 1
        report.by_operation[f"{operation.method.upper()} {operation.path}"] += 1
        if response.status_code >= 500:
            report.server_errors.append(_describe(case, response))
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except (Failure, FailureGroup) as error:
            report.failures.append(f"{_describe(case, response)}\n{error}"[:MAX_FAILURE_TEXT])

    try:
        run()
    except Unsatisfiable:
        # Negative mode has nothing to break in an operation without parameters or body.
        report.unsatisfiable.append(f"{operation.method.upper()} {operation.path} {mode.value}")


def schemathesis_config() -> schemathesis.Config:
    """Return the settings of the checks, independent of any schemathesis.toml in the working directory."""
    return schemathesis.Config.from_dict(CONFIG)


# Tests --------------------------------------------------------------------------------------


@pytest.fixture
def seeded(db) -> Seeded:
    return seed_platform()


@pytest.fixture
def api_schema(app, seeded):
    return schemathesis.openapi.from_wsgi("/api/openapi.json", app, config=schemathesis_config())


def _assert_clean(report: FuzzReport, minimum_requests: int) -> None:
    print(json.dumps(report.summary()))
    assert report.requests >= minimum_requests
    assert not report.server_errors, "\n".join(report.server_errors[:20])
    assert not report.failures, "\n\n".join(report.failures[:10])


def test_generated_requests_conform_to_schema(api_schema, seeded):
    report = fuzz_api(api_schema, seeded, examples=2)

    _assert_clean(report, minimum_requests=200)
    assert len(report.by_operation) == len(list(api_schema.get_all_operations()))


@pytest.mark.fuzz
def test_long_fuzz_run(api_schema, seeded):
    examples = int(os.environ.get("API_FUZZ_EXAMPLES", "6"))
    report = fuzz_api(
        api_schema, seeded, examples=examples, identities=tuple(seeded.identities),
        seed_value=int(os.environ.get("API_FUZZ_SEED", SEED)),
    )

    _assert_clean(report, minimum_requests=1000)
