"""Tests of match funds: validation, eligibility, amounts and caps, undo, pages and concurrency.

Most tests call the hooks of financing.pledges.match_funds right after create_pledge or
transition, as the pledge service does once it is wired to them. The hooks are safe to call
twice, so these tests pass both before and after that wiring. The tests named test_wired_* go
through create_pledge and transition alone and pass only once the pledge service calls the
hooks itself.
"""

import os
import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from flask import render_template_string
from lxml import html
from sqlalchemy import func, select

from financing.accounts.models import User
from financing.core.errors import Forbidden, NotFound, ValidationFailed
from financing.funders.services import funder_for_user
from financing.pledges import match_funds
from financing.pledges.match_funds import MatchFundInput, create_match_fund, match_pledge, preview_match
from financing.pledges.models import ExchangeRate, MatchFund, MatchFundRule, Pledge, PledgeEvent
from financing.pledges.services import create_pledge, today_utc, transition
from financing.projects.models import FundingNeed
from financing.projects.services import NeedInput, ProjectInput, create_project, publish_project, submit_project

ON_POSTGRES = os.environ.get("TEST_DATABASE_URL", "").startswith("postgresql")


@pytest.fixture
def people(make_user):
    class People:
        owner = make_user("owner", organisation="Ministry of ICT, Kenya")
        donor = make_user("donor", organisation="European Commission")
        other_donor = make_user("donor", organisation="World Bank")
        sponsor = make_user("donor", organisation="Connectivity Foundation")
        coordinator = make_user("coordinator", organisation=None)

    return People


@pytest.fixture
def build_need(db, people):
    """Publish a project with one need and return the need; tags default to Kenya and broadband."""

    def build(goal_minor=1_000_000, currency="EUR", overfunding=False, countries=("KE",), regions=(), themes=("broadband",), sectors=()):
        data = ProjectInput(
            title="Rural broadband for Kenya", summary="Wireless access in rural counties.",
            countries=list(countries), regions=list(regions), themes=list(themes), sectors=list(sectors),
            needs=[NeedInput(title="Access points", goal_minor=goal_minor, currency=currency, allow_overfunding=overfunding)],
        )
        project = create_project(people.owner, data)
        submit_project(people.owner, project)
        publish_project(people.coordinator, project)
        db.session.commit()
        return project.needs[0]

    return build


@pytest.fixture
def build_fund(db, people):
    """Create and commit a fund of the sponsor's funder; fields as MatchFundInput takes them."""

    def build(**fields):
        values = {"name": "Africa broadband match", "factor": "1", "currency": "EUR", "total_cap": "5000.00"}
        values.update(fields)
        fund = create_match_fund(people.sponsor, MatchFundInput(**values))
        db.session.commit()
        return fund

    return build


def pledge_and_match(db, user, need, amount_minor, kind="commitment"):
    """Pledge as the pledge service does, then run the match hook in the same transaction."""
    pledge, _ = create_pledge(user, need.id, amount_minor, need.currency, kind)
    match = match_pledge(pledge, user)
    db.session.commit()
    return pledge, match


def used(db, fund_id):
    return db.session.scalar(select(MatchFund.used_minor).where(MatchFund.id == fund_id))


def pledged(db, need_id):
    return db.session.scalar(select(FundingNeed.pledged_minor).where(FundingNeed.id == need_id))


def count(db, model, *where):
    return db.session.scalar(select(func.count()).select_from(model).where(*where))


def events_of(db, pledge_id):
    return list(db.session.scalars(select(PledgeEvent).where(PledgeEvent.pledge_id == pledge_id).order_by(PledgeEvent.id)))


# Validation


def fund_input(**fields):
    values = {"name": "Africa broadband match", "factor": "1", "currency": "EUR", "total_cap": "5000.00"}
    values.update(fields)
    return MatchFundInput(**values)


