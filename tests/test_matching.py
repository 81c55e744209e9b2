"""Tests of matching: each scoring rule, the explanation, the stored suggestions, review and the pages."""

import math
import re
from datetime import datetime, timedelta, timezone

import pytest
from lxml import html
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from financing import create_app
from financing.config import TestConfig
from financing.core.errors import Conflict, Forbidden, NotFound, ValidationFailed
from financing.core.time import utcnow
from financing.funders.models import Funder, FunderPreference
from financing.funders.services import FunderInput, funder_for_user, update_funder
from financing.matching.engine import (
    DEFAULT_MIN_SCORE, DEFAULT_WEIGHTS, PARTS, MatchSettings, explain, funder_profile, load_funder_profiles, project_profile,
    run_matching, score_pair, short_range,
)
from financing.matching.models import Match
from financing.matching.services import MatchFilters, accept_match, get_match, list_matches, reject_match
from financing.pledges.models import Pledge, PledgeEvent
from financing.projects.models import FundingNeed, Project, ProjectTag
from financing.projects.services import NeedInput, ProjectInput, create_project, publish_project, submit_project

EUR_MILLION = 100_000_000  # 1M EUR in cents


# Builders: projects and funders straight from the models, so each test sets exactly the inputs it scores.

@pytest.fixture
def owner(make_user):
    return make_user("owner", organisation="Ministry of ICT, Kenya")


@pytest.fixture
def coordinator(make_user):
    return make_user("coordinator", organisation=None)


@pytest.fixture
def build_project(db, owner):
    def build(countries=(), regions=(), themes=(), sectors=(), needs=None, status="published", title="Rural broadband"):
        project = Project(title=title, organisation_id=owner.organisation_id, status=status, created_by_id=owner.id)
        tags = [("country", code) for code in countries] + [("region", code) for code in regions]
        tags += [("theme", code) for code in themes] + [("sector", code) for code in sectors]
        project.tags = [ProjectTag(kind=kind, code=code) for kind, code in tags]
        needs = needs or [{"goal_minor": 2 * EUR_MILLION}]
        project.needs = [
            FundingNeed(
                title=need.get("title", f"Need {position}"), goal_minor=need["goal_minor"],
                currency=need.get("currency", "EUR"), pledged_minor=need.get("pledged_minor", 0),
                deadline=need.get("deadline"), status=need.get("status", "open"), position=position,
            )
            for position, need in enumerate(needs)
        ]
        db.session.add(project)
        db.session.commit()
        return project

    return build


@pytest.fixture
def build_funder(db):
    def build(name="Development fund", currency="EUR", ticket_min=None, ticket_max=None, budget=None,
              decision_days=None, countries=(), regions=(), themes=(), sectors=(), **extra):
        funder = Funder(
            name=name, currency=currency, ticket_min_minor=ticket_min, ticket_max_minor=ticket_max,
            annual_budget_minor=budget, decision_days=decision_days, **extra,
        )
        prefs = [("country", code) for code in countries] + [("region", code) for code in regions]
        prefs += [("theme", code) for code in themes] + [("sector", code) for code in sectors]
        funder.preferences = [FunderPreference(kind=kind, code=code) for kind, code in prefs]
        db.session.add(funder)
        db.session.commit()
        return funder

    return build


def score(project, funder, used_minor=0):
    """Score one pair the way a run does, with the default weights."""
    now = utcnow()
    return score_pair(project_profile(project, now), funder_profile(funder, used_minor, now.year), DEFAULT_WEIGHTS, now.date())


def matches(db):
    return list(db.session.scalars(select(Match).order_by(Match.id)))


def count_matches(db) -> int:
    return db.session.scalar(select(func.count()).select_from(Match))


@pytest.fixture
def low_minimum(app, monkeypatch):
    """Keep every pair, however low it scores."""
    monkeypatch.setitem(app.config, "MATCH_MIN_SCORE", 0.0)


# Region fit

def test_region_same_country(db, build_project, build_funder):
    pair = score(build_project(countries=["KE"]), build_funder(countries=["KE", "UG"], regions=["europe"]))
    assert pair.parts["region"] == 1.0
    assert "Kenya is one of the funder's preferred countries" in explain(pair)


def test_region_via_country(db, build_project, build_funder):
    pair = score(build_project(countries=["KE"]), build_funder(regions=["africa"]))
    assert pair.parts["region"] == 0.8
    assert "Kenya is in Africa, which the funder prefers" in explain(pair)


def test_region_tag(db, build_project, build_funder):
    pair = score(build_project(regions=["americas"]), build_funder(regions=["americas"], countries=["FR"]))
    assert pair.parts["region"] == 0.6
    assert "The project covers Americas, which the funder prefers" in explain(pair)


def test_region_country_beats_region(db, build_project, build_funder):
    pair = score(build_project(countries=["GH", "KE"], regions=["europe"]), build_funder(countries=["KE"], regions=["europe"]))
    assert pair.parts["region"] == 1.0


@pytest.mark.parametrize("regions", [["europe"], []])
def test_region_global_project(db, build_project, build_funder, regions):
    pair = score(build_project(), build_funder(regions=regions))
    assert pair.parts["region"] == 0.6
    assert "The project is global" in explain(pair)


