"""Time an allocation run at scale: 10,000 open needs and 500 funders, no database.

The script draws projects and funders with realistic spreads: recipient countries weighted
towards Africa and Asia-Pacific, a few themes and DAC sectors each, log-normal need goals and
tickets, three currencies with fixed rates, and yearly budgets that add up to about half of
the open need. It scores every funder-need pair with engine.score_pair through
allocation.build_problem, solves with allocation.solve, checks the integer proposal against
every bound, and prints the figures. The last line of output is one JSON object with every
figure, and the exit status is 1 when a bound is broken.

    .venv/bin/python benchmarks/allocation.py --needs 10000 --funders 500 --method milp
"""

import argparse
import json
import logging
import platform
import sys
import time
from collections import defaultdict
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from financing import reference  # noqa: E402
from financing.matching.allocation import AllocationSettings, build_problem, solve, violations  # noqa: E402
from financing.matching.engine import DEFAULT_MIN_SCORE, DEFAULT_WEIGHTS, FunderProfile, NeedProfile, ProjectProfile  # noqa: E402
from financing.money import minor_units  # noqa: E402

logger = logging.getLogger("benchmarks.allocation")

TODAY = date(2025, 3, 1)
# Share of projects per ITU-D region: an estimate that leans towards Africa and Asia-Pacific.
REGION_WEIGHTS = {"africa": 0.35, "asia-pacific": 0.25, "americas": 0.14, "arab-states": 0.12, "cis": 0.05, "europe": 0.09}
THEME_WEIGHTS = {
    "broadband": 0.24, "backbones": 0.14, "public-access": 0.13, "ict-applications": 0.13,
    "capacity-building": 0.12, "policy-harmonization": 0.10, "spectrum": 0.07, "broadcasting": 0.07,
}
NEEDS_PER_PROJECT = ([1, 2, 3, 4], [0.4, 0.3, 0.2, 0.1])
NEED_CURRENCIES = (["EUR", "USD", "XOF"], [0.55, 0.40, 0.05])
FUNDER_CURRENCIES = (["EUR", "USD"], [0.55, 0.45])
# Major units of the quote for one major unit of the base, fixed so that runs compare.
RATES = {
    ("EUR", "USD"): Decimal("1.08"), ("USD", "EUR"): Decimal("0.9259"),
    ("EUR", "XOF"): Decimal("655.957"), ("USD", "XOF"): Decimal("607.37"),
}
TO_EUR = {"EUR": Decimal(1), "USD": Decimal("0.9259"), "XOF": Decimal(1) / Decimal("655.957")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--needs", type=int, default=10_000, help="open funding needs (default: %(default)s)")
    parser.add_argument("--funders", type=int, default=500, help="funders (default: %(default)s)")
    parser.add_argument("--method", choices=["auto", "milp", "lp"], default="auto", help="solver method (default: %(default)s)")
    parser.add_argument("--time-limit", type=float, default=600.0, help="solver time limit in seconds (default: %(default)s)")
    parser.add_argument("--mip-gap", type=float, default=1e-4, help="relative MIP gap to stop at (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=2025, help="random seed (default: %(default)s)")
    return parser.parse_args(argv)


def lognormal_major(rng: np.random.Generator, median: float, sigma: float, low: float, high: float) -> float:
    return float(np.clip(rng.lognormal(np.log(median), sigma), low, high))


def to_minor(major: float, currency: str) -> int:
    """Round a drawn amount to a tidy figure (three significant digits) in minor units."""
    digits = max(int(np.floor(np.log10(major))) - 2, 0)
    tidy = round(major / 10**digits) * 10**digits
    return int(tidy) * 10 ** minor_units(currency)


def local_amount(eur_major: float, currency: str) -> float:
    return eur_major / float(TO_EUR[currency])


class Draw:
    """Random projects and funders built straight into the engine's plain profiles."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.regions = list(REGION_WEIGHTS)
        self.region_p = np.array(list(REGION_WEIGHTS.values()))
        self.countries = {slug: sorted(region.countries) for slug, region in reference.regions().items()}
        self.themes = list(THEME_WEIGHTS)
        self.theme_p = np.array(list(THEME_WEIGHTS.values()))
        self.theme_sectors = {slug: sorted(theme.sectors) for slug, theme in reference.themes().items()}

    def pick(self, items, weights=None, size=1):
        return list(self.rng.choice(items, size=size, replace=False, p=weights))

    def choice(self, pair):
        items, weights = pair
        return items[self.rng.choice(len(items), p=weights)]

    def project(self, project_id: int, first_need_id: int, need_count: int) -> ProjectProfile:
        rng = self.rng
        region = self.pick(self.regions, self.region_p)[0]

        shape = rng.random()
        countries: list[str] = []
        regions: list[str] = []
        if shape < 0.70:
            countries = self.pick(self.countries[region])
        elif shape < 0.90:
            countries = self.pick(self.countries[region], size=int(rng.integers(2, 4)))
        elif shape < 0.97:
            regions = [region]

        themes = self.pick(self.themes, self.theme_p, size=int(rng.integers(1, 3)))
        sectors: list[str] = []
        if rng.random() < 0.7:
            pool = sorted({code for theme in themes for code in self.theme_sectors[theme]})
            sectors = self.pick(pool, size=min(len(pool), int(rng.integers(1, 3))))

        needs = []
        for offset in range(need_count):
            currency = self.choice(NEED_CURRENCIES)
            goal = to_minor(local_amount(lognormal_major(rng, 400_000, 1.3, 5_000, 50_000_000), currency), currency)
            pledged = int(goal * rng.uniform(0, 0.8)) if rng.random() < 0.3 else 0
            deadline = TODAY + timedelta(days=int(rng.integers(20, 900))) if rng.random() < 0.4 else None
            needs.append(NeedProfile(first_need_id + offset, goal, goal - pledged, currency, deadline))

        return ProjectProfile(
            id=project_id, countries=frozenset(countries), regions=frozenset(regions),
            themes=frozenset(themes), sectors=frozenset(sectors),
            country_regions=tuple((code, reference.region_of_country(code)) for code in sorted(countries)),
            sector_themes=tuple((code, tuple(reference.themes_of_sector(code))) for code in sorted(sectors)),
            sector_categories=tuple((code, reference.sector(code).category) for code in sorted(sectors)),
            needs=tuple(needs),
        )

    def funder(self, funder_id: int) -> FunderProfile:
        rng = self.rng
        currency = self.choice(FUNDER_CURRENCIES)

        kind = rng.random()
        countries: list[str] = []
        regions: list[str] = []
        budget = None
        if kind < 0.15:
            # Development banks and large agencies: big tickets, broad scope.
            regions = self.pick(self.regions, self.region_p, size=int(rng.integers(1, 4)))
            themes = self.pick(self.themes, self.theme_p, size=int(rng.integers(2, 6)))
            low = lognormal_major(rng, 1_000_000, 0.8, 100_000, 20_000_000)
            high = low * rng.uniform(5, 30)
            budget = high * rng.uniform(1, 4)
        elif kind < 0.70:
            # Foundations and bilateral programmes: a few countries or one region, mid tickets.
            region = self.pick(self.regions, self.region_p)[0]
            if rng.random() < 0.5:
                countries = self.pick(self.countries[region], size=int(rng.integers(2, 9)))
            else:
                regions = [region]
            themes = self.pick(self.themes, self.theme_p, size=int(rng.integers(1, 4)))
            low = lognormal_major(rng, 50_000, 1.0, 5_000, 2_000_000)
            high = low * rng.uniform(4, 20)
            budget = high * rng.uniform(3, 10)
        else:
            # Individuals and small donors: small tickets, often no yearly budget.
            regions = self.pick(self.regions, self.region_p) if rng.random() < 0.6 else []
            themes = self.pick(self.themes, self.theme_p, size=int(rng.integers(1, 3)))
            low = lognormal_major(rng, 500, 1.0, 50, 20_000)
            high = low * rng.uniform(5, 50)
            budget = high * rng.uniform(2, 10) if rng.random() < 0.5 else None

        sectors = []
        if rng.random() < 0.3:
            pool = sorted({code for theme in themes for code in self.theme_sectors[theme]})
            sectors = self.pick(pool, size=1)

        # Tickets and budgets were drawn in EUR.
        low_minor = to_minor(local_amount(low, currency), currency)
        high_minor = max(to_minor(local_amount(high, currency), currency), low_minor)
        budget_minor = to_minor(local_amount(budget, currency), currency) if budget else None
        used = int(budget_minor * rng.uniform(0, 0.6)) if budget_minor else 0

        categories: dict[str, str] = {}
        sector_themes: dict[str, str] = {}
        for code in sorted(sectors):
            categories.setdefault(reference.sector(code).category, code)
            for theme in reference.themes_of_sector(code):
                sector_themes.setdefault(theme, code)

        return FunderProfile(
            id=funder_id, currency=currency, ticket_min_minor=low_minor, ticket_max_minor=high_minor,
            annual_budget_minor=budget_minor,
            decision_days=int(rng.choice([30, 60, 90, 120, 180])) if rng.random() < 0.7 else None,
            countries=frozenset(countries), regions=frozenset(regions), themes=frozenset(themes),
            sectors=frozenset(sectors), categories=categories, sector_themes=sector_themes,
            used_minor=used, year=TODAY.year,
        )


def generate(needs: int, funders: int, seed: int) -> tuple[list[ProjectProfile], list[FunderProfile]]:
    draw = Draw(seed)
    projects: list[ProjectProfile] = []
    made = 0
    while made < needs:
        count = min(draw.choice(NEEDS_PER_PROJECT), needs - made)
        projects.append(draw.project(len(projects) + 1, made + 1, count))
        made += count
    return projects, [draw.funder(number + 1) for number in range(funders)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    started = time.perf_counter()
    projects, funders = generate(args.needs, args.funders, args.seed)
    generate_seconds = time.perf_counter() - started

    started = time.perf_counter()
    problem = build_problem(
        projects, funders, DEFAULT_WEIGHTS, DEFAULT_MIN_SCORE, TODAY,
        rate_of=lambda base, quote: RATES.get((base, quote)),
    )
    score_seconds = time.perf_counter() - started
    logger.info("scored %s x %s pairs in %.1f s: %s variables", args.needs, args.funders, score_seconds, problem.size)

    settings = AllocationSettings(method=args.method, time_limit=args.time_limit, mip_gap=args.mip_gap)
    solution = solve(problem, settings)
    broken = violations(problem, solution.amounts)

    covered: dict[str, int] = defaultdict(int)
    for index in solution.chosen:
        covered[problem.needs[problem.pair_need[index]].currency] += int(solution.need_amounts[index])
    share = {code: covered.get(code, 0) / total for code, total in sorted(problem.open_minor.items())}

    def eur(amounts: dict[str, int]) -> Decimal:
        return sum((Decimal(amount).scaleb(-minor_units(code)) * TO_EUR[code] for code, amount in amounts.items()), Decimal(0))

    share_eur = float(eur(covered) / eur(problem.open_minor))
    figures = {
        "needs": args.needs, "funders": args.funders, "method": args.method, "kept_method": solution.method,
        "seed": args.seed,
        "time_limit": args.time_limit, "mip_gap_target": args.mip_gap,
        "generate_seconds": round(generate_seconds, 2), "score_seconds": round(score_seconds, 2),
        "solve_seconds": round(solution.seconds, 2), "variables": solution.variables,
        "binary_indicators": solution.indicators, "constraints": solution.constraints,
        "solver_status": solution.solver_status, "bound": None if solution.bound is None else round(solution.bound, 2),
        "gap": None if solution.gap is None else round(solution.gap, 6),
        "objective": round(solution.objective, 2), "rows": int(solution.chosen.size),
        "violations": len(broken),
        "share_covered": {code: round(value, 4) for code, value in share.items()},
        "share_covered_eur_equivalent": round(share_eur, 4),
        "skipped": problem.skipped.as_dict(),
        "python": platform.python_version(), "machine": platform.machine(),
    }
    print(f"needs x funders      {args.needs} x {args.funders} ({args.method}, kept {solution.method})")
    print(f"scoring              {score_seconds:.1f} s")
    gap = "unknown" if solution.gap is None else f"{solution.gap:.4%}"
    print(f"solve                {solution.seconds:.1f} s, {solution.solver_status}, gap to bound {gap}")
    print(f"variables            {solution.variables} ({solution.indicators} binary indicators)")
    print(f"constraints          {solution.constraints}")
    print(f"objective            {solution.objective:,.2f}")
    print(f"proposal rows        {solution.chosen.size}")
    for code, value in share.items():
        print(f"need covered {code}     {value:.1%} of {problem.open_minor[code] / 10 ** minor_units(code):,.0f}")
    print(f"need covered (EUR eq) {share_eur:.1%}")
    print(f"bounds broken        {len(broken)}")
    print(json.dumps(figures, sort_keys=True))
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
