"""Tests of exchange rates: the rates page, CSV upload, and pledges converted with a stored rate."""

import io
import re
from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest
from flask import g, request_started
from lxml import html
from sqlalchemy import func, select

from financing.core.errors import Conflict, Forbidden, ValidationFailed
from financing.pledges.models import ExchangeRate, Pledge
from financing.pledges.services import act, create_pledge, need_totals, today_utc
from financing.projects.models import FundingNeed
from financing.projects.services import NeedInput, ProjectInput, create_project, publish_project, submit_project
from financing.rates.services import (
    RateImportFailed, add_rate, current_rates, currencies_with_rate_to, import_rates_csv, parse_rate, rate_text, read_rates_csv,
)


@pytest.fixture(autouse=True)
def fresh_globals_per_request(app):
    """Start each request with an empty `g`, so that each client request loads its own user."""

    def clear_globals(sender, **extra):
        for name in list(g):
            g.pop(name)

    request_started.connect(clear_globals, app)
    yield
    request_started.disconnect(clear_globals, app)


@pytest.fixture
def people(make_user):
    class People:
        owner = make_user("owner", organisation="Ministry of ICT, Kenya")
        donor = make_user("donor", organisation="European Commission")
        coordinator = make_user("coordinator", organisation=None)

    return People


def publish_need(db, people, goal_minor=100_000, currency="EUR", allow_overfunding=False) -> FundingNeed:
    data = ProjectInput(
        title="Fibre backbone for West Africa", summary="Cross-border fibre between capitals.",
        countries=["GH"], themes=["backbones"],
        needs=[NeedInput(title="Fibre deployment", goal_minor=goal_minor, currency=currency, allow_overfunding=allow_overfunding)],
    )
    project = create_project(people.owner, data)
    submit_project(people.owner, project)
    publish_project(people.coordinator, project)
    db.session.commit()
    return project.needs[0]


def page(response):
    return html.fromstring(response.get_data(as_text=True))


def text_of(response) -> str:
    return " ".join(page(response).text_content().split())


def rate_count(db) -> int:
    return db.session.scalar(select(func.count()).select_from(ExchangeRate))


def stored_rates(db) -> list[tuple[str, str, str, str]]:
    rows = db.session.scalars(select(ExchangeRate).order_by(ExchangeRate.base, ExchangeRate.quote, ExchangeRate.valid_from))
    return [(row.base, row.quote, rate_text(row.rate), row.valid_from.isoformat()) for row in rows]


def post_rate(client, base="USD", quote="EUR", rate="0.9259", valid_from="2026-01-05", **extra):
    return client.post("/rates", data={"base": base, "quote": quote, "rate": rate, "valid_from": valid_from, **extra})


def upload(client, data: bytes, name="rates.csv", **extra):
    form = {"upload-file": (io.BytesIO(data), name), **extra}
    return client.post("/rates/import", data=form, content_type="multipart/form-data")


def upload_errors(response) -> list[list[str]]:
    rows = page(response).xpath("//table[@id='upload-errors']/tbody/tr")
    return [[" ".join(cell.text_content().split()) for cell in row.xpath("td")] for row in rows]


# The rates page and its form


def test_coordinator_adds_rate(client, login, people, db):
    login(people.coordinator)

    response = post_rate(client, base="usd", valid_from=today_utc().isoformat())

    assert response.status_code == 302
    assert response.headers["Location"] == "/rates"
    assert stored_rates(db) == [("USD", "EUR", "0.9259", today_utc().isoformat())]
    row = db.session.scalar(select(ExchangeRate))
    assert row.created_by_id == people.coordinator.id
    listing = client.get("/rates")
    assert listing.status_code == 200
    assert "Stored the rate 1 USD = 0.9259 EUR" in text_of(listing)
    current = page(listing).xpath("//section[@aria-labelledby='current-rates']//tbody/tr")
    assert len(current) == 1
    assert "1 USD = 0.9259 EUR" in current[0].text_content()


