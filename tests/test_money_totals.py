"""Money: parsing per currency, and totals that stay exact on SQLite and PostgreSQL."""

from decimal import Decimal

import pytest
from sqlalchemy import func, select

from financing.core.errors import Conflict
from financing.money import MoneyError, amount_text, format_money, parse_amount
from financing.pledges.models import Pledge
from financing.pledges.services import create_pledge, need_totals
from financing.projects.models import FundingNeed
from financing.projects.services import NeedInput, ProjectInput, create_project, publish_project, submit_project


@pytest.mark.parametrize(("text", "currency", "minor"), [
    ("1500", "EUR", 150_000),
    ("1,500.25", "EUR", 150_025),
    ("1500", "JPY", 1500),
    ("250000", "XOF", 250_000),
    ("1.234", "BHD", 1234),
    ("45000000000.00", "EUR", 4_500_000_000_000),
])
def test_parse_amount_per_currency(text, currency, minor):
    assert parse_amount(text, currency) == minor


@pytest.mark.parametrize(("value", "currency", "phrase"), [
    ("1.5", "JPY", "more decimals than JPY allows (0)"),
    ("1.234", "EUR", "more decimals than EUR allows (2)"),
    ("1e3", "EUR", "is not a number"),
    ("-5", "EUR", "greater than zero"),
    ("0", "EUR", "greater than zero"),
    ("", "EUR", "required"),
    ("abc", "EUR", "is not a number"),
    (1.5, "EUR", "decimal string"),
    ("1000000000001", "EUR", "larger than the maximum"),
    ("10", "XYZ", "Unknown currency"),
])
def test_parse_amount_rejects(value, currency, phrase):
    with pytest.raises(MoneyError) as caught:
        parse_amount(value, currency)
    assert phrase in caught.value.message


def test_amount_text_and_display_use_iso_exponent():
    assert amount_text(4_800_000_00, "EUR") == "4800000.00"
    assert amount_text(1_000_000, "XOF") == "1000000"
    assert amount_text(1234, "BHD") == "1.234"
    assert format_money(1_000_000, "XOF").endswith("1,000,000")
    assert format_money(5000, "IQD").endswith("5.000")


@pytest.fixture
def people(make_user):
    class People:
        owner = make_user("owner", organisation="Ministry of ICT, Kenya")
        coordinator = make_user("coordinator", organisation=None)
        donor = make_user("donor", organisation="European Commission")

    return People


def published_need(db, people, goal_minor, allow_overfunding=False) -> FundingNeed:
    data = ProjectInput(
        title="Regional backbone", countries=["KE"],
        needs=[NeedInput(title="Fibre", goal_minor=goal_minor, currency="EUR", allow_overfunding=allow_overfunding)],
    )
    project = create_project(people.owner, data)
    submit_project(people.owner, project)
    publish_project(people.coordinator, project)
    db.session.commit()
    return project.needs[0]


def test_goal_in_tens_of_billions_fills_exactly(db, people):
    goal = parse_amount("45000000000.00", "EUR")
    need = published_need(db, people, goal)

    create_pledge(people.donor, need.id, goal - 1, "EUR")
    create_pledge(people.donor, need.id, 1, "EUR")
    db.session.commit()
    with pytest.raises(Conflict):
        create_pledge(people.donor, need.id, 1, "EUR")
    db.session.rollback()

    db.session.refresh(need)
    assert need.pledged_minor == goal
    assert amount_text(need.pledged_minor, "EUR") == "45000000000.00"
    assert db.session.scalar(select(func.sum(Pledge.need_amount_minor))) == goal


def test_thousand_small_pledges_add_up(db, people):
    need = published_need(db, people, parse_amount("100000.00", "EUR"))
    amounts = [1 + (number * 37) % 997 for number in range(1000)]

    for amount in amounts:
        create_pledge(people.donor, need.id, amount, "EUR")
    db.session.commit()

    db.session.refresh(need)
    expected = sum(amounts)
    assert need.pledged_minor == expected
    assert db.session.scalar(select(func.sum(Pledge.need_amount_minor))) == expected
    assert need_totals(need.id)["pledged"] == expected
    assert Decimal(amount_text(expected, "EUR")) == sum(Decimal(a) / 100 for a in amounts)
