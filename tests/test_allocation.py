"""Tests of allocation runs: the solver on a case solved by hand and on random instances, the service, and the page."""

import re
from collections import defaultdict
from datetime import timedelta
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from lxml import html
from sqlalchemy import func, select

from financing import create_app
from financing.config import TestConfig
from financing.core.errors import Conflict, Forbidden, NotFound, ValidationFailed
from financing.core.time import utcnow
from financing.funders.models import Funder, FunderPreference
from financing.matching.allocation import (
    AllocationSettings, accept_rows, build_problem, get_run, run_allocation, run_totals, solve,
)
from financing.audit.models import AuditEntry
from financing.matching.allocation_models import AllocationRow, AllocationRun
from financing.matching.engine import DEFAULT_WEIGHTS, PARTS, FunderProfile, NeedProfile, ProjectProfile, run_matching
from financing.matching.models import Match
from financing.money import convert, minor_units
from financing.pledges.models import ExchangeRate
from financing.pledges.services import create_pledge, transition
from financing.projects.models import FundingNeed, Project, ProjectTag

THOUSAND = 100_000  # 1,000 EUR in cents


@pytest.fixture
def owner(make_user):
    return make_user("owner", organisation="Ministry of ICT, Kenya")


@pytest.fixture
def coordinator(make_user):
    return make_user("coordinator", organisation=None)


@pytest.fixture
def donor(make_user):
    return make_user("donor", organisation="Connectivity Fund")


@pytest.fixture
def build_project(db, owner):
    def build(goal_minor, title="Rural broadband", currency="EUR", countries=("KE",), themes=("broadband",),
              status="published", more_goals=()):
        project = Project(title=title, organisation_id=owner.organisation_id, status=status, created_by_id=owner.id)
        project.tags = [ProjectTag(kind="country", code=code) for code in countries]
        project.tags += [ProjectTag(kind="theme", code=code) for code in themes]
        goals = [goal_minor, *more_goals]
        project.needs = [
            FundingNeed(title=f"{title} need {position + 1}", goal_minor=goal, currency=currency, position=position)
            for position, goal in enumerate(goals)
        ]
        db.session.add(project)
        db.session.commit()
        return project

    return build


@pytest.fixture
def build_funder(db):
    def build(name, ticket_min=None, ticket_max=None, budget=None, currency="EUR", countries=(), regions=(),
              themes=("broadband",), **extra):
        funder = Funder(name=name, currency=currency, ticket_min_minor=ticket_min, ticket_max_minor=ticket_max,
                        annual_budget_minor=budget, **extra)
        prefs = [("country", code) for code in countries] + [("region", code) for code in regions]
        prefs += [("theme", code) for code in themes]
        funder.preferences = [FunderPreference(kind=kind, code=code) for kind, code in prefs]
        db.session.add(funder)
        db.session.commit()
        return funder

    return build


@pytest.fixture
def hand_case(build_project, build_funder, app, monkeypatch):
    """Two funders and three needs in Kenya, all broadband, all EUR, no deadlines.

    Only the region and ticket parts count here (weight 1 each), so that the scores are easy
    to follow: each is the geometric mean of the two parts, raised by 0.01 and lowered again.
    Funder A prefers Africa (region part 0.8): budget 100k, tickets 40k to 80k, inside on every
    need, so it scores 0.8945 on each. Funder B prefers Kenya (region part 1.0): budget 90k,
    tickets 30k to 60k. The 80k need is 80/60 above its maximum (ticket part 0.5 to the power
    log10(80/60) = 0.917) and the 70k need 70/60 above (0.955), so it scores 0.9576, 0.9771 and
    1.0. Needs: N1 80k, N2 70k, N3 40k.

    Solved by enumerating every split in steps of 1k: the only optimum puts A 50k on N1 and
    40k on N2, and B its minimum ticket of 30k on each need, covering 180k for an objective of
    168,546. Taking the best score first (B 40k on N3, 50k on N2, then A 80k on N1) covers only
    170k for 160,415, and no split covers all 190k.
    """
    monkeypatch.setitem(app.config, "MATCH_WEIGHTS", {**dict.fromkeys(PARTS, 0), "region": 1, "ticket": 1})
    needs = [build_project(80 * THOUSAND, "Fibre backbone"), build_project(70 * THOUSAND, "Rural access"),
             build_project(40 * THOUSAND, "Training centre")]
    funder_a = build_funder("Africa Fund", 40 * THOUSAND, 80 * THOUSAND, 100 * THOUSAND, regions=("africa",))
    funder_b = build_funder("Kenya Fund", 30 * THOUSAND, 60 * THOUSAND, 90 * THOUSAND, countries=("KE",))
    return needs, funder_a, funder_b