@pytest.mark.parametrize(
    "fields, field, message",
    [
        ({"name": "  "}, "name", "Name is required"),
        ({"name": "x" * 201}, "name", "maximum is 200"),
        ({"factor": "0"}, "factor", "Factor '0' must be greater than zero"),
        ({"factor": "-1"}, "factor", "Factor '-1' must be greater than zero"),
        ({"factor": "1e3"}, "factor", "Factor '1e3' is not a number"),
        ({"factor": "abc"}, "factor", "Factor 'abc' is not a number"),
        ({"factor": "10.5"}, "factor", "Factor '10.5' is larger than the maximum of 10"),
        ({"factor": "0.00001"}, "factor", "Factor '0.00001' has more than 4 decimals"),
        ({"factor": ""}, "factor", "Factor is required"),
        ({"currency": "XXQ"}, "currency", "Unknown currency 'XXQ'"),
        ({"total_cap": "-5"}, "total_cap", "Amount '-5' must be greater than zero"),
        ({"total_cap": "1.234"}, "total_cap", "Amount '1.234' has more decimals than EUR allows"),
        ({"total_cap": ""}, "total_cap", "Amount is required"),
        ({"per_pledge_cap": "abc"}, "per_pledge_cap", "Amount 'abc' is not a number"),
        ({"per_pledge_cap": "6000.00"}, "per_pledge_cap", "Cap per pledge 6000.00 EUR is larger than the total cap 5000.00 EUR"),
        ({"per_project_cap": "5000.01"}, "per_project_cap", "Cap per project 5000.01 EUR is larger than the total cap"),
        ({"regions": ["atlantis"]}, "regions", "Unknown region 'atlantis'"),
        ({"countries": ["QQ"]}, "countries", "Unknown country 'QQ'"),
        ({"themes": ["mining"]}, "themes", "Unknown theme 'mining'"),
        ({"sectors": ["99999"]}, "sectors", "Unknown DAC sector '99999'"),
    ],
)
def test_invalid_field_named(db, people, fields, field, message):
    with pytest.raises(ValidationFailed) as raised:
        create_match_fund(people.sponsor, fund_input(**fields))

    assert field in raised.value.fields
    assert message in raised.value.fields[field]
    db.session.rollback()
    assert count(db, MatchFund) == 0


def test_window_dates_checked(db, people):
    today = today_utc()

    with pytest.raises(ValidationFailed) as raised:
        create_match_fund(people.sponsor, fund_input(starts_on=today + timedelta(days=5), ends_on=today + timedelta(days=2)))
    assert f"End date {(today + timedelta(days=2)).isoformat()} is before the start date" in raised.value.fields["ends_on"]

    with pytest.raises(ValidationFailed) as raised:
        create_match_fund(people.sponsor, fund_input(ends_on=today - timedelta(days=1)))
    assert "is in the past" in raised.value.fields["ends_on"]


def test_every_invalid_field_reported(db, people):
    with pytest.raises(ValidationFailed) as raised:
        create_match_fund(people.sponsor, fund_input(name="", factor="zero", total_cap="-1", regions=["atlantis"]))

    assert set(raised.value.fields) == {"name", "factor", "total_cap", "regions"}


def test_valid_fund_stored(db, people):
    today = today_utc()
    fund = create_match_fund(people.sponsor, fund_input(
        factor="0.5", total_cap="500,000.00", per_pledge_cap="1000", per_project_cap="20000.50",
        regions=["Africa"], countries=["ke"], themes=["broadband"], sectors=["22040"],
        starts_on=today, ends_on=today + timedelta(days=30),
    ))
    db.session.commit()

    assert str(fund.factor) in ("0.5", "0.5000")
    assert fund.total_cap_minor == 50_000_000
    assert fund.per_pledge_cap_minor == 100_000
    assert fund.per_project_cap_minor == 2_000_050
    assert fund.used_minor == 0
    assert fund.funder_id == funder_for_user(people.sponsor).id
    rules = {(rule.kind, rule.code) for rule in db.session.scalars(select(MatchFundRule))}
    assert rules == {("region", "africa"), ("country", "KE"), ("theme", "broadband"), ("sector", "22040")}


def test_coordinator_names_the_funder(db, people):
    with pytest.raises(ValidationFailed) as raised:
        create_match_fund(people.coordinator, fund_input())
    assert raised.value.fields["funder_id"] == "Funder is required."

    with pytest.raises(ValidationFailed) as raised:
        create_match_fund(people.coordinator, fund_input(funder_id="abc"))
    assert raised.value.fields["funder_id"] == "Unknown funder 'abc'."

    funder = funder_for_user(people.sponsor)
    fund = create_match_fund(people.coordinator, fund_input(funder_id=str(funder.id)))
    assert fund.funder_id == funder.id


def test_owner_cannot_create_fund(db, people):
    with pytest.raises(Forbidden):
        create_match_fund(people.owner, fund_input())


# Matching a pledge


def test_one_to_one_match(db, people, build_need, build_fund):
    need = build_need()
    fund = build_fund(regions=["africa"], themes=["broadband"])

    pledge, match = pledge_and_match(db, people.donor, need, 10_000)

    assert match is not None
    assert match.state == "pledged"
    assert match.kind == "commitment"
    assert match.amount_minor == 10_000
    assert match.need_amount_minor == 10_000
    assert match.currency == "EUR"
    assert match_funds.matched_by(pledge) == (fund, match)
    assert match_funds.matched_by(match) is None
    assert match.funder_id == fund.funder_id
    assert match.match_fund_id == fund.id
    assert match.matches_pledge_id == pledge.id
    assert match.need_id == need.id
    assert used(db, fund.id) == 10_000
    assert pledged(db, need.id) == 20_000
    assert [(e.from_state, e.to_state, e.amount_minor, e.reason) for e in events_of(db, match.id)] == [
        (None, "pledged", 10_000, f"Match fund Africa broadband match matches pledge {pledge.id}")
    ]