@pytest.mark.parametrize(
    "values, field, message",
    [
        ({"rate": "abc"}, "rate", "Rate 'abc' is not a number"),
        ({"rate": "-1"}, "rate", "Rate '-1' must be greater than zero"),
        ({"rate": "0"}, "rate", "Rate '0' must be greater than zero"),
        ({"rate": "0.000"}, "rate", "Rate '0.000' must be greater than zero"),
        ({"rate": "1e3"}, "rate", "Rate '1e3' uses exponent notation"),
        ({"rate": "1.0000000000001"}, "rate", "Rate '1.0000000000001' has more than 12 decimals"),
        ({"rate": "1,08"}, "rate", "Rate '1,08' contains a comma"),
        ({"rate": "1000000000000"}, "rate", "Rate '1000000000000' is too large"),
        ({"rate": "123456.7890123456"}, "rate", "more than 15 significant digits"),
        ({"rate": ""}, "rate", "Rate is required"),
        ({"base": "XYZ"}, "base", "Unknown currency 'XYZ'"),
        ({"quote": "XYZ"}, "quote", "Unknown currency 'XYZ'"),
        ({"base": "EUR"}, "quote", "Quote currency EUR is the same as the base currency"),
        ({"valid_from": "05/01/2026"}, "valid_from", "Valid from '05/01/2026' is not a date"),
        ({"valid_from": "2026-02-30"}, "valid_from", "Valid from '2026-02-30' is not a day of the calendar"),
    ],
)
def test_bad_rate_rejected(client, login, people, db, values, field, message):
    login(people.coordinator)

    response = post_rate(client, **values)

    assert response.status_code == 422
    document = page(response)
    errors = document.xpath(f"//*[@id='{field}-error']/text()")
    assert len(errors) == 1
    assert message in errors[0]
    posted = {"base": "USD", "quote": "EUR", "rate": "0.9259", "valid_from": "2026-01-05", **values}
    for name, value in posted.items():
        assert document.xpath(f"//input[@name='{name}']/@value") == [value], name
    assert rate_count(db) == 0


def test_float_rate_rejected_by_service():
    with pytest.raises(ValueError, match="must be a decimal string"):
        parse_rate(0.9259)


def test_rate_keeps_exact_decimal():
    assert parse_rate("0.925925925926") == Decimal("0.925925925926")
    assert parse_rate("1.500000000000000") == Decimal("1.5")
    assert parse_rate(" 150 ") == Decimal(150)


def test_duplicate_rate_rejected_unless_replaced(client, login, people, db):
    login(people.coordinator)
    assert post_rate(client, rate="0.9259").status_code == 302

    duplicate = post_rate(client, rate="0.93")

    assert duplicate.status_code == 409
    errors = page(duplicate).xpath("//*[@id='valid_from-error']/text()")
    assert errors == ["USD to EUR already has the rate 0.9259 from 2026-01-05; choose to replace stored rates to overwrite it."]
    assert stored_rates(db) == [("USD", "EUR", "0.9259", "2026-01-05")]

    same = post_rate(client, rate="0.925900")
    assert same.status_code == 302
    assert rate_count(db) == 1

    replaced = post_rate(client, rate="0.93", replace="y")
    assert replaced.status_code == 302
    assert stored_rates(db) == [("USD", "EUR", "0.93", "2026-01-05")]