def proposal(run: AllocationRun) -> dict[tuple[str, str], int]:
    return {(row.funder.name, row.project.title): row.amount_minor for row in run.rows}


# The case solved by hand.

HAND_OPTIMUM = {
    ("Africa Fund", "Fibre backbone"): 50 * THOUSAND,
    ("Africa Fund", "Rural access"): 40 * THOUSAND,
    ("Kenya Fund", "Fibre backbone"): 30 * THOUSAND,
    ("Kenya Fund", "Rural access"): 30 * THOUSAND,
    ("Kenya Fund", "Training centre"): 30 * THOUSAND,
}


def test_hand_case_run_finds_the_optimum(db, hand_case, coordinator):
    run = run_allocation(coordinator)
    db.session.commit()

    assert proposal(run) == HAND_OPTIMUM
    scores = {(row.funder.name, row.project.title): row.score for row in run.rows}
    assert scores == {
        ("Africa Fund", "Fibre backbone"): 0.8945, ("Africa Fund", "Rural access"): 0.8945,
        ("Kenya Fund", "Fibre backbone"): 0.9576, ("Kenya Fund", "Rural access"): 0.9771,
        ("Kenya Fund", "Training centre"): 1.0,
    }
    assert run.status == "proposed"
    assert run.method == "milp"
    assert run.solver_status == "optimal"
    assert run.objective == pytest.approx(168_546.0, abs=0.01)
    assert run.proposed == {"EUR": 180 * THOUSAND}
    assert run.open_need == {"EUR": 190 * THOUSAND}
    assert run.objective_currency == "EUR"
    assert run.created_by_id == coordinator.id
    assert all(row.currency == row.need_currency == "EUR" and row.need_amount_minor == row.amount_minor for row in run.rows)
    assert not any(row.accepted for row in run.rows)


def test_hand_case_lp_method_feasible(db, hand_case, coordinator, app, monkeypatch):
    monkeypatch.setitem(app.config, "ALLOCATION_METHOD", "lp")
    run = run_allocation(coordinator)
    assert run.method == "lp"
    assert run.objective <= 168_546.0 + 0.01
    # The LP relaxation (no minimum tickets) covers all 190k, so its bound is above the optimum.
    assert run.bound >= 168_546.0
    totals = defaultdict(int)
    for row in run.rows:
        low, high = (40, 80) if row.funder.name == "Africa Fund" else (30, 60)
        assert low * THOUSAND <= row.amount_minor <= high * THOUSAND
        totals[row.funder.name] += row.amount_minor
        totals[row.project.title] += row.amount_minor
    assert totals["Africa Fund"] <= 100 * THOUSAND
    assert totals["Kenya Fund"] <= 90 * THOUSAND
    assert totals["Fibre backbone"] <= 80 * THOUSAND
    assert totals["Rural access"] <= 70 * THOUSAND
    assert totals["Training centre"] <= 40 * THOUSAND


def test_run_is_stored_with_its_rows(db, hand_case, coordinator):
    coordinator_id = coordinator.id
    run_id = run_allocation(coordinator).id
    db.session.commit()
    db.session.expunge_all()
    stored = db.session.get(AllocationRun, run_id)
    assert len(stored.rows) == 5
    assert stored.seconds > 0
    assert stored.variables >= 6
    assert stored.constraints >= 5
    assert stored.settings["weights"] == pytest.approx({**dict.fromkeys(PARTS, 0.0), "region": 0.5, "ticket": 0.5})
    row = stored.rows[0]
    assert row.explanation.endswith(".")
    assert set(row.parts) == set(PARTS)
    assert get_run(db.session.get(type(coordinator), coordinator_id)).id == run_id


