"""The vectorised scorer agrees with engine.score_pair on random projects and funders."""

import random
from datetime import date, timedelta
from decimal import Decimal

import numpy as np
import pytest

from financing.matching import vector
from financing.matching.allocation import build_problem
from financing.matching.engine import (
    DEFAULT_MIN_SCORE,
    DEFAULT_WEIGHTS,
    FunderProfile,
    MatchSettings,
    NeedProfile,
    ProjectProfile,
    _category_of,
    _region_of,
    _themes_of,
    has_evidence,
    score_pair,
)

COUNTRIES = ["KE", "UG", "TZ", "SN", "FR", "DE", "BR", "IN", "CN", "JO", "KZ"]
REGIONS = ["africa", "europe", "americas", "asia-pacific", "arab-states", "cis"]
THEMES = ["broadband", "ict-applications", "capacity-building", "spectrum", "backbones"]
SECTORS = ["22040", "22030", "11110", "12220", "15110", "22010", "43040", "11330"]
CURRENCIES = ["EUR", "USD", "XOF"]
TODAY = date(2027, 1, 10)


def random_project(rng: random.Random, number: int) -> ProjectProfile:
    countries = frozenset(rng.sample(COUNTRIES, rng.randint(0, 2)))
    sectors = frozenset(rng.sample(SECTORS, rng.randint(0, 2)))
    needs = tuple(
        NeedProfile(number * 10 + k, 10 ** rng.randint(3, 8), rng.randint(1, 10 ** rng.randint(3, 8)),
                    rng.choice(CURRENCIES), rng.choice([None, TODAY + timedelta(days=rng.randint(0, 300))]))
        for k in range(rng.randint(1, 3))
    )
    return ProjectProfile(
        number, countries, frozenset(rng.sample(REGIONS, rng.randint(0, 1))),
        frozenset(rng.sample(THEMES, rng.randint(0, 2))), sectors,
        tuple((code, region) for code in sorted(countries) if (region := _region_of(code))),
        tuple((code, _themes_of(code)) for code in sorted(sectors)),
        tuple((code, _category_of(code)) for code in sorted(sectors)),
        needs,
    )


def random_funder(rng: random.Random, number: int) -> FunderProfile:
    codes = {
        "country": frozenset(rng.sample(COUNTRIES, rng.randint(0, 3))),
        "region": frozenset(rng.sample(REGIONS, rng.randint(0, 2))),
        "theme": frozenset(rng.sample(THEMES, rng.randint(0, 2))),
        "sector": frozenset(rng.sample(SECTORS, rng.randint(0, 3))),
    }
    learned = rng.random() < 0.5
    weights = {kind: {code: round(rng.uniform(0.05, 1), 3) for code in found} for kind, found in codes.items()} if learned else {}
    return FunderProfile(
        id=number, currency=rng.choice(CURRENCIES),
        ticket_min_minor=rng.choice([None, 10 ** rng.randint(3, 6)]),
        ticket_max_minor=rng.choice([None, 10 ** rng.randint(6, 9)]),
        annual_budget_minor=rng.choice([None, 0, 10 ** rng.randint(5, 9)]),
        decision_days=rng.choice([None, 0, 30, 90]),
        countries=codes["country"], regions=codes["region"], themes=codes["theme"], sectors=codes["sector"],
        categories={}, sector_themes={}, used_minor=rng.randint(0, 10 ** 6), year=2027,
        weights=weights, activities=rng.randint(1, 900) if learned else 0, currency_known=rng.random() < 0.9,
    )


@pytest.mark.parametrize("seed", range(4))
def test_vector_scores_match_score_pair(app, seed):
    rng = random.Random(seed)
    projects = [random_project(rng, number) for number in range(120)]
    funders = [random_funder(rng, number) for number in range(40)]
    weights = MatchSettings.from_config({}).weights

    top = vector.top_funders(projects, funders, weights, TODAY, 0.0, len(funders), block_needs=50)

    compared = 0
    for project in projects:
        found = dict(top.get(project.id, []))
        for index, funder in enumerate(funders):
            pair = score_pair(project, funder, weights, TODAY)
            assert (index in found) == has_evidence(pair), (project, funder, pair.reasons)
            if index in found:
                # score_pair rounds to 4 decimals; the vector keeps float32.
                assert found[index] == pytest.approx(pair.score, abs=6e-5)
                compared += 1
    assert compared > 500


def test_top_funders_keeps_best_first_and_minimum(app):
    rng = random.Random(7)
    projects = [random_project(rng, number) for number in range(60)]
    funders = [random_funder(rng, number) for number in range(30)]
    weights = MatchSettings.from_config({}).weights

    top = vector.top_funders(projects, funders, weights, TODAY, 0.3, 5, workers=2, block_needs=20)

    for project in projects:
        expected = sorted(
            ((score_pair(project, funder, weights, TODAY), index) for index, funder in enumerate(funders)),
            key=lambda item: (-item[0].score, item[1]),
        )
        expected = [(index, pair.score) for pair, index in expected if has_evidence(pair) and pair.score >= 0.3][:5]
        got = top.get(project.id, [])
        assert [score for _, score in got] == pytest.approx([score for _, score in expected], abs=6e-5)
        assert all(score >= 0.3 - 1e-4 for _, score in got)


# Rates between the test currencies, except USD to XOF, so that some pairs have no rate.
RATES = {("EUR", "USD"): Decimal("1.08"), ("USD", "EUR"): Decimal("0.92"), ("EUR", "XOF"): Decimal("655.957"),
         ("XOF", "EUR"): Decimal("0.001524"), ("XOF", "USD"): Decimal("0.00165")}


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("min_score", [0.0, DEFAULT_MIN_SCORE, 0.35])
def test_allocation_problem_matches_exact_scoring(app, seed, min_score):
    rng = random.Random(seed)
    projects = [random_project(rng, number) for number in range(150)]
    funders = [random_funder(rng, number) for number in range(50)]
    rejected = frozenset((project.id, funder.id) for project in projects[::9] for funder in funders[::4])

    def build(exact: bool):
        return build_problem(projects, funders, DEFAULT_WEIGHTS, min_score, TODAY, lambda base, quote: RATES.get((base, quote)),
                             rejected=rejected, exact=exact)

    exact, fast = build(True), build(False)

    assert exact.size > 100
    assert fast.skipped == exact.skipped
    assert fast.needs == exact.needs
    assert fast.funders == exact.funders
    assert fast.pair_funder.tolist() == exact.pair_funder.tolist()
    assert fast.pair_need.tolist() == exact.pair_need.tolist()
    assert fast.low_minor.tolist() == exact.low_minor.tolist()
    assert fast.high_minor.tolist() == exact.high_minor.tolist()
    # Both round to 4 decimals, so a score may differ by one unit of the last decimal.
    assert np.abs(fast.score - exact.score).max() <= 1e-4 + 1e-9
    assert fast.rates == exact.rates
