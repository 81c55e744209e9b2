"""Tests of the funder pages: the public list and profile, and the donor's profile form."""

import pytest
from flask import g, request_started
from lxml import html

from financing import reference
from financing.funders.models import Funder
from financing.funders.services import FunderInput, funder_for_user, update_funder
from financing.pledges.services import act, create_pledge
from financing.projects.services import NeedInput, ProjectInput, create_project, publish_project, submit_project, withdraw_project


@pytest.fixture(autouse=True)
def fresh_globals_per_request(app):
    """Start each request with an empty `g`, as it does outside the tests.

    The db fixture keeps one app context pushed for the whole test, and `g` belongs to that
    context. Flask-Login caches the user and Flask-WTF the CSRF token in `g`, so without this
    fixture every later request would run as the first user loaded, even from another client.
    """

    def clear_globals(sender, **extra):
        for name in list(g):
            g.pop(name)

    request_started.connect(clear_globals, app)
    yield
    request_started.disconnect(clear_globals, app)


def page(response):
    return html.fromstring(response.get_data(as_text=True))


def text_of(response) -> str:
    return " ".join(page(response).text_content().split())


@pytest.fixture
def funder_of(db, make_user):
    """Create a donor and its funder profile with the given FunderInput fields."""

    def make(organisation: str, **fields) -> Funder:
        donor = make_user("donor", organisation=organisation)
        funder = funder_for_user(donor)
        update_funder(donor, funder, FunderInput(name=organisation, **fields))
        db.session.commit()
        funder.donor = donor
        return funder

    return make


# The list


def test_list_shows_preferences_and_amounts(client, funder_of):
    funder_of(
        "European Commission", regions=["africa"], themes=["broadband"], currency="EUR",
        ticket_min_minor=50_000_000, ticket_max_minor=500_000_000, annual_budget_minor=2_000_000_000,
    )

    response = client.get("/funders")

    assert response.status_code == 200
    text = text_of(response)
    assert "European Commission" in text
    assert "Africa" in text
    assert "Broadband" in text
    assert "€500,000.00 to €5,000,000.00" in text
    assert "€20,000,000.00" in text


@pytest.mark.parametrize(
    "query, expected",
    [
        ("region=africa", {"Africa Fund", "Kenya Trust"}),
        ("region=europe", {"Europe Fund"}),
        ("theme=broadband", {"Africa Fund", "Kenya Trust"}),
        ("theme=spectrum", {"Europe Fund"}),
        ("kind=individual", set()),
        ("kind=institution&region=africa&theme=broadband", {"Africa Fund", "Kenya Trust"}),
    ],
)
def test_list_filters(client, funder_of, query, expected):
    funder_of("Africa Fund", regions=["africa"], themes=["broadband"])
    # A country counts for its region and a DAC sector for its theme: 22040 is ICT.
    funder_of("Kenya Trust", countries=["KE"], sectors=["22040"])
    funder_of("Europe Fund", regions=["europe"], themes=["spectrum"])

    response = client.get(f"/funders?{query}")

    assert response.status_code == 200
    names = {name.strip() for name in page(response).xpath("//article//h2/a/text()")}
    assert names == expected


@pytest.mark.parametrize("query, field, value", [("region=atlantis", "region", "atlantis"), ("kind=bank", "kind", "bank")])
def test_list_unknown_filter_rejected(client, funder_of, query, field, value):
    funder_of("Africa Fund", regions=["africa"])

    response = client.get(f"/funders?{query}")

    assert response.status_code == 422
    errors = page(response).xpath(f"//*[@id='{field}-error']/text()")
    assert len(errors) == 1
    assert value in errors[0]