# Random instances: the integer proposal respects every bound.

CURRENCIES = ("EUR", "USD", "JPY", "BHD")
RATES = {
    ("EUR", "USD"): Decimal("1.0834"), ("USD", "EUR"): Decimal("0.923"), ("EUR", "JPY"): Decimal("161.37"),
    ("JPY", "EUR"): Decimal("0.006197"), ("USD", "BHD"): Decimal("0.376"), ("EUR", "BHD"): Decimal("0.4071"),
}
TODAY = utcnow().date()


def need_profile(need_id, remaining, currency, deadline_days):
    deadline = None if deadline_days is None else TODAY + timedelta(days=deadline_days)
    return NeedProfile(need_id, remaining, remaining, currency, deadline)


@st.composite
def instances(draw):
    amount = st.integers(min_value=1, max_value=5_000_000)
    needs = draw(st.lists(st.tuples(amount, st.sampled_from(CURRENCIES), st.none() | st.integers(1, 400)), min_size=1, max_size=6))
    projects = []
    for index, (remaining, currency, days) in enumerate(needs):
        country = draw(st.sampled_from(["KE", "GH", "FJ"]))
        projects.append(ProjectProfile(
            id=index + 1, countries=frozenset({country}), regions=frozenset(), themes=frozenset({"broadband"}),
            sectors=frozenset(), country_regions=((country, {"KE": "africa", "GH": "africa", "FJ": "asia-pacific"}[country]),),
            sector_themes=(), sector_categories=(), needs=(need_profile(index + 1, remaining, currency, days),),
        ))
    funders = []
    for index in range(draw(st.integers(1, 4))):
        low = draw(st.none() | st.integers(1, 2_000_000))
        high = draw(st.none() | st.integers(low or 1, 4_000_000))
        budget = draw(st.none() | st.integers(1, 8_000_000))
        used = draw(st.integers(0, budget)) if budget else 0
        funders.append(FunderProfile(
            id=index + 1, currency=draw(st.sampled_from(CURRENCIES)), ticket_min_minor=low, ticket_max_minor=high,
            annual_budget_minor=budget, decision_days=draw(st.none() | st.integers(1, 200)),
            countries=frozenset(), regions=frozenset(draw(st.sets(st.sampled_from(["africa", "asia-pacific"]), min_size=1))),
            themes=frozenset({"broadband"}), sectors=frozenset(), categories={}, sector_themes={},
            used_minor=used, year=TODAY.year,
        ))
    return projects, funders, draw(st.integers(0, 3))


def check_bounds(projects, funders, unbudgeted_tickets, problem, solution):
    """Check the integer proposal against the profiles directly, without the solver module's own checker."""
    needs = {need.id: need for project in projects for need in project.needs}
    by_id = {funder.id: funder for funder in funders}
    given_by = defaultdict(int)
    covered = defaultdict(int)
    for index in np.flatnonzero(solution.amounts):
        amount = int(solution.amounts[index])
        funder = by_id[problem.funders[problem.pair_funder[index]].id]
        need = needs[problem.needs[problem.pair_need[index]].id]
        assert amount > 0
        if funder.ticket_min_minor is not None:
            assert amount >= funder.ticket_min_minor
        if funder.ticket_max_minor is not None:
            assert amount <= funder.ticket_max_minor
        rate = Decimal(1) if funder.currency == need.currency else RATES[(funder.currency, need.currency)]
        converted = convert(amount, funder.currency, need.currency, rate)
        assert int(solution.need_amounts[index]) == converted
        given_by[funder.id] += amount
        covered[need.id] += converted
    for funder_id, total in given_by.items():
        funder = by_id[funder_id]
        if funder.annual_budget_minor is not None:
            assert total <= funder.annual_budget_minor - funder.used_minor
        else:
            assert funder.ticket_max_minor is not None
            assert total <= funder.ticket_max_minor * unbudgeted_tickets
    for need_id, total in covered.items():
        assert total <= needs[need_id].remaining_minor