def test_rate_page_lists_history(client, login, people, db):
    for valid_from, rate in (("2025-12-01", "0.95"), ("2026-01-05", "0.9259")):
        add_rate(people.coordinator, "USD", "EUR", rate, valid_from)
    add_rate(people.coordinator, "GBP", "EUR", "1.1612", "2026-01-05")
    add_rate(people.coordinator, "USD", "EUR", "0.91", today_utc() + timedelta(days=3))
    db.session.commit()
    login(people.coordinator)

    document = page(client.get("/rates"))

    current = [" ".join(row.text_content().split()) for row in document.xpath("//section[@aria-labelledby='current-rates']//tbody/tr")]
    assert len(current) == 2
    assert current[0].startswith("GBP → EUR 1 GBP = 1.1612 EUR")
    assert current[1].startswith("USD → EUR 1 USD = 0.9259 EUR")
    history = document.xpath("//section[@aria-labelledby='rate-history']//tbody/tr")
    assert len(history) == 4
    assert "(not yet valid)" in history[0].text_content()

    filtered = page(client.get("/rates?history-base=GBP"))
    assert len(filtered.xpath("//section[@aria-labelledby='rate-history']//tbody/tr")) == 1

    bad = client.get("/rates?history-base=XYZ")
    assert bad.status_code == 422
    assert page(bad).xpath("//*[@id='history-base-error']/text()") == ["Unknown currency 'XYZ': use an ISO 4217 code such as EUR."]


@pytest.mark.parametrize("role", ["donor", "owner"])
def test_rates_for_coordinators_only(client, login, people, db, role):
    login(getattr(people, role))

    assert client.get("/rates").status_code == 403
    assert post_rate(client).status_code == 403
    assert upload(client, b"base,quote,rate,valid_from\nUSD,EUR,0.9259,2026-01-05\n").status_code == 403
    assert rate_count(db) == 0


def test_rate_forms_carry_csrf_tokens(app, client, login, people, db, monkeypatch):
    monkeypatch.setitem(app.config, "WTF_CSRF_ENABLED", True)
    login(people.coordinator)
    document = page(client.get("/rates"))
    token = document.xpath("//form[@action='/rates']//input[@name='csrf_token']/@value")
    assert len(token) == 1
    assert document.xpath("//form[@action='/rates/import']//input[@name='upload-csrf_token']/@value")

    assert post_rate(client).status_code == 400
    assert rate_count(db) == 0
    assert post_rate(client, csrf_token=token[0]).status_code == 302
    assert rate_count(db) == 1


def test_rates_page_needs_login(client, db):
    response = client.get("/rates")

    assert response.status_code == 302
    assert "/login" in response.headers["Location"]


def test_add_rate_service_forbidden_for_donor(db, people):
    with pytest.raises(Forbidden):
        add_rate(people.donor, "USD", "EUR", "0.9259", "2026-01-05")
    with pytest.raises(Forbidden):
        import_rates_csv("base,quote,rate,valid_from\nUSD,EUR,0.9259,2026-01-05\n", people.donor)


def test_add_rate_service_names_every_bad_field(db, people):
    with pytest.raises(ValidationFailed) as caught:
        add_rate(people.coordinator, "XYZ", "EUR", "1e3", "tomorrow")

    assert set(caught.value.fields) == {"base", "rate", "valid_from"}


# CSV upload


def test_csv_with_bom_and_semicolons(client, login, people, db):
    login(people.coordinator)
    data = "\ufeffbase;quote;rate;valid_from\r\nUSD;EUR;0.9259;2026-01-05\r\nGBP;EUR;1.1612;2026-01-05\r\n\r\nJPY;EUR;0.0061;2026-01-05\r\n".encode()

    response = upload(client, data)

    assert response.status_code == 302
    assert stored_rates(db) == [
        ("GBP", "EUR", "1.1612", "2026-01-05"),
        ("JPY", "EUR", "0.0061", "2026-01-05"),
        ("USD", "EUR", "0.9259", "2026-01-05"),
    ]
    assert "Imported 3 rates from rates.csv." in text_of(client.get("/rates"))


def test_csv_with_commas_quotes_and_other_column_order(db, people):
    text = 'valid_from,rate,base,quote\n2026-01-05,"0.9259",usd,eur\n'

    count = import_rates_csv(text, people.coordinator)
    db.session.commit()

    assert count == 1
    assert stored_rates(db) == [("USD", "EUR", "0.9259", "2026-01-05")]