def test_match_shares_the_transaction(db, people, build_need, build_fund):
    need = build_need()
    fund = build_fund()

    pledge, _ = create_pledge(people.donor, need.id, 10_000, "EUR")
    match = match_pledge(pledge, people.donor)
    assert match is not None
    db.session.rollback()

    assert count(db, Pledge) == 0
    assert count(db, PledgeEvent) == 0
    assert used(db, fund.id) == 0
    assert pledged(db, need.id) == 0


@pytest.mark.parametrize(
    "factor, pledge_minor, expected",
    [("2", 10_000, 20_000), ("0.5", 3_333, 1_666), ("1.25", 101, 126), ("0.0001", 9_999, 0)],
)
def test_factor_rounds_down(db, people, build_need, build_fund, factor, pledge_minor, expected):
    need = build_need()
    fund = build_fund(factor=factor)

    _, match = pledge_and_match(db, people.donor, need, pledge_minor)

    if expected == 0:
        assert match is None
        assert used(db, fund.id) == 0
    else:
        assert match.amount_minor == expected
        assert used(db, fund.id) == expected


def test_zero_decimal_currency(db, people, build_need, build_fund):
    need = build_need(goal_minor=10_000_000, currency="XOF")
    fund = build_fund(currency="XOF", total_cap="1000000", factor="0.5")

    _, match = pledge_and_match(db, people.donor, need, 25_001)

    assert match.amount_minor == 12_500
    assert match.currency == "XOF"
    assert used(db, fund.id) == 12_500


@pytest.mark.parametrize(
    "rules, project",
    [
        ({"regions": ["africa"]}, {"countries": ["KE"]}),
        ({"regions": ["africa"]}, {"countries": [], "regions": ["africa"]}),
        ({"countries": ["KE"]}, {"countries": ["KE", "UG"]}),
        ({"regions": ["europe"], "countries": ["KE"]}, {"countries": ["KE"]}),
        ({"themes": ["broadband"]}, {"themes": [], "sectors": ["22020"]}),
        ({"themes": ["backbones"]}, {"themes": ["backbones"]}),
        ({"sectors": ["22040"]}, {"themes": [], "sectors": ["22040"]}),
        ({"regions": ["africa"], "themes": ["broadband"]}, {"countries": ["TZ"], "themes": ["broadband"]}),
        ({}, {"countries": ["FR"], "themes": ["spectrum"]}),
    ],
)
def test_fitting_project_matched(db, people, build_need, build_fund, rules, project):
    need = build_need(**project)
    build_fund(**rules)

    _, match = pledge_and_match(db, people.donor, need, 10_000)

    assert match is not None


@pytest.mark.parametrize(
    "rules, project",
    [
        ({"regions": ["europe"]}, {"countries": ["KE"]}),
        ({"regions": ["africa"]}, {"countries": [], "regions": ["europe"]}),
        ({"countries": ["UG"]}, {"countries": ["KE"]}),
        ({"countries": ["KE"]}, {"countries": [], "regions": ["africa"]}),
        ({"themes": ["spectrum"]}, {"themes": ["broadband"]}),
        ({"themes": ["broadcasting"]}, {"themes": [], "sectors": ["22020"]}),
        ({"sectors": ["22030"]}, {"themes": ["broadcasting"], "sectors": []}),
        ({"regions": ["africa"], "themes": ["spectrum"]}, {"countries": ["KE"], "themes": ["broadband"]}),
    ],
)
def test_unfitting_project_not_matched(db, people, build_need, build_fund, rules, project):
    need = build_need(**project)
    fund = build_fund(**rules)

    pledge, match = pledge_and_match(db, people.donor, need, 10_000)

    assert match is None
    assert pledge.state == "pledged"
    assert used(db, fund.id) == 0
    assert pledged(db, need.id) == 10_000


def test_window_limits_matching(db, people, build_need, build_fund):
    need = build_need()
    today = today_utc()
    later = build_fund(name="Starts tomorrow", starts_on=today + timedelta(days=1))
    ended = build_fund(name="Ended")
    ended.ends_on = today - timedelta(days=1)
    db.session.commit()

    _, match = pledge_and_match(db, people.donor, need, 10_000)
    assert match is None

    later.starts_on = today
    ended.ends_on = today
    db.session.commit()
    _, match = pledge_and_match(db, people.donor, need, 10_000)
    # Both windows now include today (inclusive); the older fund wins.
    assert match.match_fund_id == later.id


def test_other_currency_fund_skipped(db, people, build_need, build_fund):
    need = build_need(currency="EUR")
    fund = build_fund(currency="USD")

    _, match = pledge_and_match(db, people.donor, need, 10_000)

    assert match is None
    assert used(db, fund.id) == 0