@pytest.mark.parametrize("method", ["milp", "lp"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=instances())
def test_random_instances_respect_every_bound(app, method, case):
    projects, funders, tickets = case
    problem = build_problem(projects, funders, DEFAULT_WEIGHTS, 0.0, TODAY, lambda base, quote: RATES.get((base, quote)),
                            unbudgeted_tickets=tickets)
    solution = solve(problem, AllocationSettings(method=method, time_limit=30, unbudgeted_tickets=tickets))
    assert solution.found
    chosen = len(np.flatnonzero(solution.amounts))
    if chosen == 0:
        event("rows proposed: none")
    elif chosen == 1:
        event("rows proposed: one")
    else:
        event("rows proposed: several")
    event("currencies converted" if any(
        problem.funders[problem.pair_funder[i]].currency != problem.needs[problem.pair_need[i]].currency
        for i in np.flatnonzero(solution.amounts)) else "same currency only")
    check_bounds(projects, funders, tickets, problem, solution)
    if solution.bound is not None:
        # The proposal falls short of the proven bound, except that a conversion rounds half-up:
        # each row in another currency can count up to half a minor unit more than the solver saw.
        allowance = sum(
            0.5 * float(problem.values[problem.needs[problem.pair_need[index]].currency])
            / 10 ** minor_units(problem.needs[problem.pair_need[index]].currency)
            for index in np.flatnonzero(solution.amounts)
        )
        assert solution.objective <= solution.bound * (1 + 1e-6) + 1e-6 + allowance


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=instances())
def test_random_instances_milp_beats_lp(app, case):
    projects, funders, tickets = case
    problem = build_problem(projects, funders, DEFAULT_WEIGHTS, 0.0, TODAY, lambda base, quote: RATES.get((base, quote)),
                            unbudgeted_tickets=tickets)
    lp = solve(problem, AllocationSettings(method="lp", time_limit=30, unbudgeted_tickets=tickets))
    milp = solve(problem, AllocationSettings(method="milp", time_limit=30, unbudgeted_tickets=tickets, mip_gap=0.0))
    assert milp.solver_status == "optimal"
    # Rounding down to minor units can cost each row one minor unit of the funder's currency,
    # converted into the need's, plus half a minor unit of the need's from the conversion.
    slack = 1e-6
    for index in np.flatnonzero(milp.amounts):
        funder, need = problem.funders[problem.pair_funder[index]], problem.needs[problem.pair_need[index]]
        step = float(problem.rate(index)) / 10 ** minor_units(funder.currency) + 0.5 / 10 ** minor_units(need.currency)
        slack += step * float(problem.values[need.currency])
    for index in np.flatnonzero(lp.amounts):
        need = problem.needs[problem.pair_need[index]]
        slack += 0.5 / 10 ** minor_units(need.currency) * float(problem.values[need.currency])
    assert milp.objective >= lp.objective - slack


# Pairs and funders left out, currencies and budgets.

def test_other_currency_needs_stored_rate(db, build_project, build_funder, coordinator):
    build_project(50 * THOUSAND, "Rural access")
    build_funder("Dollar Fund", None, 20_000_00, 100_000_00, currency="USD", regions=("africa",))
    run = run_allocation(coordinator)
    assert run.rows == []
    assert run.skipped["no_rate"] == 1

    db.session.add(ExchangeRate(base="USD", quote="EUR", rate=Decimal("0.9"), valid_from=TODAY - timedelta(days=3)))
    db.session.commit()
    run = run_allocation(coordinator)
    assert run.skipped["no_rate"] == 0
    [row] = run.rows
    # The funder gives its maximum ticket of 20,000 USD, which covers 18,000 EUR of the need.
    assert (row.amount_minor, row.currency) == (20_000_00, "USD")
    assert (row.need_amount_minor, row.need_currency) == (18_000_00, "EUR")
    assert row.rate == Decimal("0.9")
    assert run.proposed == {"EUR": 18_000_00}