def test_csv_bad_row_imports_nothing(client, login, people, db):
    login(people.coordinator)
    data = b"base,quote,rate,valid_from\nUSD,EUR,0.9259,2026-01-05\nGBP,EUR,1e3,2026-01-05\nJPY,EUR,0.0061,2026-01-05\n"

    response = upload(client, data)

    assert response.status_code == 422
    assert upload_errors(response) == [["3", "rate", "1e3", "Rate '1e3' uses exponent notation: write plain digits, such as 1000 or 0.0012."]]
    assert page(response).xpath("//*[@id='upload-file-error']/text()") == [
        "1 line has errors, so no rate was imported. Correct the file and upload it again."
    ]
    assert rate_count(db) == 0


def test_csv_lists_every_bad_value(db, people):
    text = "\n".join([
        "base;quote;rate;valid_from",
        "USD;EUR;0.9259;2026-01-05",
        "XYZ;EUR;-2;2026-01-05",
        "EUR;EUR;1;2026-13-01",
        "USD;EUR;0,93;2026-01-05",
        "GBP;EUR;1.1612",
        "USD;EUR;0.9259;2026-01-05",
    ])

    with pytest.raises(RateImportFailed) as caught:
        import_rates_csv(text, people.coordinator)

    found = [(error.line, error.field, error.value) for error in caught.value.errors]
    assert found == [
        (3, "base", "XYZ"),
        (3, "rate", "-2"),
        (4, "quote", "EUR"),
        (4, "valid_from", "2026-13-01"),
        (5, "rate", "0,93"),
        (6, "row", "GBP;EUR;1.1612"),
        (7, "valid_from", "2026-01-05"),
    ]
    assert "repeats the USD to EUR rate from 2026-01-05 given on line 2" in caught.value.errors[-1].message
    assert caught.value.message.startswith("5 lines have errors")
    assert rate_count(db) == 0


@pytest.mark.parametrize(
    "text, field, message",
    [
        ("", "file", "The file is empty"),
        ("currency,value\nUSD,1\n", "header", "The first line must name the columns base, quote, rate, valid_from"),
        ("base,quote,rate,valid_from,note\nUSD,EUR,1,2026-01-05,x\n", "header", "Unknown column 'note'"),
        ("base,quote,rate,valid_from\n", "file", "holds no rates"),
        ('base,quote,rate,valid_from\nUSD,EUR,"0.9,2026-01-05\n', "file", "not valid CSV"),
    ],
)
def test_csv_bad_file_rejected(db, people, text, field, message):
    rows, errors = read_rates_csv(text)

    assert rows == []
    assert len(errors) == 1
    assert errors[0].field == field
    assert message in errors[0].message


def test_csv_not_utf8_names_line(client, login, people, db):
    login(people.coordinator)
    data = "base;quote;rate;valid_from\nUSD;EUR;0.9259;2026-01-05\nGBP;EUR;1.1612;2026-01-05 \u00e9\n".encode("latin-1")

    response = upload(client, data)

    assert response.status_code == 422
    errors = upload_errors(response)
    assert len(errors) == 1
    assert errors[0][0] == "3"
    assert "Line 3 is not UTF-8 text" in errors[0][3]
    assert rate_count(db) == 0


def test_csv_conflicting_with_stored_rate(client, login, people, db):
    add_rate(people.coordinator, "USD", "EUR", "0.9259", "2026-01-05")
    db.session.commit()
    login(people.coordinator)
    data = b"base,quote,rate,valid_from\nGBP,EUR,1.1612,2026-01-05\nUSD,EUR,0.93,2026-01-05\n"

    rejected = upload(client, data)

    assert rejected.status_code == 422
    assert [row[:3] for row in upload_errors(rejected)] == [["3", "rate", "0.93"]]
    assert stored_rates(db) == [("USD", "EUR", "0.9259", "2026-01-05")]

    replaced = upload(client, data, **{"upload-replace": "y"})

    assert replaced.status_code == 302
    assert stored_rates(db) == [("GBP", "EUR", "1.1612", "2026-01-05"), ("USD", "EUR", "0.93", "2026-01-05")]