def test_pledge_in_other_currency_matched(db, people, build_need, build_fund):
    need = build_need(currency="EUR")
    fund = build_fund()
    db.session.add(ExchangeRate(base="USD", quote="EUR", rate=Decimal("0.9"), valid_from=today_utc() - timedelta(days=1)))
    db.session.commit()

    assert preview_match(need, 10_000, currency="USD")[1] == 9_000
    assert preview_match(need, 10_000, currency="GBP") is None
    pledge, _ = create_pledge(people.donor, need.id, 10_000, "USD")
    match = match_pledge(pledge, people.donor)
    db.session.commit()

    assert pledge.need_amount_minor == 9_000
    assert match.amount_minor == 9_000
    assert match.currency == "EUR"
    assert used(db, fund.id) == 9_000


def test_paused_fund_skipped(db, people, build_need, build_fund):
    need = build_need()
    build_fund(active=False)

    _, match = pledge_and_match(db, people.donor, need, 10_000)

    assert match is None


def test_funder_does_not_match_itself(db, people, build_need, build_fund):
    need = build_need()
    build_fund()

    _, match = pledge_and_match(db, people.sponsor, need, 10_000)

    assert match is None


def test_card_pledge_waits_for_payment(db, people, build_need, build_fund):
    need = build_need()
    fund = build_fund()

    pledge, match = pledge_and_match(db, people.donor, need, 10_000, kind="card")
    assert pledge.state == "pending_payment"
    assert match is None
    assert used(db, fund.id) == 0

    transition(pledge.id, "pay", None, reason="Stripe payment succeeded")
    match_funds.after_transition(pledge, "pay", None)
    db.session.commit()

    match = match_funds.match_of(pledge)
    assert match.state == "confirmed"
    assert match.amount_minor == 10_000
    assert used(db, fund.id) == 10_000


def test_imported_and_match_pledges_not_matched(db, people, build_need, build_fund):
    need = build_need()
    build_fund()
    pledge, match = pledge_and_match(db, people.donor, need, 10_000)

    assert match_pledge(match, people.donor) is None
    pledge_two, _ = create_pledge(people.other_donor, need.id, 5_000, "EUR")
    pledge_two.import_key = "XM-DAC-41114-1:commitment:1"
    assert match_pledge(pledge_two, people.other_donor) is None


def test_match_hook_runs_once(db, people, build_need, build_fund):
    need = build_need()
    fund = build_fund()
    pledge, match = pledge_and_match(db, people.donor, need, 10_000)

    again = match_pledge(pledge, people.donor)
    db.session.commit()

    assert again.id == match.id
    assert count(db, Pledge, Pledge.match_fund_id == fund.id) == 1
    assert used(db, fund.id) == 10_000
    assert pledged(db, need.id) == 20_000


def test_oldest_fund_first_then_next(db, people, build_need, build_fund):
    need = build_need()
    first = build_fund(name="First", total_cap="150.00")
    second = build_fund(name="Second")

    _, match_one = pledge_and_match(db, people.donor, need, 10_000)
    _, match_two = pledge_and_match(db, people.donor, need, 10_000)
    _, match_three = pledge_and_match(db, people.donor, need, 10_000)

    assert (match_one.match_fund_id, match_one.amount_minor) == (first.id, 10_000)
    assert (match_two.match_fund_id, match_two.amount_minor) == (first.id, 5_000)
    assert (match_three.match_fund_id, match_three.amount_minor) == (second.id, 10_000)


# Caps and the need's room


def test_per_pledge_cap_binds(db, people, build_need, build_fund):
    need = build_need()
    fund = build_fund(factor="2", per_pledge_cap="150.00")

    _, match = pledge_and_match(db, people.donor, need, 10_000)

    assert match.amount_minor == 15_000
    assert used(db, fund.id) == 15_000


def test_per_project_cap_binds(db, people, build_need, build_fund):
    need = build_need()
    other_need = build_need()
    fund = build_fund(per_project_cap="250.00")

    amounts = [pledge_and_match(db, people.donor, need, 10_000)[1] for _ in range(4)]
    _, other_match = pledge_and_match(db, people.donor, other_need, 10_000)

    assert [match.amount_minor if match else None for match in amounts] == [10_000, 10_000, 5_000, None]
    assert other_match.amount_minor == 10_000
    assert used(db, fund.id) == 35_000


def test_total_cap_binds_and_exhausts(db, people, build_need, build_fund):
    need = build_need()
    fund = build_fund(total_cap="250.00")

    results = [pledge_and_match(db, people.donor, need, 10_000) for _ in range(4)]

    assert [match.amount_minor if match else None for _, match in results] == [10_000, 10_000, 5_000, None]
    assert used(db, fund.id) == 25_000
    assert all(pledge.state == "pledged" for pledge, _ in results)
    assert pledged(db, need.id) == 40_000 + 25_000


def test_need_room_limits_match(db, people, build_need, build_fund):
    need = build_need(goal_minor=100_000)
    fund = build_fund()

    _, match = pledge_and_match(db, people.donor, need, 70_000)

    assert match.amount_minor == 30_000
    assert pledged(db, need.id) == 100_000
    assert used(db, fund.id) == 30_000