def test_budget_used_this_year_is_taken_off(db, build_project, build_funder, coordinator, donor):
    project = build_project(100 * THOUSAND, "Rural access")
    funder = build_funder("Connectivity Fund", None, None, 60 * THOUSAND, regions=("africa",), organisation_id=donor.organisation_id)
    pledge, _ = create_pledge(donor, project.needs[0].id, 25 * THOUSAND, "EUR", funder=funder)
    transition(pledge.id, "confirm", coordinator)
    db.session.commit()

    run = run_allocation(coordinator)
    [row] = run.rows
    # 60k budget minus the 25k confirmed this year; the need has 75k open.
    assert row.amount_minor == 35 * THOUSAND


def test_unbudgeted_funder_capped_by_tickets(db, build_project, build_funder, coordinator, app, monkeypatch):
    for title in ("One", "Two", "Three"):
        build_project(50 * THOUSAND, title)
    build_funder("Small donor", None, 10 * THOUSAND, None, regions=("africa",))
    build_funder("Open-ended donor", None, None, None, regions=("africa",))

    run = run_allocation(coordinator)
    assert sum(row.amount_minor for row in run.rows) == 10 * THOUSAND
    assert run.skipped["funders_without_cap"] == 1

    monkeypatch.setitem(app.config, "ALLOCATION_UNBUDGETED_TICKETS", 2)
    run = run_allocation(coordinator)
    assert sorted(row.amount_minor for row in run.rows) == [10 * THOUSAND, 10 * THOUSAND]


def test_rejected_match_is_left_out(db, build_project, build_funder, coordinator):
    project = build_project(50 * THOUSAND, "Rural access")
    funder = build_funder("Connectivity Fund", None, None, 60 * THOUSAND, regions=("africa",))
    run_matching()
    match = db.session.scalar(select(Match))
    match.status = "rejected"
    db.session.commit()

    run = run_allocation(coordinator)
    assert run.rows == []
    assert run.skipped["rejected"] == 1
    assert (match.project_id, match.funder_id) == (project.id, funder.id)


def test_pair_below_minimum_ticket_left_out(db, build_project, build_funder, coordinator):
    build_project(5 * THOUSAND, "Small need")
    build_funder("Big fund", 10 * THOUSAND, None, 900 * THOUSAND, regions=("africa",))
    run = run_allocation(coordinator)
    assert run.rows == []
    assert run.skipped["outside_ticket_range"] == 1
    assert run.status == "proposed"
    assert run.open_need == {"EUR": 5 * THOUSAND}


def test_invalid_setting_is_named(db, coordinator, app, monkeypatch):
    monkeypatch.setitem(app.config, "ALLOCATION_METHOD", "greedy")
    with pytest.raises(ValueError, match="ALLOCATION_METHOD is 'greedy'"):
        run_allocation(coordinator)


# Accepting rows.

def count(db, model) -> int:
    return db.session.scalar(select(func.count()).select_from(model))


def test_accept_rows_creates_accepted_matches(db, hand_case, coordinator):
    (fibre, access, training), funder_a, funder_b = hand_case
    run = run_allocation(coordinator)
    db.session.commit()
    rows = {(row.funder.name, row.project.title): row for row in run.rows}
    chosen = [rows[("Kenya Fund", "Training centre")].id, rows[("Africa Fund", "Fibre backbone")].id]

    result = accept_rows(coordinator, run.id, chosen)
    db.session.commit()

    assert sorted(row.id for row in result.accepted) == sorted(chosen) and result.already == []
    matches = {(match.project_id, match.funder_id): match for match in db.session.scalars(select(Match))}
    assert set(matches) == {(training.id, funder_b.id), (fibre.id, funder_a.id)}
    for match in matches.values():
        assert match.status == "accepted"
        assert match.review_reason == f"Accepted from allocation run {run.id}"
        assert match.reviewed_by_id == coordinator.id
        assert match.reviewed_at is not None
    assert matches[(training.id, funder_b.id)].need_id == training.needs[0].id
    assert matches[(training.id, funder_b.id)].score == 1.0
    accepted = db.session.scalars(select(AllocationRow).where(AllocationRow.accepted.is_(True))).all()
    assert sorted(row.id for row in accepted) == sorted(chosen)
    assert all(row.match_id is not None and row.accepted_by_id == coordinator.id for row in accepted)
    assert db.session.get(AllocationRun, run.id).status == "accepted"