def test_same_csv_twice_changes_nothing(db, people):
    text = "base,quote,rate,valid_from\nUSD,EUR,0.9259,2026-01-05\n"

    assert import_rates_csv(text, people.coordinator) == 1
    db.session.commit()
    assert import_rates_csv(text, people.coordinator) == 0
    assert rate_count(db) == 1


def test_csv_upload_requires_file(client, login, people, db):
    login(people.coordinator)

    response = client.post("/rates/import", data={}, content_type="multipart/form-data")

    assert response.status_code == 422
    assert page(response).xpath("//*[@id='upload-file-error']/text()") == ["Choose a CSV file to upload."]


# Pledges in another currency


def test_rate_lookup_uses_latest_valid_today(db, people):
    today = today_utc()
    add_rate(people.coordinator, "USD", "EUR", "0.95", today - timedelta(days=30))
    add_rate(people.coordinator, "USD", "EUR", "0.92", today)
    add_rate(people.coordinator, "USD", "EUR", "0.80", today + timedelta(days=1))
    add_rate(people.coordinator, "EUR", "GBP", "0.86", today)
    add_rate(people.coordinator, "CHF", "EUR", "1.07", today + timedelta(days=1))
    db.session.commit()

    assert currencies_with_rate_to("EUR") == ["USD"]
    assert [(row.base, row.quote, rate_text(row.rate)) for row in current_rates()] == [("EUR", "GBP", "0.86"), ("USD", "EUR", "0.92")]


def test_usd_pledge_against_eur_need(client, login, people, db):
    today = today_utc()
    add_rate(people.coordinator, "USD", "EUR", "0.95", today - timedelta(days=30))
    add_rate(people.coordinator, "USD", "EUR", "0.92", today - timedelta(days=1))
    add_rate(people.coordinator, "USD", "EUR", "0.80", today + timedelta(days=1))
    add_rate(people.coordinator, "EUR", "USD", "1.09", today - timedelta(days=1))
    add_rate(people.coordinator, "CHF", "EUR", "1.07", today + timedelta(days=1))
    need = publish_need(db, people)
    login(people.donor)

    form = page(client.get(f"/needs/{need.id}/pledge"))
    assert form.xpath("//select[@name='currency']/option/@value") == ["EUR", "USD"]
    assert form.xpath("//select[@name='currency']/option[@selected]/@value") == ["EUR"]
    assert "1 USD = 0.92 EUR" in form.text_content()
    key = form.xpath("//input[@name='idempotency_key']/@value")[0]

    response = client.post(f"/needs/{need.id}/pledge", data={"amount": "100.01", "currency": "USD", "kind": "commitment", "idempotency_key": key})

    assert response.status_code == 302
    pledge = db.session.scalar(select(Pledge))
    assert (pledge.amount_minor, pledge.currency) == (10_001, "USD")
    assert pledge.rate == Decimal("0.92")
    # 100.01 USD x 0.92 = 92.0092 EUR, rounded half-up to the cent.
    assert pledge.need_amount_minor == 9_201
    db.session.refresh(need)
    assert need.pledged_minor == 9_201
    assert need_totals(need.id)["pledged"] == 9_201
    detail = text_of(client.get(response.headers["Location"]))
    assert "Thank you: your pledge of $100.01 is recorded. It counts as €92.01 against the goal, at 1 USD = 0.92 EUR." in detail