def test_region_no_preference_neutral(db, build_project, build_funder):
    pair = score(build_project(countries=["KE"]), build_funder(themes=["broadband"]))
    assert pair.parts["region"] == 0.5
    assert "The funder states no regional preference" in explain(pair)


def test_region_elsewhere(db, build_project, build_funder):
    pair = score(build_project(countries=["KE"]), build_funder(regions=["europe"], countries=["FJ"]))
    assert pair.parts["region"] == 0.0
    assert "Kenya is outside the funder's preferred countries and regions" in explain(pair)


# Theme fit

def test_theme_shared(db, build_project, build_funder):
    pair = score(build_project(themes=["spectrum"]), build_funder(themes=["spectrum"]))
    assert pair.parts["theme"] == 1.0
    assert "spectrum is one of the funder's themes" in explain(pair)


@pytest.mark.parametrize("sector, theme, phrase", [
    ("22040", "broadband", "broadband (22040) is one of the funder's themes"),
    ("15110", "ict-applications", "ICT applications (15110) is one of the funder's themes"),
])
def test_theme_via_sector(db, build_project, build_funder, sector, theme, phrase):
    pair = score(build_project(sectors=[sector]), build_funder(themes=[theme]))
    assert pair.parts["theme"] == 1.0
    assert phrase in explain(pair)


def test_theme_same_sector(db, build_project, build_funder):
    pair = score(build_project(sectors=["22030"]), build_funder(sectors=["22030"]))
    assert pair.parts["theme"] == 1.0
    assert "DAC sector 22030 is one of the funder's sectors" in explain(pair)


def test_theme_covering_funder_sector(db, build_project, build_funder):
    pair = score(build_project(themes=["backbones"]), build_funder(sectors=["22020"]))
    assert pair.parts["theme"] == 1.0
    assert "backbones covers the funder's sector 22020" in explain(pair)


def test_theme_same_category_partial(db, build_project, build_funder):
    # 22030 (radio and TV) and 22040 (ICT) share the DAC category 220, communications.
    pair = score(build_project(sectors=["22030"]), build_funder(sectors=["22040"]))
    assert pair.parts["theme"] == 0.5
    assert "DAC sector 22030 is in the same category (220) as the funder's sector 22040" in explain(pair)


def test_theme_nothing_shared(db, build_project, build_funder):
    pair = score(build_project(sectors=["11330"]), build_funder(themes=["broadcasting"]))
    assert pair.parts["theme"] == 0.0
    assert "the project shares no theme or sector with the funder" in explain(pair)


def test_theme_no_preference_neutral(db, build_project, build_funder):
    pair = score(build_project(sectors=["22040"]), build_funder(regions=["africa"]))
    assert pair.parts["theme"] == 0.5
    assert "the funder states no theme preference" in explain(pair)


# Ticket fit