def test_accepted_rows_are_audited(db, hand_case, coordinator):
    run = run_allocation(coordinator)
    db.session.commit()

    accept_rows(coordinator, run.id, [row.id for row in run.rows])
    db.session.commit()

    entries = db.session.scalars(select(AuditEntry).where(AuditEntry.object_type == "match")).all()
    matches = db.session.scalars(select(Match)).all()
    assert sorted(entry.object_id for entry in entries) == sorted(match.id for match in matches)
    assert {entry.action for entry in entries} == {"accept"}
    assert {entry.actor_id for entry in entries} == {coordinator.id}


def test_accept_rows_is_idempotent(db, hand_case, coordinator):
    run = run_allocation(coordinator)
    db.session.commit()
    first = [row.id for row in run.rows[:2]]
    accept_rows(coordinator, run.id, first)
    db.session.commit()
    reviewed = {match.id: match.reviewed_at for match in db.session.scalars(select(Match))}

    result = accept_rows(coordinator, run.id, first + [run.rows[2].id])
    db.session.commit()

    assert [row.id for row in result.already] == first
    assert [row.id for row in result.accepted] == [run.rows[2].id]
    matches = list(db.session.scalars(select(Match)))
    assert len(matches) == len({(row.project_id, row.funder_id) for row in run.rows[:3]})
    for match in matches:
        if match.id in reviewed:
            assert match.reviewed_at == reviewed[match.id]
    assert count(db, Match) == len(matches)


def test_accept_updates_suggested_match(db, hand_case, coordinator):
    (fibre, access, training), funder_a, funder_b = hand_case
    run_matching()
    db.session.commit()
    suggested = db.session.scalar(select(Match).where(Match.project_id == access.id, Match.funder_id == funder_b.id))
    assert suggested.status == "suggested"

    run = run_allocation(coordinator)
    row = next(row for row in run.rows if row.project_id == access.id and row.funder_id == funder_b.id)
    accept_rows(coordinator, run.id, [row.id])
    db.session.commit()
    assert row.match_id == suggested.id
    assert db.session.get(Match, suggested.id).status == "accepted"

    report = run_matching()
    db.session.commit()
    assert db.session.get(Match, suggested.id).status == "accepted"
    assert report.stale == 0


def test_accept_gives_match_its_best_need(db, build_project, build_funder, coordinator):
    # Need 1 (80k) is above the 60k maximum ticket, so need 2 (40k) scores higher for this funder.
    project = build_project(80 * THOUSAND, "Fibre and training", more_goals=(40 * THOUSAND,))
    first, second = project.needs
    build_funder("Kenya Fund", 30 * THOUSAND, 60 * THOUSAND, 100 * THOUSAND, countries=("KE",))
    run = run_allocation(coordinator)
    assert {row.need_id: row.amount_minor for row in run.rows} == {first.id: 60 * THOUSAND, second.id: 40 * THOUSAND}
    row = next(row for row in run.rows if row.need_id == first.id)

    accept_rows(coordinator, run.id, [row.id])
    db.session.commit()

    match = db.session.scalar(select(Match))
    assert match.status == "accepted"
    assert match.need_id == second.id
    report = run_matching()
    db.session.commit()
    assert report.stale == 0
    assert report.unchanged == 1
    assert db.session.get(Match, match.id).status == "accepted"