def test_list_paginated(app, client, funder_of, monkeypatch):
    monkeypatch.setitem(app.config, "PER_PAGE", 2)
    for name in ("Alpha Fund", "Beta Fund", "Gamma Fund"):
        funder_of(name)

    first = page(client.get("/funders"))
    second = page(client.get("/funders?page=2"))

    assert [n.strip() for n in first.xpath("//article//h2/a/text()")] == ["Alpha Fund", "Beta Fund"]
    assert [n.strip() for n in second.xpath("//article//h2/a/text()")] == ["Gamma Fund"]
    assert first.xpath("//a[@rel='next']/@href") == ["/funders?page=2"]


# One funder


@pytest.fixture
def published_need(db, make_user):
    owner = make_user("owner", organisation="Ministry of ICT, Kenya")
    coordinator = make_user("coordinator", organisation=None)

    def make(title: str):
        data = ProjectInput(title=title, countries=["KE"], needs=[NeedInput(title="Backbone", goal_minor=10_000_000, currency="EUR")])
        project = create_project(owner, data)
        submit_project(owner, project)
        publish_project(coordinator, project)
        db.session.commit()
        return project.needs[0]

    make.owner = owner
    make.coordinator = coordinator
    return make


def test_detail_shows_profile_and_public_pledges(client, db, funder_of, published_need):
    funder = funder_of(
        "European Commission", regions=["africa"], countries=["KE"], themes=["backbones"], sectors=["22040"],
        ticket_min_minor=10_000, decision_days=90,
    )
    funder.learned_from = 12
    shown_need = published_need("West Africa fibre backbone")
    cancelled_need = published_need("Cancelled pledge project")
    withdrawn_need = published_need("Withdrawn project")
    create_pledge(funder.donor, shown_need.id, 250_000, "EUR")
    cancelled, _ = create_pledge(funder.donor, cancelled_need.id, 70_000, "EUR")
    act(published_need.coordinator, cancelled.id, "cancel", None, "Withdrawn by the funder")
    create_pledge(funder.donor, withdrawn_need.id, 30_000, "EUR")
    withdraw_project(published_need.owner, withdrawn_need.project)
    db.session.commit()

    response = client.get(f"/funders/{funder.id}")

    assert response.status_code == 200
    text = text_of(response)
    for expected in ("Africa", "Kenya", reference.themes()["backbones"].name, reference.sectors()["22040"].name, "from €100.00", "90 days"):
        assert expected in text
    assert "Learned from 12 activities" in text
    rows = [" ".join(row.text_content().split()) for row in page(response).xpath("//table//tbody/tr")]
    assert rows == ["West Africa fibre backbone Backbone €2,500.00 Pledged"]
    assert funder.donor.email not in response.get_data(as_text=True)


def test_detail_hides_learned_line_when_entered_by_hand(client, funder_of):
    funder = funder_of("European Commission")

    assert "Learned from" not in text_of(client.get(f"/funders/{funder.id}"))


def test_detail_unknown_funder_not_found(client, db):
    assert client.get("/funders/999999").status_code == 404


# The donor's profile form


def profile_form(**changes) -> dict:
    form = {
        "name": "European Commission", "kind": "institution", "description": "Digital for development.",
        "currency": "EUR", "ticket_min": "500000.00", "ticket_max": "5000000.00", "annual_budget": "20000000",
        "decision_days": "90", "regions": ["africa"], "countries": ["KE", "GH"], "themes": ["broadband"], "sectors": ["22040"],
    }
    form.update(changes)
    return form


def test_profile_prefilled_for_new_donor(client, login, make_user):
    donor = make_user("donor", organisation="European Commission")
    login(donor)

    document = page(client.get("/funders/profile"))

    assert document.xpath("//input[@name='name']/@value") == ["European Commission"]
    assert document.xpath("//select[@name='kind']/option[@selected]/@value") == ["institution"]
    assert document.xpath("//label[@for='ticket_min']")
    assert document.xpath("//select[@name='regions'][@multiple]")


