"""Learned funder profiles: learning rules, learn_profiles on a real IATI file, hand edits, ranking, benchmark metrics."""

import importlib.util
import json
import math
from datetime import date
import sys
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from flask import g, request_started
from sqlalchemy import select

from financing.core.errors import NotFound
from financing.funders.models import Funder, FunderPreference
from financing.funders.services import FunderInput, funder_for_user, update_funder
from financing.iati.importer import import_file
from financing.matching.engine import (
    DEFAULT_WEIGHTS,
    PARTS,
    NeedProfile,
    ProjectProfile,
    combine,
    currency_fit,
    experience_fit,
    explain,
    funder_profile,
    region_fit,
    score_pair,
    theme_fit,
    ticket_fit,
)
from financing.matching.profiles import (
    MAX_PER_KIND,
    MIN_WEIGHT,
    Funding,
    LearnedProfile,
    activity_weights,
    category_of,
    funder_snapshot,
    learn,
    learn_profiles,
    percentile_minor,
    region_of,
    tag_shares,
    themes_of,
)
from financing.pledges.models import Pledge

ROOT = Path(__file__).resolve().parent.parent
INDIGO_FILE = ROOT / "data" / "iati-activities" / "indigo-trust_v1.01_2012_ict-grants.xml"
INDIGO_REF = "GB-CHC-1075920"