def test_pledge_currency_decimals_checked(client, login, people, db):
    add_rate(people.coordinator, "JPY", "EUR", "0.0061", today_utc())
    need = publish_need(db, people)
    login(people.donor)

    response = client.post(
        f"/needs/{need.id}/pledge",
        data={"amount": "1000.5", "currency": "JPY", "kind": "commitment", "idempotency_key": "0b6c1a4e-3f2d-4c5b-9a8e-7d6f5e4c3b2a"},
    )

    assert response.status_code == 422
    errors = page(response).xpath("//*[@id='amount-error']/text()")
    assert errors == ["Amount '1000.5' has more decimals than JPY allows (0)."]
    document = page(response)
    assert document.xpath("//select[@name='currency']/option[@selected]/@value") == ["JPY"]
    assert db.session.scalar(select(func.count()).select_from(Pledge)) == 0


def test_pledge_with_future_rate_rejected(db, people, make_user):
    add_rate(people.coordinator, "USD", "EUR", "0.92", today_utc() + timedelta(days=1))
    need = publish_need(db, people)

    with pytest.raises(ValidationFailed, match="No exchange rate from USD to EUR is stored"):
        create_pledge(people.donor, need.id, 10_000, "USD")


def test_converted_goal_limit(db, people):
    add_rate(people.coordinator, "USD", "EUR", "0.92", today_utc())
    need = publish_need(db, people, goal_minor=92_000)

    pledge, _ = create_pledge(people.donor, need.id, 100_000, "USD")
    assert pledge.need_amount_minor == 92_000
    with pytest.raises(Conflict):
        create_pledge(people.donor, need.id, 1, "USD")
    db.session.commit()
    assert db.session.get(FundingNeed, need.id).pledged_minor == 92_000


def expected_conversion(amount_minor: int, exponent_from: int, rate: Decimal) -> int:
    """Convert independently of financing.money: major units times the rate, cents half-up."""
    major = Decimal(amount_minor) / (10**exponent_from) * rate
    return int((major * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def test_many_small_converted_pledges_add_up(db, people):
    add_rate(people.coordinator, "USD", "EUR", "0.925926", today_utc())
    add_rate(people.coordinator, "JPY", "EUR", "0.006137", today_utc())
    need = publish_need(db, people, goal_minor=10**9, allow_overfunding=False)
    amounts = [(1 + (index * 37) % 250, "USD", 2) for index in range(60)] + [(1 + index * 13, "JPY", 0) for index in range(60)]

    pledges = []
    for amount, currency, exponent in amounts:
        pledge, _ = create_pledge(people.donor, need.id, amount, currency)
        rate = Decimal("0.925926") if currency == "USD" else Decimal("0.006137")
        assert pledge.need_amount_minor == expected_conversion(amount, exponent, rate), (amount, currency)
        pledges.append(pledge)
    for pledge in pledges[::3]:
        act(people.coordinator, pledge.id, "confirm")
    db.session.commit()

    total = sum(pledge.need_amount_minor for pledge in pledges)
    confirmed = sum(pledge.need_amount_minor for pledge in pledges[::3])
    db.session.refresh(need)
    assert need.pledged_minor == total
    assert need_totals(need.id) == {"pledged": total, "confirmed": confirmed, "disbursed": 0}
    stored_sum = db.session.scalar(select(func.sum(Pledge.need_amount_minor)).where(Pledge.need_id == need.id))
    assert stored_sum == total
    assert {pledge.rate for pledge in pledges} == {Decimal("0.925926"), Decimal("0.006137")}


def test_rate_text_hides_binary_noise():
    # SQLite returns 12345.678901 as the float 12345.678900999999 quantized to 12 decimals.
    assert rate_text(Decimal("12345.678900999999")) == "12345.678901"
    assert rate_text(Decimal("1000")) == "1000"
    assert rate_text(Decimal("0.000000000001")) == "0.000000000001"
    assert re.fullmatch(r"[0-9.]+", rate_text(Decimal("1E+3")))