def test_profile_saved(client, login, make_user, db):
    donor = make_user("donor", organisation="European Commission")
    login(donor)

    response = client.post("/funders/profile", data=profile_form())

    assert response.status_code == 302
    funder = funder_for_user(donor, create=False)
    assert response.headers["Location"] == f"/funders/{funder.id}"
    assert (funder.ticket_min_minor, funder.ticket_max_minor, funder.annual_budget_minor) == (50_000_000, 500_000_000, 2_000_000_000)
    assert funder.decision_days == 90
    assert (funder.regions, funder.countries, funder.themes, funder.sectors) == (["africa"], ["GH", "KE"], ["broadband"], ["22040"])
    again = page(client.get("/funders/profile"))
    assert again.xpath("//input[@name='ticket_max']/@value") == ["5000000.00"]
    assert again.xpath("//select[@name='countries']/option[@selected]/@value") == ["GH", "KE"]


def test_profile_bad_ticket_range_rejected(client, login, make_user, db):
    donor = make_user("donor", organisation="European Commission")
    login(donor)

    response = client.post("/funders/profile", data=profile_form(ticket_min="900000.00", ticket_max="100000.00"))

    assert response.status_code == 422
    document = page(response)
    assert document.xpath("//*[@id='ticket_max-error']/text()") == ["Maximum ticket is below the minimum ticket."]
    assert document.xpath("//input[@name='ticket_max']/@value") == ["100000.00"]
    assert document.xpath("//input[@name='ticket_min']/@value") == ["900000.00"]
    assert funder_for_user(donor, create=False) is None


def test_profile_unknown_currency_rejected(client, login, funder_of, db):
    funder = funder_of("European Commission", currency="EUR", ticket_min_minor=10_000)
    login(funder.donor)

    response = client.post("/funders/profile", data=profile_form(currency="XYZ", name="Renamed"))

    assert response.status_code == 422
    document = page(response)
    errors = document.xpath("//*[@id='currency-error']/text()")
    assert len(errors) == 1
    assert "Unknown currency 'XYZ'" in errors[0]
    assert document.xpath("//input[@name='currency']/@value") == ["XYZ"]
    db.session.refresh(funder)
    assert (funder.name, funder.currency, funder.ticket_min_minor) == ("European Commission", "EUR", 10_000)


@pytest.mark.parametrize(
    "changes, field, message",
    [
        ({"ticket_min": "12.345"}, "ticket_min", "more decimals than EUR allows"),
        ({"annual_budget": "-1"}, "annual_budget", "must be greater than zero"),
        ({"decision_days": "soon"}, "decision_days", "Decision time 'soon' is not a whole number of days."),
        ({"decision_days": "5000"}, "decision_days", "between 0 and 3650 days"),
        ({"regions": ["atlantis"]}, "regions", "Unknown region 'atlantis'"),
        ({"name": ""}, "name", "required"),
    ],
)
def test_profile_bad_field_rejected(client, login, make_user, changes, field, message):
    donor = make_user("donor", organisation="European Commission")
    login(donor)

    response = client.post("/funders/profile", data=profile_form(**changes))

    assert response.status_code == 422
    errors = page(response).xpath(f"//*[@id='{field}-error']/text()")
    assert len(errors) == 1
    assert message in errors[0]
    assert funder_for_user(donor, create=False) is None


def test_profile_reports_all_bad_fields(client, login, make_user):
    login(make_user("donor", organisation="European Commission"))

    response = client.post("/funders/profile", data=profile_form(ticket_min="abc", themes=["weather"]))

    assert response.status_code == 422
    document = page(response)
    assert document.xpath("//*[@id='ticket_min-error']")
    assert document.xpath("//*[@id='themes-error']")


@pytest.mark.parametrize("role", ["owner", "coordinator"])
def test_profile_for_donors_only(client, login, make_user, role):
    login(make_user(role))

    assert client.get("/funders/profile").status_code == 403
    assert client.post("/funders/profile", data=profile_form()).status_code == 403


def test_profile_needs_login(client, db):
    response = client.get("/funders/profile")

    assert response.status_code == 302
    assert "/login" in response.headers["Location"]