def test_full_need_gets_no_match(db, people, build_need, build_fund):
    need = build_need(goal_minor=100_000)
    fund = build_fund()

    pledge, match = pledge_and_match(db, people.donor, need, 100_000)

    assert match is None
    assert pledge.state == "pledged"
    assert used(db, fund.id) == 0


def test_overfunded_need_takes_full_match(db, people, build_need, build_fund):
    need = build_need(goal_minor=100_000, overfunding=True)
    build_fund()

    _, match = pledge_and_match(db, people.donor, need, 90_000)

    assert match.amount_minor == 90_000
    assert pledged(db, need.id) == 180_000


# Undo and follow


def test_cancel_releases_match(db, people, build_need, build_fund):
    need = build_need()
    fund = build_fund()
    pledge, match = pledge_and_match(db, people.donor, need, 10_000)

    transition(pledge.id, "cancel", people.coordinator, reason="Donor withdrew")
    match_funds.after_transition(pledge, "cancel", people.coordinator)
    db.session.commit()

    db.session.refresh(match)
    assert match.state == "cancelled"
    assert used(db, fund.id) == 0
    assert pledged(db, need.id) == 0
    assert [(e.from_state, e.to_state, e.amount_minor, e.actor_id, e.reason) for e in events_of(db, match.id)][-1] == (
        "pledged", "cancelled", 10_000, people.coordinator.id, f"Pledge {pledge.id}, which this pledge matched, was cancelled."
    )
    # A second call changes nothing.
    match_funds.after_transition(pledge, "cancel", people.coordinator)
    db.session.commit()
    assert used(db, fund.id) == 0
    assert len(events_of(db, match.id)) == 2


def test_released_money_matches_again(db, people, build_need, build_fund):
    need = build_need()
    fund = build_fund(total_cap="100.00")
    pledge, _ = pledge_and_match(db, people.donor, need, 10_000)
    _, none_left = pledge_and_match(db, people.other_donor, need, 10_000)
    assert none_left is None

    transition(pledge.id, "cancel", people.coordinator, reason="Donor withdrew")
    match_funds.after_transition(pledge, "cancel", people.coordinator)
    db.session.commit()
    _, match = pledge_and_match(db, people.other_donor, need, 10_000)

    assert match.amount_minor == 10_000
    assert used(db, fund.id) == 10_000


def test_confirm_confirms_match(db, people, build_need, build_fund):
    need = build_need()
    build_fund()
    pledge, match = pledge_and_match(db, people.donor, need, 10_000)

    transition(pledge.id, "confirm", people.coordinator)
    match_funds.after_transition(pledge, "confirm", people.coordinator)
    db.session.commit()

    db.session.refresh(match)
    assert match.state == "confirmed"
    assert events_of(db, match.id)[-1].reason == f"Pledge {pledge.id}, which this pledge matches, was confirmed."


def test_confirmed_then_cancelled(db, people, build_need, build_fund):
    need = build_need()
    fund = build_fund()
    pledge, match = pledge_and_match(db, people.donor, need, 10_000)
    for action in ("confirm", "cancel"):
        transition(pledge.id, action, people.coordinator, reason="Agreement withdrawn")
        match_funds.after_transition(pledge, action, people.coordinator)
    db.session.commit()

    db.session.refresh(match)
    assert match.state == "cancelled"
    assert used(db, fund.id) == 0
    assert pledged(db, need.id) == 0


def test_card_refund_releases_match(db, people, build_need, build_fund):
    need = build_need()
    fund = build_fund(factor="2")
    pledge, _ = pledge_and_match(db, people.donor, need, 10_000, kind="card")
    transition(pledge.id, "pay", None)
    match_funds.after_transition(pledge, "pay", None)
    db.session.commit()
    assert used(db, fund.id) == 20_000

    transition(pledge.id, "refund", None, reason="Refunded in Stripe")
    match_funds.after_transition(pledge, "refund", None)
    db.session.commit()

    match = match_funds.match_of(pledge)
    assert match.state == "cancelled"
    assert used(db, fund.id) == 0
    assert pledged(db, need.id) == 0


def test_partial_refund_shrinks_match(db, people, build_need, build_fund):
    need = build_need()
    fund = build_fund(factor="2")
    pledge, _ = pledge_and_match(db, people.donor, need, 10_000, kind="card")
    transition(pledge.id, "pay", None)
    match_funds.after_transition(pledge, "pay", None)
    db.session.commit()

    transition(pledge.id, "refund", None, amount_minor=2_500, reason="Partly refunded in Stripe")
    match_funds.after_transition(pledge, "refund", None)
    db.session.commit()

    match = match_funds.match_of(pledge)
    assert match.state == "confirmed"
    assert match.active_minor == 15_000
    assert used(db, fund.id) == 15_000
    assert pledged(db, need.id) == 7_500 + 15_000
    assert events_of(db, match.id)[-1].amount_minor == 5_000