def test_accept_rejects_bad_row_ids(db, hand_case, coordinator):
    run = run_allocation(coordinator)
    other = run_allocation(coordinator)
    db.session.commit()
    with pytest.raises(ValidationFailed) as error:
        accept_rows(coordinator, run.id, [])
    assert "row_ids" in error.value.fields
    with pytest.raises(ValidationFailed) as error:
        accept_rows(coordinator, run.id, [run.rows[0].id, other.rows[0].id])
    assert f"Row {other.rows[0].id} is not part of allocation run {run.id}" in error.value.message
    with pytest.raises(NotFound):
        accept_rows(coordinator, 999_999, [run.rows[0].id])
    db.session.rollback()
    assert count(db, Match) == 0


def test_accept_rejects_closed_need(db, hand_case, coordinator):
    (fibre, access, training), _, _ = hand_case
    run = run_allocation(coordinator)
    db.session.commit()
    training.needs[0].status = "closed"
    db.session.commit()
    rows = [row.id for row in run.rows if row.project_id in (training.id, fibre.id)]

    with pytest.raises(Conflict, match="no longer take pledges"):
        accept_rows(coordinator, run.id, rows)
    db.session.rollback()
    assert count(db, Match) == 0
    assert not any(row.accepted for row in db.session.scalars(select(AllocationRow)))


# Who may use it.

@pytest.mark.parametrize("role", ["donor", "owner"])
def test_only_coordinators_use_the_service(db, hand_case, coordinator, make_user, role):
    user = make_user(role)
    with pytest.raises(Forbidden):
        run_allocation(user)
    run = run_allocation(coordinator)
    db.session.commit()
    with pytest.raises(Forbidden):
        accept_rows(user, run.id, [run.rows[0].id])
    with pytest.raises(Forbidden):
        get_run(user)
    assert count(db, AllocationRun) == 1


@pytest.mark.parametrize("role", ["donor", "owner"])
def test_page_is_forbidden_to_others(client, db, hand_case, coordinator, make_user, login, role):
    run = run_allocation(coordinator)
    db.session.commit()
    login(make_user(role))
    assert client.get("/allocation").status_code == 403
    assert client.post("/allocation/runs").status_code == 403
    assert client.post(f"/allocation/runs/{run.id}/accept", data={"row_ids": [run.rows[0].id]}).status_code == 403
    assert count(db, AllocationRun) == 1
    assert count(db, Match) == 0


def test_page_needs_login(client, db):
    response = client.get("/allocation")
    assert response.status_code == 302
    assert "/login" in response.headers["Location"]


def test_start_form_needs_csrf_token(app, db):
    guarded = create_app(TestConfig, WTF_CSRF_ENABLED=True, SQLALCHEMY_DATABASE_URI=app.config["SQLALCHEMY_DATABASE_URI"])
    assert guarded.test_client().post("/allocation/runs").status_code == 400


# The page.

def page(response):
    return html.fromstring(response.get_data(as_text=True))


def text(node) -> str:
    return re.sub(r"\s+", " ", node.text_content()).strip()


def test_page_runs_shows_and_accepts(client, db, hand_case, coordinator, login):
    login(coordinator)
    response = client.get("/allocation")
    assert response.status_code == 200
    assert "No allocation run yet." in text(page(response))

    response = client.post("/allocation/runs")
    assert response.status_code == 303
    run = db.session.scalar(select(AllocationRun))
    assert response.headers["Location"].endswith(f"/allocation?run={run.id}")

    doc = page(client.get(f"/allocation?run={run.id}"))
    body = text(doc)
    assert f"Run {run.id}" in body
    assert f"Allocation run {run.id} proposes 5 amounts." in body
    [bar] = doc.xpath("//*[@role='progressbar']")
    assert bar.get("aria-valuenow") == "94"  # 180k of 190k
    assert "€180,000.00 proposed of €190,000.00 open" in body
    funders = {text(tr.xpath("td[1]")[0]): text(tr.xpath("td[2]")[0])
               for tr in doc.xpath("//table[caption[contains(., 'By funder')]]/tbody/tr")}
    assert funders == {"Africa Fund": "€90,000.00", "Kenya Fund": "€90,000.00"}
    def cells(caption):
        return [[text(td) for td in tr.xpath("td")] for tr in doc.xpath(f"//table[caption[contains(., '{caption}')]]/tbody/tr")]

    assert cells("By region") == [["Africa", "€180,000.00"]]
    [[theme, amount]] = cells("By theme")
    assert "roadband" in theme
    assert amount == "€180,000.00"
    boxes = doc.xpath("//input[@type='checkbox'][@name='row_ids']")
    assert len(boxes) == 5
    assert all(doc.xpath(f"//label[@for='{box.get('id')}']") for box in boxes)

    ids = [int(box.get("value")) for box in boxes[:2]]
    response = client.post(f"/allocation/runs/{run.id}/accept", data={"row_ids": [str(i) for i in ids], "page": "1"})
    assert response.status_code == 303
    assert count(db, Match) == 2

    doc = page(client.get(f"/allocation?run={run.id}"))
    assert len(doc.xpath("//input[@type='checkbox'][@name='row_ids']")) == 3
    assert "Accepted 2 rows" in text(doc)
    assert "accepted" in text(doc.xpath("//*[@class='status']")[0]).lower()