def load_benchmark():
    """Load benchmarks/matching_quality.py, which is a script and not part of the package."""
    path = ROOT / "benchmarks" / "matching_quality.py"
    spec = importlib.util.spec_from_file_location("matching_quality", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("matching_quality", module)
    spec.loader.exec_module(module)
    return module


benchmark = load_benchmark()


@pytest.fixture(autouse=True)
def fresh_globals_per_request(app):
    """Start each request with an empty `g`, so Flask-Login loads the user of that request."""

    def clear_globals(sender, **extra):
        for name in list(g):
            g.pop(name)

    request_started.connect(clear_globals, app)
    yield
    request_started.disconnect(clear_globals, app)


def funding(activity, amount, currency="EUR", countries=None, regions=(), sectors=None, themes=None) -> Funding:
    return Funding(activity, amount, currency, countries or {}, frozenset(regions), sectors or {}, themes or {})


def project(countries=(), regions=(), sectors=(), themes=()) -> ProjectProfile:
    return ProjectProfile(
        id=1, countries=frozenset(countries), regions=frozenset(regions), themes=frozenset(themes),
        sectors=frozenset(sectors),
        country_regions=tuple((code, region_of(code)) for code in sorted(countries) if region_of(code)),
        sector_themes=tuple((code, themes_of(code)) for code in sorted(sectors)),
        sector_categories=tuple((code, category_of(code)) for code in sorted(sectors)),
        needs=(),
    )


def need(amount, currency="EUR") -> NeedProfile:
    return NeedProfile(1, amount, amount, currency, None)


# Learning from plain values


def test_tag_shares_use_percentages():
    shares = tag_shares({"KE": Decimal("60"), "UG": Decimal("20")})

    # The 20% the file leaves (e.g. to a region) stays unassigned.
    assert shares == pytest.approx({"KE": 0.6, "UG": 0.2})


def test_tag_shares_above_100_scaled():
    assert tag_shares({"KE": Decimal("150"), "UG": Decimal("50")}) == pytest.approx({"KE": 0.75, "UG": 0.25})


def test_tag_shares_split_equally_without_percentages():
    assert tag_shares({"KE": None, "UG": Decimal("70"), "TZ": None, "RW": Decimal("30")}) == pytest.approx(
        {"KE": 0.25, "UG": 0.25, "TZ": 0.25, "RW": 0.25}
    )
    assert tag_shares({}) == {}


def test_activity_weights_by_amount_then_currency():
    fundings = [
        funding("a", 300, "EUR"), funding("b", 100, "EUR"),
        funding("c", 5_000, "USD"), funding("d", None, None),
    ]

    weights = activity_weights(fundings)

    # EUR has 2 of 4 activities and splits its half 3:1; USD and the amount-less one get a quarter each.
    assert weights == pytest.approx([0.375, 0.125, 0.25, 0.25])
    assert sum(weights) == pytest.approx(1.0)


def test_percentile_is_nearest_rank():
    amounts = [50, 10, 40, 20, 30, 60, 70, 80, 90, 100]

    assert percentile_minor(amounts, 10) == 10
    assert percentile_minor(amounts, 90) == 90
    assert percentile_minor(amounts, 11) == 20
    assert percentile_minor([7], 10) == 7
    assert percentile_minor([7], 90) == 7


def test_learn_weights_follow_committed_amounts():
    fundings = [
        funding("a", 300_00, countries={"KE": None}, sectors={"22040": Decimal(100)}),
        funding("b", 100_00, countries={"UG": None}, sectors={"22020": Decimal(100)}),
        funding("c", 100_00, countries={"KE": None, "FR": None}, sectors={"22040": Decimal(100)}),
    ]

    profile = learn(fundings)

    assert profile.activities == 3
    assert profile.weights["country"] == pytest.approx({"KE": 0.7, "UG": 0.2, "FR": 0.1})
    assert profile.weights["region"] == pytest.approx({"africa": 0.9, "europe": 0.1})
    assert profile.weights["sector"] == pytest.approx({"22040": 0.8, "22020": 0.2})
    assert profile.categories == pytest.approx({"220": 1.0})
    assert profile.currency == "EUR"
    assert (profile.ticket_min_minor, profile.ticket_max_minor) == (100_00, 300_00)


def test_learn_region_tag_gets_what_countries_leave():
    fundings = [funding("a", 100, countries={"KE": Decimal(40)}, regions={"arab-states"})]

    profile = learn(fundings)

    assert profile.weights["country"] == pytest.approx({"KE": 0.4})
    assert profile.weights["region"] == pytest.approx({"africa": 0.4, "arab-states": 0.6})


def test_learn_keeps_top_weights_above_threshold():
    # 30 countries: one with half the money, the others share the rest.
    fundings = [funding("big", 29_000, countries={"KE": None})]
    fundings += [funding(f"small{i}", 1_000, countries={code: None}) for i, code in enumerate(
        ["AO", "BJ", "BW", "BF", "BI", "CM", "CV", "CF", "TD", "KM", "CG", "CI", "CD", "GQ", "ER",
         "ET", "GA", "GM", "GH", "GN", "GW", "LS", "LR", "MG", "MW", "ML", "MR", "MU", "MZ"]
    )]

    profile = learn(fundings, min_weight=0.01)

    assert profile.weights["country"]["KE"] == pytest.approx(0.5)
    assert len(profile.weights["country"]) == MAX_PER_KIND
    assert all(weight >= 0.01 for weight in profile.weights["country"].values())
    assert learn(fundings).weights["country"] == pytest.approx({"KE": 0.5})


def test_learn_ticket_in_main_currency():
    fundings = [funding("a", 500, "USD"), funding("b", 900, "USD"), funding("c", 7_000_000, "EUR")]

    profile = learn(fundings)

    assert profile.currency == "USD"
    assert (profile.ticket_min_minor, profile.ticket_max_minor) == (500, 900)
    assert learn(fundings[1:], preferred_currency="EUR").currency == "EUR"
    assert learn([funding("a", None, None)]).currency is None


# Scoring with learned weights


def snapshot(profile: LearnedProfile):
    return funder_snapshot(profile, currency="EUR")


def test_learned_parts_are_shares_of_money():
    profile = learn([
        funding("a", 300, countries={"KE": None}, sectors={"22040": None},
                themes={"broadband": None, "ict-applications": None, "public-access": None}),
        funding("b", 100, countries={"FR": None}, sectors={"12220": None}),
    ])
    funder = snapshot(profile)
    wanted = project(countries={"KE", "UG"}, sectors={"22040"})

    # Kenya got 75% of the money: the country rule (x 1.0) beats Africa's 75% (x 0.8).
    assert region_fit(wanted, funder) == (pytest.approx(0.75), ("country", "KE", pytest.approx(0.75)))
    # The project's sector 22040 is under the three themes that share the funder's money.
    value, reason = theme_fit(wanted, funder)
    assert value == pytest.approx(0.75)
    assert reason[0] == "sector_in_theme"
    assert ticket_fit(need(200), funder)[0] == 1.0
    assert currency_fit(need(200), funder)[0] == 1.0
    assert 0 < experience_fit(funder)[0] < 1


def test_learned_region_counts_country_and_region_shares():
    profile = learn([funding(str(i), 100, countries={code: None}) for i, code in enumerate(["KE", "UG", "TZ", "RW", "SN"])])
    funder = snapshot(profile)

    # Kenya received 20% of the money and the Africa region all of it, so both shares count.
    # The explanation names the stronger rule: 0.8 x 1.0 for the region against 1.0 x 0.2.
    value, reason = region_fit(project(countries={"KE"}), funder)
    assert value == pytest.approx((0.2 + 0.8 * 1.0) / 1.8)
    assert reason[:3] == ("country_in_region", "KE", "africa")


def test_learned_ticket_and_currency():
    funder = snapshot(learn([funding("a", 1_000), funding("b", 2_000)]))

    # 5 times the maximum ticket loses half per factor of 10; a tenth of the minimum loses half.
    assert ticket_fit(need(10_000), funder)[0] == pytest.approx(0.5 ** math.log10(5))
    assert ticket_fit(need(100), funder)[0] == pytest.approx(0.5)
    assert ticket_fit(need(1_500), funder)[0] == 1.0
    assert ticket_fit(need(1_500, "USD"), funder)[0] == 0.5
    assert currency_fit(need(1_500, "USD"), funder)[0] == 0.0


def test_experience_grows_with_portfolio():
    one = snapshot(learn([funding("a", 100)]))
    many = snapshot(learn([funding(str(i), 100) for i in range(600)]))
    by_hand = snapshot(LearnedProfile.build(0, "EUR", (None, None), {"country": {"KE": 1.0}}))

    assert experience_fit(one)[0] == pytest.approx(math.log(2) / math.log(501))
    assert experience_fit(many)[0] == 1.0
    assert experience_fit(by_hand)[0] == 0.5
    assert currency_fit(need(100, "USD"), by_hand)[0] == 0.5


def test_score_prefers_matching_funder():
    kenya = snapshot(learn([funding("a", 100, countries={"KE": None}, sectors={"22040": None})]))
    france = snapshot(learn([funding("b", 100, countries={"FR": None}, sectors={"12220": None})]))
    wanted = ProjectProfile(**{**project(countries={"KE"}, sectors={"22040"}).__dict__, "needs": (need(100),)})

    near = score_pair(wanted, kenya, DEFAULT_WEIGHTS, date(2026, 1, 1))
    far = score_pair(wanted, france, DEFAULT_WEIGHTS, date(2026, 1, 1))

    assert 0 <= far.score < near.score <= 1
    assert "its profile is learned from 1 IATI activity" in explain(near)


def test_combine_ignores_zero_weight_parts():
    parts = dict.fromkeys(PARTS, 1.0)

    assert combine(parts, DEFAULT_WEIGHTS) == pytest.approx(1.0)
    assert combine({**parts, "theme": 0.0}, {"theme": 0.0, "region": 1.0}) == pytest.approx(1.0)
    assert combine({**parts, "theme": 0.0}, {"theme": 1.0, "region": 1.0}) < 0.2


# learn_profiles on a real IATI file


@pytest.fixture
def indigo(db):
    """Import the Indigo Trust's 2012 ICT grants (57 activities) and return its funder."""
    import_file(INDIGO_FILE)
    return db.session.scalar(select(Funder).where(Funder.iati_ref == INDIGO_REF))


def indigo_pledges(db, funder):
    return db.session.scalars(
        select(Pledge).where(Pledge.funder_id == funder.id, Pledge.import_key.is_not(None), Pledge.state.not_in(("cancelled", "refunded")))
    ).all()


def weights_of(funder) -> dict[tuple[str, str], Decimal | None]:
    return {(pref.kind, pref.code): pref.weight for pref in funder.preferences}


def test_learn_indigo_trust(db, indigo):
    report = learn_profiles()
    db.session.commit()

    pledges = indigo_pledges(db, indigo)
    projects = {pledge.need.project_id for pledge in pledges}
    assert report.funders == 12
    assert report.learned == 1
    assert report.without_pledges == 11
    assert indigo.learned_from == len(projects) == 49


def test_learn_indigo_top_country_and_sector(db, indigo):
    learn_profiles()
    db.session.commit()

    countries = {pref.code: pref.weight for pref in indigo.preferences if pref.kind == "country"}
    sectors = {pref.code: pref.weight for pref in indigo.preferences if pref.kind == "sector"}
    # Kenya has the most grants, but the largest amounts went to British grantees.
    assert max(countries, key=countries.get) == "GB"
    assert max(sectors, key=sectors.get) == "22040"

    # The GB weight is GB's share of the committed amount; the file gives no country percentages.
    pledges = indigo_pledges(db, indigo)
    total = sum(pledge.need_amount_minor for pledge in pledges)
    to_gb = sum(
        Decimal(pledge.need_amount_minor) / len(pledge.need.project.countries)
        for pledge in pledges if "GB" in pledge.need.project.countries
    )
    assert countries["GB"] == pytest.approx(to_gb / total, abs=Decimal("0.000001"))


def test_learn_indigo_weights_and_ticket(db, indigo):
    learn_profiles()
    db.session.commit()

    by_kind = defaultdict(list)
    for pref in indigo.preferences:
        by_kind[pref.kind].append(pref.weight)
    assert set(by_kind) == {"country", "region", "sector", "theme"}
    for kind, weights in by_kind.items():
        assert sum(weights) <= 1, kind
        assert min(weights) >= Decimal(str(MIN_WEIGHT)), kind
        assert len(weights) <= MAX_PER_KIND, kind

    amounts = [pledge.need_amount_minor for pledge in indigo_pledges(db, indigo)]
    assert indigo.currency == "GBP"
    assert min(amounts) <= indigo.ticket_min_minor <= indigo.ticket_max_minor <= max(amounts)
    assert indigo.ticket_min_minor in amounts
    assert indigo.ticket_max_minor in amounts


def test_relearn_replaces_learned_preferences(db, indigo):
    learn_profiles()
    db.session.commit()
    learned = weights_of(indigo)
    indigo.preferences.append(FunderPreference(kind="country", code="FR", weight=Decimal("0.5")))
    db.session.commit()

    report = learn_profiles()
    db.session.commit()

    assert weights_of(indigo) == learned
    assert report.learned == 1
    assert report.hand_edited == 0


def test_learn_one_funder(db, indigo):
    report = learn_profiles(funder_id=indigo.id)

    assert report.funders == 1
    assert report.learned == 1
    others = db.session.scalars(select(Funder).where(Funder.id != indigo.id)).all()
    assert all(not funder.preferences for funder in others)


def test_learn_unknown_funder_not_found(db, indigo):
    with pytest.raises(NotFound, match="Funder 999999 not found"):
        learn_profiles(funder_id=999_999)


def test_hand_edit_kept_on_relearn(db, indigo, make_user):
    learn_profiles()
    db.session.commit()
    donor = make_user("donor", organisation=indigo.organisation.name)
    assert funder_for_user(donor, create=False) is indigo
    data = FunderInput(
        name=indigo.name, currency="GBP", ticket_min_minor=1_000_00, ticket_max_minor=50_000_00,
        regions=["africa"], countries=["KE", "NG", "SN"], themes=indigo.themes, sectors=["22040"],
    )
    update_funder(donor, indigo, data)
    db.session.commit()
    edited = weights_of(indigo)

    report = learn_profiles()
    db.session.commit()

    assert report.hand_edited == 1
    assert report.learned == 0
    assert weights_of(indigo) == edited
    assert edited[("country", "SN")] is None
    assert edited[("country", "KE")] is None
    assert (indigo.ticket_min_minor, indigo.ticket_max_minor) == (1_000_00, 50_000_00)
    assert indigo.learned_from == 49


def test_funder_without_pledges_cleared(db, indigo):
    learn_profiles()
    db.session.commit()
    for pledge in indigo_pledges(db, indigo):
        pledge.state = "cancelled"
    db.session.commit()

    report = learn_profiles()
    db.session.commit()

    assert report.cleared == 1
    assert indigo.preferences == []
    assert indigo.learned_from == 0


def test_engine_reads_stored_weights(db, indigo):
    learn_profiles()
    db.session.commit()
    indigo.preferences.append(FunderPreference(kind="country", code="SN", weight=None))

    funder = funder_profile(indigo, 0, 2026)

    assert funder.weights["country"]["SN"] == 1.0
    assert funder.weights["country"]["GB"] == float(weights_of(indigo)[("country", "GB")])
    assert (funder.ticket_min_minor, funder.currency, funder.activities) == (indigo.ticket_min_minor, "GBP", 49)
    assert funder.category_weights["220"] >= funder.weights["sector"]["22040"]


# Pages


def test_detail_page_shows_learned_shares(client, db, indigo):
    learn_profiles()
    db.session.commit()

    text = client.get(f"/funders/{indigo.id}").get_data(as_text=True)

    assert "Learned from 49 activities in this funder's IATI portfolio." in text
    assert "Share of the committed amounts behind each learned preference" in text
    assert "<td>United Kingdom of Great Britain and Northern Ireland (the)</td>" in text
    assert "<td class=\"num\">31%</td>" in text


def test_edit_page_explains_learning(client, login, make_user, db, indigo):
    learn_profiles()
    db.session.commit()
    donor = make_user("donor", organisation=indigo.organisation.name)
    login(donor)

    before = client.get("/funders/profile").get_data(as_text=True)
    form = {
        "name": indigo.name, "kind": "institution", "description": "", "currency": "GBP",
        "ticket_min": "", "ticket_max": "", "annual_budget": "", "decision_days": "",
        "regions": indigo.regions, "countries": [*indigo.countries, "SN"], "themes": indigo.themes, "sectors": indigo.sectors,
    }
    response = client.post("/funders/profile", data=form)
    after = client.get("/funders/profile").get_data(as_text=True)
    detail = client.get(f"/funders/{indigo.id}").get_data(as_text=True)

    assert "learned from 49 activities in your IATI portfolio" in before
    assert "Once you add a preference of your own here" in before
    assert response.status_code == 302
    assert "learning from IATI no longer changes your preferences" in after
    assert "then edited by the funder" in detail
    assert db.session.get(Funder, indigo.id).learned_from == 49


# Benchmark metrics


def test_metrics_on_tiny_ranking():
    ranks = {
        (0, 0): 1.0,                   # case 0: funder 0 first
        (1, 0): 7.0, (1, 1): 3.0,      # case 1: the best true funder is third
        (2, 1): np.inf,                # case 2: funder 1 has no other activity
        (3, 2): 2.0,                   # case 3: funder 2 funds only this case
    }

    result = benchmark.metrics(ranks, n_cases=4)

    assert result["micro_recall@1"] == pytest.approx(1 / 4)
    assert result["micro_recall@5"] == pytest.approx(3 / 4)
    assert result["micro_recall@10"] == pytest.approx(3 / 4)
    assert result["micro_mrr"] == pytest.approx((1 + 1 / 3 + 0 + 1 / 2) / 4)
    # Funders 0 and 1 have two cases each; funder 2 has one and is left out.
    assert result["macro_funders"] == 2
    assert result["macro_recall@1"] == pytest.approx((1 / 2 + 0) / 2)
    assert result["macro_recall@5"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert result["macro_recall@10"] == pytest.approx((1 + 1 / 2) / 2)
    assert result["macro_mrr"] == pytest.approx(((1 + 1 / 7) / 2 + (1 / 3) / 2) / 2)


def tiny_features(truth, candidates, popularity, in_region):
    shape = np.array(truth).shape
    return benchmark.Features(
        candidates=np.array(candidates, dtype=bool), truth=np.array(truth, dtype=bool),
        popularity=np.array(popularity, dtype=float), in_region=np.array(in_region, dtype=bool),
        parts=np.zeros((*shape, len(benchmark.TUNED_PARTS))), learned=np.zeros(shape),
    )


def test_true_ranks_ties_and_candidates():
    features = tiny_features(
        truth=[[0, 1, 0, 0], [0, 0, 0, 1]],
        candidates=[[1, 1, 1, 0], [1, 1, 1, 0]],
        popularity=[[0] * 4] * 2, in_region=[[0] * 4] * 2,
    )
    scores = np.array([[0.9, 0.5, 0.5, 0.99], [0.1, 0.2, 0.3, 0.4]])
    ties = np.array([3, 2, 1, 0])

    ranks = benchmark.true_ranks(scores, features, ties)

    # Funder 2 ties with funder 1 and wins on its lower tie key; funder 3 is no candidate.
    assert ranks[(0, 1)] == 3
    assert ranks[(1, 3)] == np.inf


def test_region_baseline_puts_region_first():
    features = tiny_features(
        truth=[[1, 0, 0]], candidates=[[1, 1, 1]], popularity=[[1, 50, 9]], in_region=[[1, 0, 1]],
    )

    ranks = benchmark.true_ranks(benchmark.region_scores(features), features, np.arange(3))
    popular = benchmark.true_ranks(benchmark.popularity_scores(features), features, np.arange(3))

    assert ranks[(0, 0)] == 2
    assert popular[(0, 0)] == 3


def test_benchmark_runs_on_one_file(capsys):
    code = benchmark.main([str(INDIGO_FILE), "--no-grid"])

    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert code == 0
    assert summary["cases"] == 56
    assert set(summary["results"]) == {"random", "popularity", "region filter + popularity", "engine score"}
    assert 0 <= summary["results"]["engine score"]["micro_mrr"] <= 1
    assert any(line.startswith("engine score") for line in lines)