def test_match_cancelled_alone_refills_fund(db, people, build_need, build_fund):
    need = build_need()
    fund = build_fund()
    pledge, match = pledge_and_match(db, people.donor, need, 10_000)

    transition(match.id, "cancel", people.coordinator, reason="Sponsor withdrew this match")
    match_funds.after_transition(match, "cancel", people.coordinator)
    db.session.commit()

    db.session.refresh(pledge)
    assert pledge.state == "pledged"
    assert used(db, fund.id) == 0
    assert pledged(db, need.id) == 10_000


# Preview


def test_preview_equals_match(db, people, build_need, build_fund):
    need = build_need(goal_minor=100_000)
    fund = build_fund(factor="2", per_pledge_cap="500.00")
    donor_funder = funder_for_user(people.donor)
    db.session.commit()

    preview = preview_match(need, 20_000, donor_funder)
    assert preview is not None
    assert preview[0].id == fund.id
    assert preview[1] == 40_000
    assert used(db, fund.id) == 0
    assert count(db, Pledge) == 0

    # Room left after the pledge itself limits the preview as it limits the match.
    assert preview_match(need, 70_000, donor_funder)[1] == 30_000
    assert preview_match(need, 100_000, donor_funder) is None
    assert preview_match(need, 20_000, funder_for_user(people.sponsor)) is None

    _, match = pledge_and_match(db, people.donor, need, 20_000)
    assert match.amount_minor == 40_000


def test_offer_for_need(db, people, build_need, build_fund):
    need = build_need()
    assert match_funds.offer_for_need(need) is None

    fund = build_fund(regions=["africa"])

    assert match_funds.offer_for_need(need).id == fund.id
    assert match_funds.offer_for_need(need, funder_for_user(people.sponsor)) is None
    assert match_funds.offer_for_need(build_need(countries=["FR"])) is None


def test_offer_snippet_renders(app, db, people, build_need, build_fund):
    need = build_need()
    fund = build_fund(name="Broadband boost", factor="0.5", per_pledge_cap="100.00")
    template = '{% from "match_funds/_offer.html" import match_offer %}{{ match_offer(preview, offer, currency) }}'

    with app.test_request_context():
        with_amount = render_template_string(template, preview=preview_match(need, 10_000), offer=fund, currency="EUR")
        without_amount = render_template_string(template, preview=None, offer=fund, currency="EUR")
        nothing = render_template_string(template, preview=None, offer=None, currency="EUR")

    assert "The Broadband boost match fund will add €50.00 to this pledge." in with_amount
    assert "adds 0.5 for each 1 pledged" in without_amount
    assert "at most €100.00 to one pledge" in without_amount
    assert nothing.strip() == ""


# Pages


def page(response):
    return html.fromstring(response.get_data(as_text=True))


FORM = {
    "name": "Africa broadband match", "factor": "2", "currency": "EUR", "total_cap": "1000.00",
    "per_pledge_cap": "", "per_project_cap": "", "regions": ["africa"], "themes": ["broadband"],
    "starts_on": "", "ends_on": "", "active": "y",
}


def test_donor_creates_fund_page(client, login, db, people):
    login(people.sponsor)

    form = client.get("/match-funds/new")
    assert form.status_code == 200
    assert page(form).xpath("//select[@name='funder_id']") == []

    response = client.post("/match-funds/new", data=FORM)

    assert response.status_code == 302
    fund = db.session.scalar(select(MatchFund))
    assert response.headers["Location"].endswith(f"/match-funds/{fund.id}")
    assert fund.funder_id == funder_for_user(people.sponsor).id
    assert fund.total_cap_minor == 100_000
    assert fund.active is True
    assert sorted((rule.kind, rule.code) for rule in fund.rules) == [("region", "africa"), ("theme", "broadband")]


def test_bad_form_keeps_input(client, login, db, people):
    login(people.sponsor)

    response = client.post("/match-funds/new", data={**FORM, "factor": "eleven", "total_cap": "1.234", "ends_on": "2026-02-30"})

    assert response.status_code == 422
    document = page(response)
    assert "Factor 'eleven' is not a number" in document.xpath("string(//*[@id='factor-error'])")
    assert "has more decimals than EUR allows" in document.xpath("string(//*[@id='total_cap-error'])")
    assert "'2026-02-30' is not valid" in document.xpath("string(//*[@id='ends_on-error'])")
    assert document.xpath("string(//input[@name='factor']/@value)") == "eleven"
    assert document.xpath("string(//input[@name='name']/@value)") == "Africa broadband match"
    assert count(db, MatchFund) == 0


def test_coordinator_form_picks_funder(client, login, db, people):
    funder = funder_for_user(people.sponsor)
    db.session.commit()
    login(people.coordinator)

    missing = client.post("/match-funds/new", data=FORM)
    assert missing.status_code == 422
    assert "Funder is required." in page(missing).xpath("string(//*[@id='funder_id-error'])")

    response = client.post("/match-funds/new", data={**FORM, "funder_id": str(funder.id)})
    assert response.status_code == 302
    assert db.session.scalar(select(MatchFund.funder_id)) == funder.id