def test_page_accept_bad_input(client, db, hand_case, coordinator, login):
    run = run_allocation(coordinator)
    db.session.commit()
    login(coordinator)

    response = client.post(f"/allocation/runs/{run.id}/accept", data={"page": "1"})
    assert response.status_code == 422
    assert "Tick at least one row to accept." in text(page(response).xpath("//*[@class='error-summary']")[0])

    response = client.post(f"/allocation/runs/{run.id}/accept", data={"row_ids": ["abc"], "page": "1"})
    assert response.status_code == 422
    assert page(response).xpath("//*[@class='error-summary']")
    assert count(db, Match) == 0


def test_page_conflict_keeps_the_ticks(client, db, hand_case, coordinator, login):
    (fibre, access, training), _, _ = hand_case
    run = run_allocation(coordinator)
    db.session.commit()
    training.needs[0].status = "closed"
    db.session.commit()
    login(coordinator)
    ids = [row.id for row in run.rows]

    response = client.post(f"/allocation/runs/{run.id}/accept", data={"row_ids": [str(i) for i in ids], "page": "1"})
    assert response.status_code == 409
    doc = page(response)
    assert "no longer take pledges" in text(doc.xpath("//*[@class='error-summary']")[0])
    checked = {int(box.get("value")) for box in doc.xpath("//input[@name='row_ids'][@checked]")}
    assert checked == set(ids)
    assert count(db, Match) == 0


def test_select_all_on_page_ticks_open_rows(client, db, hand_case, coordinator, login):
    run = run_allocation(coordinator)
    db.session.commit()
    accept_rows(coordinator, run.id, [run.rows[0].id])
    db.session.commit()
    login(coordinator)
    doc = page(client.get(f"/allocation?run={run.id}&select=page"))
    checked = {int(box.get("value")) for box in doc.xpath("//input[@name='row_ids'][@checked]")}
    assert checked == {row.id for row in run.rows[1:]}


def test_totals_never_add_currencies(db, build_project, build_funder, coordinator):
    build_project(50 * THOUSAND, "Euro need")
    build_project(80_000_00, "Dollar need", currency="USD", countries=("GH",))
    build_funder("Euro fund", None, None, 30 * THOUSAND, regions=("africa",))
    build_funder("Dollar fund", None, None, 40_000_00, currency="USD", regions=("africa",))
    run = run_allocation(coordinator)
    totals = run_totals(run)
    assert totals.progress == [("EUR", 30 * THOUSAND, 50 * THOUSAND), ("USD", 40_000_00, 80_000_00)]
    assert totals.by_region == [("africa", "EUR", 30 * THOUSAND), ("africa", "USD", 40_000_00)]
    assert [(name, currency, amount) for _, name, currency, amount, _ in totals.by_funder] == [
        ("Euro fund", "EUR", 30 * THOUSAND), ("Dollar fund", "USD", 40_000_00),
    ]