def test_ticket_inside_range(db, build_project, build_funder):
    project = build_project(needs=[{"goal_minor": 3 * EUR_MILLION, "pledged_minor": EUR_MILLION}])
    pair = score(project, build_funder(ticket_min=EUR_MILLION // 2, ticket_max=5 * EUR_MILLION))
    assert pair.parts["ticket"] == 1.0
    # The remaining 2.0M counts, not the 3.0M goal.
    assert "2.0M EUR is inside its 0.5M to 5M ticket range" in explain(pair)


def test_ticket_below_minimum(db, build_project, build_funder):
    project = build_project(needs=[{"goal_minor": EUR_MILLION // 10}])
    pair = score(project, build_funder(ticket_min=EUR_MILLION // 2, ticket_max=5 * EUR_MILLION))
    # A factor of 5 below the minimum: halved for each factor of 10, on a log scale.
    assert pair.parts["ticket"] == pytest.approx(0.5 ** math.log10(5))
    assert "100.0k EUR is below its minimum ticket of 500k EUR" in explain(pair)


def test_ticket_above_maximum(db, build_project, build_funder):
    project = build_project(needs=[{"goal_minor": 20 * EUR_MILLION}])
    pair = score(project, build_funder(ticket_min=EUR_MILLION, ticket_max=5 * EUR_MILLION))
    assert pair.parts["ticket"] == pytest.approx(0.5 ** math.log10(4))
    assert "20.0M EUR is above its maximum ticket of 5M EUR" in explain(pair)


def test_ticket_different_currency_neutral(db, build_project, build_funder):
    project = build_project(needs=[{"goal_minor": 2 * EUR_MILLION, "currency": "USD"}])
    pair = score(project, build_funder(ticket_min=EUR_MILLION // 2, ticket_max=5 * EUR_MILLION))
    assert pair.parts["ticket"] == 0.5
    assert "ticket not compared: different currency" in explain(pair)


def test_ticket_without_range_neutral(db, build_project, build_funder):
    pair = score(build_project(), build_funder())
    assert pair.parts["ticket"] == 0.5


def test_short_range_scales():
    assert short_range(50_000_000, 500_000_000, "EUR") == "0.5M to 5M"
    assert short_range(100_000, 500_000_000, "EUR") == "1k to 5M"
    assert short_range(25_000_000, 75_000_000, "EUR") == "250k to 750k"


# Capacity

def confirm_pledge(db, funder, need, amount_minor, at):
    """Store a confirmed pledge with its ledger row dated `at`."""
    pledge = Pledge(
        need_id=need.id, funder_id=funder.id, kind="commitment", state="confirmed",
        amount_minor=amount_minor, currency=need.currency, need_amount_minor=amount_minor,
    )
    db.session.add(pledge)
    db.session.flush()
    db.session.add(PledgeEvent(pledge_id=pledge.id, from_state="pledged", to_state="confirmed", amount_minor=amount_minor, at=at))
    db.session.commit()
    return pledge


def test_capacity_counts_this_years_confirmed_pledges(db, build_project, build_funder):
    funder = build_funder(regions=["africa"], budget=10 * EUR_MILLION, ticket_max=5 * EUR_MILLION)
    other = build_project(title="Earlier project", needs=[{"goal_minor": 20 * EUR_MILLION}])
    now = utcnow()
    confirm_pledge(db, funder, other.needs[0], 9 * EUR_MILLION, now)
    # Confirmed last year: it does not count against this year's budget.
    confirm_pledge(db, funder, other.needs[0], 5 * EUR_MILLION, datetime(now.year - 1, 12, 31, 12, tzinfo=timezone.utc))
    # Imported from IATI: its ledger row has the import time, not the commitment date.
    imported = confirm_pledge(db, funder, other.needs[0], 4 * EUR_MILLION, now)
    imported.import_key = "XI-IATI-EC_INTPA-2018/397-629|XI-IATI-EC_INTPA"
    db.session.commit()
    project = build_project(countries=["KE"])

    run_matching(project_id=project.id)

    match = db.session.scalar(select(Match).where(Match.project_id == project.id))
    assert match.parts["capacity"] == 0.5
    assert f"its remaining {now.year} budget of 1M EUR covers 50% of it" in match.explanation


def test_capacity_enough_budget(db, build_project, build_funder):
    pair = score(build_project(), build_funder(budget=10 * EUR_MILLION))
    assert pair.parts["capacity"] == 1.0
    assert "budget of 10M EUR covers it" in explain(pair)


def test_capacity_compares_only_the_maximum_ticket(db, build_project, build_funder):
    # 2M left of the budget covers the 2M the funder would put into a 20M need.
    project = build_project(needs=[{"goal_minor": 20 * EUR_MILLION}])
    pair = score(project, build_funder(budget=10 * EUR_MILLION, ticket_max=2 * EUR_MILLION), used_minor=8 * EUR_MILLION)
    assert pair.parts["capacity"] == 1.0


def test_capacity_used_up(db, build_project, build_funder):
    pair = score(build_project(), build_funder(budget=10 * EUR_MILLION), used_minor=10 * EUR_MILLION)
    assert pair.parts["capacity"] == 0.0
    assert "budget is fully committed" in explain(pair)


def test_capacity_without_budget_neutral(db, build_project, build_funder):
    pair = score(build_project(), build_funder())
    assert pair.parts["capacity"] == 0.5


def test_loaded_profiles_match_models(db, build_project, build_funder):
    """The plain rows give the same profiles as the models, with weights and budget use."""
    from decimal import Decimal

    learned = build_funder(name="Learned", currency="USD", ticket_min=EUR_MILLION, ticket_max=9 * EUR_MILLION,
                           budget=10 * EUR_MILLION, decision_days=90, learned_from=12)
    learned.preferences = [
        FunderPreference(kind="country", code="KE", weight=Decimal("0.6")),
        FunderPreference(kind="region", code="africa", weight=Decimal("0.9")),
        FunderPreference(kind="sector", code="22040", weight=Decimal("0.35")),
        FunderPreference(kind="sector", code="22030", weight=Decimal("0.65")),
        FunderPreference(kind="theme", code="broadband"),
    ]
    by_hand = build_funder(name="By hand", regions=["asia-pacific"], themes=["e-government"], sectors=["15110"],
                           budget=5 * EUR_MILLION)
    bare = build_funder(name="No preferences")
    db.session.commit()
    project = build_project(needs=[{"goal_minor": 20 * EUR_MILLION}])
    now = utcnow()
    confirm_pledge(db, by_hand, project.needs[0], 3 * EUR_MILLION, now)

    loaded = load_funder_profiles(now)

    assert [profile.id for profile in loaded] == [learned.id, by_hand.id, bare.id]
    assert loaded[0] == funder_profile(learned, 0, now.year)
    assert loaded[1] == funder_profile(by_hand, 3 * EUR_MILLION, now.year)
    assert loaded[2] == funder_profile(bare, 0, now.year)
    assert loaded[0].weights["sector"] == {"22030": 0.65, "22040": 0.35}
    assert loaded[0].categories == {"220": "22030"}
    assert loaded[1].used_minor == 3 * EUR_MILLION
    assert load_funder_profiles(now, by_hand.id) == [loaded[1]]


# Time

def test_time_deadline_before_decision(db, build_project, build_funder):
    deadline = utcnow().date() + timedelta(days=30)
    pair = score(build_project(needs=[{"goal_minor": EUR_MILLION, "deadline": deadline}]), build_funder(decision_days=90))
    assert pair.parts["time"] == pytest.approx(30 / 90)
    assert f"the deadline of {deadline.isoformat()} leaves 30 days, less than its 90-day decision time" in explain(pair)


def test_time_deadline_after_decision(db, build_project, build_funder):
    deadline = utcnow().date() + timedelta(days=120)
    pair = score(build_project(needs=[{"goal_minor": EUR_MILLION, "deadline": deadline}]), build_funder(decision_days=90))
    assert pair.parts["time"] == 1.0
    assert "deadline" not in explain(pair)


def test_time_without_deadline(db, build_project, build_funder):
    pair = score(build_project(), build_funder(decision_days=90))
    assert pair.parts["time"] == 1.0


def test_time_unknown_decision_neutral(db, build_project, build_funder):
    deadline = utcnow().date() + timedelta(days=10)
    pair = score(build_project(needs=[{"goal_minor": EUR_MILLION, "deadline": deadline}]), build_funder())
    assert pair.parts["time"] == 0.5


# Score and explanation

def test_score_is_weighted_geometric_mean(db, build_project, build_funder):
    pair = score(
        build_project(countries=["KE"], sectors=["22040"]),
        build_funder(regions=["africa"], themes=["broadband"], ticket_min=EUR_MILLION // 2, ticket_max=5 * EUR_MILLION),
    )
    total = sum(DEFAULT_WEIGHTS.values())
    log_mean = sum(DEFAULT_WEIGHTS[name] * math.log(0.01 + pair.parts[name]) for name in DEFAULT_WEIGHTS) / total
    assert pair.score == pytest.approx(math.exp(log_mean) - 0.01, abs=1e-4)
    assert 0.0 <= pair.score <= 1.0


def test_explanation_is_one_sentence(db, build_project, build_funder):
    pair = score(
        build_project(countries=["KE"], sectors=["22040"]),
        build_funder(regions=["africa"], themes=["broadband"], ticket_min=EUR_MILLION // 2, ticket_max=5 * EUR_MILLION),
    )
    assert explain(pair) == (
        "Kenya is in Africa, which the funder prefers; broadband (22040) is one of the funder's themes; "
        "2.0M EUR is inside its 0.5M to 5M ticket range."
    )


def test_best_need_kept(db, build_project, build_funder):
    project = build_project(needs=[
        {"title": "Backbone", "goal_minor": 40 * EUR_MILLION},
        {"title": "Feasibility study", "goal_minor": 2 * EUR_MILLION},
    ])
    pair = score(project, build_funder(ticket_min=EUR_MILLION, ticket_max=5 * EUR_MILLION))
    assert pair.need.id == project.needs[1].id


def test_closed_passed_and_full_needs_skipped(db, build_project, build_funder):
    yesterday = utcnow().date() - timedelta(days=1)
    project = build_project(needs=[
        {"goal_minor": EUR_MILLION, "deadline": yesterday},
        {"goal_minor": EUR_MILLION, "status": "funded", "pledged_minor": EUR_MILLION},
        {"goal_minor": EUR_MILLION, "status": "closed"},
        {"goal_minor": EUR_MILLION, "pledged_minor": EUR_MILLION},
    ])
    assert project_profile(project, utcnow()) is None


def test_deadline_today_still_open(db, build_project):
    project = build_project(needs=[{"goal_minor": EUR_MILLION, "deadline": utcnow().date()}])
    assert project_profile(project, utcnow()) is not None


# Runs: storing, limits, review state

def test_run_stores_one_match_per_pair(db, build_project, build_funder):
    project = build_project(countries=["KE"], sectors=["22040"], needs=[{"goal_minor": EUR_MILLION}, {"goal_minor": 2 * EUR_MILLION}])
    funder = build_funder(regions=["africa"], themes=["broadband"])

    first = run_matching()
    db.session.commit()
    second = run_matching()
    db.session.commit()

    assert first.created == 1
    assert second.created == 0
    assert second.unchanged == 1
    stored = matches(db)
    assert [(m.project_id, m.funder_id) for m in stored] == [(project.id, funder.id)]
    assert stored[0].status == "suggested"
    assert stored[0].weights == MatchSettings.from_config({}).weights
    assert len(stored[0].inputs_digest) == 64


def test_report_line(db, build_project, build_funder):
    build_project(countries=["KE"])
    build_funder(regions=["africa"])
    line = str(run_matching())
    assert line.startswith("Matching: 1 created, 0 updated, 0 unchanged, 0 stale, 0 removed")
    assert "\n" not in line
    assert line.endswith(" s.")


def test_database_rejects_duplicate_pair(db, build_project, build_funder):
    project = build_project(countries=["KE"])
    build_funder(regions=["africa"])
    run_matching()
    db.session.commit()
    first = matches(db)[0]

    db.session.add(Match(
        project_id=first.project_id, funder_id=first.funder_id, need_id=first.need_id, score=0.5,
        parts=first.parts, weights=first.weights, explanation="duplicate", inputs_digest="0" * 64,
    ))
    with pytest.raises(IntegrityError):
        db.session.flush()
    db.session.rollback()
    assert count_matches(db) == 1
    assert project.id == first.project_id


@pytest.fixture
def weak_pair(build_project, build_funder):
    """A pair that fits by region only, far above the ticket and with no time to decide: it scores about 0.12."""
    tomorrow = utcnow().date() + timedelta(days=1)
    project = build_project(countries=["KE"], sectors=["11330"], needs=[{"goal_minor": 2 * EUR_MILLION, "deadline": tomorrow}])
    funder = build_funder(regions=["africa"], themes=["broadcasting"], ticket_max=EUR_MILLION // 100_000, decision_days=90)
    return project, funder


def test_low_scores_not_stored(db, weak_pair):
    assert score(*weak_pair).score < DEFAULT_MIN_SCORE
    report = run_matching()
    assert report.created == 0
    assert count_matches(db) == 0


def test_minimum_score_from_config(db, weak_pair, app, monkeypatch):
    monkeypatch.setitem(app.config, "MATCH_MIN_SCORE", 0.0)
    assert run_matching().created == 1


def test_funder_without_matching_preference_not_suggested(db, build_project, build_funder, low_minimum):
    build_project(countries=["KE"], sectors=["22040"])
    neutral = build_funder(name="States nothing", ticket_min=EUR_MILLION, ticket_max=5 * EUR_MILLION)
    build_funder(name="Elsewhere", regions=["europe"], themes=["broadcasting"])
    assert score(db.session.scalar(select(Project)), neutral).score > 0.5
    assert run_matching().created == 0


def test_keeps_best_per_project(db, build_project, build_funder, app, monkeypatch):
    monkeypatch.setitem(app.config, "MATCH_MAX_PER_PROJECT", 2)
    project = build_project(countries=["KE"], sectors=["22040"])
    best = build_funder(name="Kenya fund", countries=["KE"], themes=["broadband"])
    second = build_funder(name="Africa fund", regions=["africa"], themes=["broadband"])
    third = build_funder(name="Broadband fund", themes=["broadband"])
    run_matching()
    db.session.commit()
    assert {m.funder_id for m in matches(db)} == {best.id, second.id}

    # A better funder arrives: the weakest suggestion makes room.
    better = build_funder(name="Kenya ICT fund", countries=["KE"], themes=["broadband"], ticket_min=EUR_MILLION, ticket_max=5 * EUR_MILLION)
    report = run_matching(funder_id=better.id)
    db.session.commit()
    assert report.created == 1
    assert report.removed == 1
    assert {m.funder_id for m in matches(db)} == {best.id, better.id}
    assert third.id not in {m.funder_id for m in matches(db)}
    assert project.id == matches(db)[0].project_id


def test_weights_from_config(db, build_project, build_funder, app, monkeypatch):
    monkeypatch.setitem(app.config, "MATCH_WEIGHTS", {**dict.fromkeys(PARTS, 0), "region": 1})
    build_project(countries=["KE"])
    build_funder(countries=["KE"], themes=["broadcasting"])
    run_matching()
    match = matches(db)[0]
    assert match.score == 1.0
    assert match.weights == {**dict.fromkeys(PARTS, 0.0), "region": 1.0}


@pytest.mark.parametrize("config, message", [
    ({"MATCH_WEIGHTS": {"budget": 0.5}}, "unknown part 'budget'"),
    ({"MATCH_WEIGHTS": {"region": -1}}, "MATCH_WEIGHTS['region']"),
    ({"MATCH_WEIGHTS": dict.fromkeys(DEFAULT_WEIGHTS, 0)}, "all zero"),
    ({"MATCH_MIN_SCORE": 1.5}, "MATCH_MIN_SCORE"),
    ({"MATCH_MAX_PER_PROJECT": 0}, "MATCH_MAX_PER_PROJECT"),
])
def test_bad_settings_rejected(config, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        MatchSettings.from_config(config)


def test_accepted_match_goes_stale(db, build_project, build_funder, coordinator):
    project = build_project(countries=["KE"], sectors=["22040"])
    build_funder(regions=["africa"], themes=["broadband"])
    run_matching()
    match = matches(db)[0]
    accept_match(coordinator, match.id, "Fits the EU Africa broadband window.")
    db.session.commit()

    # Same inputs: the decision is kept.
    report = run_matching()
    db.session.commit()
    assert report.unchanged == 1
    assert db.session.get(Match, match.id).status == "accepted"

    # The owner moves the project: the accepted match needs a new review.
    project.tags.append(ProjectTag(kind="country", code="UG"))
    db.session.commit()
    report = run_matching()
    db.session.commit()
    match = db.session.get(Match, match.id)
    assert report.stale == 1
    assert match.status == "stale"
    assert match.review_reason == "Fits the EU Africa broadband window."

    # A stale match can be reviewed again.
    accept_match(coordinator, match.id, "Still fits.")
    assert match.status == "accepted"


def test_rejected_match_below_minimum_kept(db, build_project, build_funder, coordinator):
    project = build_project(countries=["KE"], sectors=["22040"])
    funder = build_funder(regions=["africa"], themes=["broadband"])
    run_matching()
    match = matches(db)[0]
    reject_match(coordinator, match.id, "The fund is closed for 2025.")
    db.session.commit()

    funder.preferences = [FunderPreference(kind="region", code="europe"), FunderPreference(kind="theme", code="broadcasting")]
    db.session.commit()
    run_matching()
    db.session.commit()
    match = db.session.get(Match, match.id)
    assert match.status == "stale"
    assert match.score < 0.35
    assert project.id == match.project_id


def test_suggestions_removed_when_project_leaves(db, build_project, build_funder, coordinator):
    project = build_project(countries=["KE"], sectors=["22040"])
    build_funder(name="A", regions=["africa"])
    build_funder(name="B", themes=["broadband"])
    run_matching()
    accepted, suggested = matches(db)
    accept_match(coordinator, accepted.id)
    db.session.commit()

    project.status = "withdrawn"
    db.session.commit()
    report = run_matching()
    db.session.commit()
    assert report.removed == 1
    assert [m.id for m in matches(db)] == [accepted.id]


def test_run_for_one_project_leaves_others(db, build_project, build_funder):
    first = build_project(countries=["KE"], title="Kenya")
    second = build_project(countries=["GH"], title="Ghana")
    build_funder(regions=["africa"])
    report = run_matching(project_id=first.id)
    assert report.created == 1
    assert [m.project_id for m in matches(db)] == [first.id]
    assert second.id not in {m.project_id for m in matches(db)}


@pytest.mark.parametrize("scope, message", [
    ({"project_id": 404}, "Project 404 not found."),
    ({"funder_id": 404}, "Funder 404 not found."),
])
def test_run_for_unknown_id(db, scope, message):
    with pytest.raises(NotFound, match=message):
        run_matching(**scope)


def test_suggestion_updated_on_change(db, build_project, build_funder):
    build_project(countries=["KE"])
    funder = build_funder(regions=["africa"])
    run_matching()
    db.session.commit()
    funder.preferences.append(FunderPreference(kind="country", code="KE"))
    db.session.commit()
    report = run_matching()
    db.session.commit()
    assert report.updated == 1
    match = matches(db)[0]
    assert match.parts["region"] == 1.0
    assert match.status == "suggested"


def test_through_project_and_funder_services(db, make_user, coordinator):
    owner = make_user("owner", organisation="Ministry of ICT, Kenya")
    donor = make_user("donor", organisation="European Commission")
    project = create_project(owner, ProjectInput(
        title="Rural broadband for Kenya", countries=["KE"], sectors=["22040"],
        needs=[NeedInput(title="Fibre", goal_minor=2 * EUR_MILLION, currency="EUR")],
    ))
    submit_project(owner, project)
    publish_project(coordinator, project)
    funder = funder_for_user(donor)
    update_funder(donor, funder, FunderInput(
        name="European Commission", regions=["africa"], themes=["broadband"],
        ticket_min_minor=EUR_MILLION // 2, ticket_max_minor=5 * EUR_MILLION,
    ))
    db.session.commit()

    run_matching()
    match = matches(db)[0]
    assert (match.project_id, match.funder_id) == (project.id, funder.id)
    assert "Kenya is in Africa" in match.explanation


# Review services

@pytest.fixture
def suggested(db, build_project, build_funder):
    """One suggested match of a Kenyan broadband project with an Africa broadband funder."""
    build_project(countries=["KE"], sectors=["22040"])
    build_funder(name="Africa broadband fund", regions=["africa"], themes=["broadband"])
    run_matching()
    db.session.commit()
    return matches(db)[0]


def test_coordinator_accepts(db, suggested, coordinator):
    match = accept_match(coordinator, suggested.id, "  Good fit.  ")
    assert match.status == "accepted"
    assert match.review_reason == "Good fit."
    assert match.reviewed_by_id == coordinator.id
    assert match.reviewed_at is not None


def test_coordinator_rejects(db, suggested, coordinator):
    match = reject_match(coordinator, suggested.id, "Funder left the region.")
    assert match.status == "rejected"
    assert match.review_reason == "Funder left the region."


@pytest.mark.parametrize("reason", ["", "   "])
def test_reject_without_reason_invalid(db, suggested, coordinator, reason):
    with pytest.raises(ValidationFailed) as caught:
        reject_match(coordinator, suggested.id, reason)
    assert caught.value.status == 422
    assert "reason" in caught.value.fields
    assert db.session.get(Match, suggested.id).status == "suggested"


def test_reason_too_long_invalid(db, suggested, coordinator):
    with pytest.raises(ValidationFailed) as caught:
        accept_match(coordinator, suggested.id, "x" * 2001)
    assert "reason" in caught.value.fields


@pytest.mark.parametrize("role", ["donor", "owner"])
def test_only_coordinators_review(db, suggested, make_user, role):
    user = make_user(role)
    with pytest.raises(Forbidden):
        accept_match(user, suggested.id)
    with pytest.raises(Forbidden):
        reject_match(user, suggested.id, "No.")
    assert db.session.get(Match, suggested.id).status == "suggested"


def test_review_twice_conflicts(db, suggested, coordinator):
    accept_match(coordinator, suggested.id)
    with pytest.raises(Conflict) as caught:
        reject_match(coordinator, suggested.id, "Changed my mind.")
    assert caught.value.status == 409
    assert db.session.get(Match, suggested.id).status == "accepted"


def test_review_unknown_match(db, coordinator):
    with pytest.raises(NotFound):
        accept_match(coordinator, 999)


# Listing

@pytest.fixture
def portfolio(db, build_project, build_funder, make_user, owner):
    """Two projects and two funders, one with a donor account, all four pairs matched."""
    donor = make_user("donor", organisation="Africa broadband fund")
    kenya = build_project(countries=["KE"], sectors=["22040"], title="Kenya broadband")
    pacific = build_project(regions=["asia-pacific"], themes=["spectrum"], title="Pacific spectrum")
    africa = build_funder(name="Africa broadband fund", regions=["africa", "asia-pacific"], themes=["broadband", "spectrum"], organisation_id=donor.organisation_id)
    world = build_funder(name="World fund", themes=["broadband", "spectrum"])
    run_matching()
    db.session.commit()
    return {"donor": donor, "owner": owner, "kenya": kenya, "pacific": pacific, "africa": africa, "world": world}


def test_coordinator_lists_all_by_score(db, portfolio, coordinator):
    items, total = list_matches(coordinator, MatchFilters(), 1, 20)
    assert total == 4
    assert [m.score for m in items] == sorted((m.score for m in items), reverse=True)


@pytest.mark.parametrize("filters, expected", [
    (MatchFilters(region="africa"), {"Kenya broadband"}),
    (MatchFilters(region="asia-pacific"), {"Pacific spectrum"}),
    (MatchFilters(theme="broadband"), {"Kenya broadband"}),
    (MatchFilters(theme="spectrum"), {"Pacific spectrum"}),
    (MatchFilters(status="rejected"), set()),
])
def test_list_filters(db, portfolio, coordinator, filters, expected):
    items, _ = list_matches(coordinator, filters, 1, 20)
    assert {m.project.title for m in items} == expected


def test_list_by_funder_and_project(db, portfolio, coordinator):
    items, total = list_matches(coordinator, MatchFilters(funder_id=portfolio["world"].id, project_id=portfolio["kenya"].id), 1, 20)
    assert total == 1
    assert (items[0].funder_id, items[0].project_id) == (portfolio["world"].id, portfolio["kenya"].id)


def test_donor_sees_own_funder(db, portfolio, coordinator):
    items, total = list_matches(portfolio["donor"], MatchFilters(), 1, 20)
    assert total == 2
    assert {m.funder_id for m in items} == {portfolio["africa"].id}

    rejected = reject_match(coordinator, items[0].id, "Not this year.")
    items, total = list_matches(portfolio["donor"], MatchFilters(), 1, 20)
    # The decision and its reason reach the funder.
    assert total == 2
    assert {m.id: m.review_reason for m in items}[rejected.id] == "Not this year."


def test_donor_cannot_read_other_match(db, portfolio, coordinator):
    items, _ = list_matches(coordinator, MatchFilters(funder_id=portfolio["world"].id), 1, 20)
    with pytest.raises(NotFound):
        get_match(portfolio["donor"], items[0].id)


def test_owner_sees_own_projects(db, portfolio, make_user):
    items, total = list_matches(portfolio["owner"], MatchFilters(), 1, 20)
    assert total == 4
    stranger = make_user("owner", organisation="Ministry of Communications, Fiji")
    assert list_matches(stranger, MatchFilters(), 1, 20) == ([], 0)


def test_donor_without_funder_sees_nothing(db, portfolio, make_user):
    assert list_matches(make_user("donor", organisation=None), MatchFilters(), 1, 20) == ([], 0)


def test_list_pages(db, portfolio, coordinator):
    first, total = list_matches(coordinator, MatchFilters(), 1, 3)
    second, _ = list_matches(coordinator, MatchFilters(), 2, 3)
    assert total == 4
    assert len(first) == 3
    assert len(second) == 1
    with pytest.raises(ValidationFailed) as caught:
        list_matches(coordinator, MatchFilters(), 0, 3)
    assert "page" in caught.value.fields


@pytest.mark.parametrize("args, field", [
    ({"status": "maybe"}, "status"),
    ({"region": "atlantis"}, "region"),
    ({"theme": "mining"}, "theme"),
    ({"funder_id": "abc"}, "funder_id"),
    ({"project_id": "-3"}, "project_id"),
])
def test_bad_filters_name_field(args, field):
    with pytest.raises(ValidationFailed) as caught:
        MatchFilters.from_args(args)
    assert field in caught.value.fields
    assert list(args.values())[0] in caught.value.fields[field]


# Pages

def test_review_page_lists_match(client, login, suggested, coordinator):
    login(coordinator)
    response = client.get("/matches")
    assert response.status_code == 200
    page = html.fromstring(response.data)
    text = page.text_content()
    assert "Rural broadband" in text
    assert "Africa broadband fund" in text
    assert "Kenya is in Africa, which the funder prefers" in text
    assert page.xpath(f"//form[@action='/matches/{suggested.id}/accept']")
    assert page.xpath(f"//form[@action='/matches/{suggested.id}/reject']//textarea[@name='reject-{suggested.id}-reason']")
    assert len(page.xpath("//meter")) == 5


def test_review_page_filters(client, login, portfolio, coordinator):
    login(coordinator)
    text = html.fromstring(client.get("/matches?region=asia-pacific").data).text_content()
    assert "Pacific spectrum" in text
    assert "Kenya broadband" not in text


def test_review_page_bad_filter(client, login, portfolio, coordinator):
    login(coordinator)
    response = client.get("/matches?status=maybe")
    assert response.status_code == 422
    assert "Unknown status &#39;maybe&#39;" in response.get_data(as_text=True)


@pytest.mark.parametrize("role", ["donor", "owner"])
def test_review_page_forbidden(client, login, make_user, role):
    login(make_user(role))
    assert client.get("/matches").status_code == 403


def test_review_page_needs_login(client):
    response = client.get("/matches")
    assert response.status_code == 302
    assert "/login" in response.headers["Location"]


def test_donor_cannot_accept_via_http(client, login, suggested, make_user, db):
    login(make_user("donor"))
    response = client.post(f"/matches/{suggested.id}/accept", data={f"accept-{suggested.id}-reason": "Mine."})
    assert response.status_code == 403
    assert db.session.get(Match, suggested.id).status == "suggested"


def test_coordinator_accepts_via_http(client, login, suggested, coordinator, db):
    login(coordinator)
    response = client.post(f"/matches/{suggested.id}/accept", data={
        f"accept-{suggested.id}-reason": "Good fit.", f"accept-{suggested.id}-next": "/matches?status=suggested",
    })
    assert response.status_code == 303
    assert response.headers["Location"] == "/matches?status=suggested"
    db.session.expire_all()
    match = db.session.get(Match, suggested.id)
    assert match.status == "accepted"
    assert match.review_reason == "Good fit."
    assert "accepted" in client.get(response.headers["Location"]).get_data(as_text=True)


def test_reject_without_reason_via_http(client, login, suggested, coordinator, db):
    login(coordinator)
    response = client.post(f"/matches/{suggested.id}/reject", data={f"reject-{suggested.id}-reason": "  "})
    assert response.status_code == 422
    assert "Give a reason for the rejection." in response.get_data(as_text=True)
    db.session.expire_all()
    assert db.session.get(Match, suggested.id).status == "suggested"


def test_too_long_reason_kept_on_form(client, login, suggested, coordinator, db):
    login(coordinator)
    typed = "Too long. " * 201
    response = client.post(f"/matches/{suggested.id}/accept", data={f"accept-{suggested.id}-reason": typed})
    assert response.status_code == 422
    page = html.fromstring(response.data)
    assert page.xpath(f"//textarea[@name='accept-{suggested.id}-reason']")[0].text_content().strip() == typed.strip()
    db.session.expire_all()
    assert db.session.get(Match, suggested.id).status == "suggested"


def test_review_twice_via_http_flashes(client, login, suggested, coordinator, db):
    login(coordinator)
    accept_match(coordinator, suggested.id)
    db.session.commit()
    response = client.post(f"/matches/{suggested.id}/reject", data={f"reject-{suggested.id}-reason": "No."}, follow_redirects=True)
    assert response.status_code == 200
    assert f"Match {suggested.id} is already accepted" in response.get_data(as_text=True)


@pytest.mark.parametrize("target", ["https://example.com/", "//example.com/matches", "/\\example.com"])
def test_redirect_stays_on_site(client, login, suggested, coordinator, target):
    login(coordinator)
    response = client.post(f"/matches/{suggested.id}/accept", data={f"accept-{suggested.id}-next": target})
    assert response.status_code == 303
    assert response.headers["Location"] == "/matches"


def test_mine_for_donor(client, login, portfolio):
    login(portfolio["donor"])
    response = client.get("/matches/mine")
    assert response.status_code == 200
    text = html.fromstring(response.data).text_content()
    assert "Projects that fit you" in text
    assert "Kenya broadband" in text
    assert "Pacific spectrum" in text
    assert "Kenya is in Africa, which the funder prefers" in text


def test_mine_for_owner(client, login, portfolio):
    login(portfolio["owner"])
    text = html.fromstring(client.get("/matches/mine").data).text_content()
    assert "Funders that fit your projects" in text
    assert "Africa broadband fund" in text
    assert "World fund" in text


def test_mine_for_donor_without_profile(client, login, make_user):
    login(make_user("donor", organisation=None))
    text = html.fromstring(client.get("/matches/mine").data).text_content()
    assert "You have no funder profile yet" in text


def test_review_form_needs_csrf_token(app, db):
    # A second app with CSRF on; the request is rejected before any database access.
    guarded = create_app(TestConfig, WTF_CSRF_ENABLED=True, SQLALCHEMY_DATABASE_URI=app.config["SQLALCHEMY_DATABASE_URI"])
    response = guarded.test_client().post("/matches/1/accept", data={"accept-1-reason": "x"})
    assert response.status_code == 400