def test_list_by_role(client, login, db, people, build_fund):
    own = build_fund(name="Sponsor fund")
    other_funder = funder_for_user(people.other_donor)
    db.session.commit()
    create_match_fund(people.coordinator, fund_input(name="World Bank fund", funder_id=other_funder.id))
    db.session.commit()

    login(people.sponsor)
    names = page(client.get("/match-funds")).xpath("//table//td[1]/a/text()")
    assert names == [own.name]

    login(people.coordinator)
    names = page(client.get("/match-funds")).xpath("//table//td[1]/a/text()")
    assert sorted(names) == ["Sponsor fund", "World Bank fund"]

    login(people.owner)
    assert client.get("/match-funds").status_code == 403
    assert client.get("/match-funds/new").status_code == 403


def test_detail_shows_balance_and_history(client, login, db, people, build_need, build_fund):
    need = build_need()
    fund = build_fund(total_cap="1000.00")
    pledge, match = pledge_and_match(db, people.donor, need, 25_000)
    login(people.sponsor)

    response = client.get(f"/match-funds/{fund.id}")

    assert response.status_code == 200
    document = page(response)
    text = document.text_content()
    assert "€750.00" in text  # balance: 1,000.00 - 250.00
    assert document.xpath("string(//*[@role='progressbar']/@aria-valuenow)") == "25"
    rows = document.xpath("//section[@aria-labelledby='history']//tbody/tr")
    assert len(rows) == 1
    row = rows[0].text_content()
    assert f"Pledge {match.id}" in row
    assert f"Pledge {pledge.id}" in row
    assert "Rural broadband for Kenya" in row
    assert "€250.00" in row
    assert "Pledged" in row


def test_detail_hidden_from_others(client, login, db, people, build_fund):
    fund = build_fund()

    for user in (people.other_donor, people.owner):
        login(user)
        assert client.get(f"/match-funds/{fund.id}").status_code == 404
        assert client.post(f"/match-funds/{fund.id}/active", data={"active": "0"}).status_code == 404
    login(people.coordinator)
    assert client.get(f"/match-funds/{fund.id}").status_code == 200
    assert client.get("/match-funds/99999999999").status_code == 404
    assert client.get("/match-funds/0").status_code == 404


def test_anonymous_sent_to_login(client, db, people, build_fund):
    fund = build_fund()

    response = client.get(f"/match-funds/{fund.id}")

    assert response.status_code == 302
    assert "/login" in response.headers["Location"]


def test_pause_and_resume(client, login, db, people, build_need, build_fund):
    need = build_need()
    fund = build_fund()
    login(people.sponsor)

    assert client.post(f"/match-funds/{fund.id}/active", data={"active": "0"}).status_code == 302
    db.session.refresh(fund)
    assert fund.active is False
    assert pledge_and_match(db, people.donor, need, 10_000)[1] is None

    assert client.post(f"/match-funds/{fund.id}/active", data={"active": "1"}).status_code == 302
    db.session.refresh(fund)
    assert fund.active is True
    assert pledge_and_match(db, people.donor, need, 10_000)[1] is not None

    bad = client.post(f"/match-funds/{fund.id}/active", data={"active": "maybe"}, follow_redirects=True)
    assert "The form is incomplete (active 'maybe')" in page(bad).text_content()
    db.session.refresh(fund)
    assert fund.active is True


# Concurrency


def pledge_at_once(app, db, donor_ids, need_ids, amount_minor):
    """Pledge from each donor to its need in its own thread, app context and transaction, all at once."""
    barrier = threading.Barrier(len(donor_ids))
    errors = []

    def pledge(donor_id, need_id):
        with app.app_context():
            try:
                donor = db.session.get(User, donor_id)
                barrier.wait(timeout=60)
                created, _ = create_pledge(donor, need_id, amount_minor, "EUR")
                match_pledge(created, donor)
                db.session.commit()
            except BaseException as error:  # reported by the test thread
                errors.append(error)
                barrier.abort()
            finally:
                db.session.remove()

    threads = [threading.Thread(target=pledge, args=pair) for pair in zip(donor_ids, need_ids)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads), "a pledge thread did not finish in time"
    assert not errors, f"pledge threads failed: {errors!r}"
    db.session.expire_all()


def make_donors(db, make_user, number):
    donors = [make_user("donor", organisation=None) for _ in range(number)]
    for donor in donors:
        funder_for_user(donor)
    db.session.commit()
    return [donor.id for donor in donors]


THREADS = 12


@pytest.mark.postgres
@pytest.mark.skipif(not ON_POSTGRES, reason="concurrent transactions need PostgreSQL: set TEST_DATABASE_URL=postgresql+psycopg://...")
def test_concurrent_pledges_hold_total_cap(app, db, make_user, build_need, build_fund):
    # One project per pledge, so that only the fund's row is shared between the transactions.
    need_ids = [build_need().id for _ in range(THREADS)]
    fund_id = build_fund(total_cap="450.00").id
    donor_ids = make_donors(db, make_user, THREADS)

    pledge_at_once(app, db, donor_ids, need_ids, 10_000)

    amounts = sorted(db.session.scalars(select(Pledge.amount_minor).where(Pledge.match_fund_id == fund_id)))
    assert amounts == [5_000, 10_000, 10_000, 10_000, 10_000]
    assert used(db, fund_id) == 45_000
    assert count(db, Pledge, Pledge.match_fund_id.is_(None)) == THREADS


@pytest.mark.postgres
@pytest.mark.skipif(not ON_POSTGRES, reason="concurrent transactions need PostgreSQL: set TEST_DATABASE_URL=postgresql+psycopg://...")
def test_concurrent_pledges_hold_project_cap(app, db, make_user, people, build_fund):
    # One project with a need per pledge: the needs' rows differ, the project cap is shared.
    data = ProjectInput(
        title="Fibre backbone for East Africa", countries=["KE", "UG", "TZ"], themes=["backbones"],
        needs=[NeedInput(title=f"Segment {index}", goal_minor=1_000_000, currency="EUR") for index in range(THREADS)],
    )
    project = create_project(people.owner, data)
    submit_project(people.owner, project)
    publish_project(people.coordinator, project)
    db.session.commit()
    need_ids = [need.id for need in project.needs]
    fund_id = build_fund(per_project_cap="350.00").id
    donor_ids = make_donors(db, make_user, THREADS)

    pledge_at_once(app, db, donor_ids, need_ids, 10_000)

    amounts = sorted(db.session.scalars(select(Pledge.amount_minor).where(Pledge.match_fund_id == fund_id)))
    assert amounts == [5_000, 10_000, 10_000, 10_000]
    assert used(db, fund_id) == 35_000


# Through the pledge service alone: these pass once create_pledge and transition call the hooks.


def test_wired_create_pledge_matches(db, people, build_need, build_fund):
    need = build_need()
    fund = build_fund()

    pledge, _ = create_pledge(people.donor, need.id, 10_000, "EUR")
    db.session.commit()

    match = match_funds.match_of(pledge)
    assert match is not None
    assert match.amount_minor == 10_000
    assert used(db, fund.id) == 10_000


def test_wired_cancel_unmatches(db, people, build_need, build_fund):
    need = build_need()
    fund = build_fund()
    pledge, _ = create_pledge(people.donor, need.id, 10_000, "EUR")
    db.session.commit()

    transition(pledge.id, "cancel", people.coordinator, reason="Donor withdrew")
    db.session.commit()

    match = match_funds.match_of(pledge)
    assert match is not None
    assert match.state == "cancelled"
    assert used(db, fund.id) == 0
    assert pledged(db, need.id) == 0


def test_wired_confirm_confirms_match(db, people, build_need, build_fund):
    need = build_need()
    build_fund()
    pledge, _ = create_pledge(people.donor, need.id, 10_000, "EUR")
    db.session.commit()

    transition(pledge.id, "confirm", people.coordinator)
    db.session.commit()

    match = match_funds.match_of(pledge)
    assert match is not None
    assert match.state == "confirmed"


def test_wired_card_payment_matches(db, people, build_need, build_fund):
    need = build_need()
    fund = build_fund()
    pledge, _ = create_pledge(people.donor, need.id, 10_000, "EUR", "card")
    db.session.commit()
    assert match_funds.match_of(pledge) is None

    transition(pledge.id, "pay", None)
    db.session.commit()

    match = match_funds.match_of(pledge)
    assert match is not None
    assert match.state == "confirmed"
    assert used(db, fund.id) == 10_000


def test_wired_match_cancel_refills_fund(db, people, build_need, build_fund):
    need = build_need()
    fund = build_fund()
    pledge, _ = create_pledge(people.donor, need.id, 10_000, "EUR")
    db.session.commit()
    match = match_funds.match_of(pledge)
    assert match is not None

    transition(match.id, "cancel", people.coordinator, reason="Sponsor withdrew this match")
    db.session.commit()

    assert used(db, fund.id) == 0


def test_wired_pledge_form_shows_match(client, login, db, people, build_need, build_fund):
    need = build_need()
    build_fund(name="Broadband boost", factor="2", per_pledge_cap="150.00")
    login(people.donor)

    offer = client.get(f"/needs/{need.id}/pledge")
    preview = client.get(f"/needs/{need.id}/pledge?amount=50.00")
    response = client.post(f"/needs/{need.id}/pledge", data={
        "amount": "100.00", "currency": "EUR", "kind": "commitment", "idempotency_key": "0b6c1a4e-3f2d-4c5b-9a8e-7d6f5e4c3b2a",
    }, follow_redirects=True)

    assert "The Broadband boost match fund adds 2 for each 1 pledged to this project" in page(offer).text_content()
    assert "The Broadband boost match fund will add €100.00 to this pledge." in page(preview).text_content()
    assert "The Broadband boost match fund adds €150.00 to your pledge." in page(response).text_content()
