"""Allocation runs: propose amounts for all open funding needs at once, within every funder's budget.

The model
---------
Each eligible funder-need pair is one variable x, the amount the funder would give, in major
units of the funder's currency. The solver maximises

    sum over pairs of score[f, n] * rate[f, n] * value[n] * x[f, n]

which is the need covered, weighted by the match score. rate converts the funder's currency
into the need's. value converts the need's currency into the objective's currency, so that
a need in XOF does not outweigh one in EUR (see currency_values). The constraints are:

- each need: sum over funders of rate * x <= the need's open amount (goal minus pledges);
- each funder: sum over needs of x <= its capacity for the run (see below);
- each pair: x = 0 or ticket_min <= x <= ticket_max, a semi-continuous variable.

The constraint matrix is a scipy.sparse matrix with two entries per pair, one in its need's
row and one in its funder's row. Amounts go to the solver in major units, scaled by a power
of ten per funder and per need so that bounds stay at or below 1e5. The solution comes back
as floats and is rounded down to integer minor units, and a value just below a minimum ticket
snaps onto it. Every bound is then checked again with integers, converting with
financing.money.convert as a pledge would. An overshoot of a few minor units left by rounding
is taken off the pair with the most room above its minimum ticket. A breach that remains
raises AllocationError, so a run never stores an infeasible proposal.

Which pairs are variables: the project is published, and the need is open with an amount left
and its deadline not passed (engine.project_profile). The per-need score from
engine.score_pair is at least MATCH_MIN_SCORE, and a funder preference matches the project's
region or theme (engine.has_evidence, the rule the suggestions use). No coordinator rejected
the project-funder match, and the minimum ticket is not above the most the pair can take. A
need in another currency than the funder's needs a stored rate from the funder's currency to
the need's (pledges.services.find_rate, the rate a pledge would use). Without one the pair is
skipped and counted.

Funder capacity: a funder with a yearly budget can give its budget minus the pledges it
confirmed this calendar year (engine.budget_used). A funder without a budget can give at most
ALLOCATION_UNBUDGETED_TICKETS maximum tickets in one run (default 1). A funder with neither a
budget nor a maximum ticket is left out and counted, because nothing would bound its share.

Methods
-------
"milp" adds a binary indicator per pair with a minimum ticket (low * y <= x <= high * y) and
solves with scipy.optimize.milp (HiGHS). "lp" solves the LP relaxation (0 <= x <= high) by
column generation with scipy.optimize.linprog (HiGHS dual simplex), then dives: pairs below
their minimum ticket are fixed at 0 and the LP is solved again, at most DIVE_MAX_ROUNDS times.
The relaxation's optimum is an upper bound, so every run stores how far its proposal may be
from the best possible. "auto", the default, runs "lp" and then the MILP in the time left when
the instance has at most ALLOCATION_MILP_MAX_INDICATORS indicators, keeping the better proposal.

The choice was measured with benchmarks/allocation.py (seed 2025, one x86_64 machine with two
cores, scipy 1.17.1 with HiGHS 1.12.0). At 10,000 needs and 500 funders (2.6 million pairs)
the MILP ran out of memory at a 14 GB limit after 3 minutes inside HiGHS. The "lp" method
took 20 seconds and came within 0.03% of the bound. At 2,000 needs and 200 funders the MILP
reached 0.78% from the bound in 300 seconds and the "lp" method 0.15% in 50 seconds. At 400
needs and 50 funders (10,500 indicators) the MILP reached 0.012% in 60 seconds against 0.05%
for the "lp" method, which is why "auto" still runs it on small instances.
"""

import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

import numpy as np
from flask import current_app
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, linprog, milp
from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from financing import reference
from financing.accounts.models import User
from financing.audit import services as audit
from financing.core.errors import Conflict, Forbidden, NotFound, ValidationFailed
from financing.core.time import utcnow
from financing.extensions import db
from financing.funders.models import Funder
from financing.matching import vector
from financing.matching.allocation_models import AllocationRow, AllocationRun
from financing.matching.engine import (
    PARTS, PRECISION, FunderProfile, MatchSettings, PairScore, ProjectProfile, budget_used, explain,
    funder_profile, has_evidence, inputs_digest, load_funder_profiles, project_profile, score_pair,
)
from financing.matching.models import Match
from financing.money import convert, minor_units
from financing.notifications import events as notifications
from financing.pledges.services import find_rate
from financing.projects.models import FundingNeed, Project, ProjectTag

logger = logging.getLogger(__name__)

METHODS = ("auto", "milp", "lp")
DEFAULT_TIME_LIMIT = 120.0
DEFAULT_MILP_MAX_INDICATORS = 10_000
DEFAULT_UNBUDGETED_TICKETS = 1
DEFAULT_MIP_GAP = 1e-4
# Solver noise ignored when an amount in minor units is rounded down: 1/10,000 of a minor unit.
ROUNDING_SLACK = 1e-4


class AllocationError(RuntimeError):
    """Raised when the rounded proposal breaks a bound by more than rounding explains, so that nothing is stored."""


@dataclass(frozen=True)
class AllocationSettings:
    """Solver settings of a run, read from the app config."""

    method: str = "auto"
    time_limit: float = DEFAULT_TIME_LIMIT
    unbudgeted_tickets: int = DEFAULT_UNBUDGETED_TICKETS
    mip_gap: float = DEFAULT_MIP_GAP
    # "auto" runs the MILP after the LP only up to this many binary indicators.
    milp_max_indicators: int = DEFAULT_MILP_MAX_INDICATORS

    @classmethod
    def from_config(cls, config: Mapping | None = None) -> "AllocationSettings":
        """Read the ALLOCATION_* settings: METHOD, TIME_LIMIT, UNBUDGETED_TICKETS, MIP_GAP, MILP_MAX_INDICATORS.

        Raises ValueError naming the setting and its value when one is invalid.
        """
        config = current_app.config if config is None else config
        method = config.get("ALLOCATION_METHOD", "auto")
        if method not in METHODS:
            raise ValueError(f"ALLOCATION_METHOD is {method!r}. Use one of {', '.join(METHODS)}.")
        time_limit = config.get("ALLOCATION_TIME_LIMIT", DEFAULT_TIME_LIMIT)
        if isinstance(time_limit, bool) or not isinstance(time_limit, int | float) or time_limit <= 0:
            raise ValueError(f"ALLOCATION_TIME_LIMIT is {time_limit!r}. Use a number of seconds above 0.")
        tickets = config.get("ALLOCATION_UNBUDGETED_TICKETS", DEFAULT_UNBUDGETED_TICKETS)
        if isinstance(tickets, bool) or not isinstance(tickets, int) or tickets < 0:
            raise ValueError(f"ALLOCATION_UNBUDGETED_TICKETS is {tickets!r}. Use a whole number of 0 or more.")
        gap = config.get("ALLOCATION_MIP_GAP", DEFAULT_MIP_GAP)
        if isinstance(gap, bool) or not isinstance(gap, int | float) or not 0 <= gap < 1:
            raise ValueError(f"ALLOCATION_MIP_GAP is {gap!r}. Use a number from 0 to below 1.")
        limit = config.get("ALLOCATION_MILP_MAX_INDICATORS", DEFAULT_MILP_MAX_INDICATORS)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"ALLOCATION_MILP_MAX_INDICATORS is {limit!r}. Use a whole number of 0 or more.")
        return cls(method, float(time_limit), tickets, float(gap), limit)


# The problem: plain values, no database, so that the benchmark and the tests build it directly.

@dataclass(frozen=True)
class FunderSlot:
    """A funder taking part in a run, with what it can give in minor units of its currency."""

    id: int
    currency: str
    capacity_minor: int


@dataclass(frozen=True)
class NeedSlot:
    id: int
    project_id: int
    currency: str
    remaining_minor: int


@dataclass
class SkipCounts:
    """Counts of the pairs and funders left out of a run, by reason."""

    below_min_score: int = 0
    no_evidence: int = 0
    rejected: int = 0
    no_rate: int = 0
    outside_ticket_range: int = 0
    funders_without_cap: int = 0
    funders_budget_used: int = 0
    # Need currencies without a stored rate to the objective's currency, weighted 1:1 instead.
    currencies_unvalued: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class Problem:
    """Funders, needs and one entry per eligible pair in the arrays (indexes into funders and needs)."""

    funders: list[FunderSlot]
    needs: list[NeedSlot]
    # (funder currency, need currency) -> major units of the need's currency for one of the funder's.
    rates: dict[tuple[str, str], Decimal]
    pair_funder: np.ndarray
    pair_need: np.ndarray
    score: np.ndarray
    # Ticket bounds of each pair in minor units of the funder's currency; a low bound of 0 means none.
    low_minor: np.ndarray
    high_minor: np.ndarray
    skipped: SkipCounts = field(default_factory=SkipCounts)
    # Sum of the open amounts of every need in the run, per currency, with or without a pair.
    open_minor: dict[str, int] = field(default_factory=dict)
    # The objective counts need covered in this currency: need currency -> worth of one major unit in it.
    objective_currency: str = ""
    values: dict[str, Decimal] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.pair_funder)

    def rate(self, index: int) -> Decimal:
        funder = self.funders[self.pair_funder[index]]
        need = self.needs[self.pair_need[index]]
        return self.rates[(funder.currency, need.currency)]

    def need_amount(self, index: int, amount_minor: int) -> int:
        """Convert a pair's amount into minor units of the need's currency, as a pledge would."""
        funder = self.funders[self.pair_funder[index]]
        need = self.needs[self.pair_need[index]]
        if funder.currency == need.currency:
            return amount_minor
        return convert(amount_minor, funder.currency, need.currency, self.rates[(funder.currency, need.currency)])


def currency_values(need_counts: Mapping[str, int], rate_of: Callable[[str, str], Decimal | None]) -> tuple[str, dict[str, Decimal], int]:
    """Pick the currency the objective counts in and value every need currency in it.

    The objective's currency is the need currency with the most needs (the first by code on
    a tie). Another currency is worth the stored rate to it, or one over the stored rate from
    it; without either it counts 1:1. Returns (currency, values, number counted 1:1).
    """
    if not need_counts:
        return "", {}, 0
    target = min(need_counts, key=lambda code: (-need_counts[code], code))
    values: dict[str, Decimal] = {target: Decimal(1)}
    unvalued = 0
    for code in sorted(need_counts):
        if code == target:
            continue
        rate = rate_of(code, target)
        if rate is None:
            inverse = rate_of(target, code)
            rate = Decimal(1) / inverse if inverse else None
        if rate is None:
            unvalued += 1
            rate = Decimal(1)
        values[code] = rate
    return target, values, unvalued


def single_need_projects(project: ProjectProfile) -> list[ProjectProfile]:
    """Split a project profile into one profile per open need, so that score_pair scores each need."""
    return [replace(project, needs=(need,)) for need in project.needs]


def funder_capacity(funder: FunderProfile, unbudgeted_tickets: int) -> int | None:
    """Return what a funder can give in one run, in its minor units, or None when nothing bounds it."""
    if funder.annual_budget_minor is not None:
        return max(funder.annual_budget_minor - funder.used_minor, 0)
    if funder.ticket_max_minor is not None:
        return funder.ticket_max_minor * unbudgeted_tickets
    return None


def _max_for_need(remaining_minor: int, funder_currency: str, need_currency: str, rate: Decimal) -> int:
    """Return the largest funder amount whose conversion stays within the need's open amount."""
    if funder_currency == need_currency:
        return remaining_minor
    major = Decimal(remaining_minor).scaleb(-minor_units(need_currency)) / rate
    amount = int(major.scaleb(minor_units(funder_currency)).to_integral_value(rounding=ROUND_FLOOR))
    while amount > 0 and convert(amount, funder_currency, need_currency, rate) > remaining_minor:
        amount -= 1
    return amount


# The vectorised scores agree with engine.score_pair to about 1e-6. A pair below the minimum
# score by more than this margin is left out without scoring it exactly.
PREFILTER_MARGIN = 1e-4


def build_problem(
    projects: Iterable[ProjectProfile],
    funders: Iterable[FunderProfile],
    weights: dict[str, float],
    min_score: float,
    today: date,
    rate_of: Callable[[str, str], Decimal | None],
    unbudgeted_tickets: int = DEFAULT_UNBUDGETED_TICKETS,
    rejected: frozenset[tuple[int, int]] = frozenset(),
    exact: bool = False,
) -> Problem:
    """Score every funder-need pair and keep the pairs that can take money.

    `vector.all_scores` scores all pairs at once, in float32. Pairs without evidence or below
    `min_score` by more than PREFILTER_MARGIN are left out, and pairs above it by more keep
    the float32 score rounded as engine.score_pair rounds, which equals score_pair's but
    where the two fall on either side of a rounding boundary. score_pair decides the pairs in
    between, so the pairs kept are those the engine's rules keep. With `exact`, score_pair
    scores every pair: the same pairs and bounds, slowly. The rows of a run are scored again
    with score_pair when they are stored.

    `rate_of(funder_currency, need_currency)` returns the stored rate or None; it is asked once
    per currency pair. `rejected` contains the (project_id, funder_id) pairs whose match a coordinator rejected.
    """
    projects = list(projects)
    skipped = SkipCounts()
    open_minor: dict[str, int] = defaultdict(int)
    need_counts: dict[str, int] = defaultdict(int)
    for project in projects:
        for need in project.needs:
            open_minor[need.currency] += need.remaining_minor
            need_counts[need.currency] += 1
    objective_currency, values, skipped.currencies_unvalued = currency_values(need_counts, rate_of)

    slots: list[FunderSlot] = []
    profiles: list[FunderProfile] = []
    for funder in funders:
        capacity = funder_capacity(funder, unbudgeted_tickets)
        if capacity is None:
            skipped.funders_without_cap += 1
        elif capacity <= 0:
            skipped.funders_budget_used += 1
        else:
            slots.append(FunderSlot(funder.id, funder.currency, capacity))
            profiles.append(funder)

    singles_of = [single_need_projects(project) for project in projects]
    flat = [single for singles in singles_of for single in singles]
    if exact:
        scores = np.full((len(flat), len(profiles)), np.inf, dtype=np.float32)
        evidence = np.ones((len(flat), len(profiles)), dtype=bool)
    else:
        scores, evidence = vector.all_scores(flat, profiles, weights, today)
    threshold = np.float32(min_score - PREFILTER_MARGIN)
    funder_index_of = {funder.id: index for index, funder in enumerate(profiles)}
    rejected_of: dict[int, list[int]] = defaultdict(list)
    for project_id, funder_id in rejected:
        if funder_id in funder_index_of:
            rejected_of[project_id].append(funder_index_of[funder_id])

    rates: dict[tuple[str, str], Decimal | None] = {}
    need_limits: dict[tuple[int, str], int] = {}
    needs: list[NeedSlot] = []
    pair_funder: list[int] = []
    pair_need: list[int] = []
    pair_scores: list[float] = []
    lows: list[int] = []
    highs: list[int] = []
    first_row = 0
    for project, singles in zip(projects, singles_of):
        rows = slice(first_row, first_row + len(singles))
        first_row += len(singles)
        first_need = len(needs)
        needs.extend(NeedSlot(need.id, project.id, need.currency, need.remaining_minor) for need in project.needs)
        if not singles or not profiles:
            continue
        rejected_here = rejected_of.get(project.id, [])
        skipped.rejected += len(rejected_here) * len(singles)
        allowed = np.ones(len(profiles), dtype=bool)
        allowed[rejected_here] = False
        # Evidence comes from the project's region and theme, the same for all its needs.
        project_evidence = evidence[rows.start]
        skipped.no_evidence += int((allowed & ~project_evidence).sum()) * len(singles)
        eligible = allowed & project_evidence
        passing = eligible[None, :] & (scores[rows] >= threshold)
        skipped.below_min_score += int(eligible.sum()) * len(singles) - int(passing.sum())

        for funder_index in np.flatnonzero(passing.any(axis=0)).tolist():
            funder = profiles[funder_index]
            offsets = np.flatnonzero(passing[:, funder_index]).tolist()
            column = scores[rows, funder_index].tolist()
            for position, offset in enumerate(offsets):
                single = singles[offset]
                need = single.needs[0]
                # Rounded as score_pair rounds; the two agree but at a rounding boundary.
                score = round(column[offset], PRECISION)
                if exact or score < min_score + PREFILTER_MARGIN:
                    # Near the minimum, the engine's own score decides.
                    pair = score_pair(single, funder, weights, today)
                    # Region and theme evidence do not depend on the need: without it, no need of the project qualifies.
                    if not has_evidence(pair):
                        skipped.no_evidence += len(offsets) - position
                        break
                    if pair.score < min_score:
                        skipped.below_min_score += 1
                        continue
                    score = pair.score
                key = (funder.currency, need.currency)
                if key not in rates:
                    rates[key] = Decimal(1) if key[0] == key[1] else rate_of(*key)
                rate = rates[key]
                if rate is None:
                    skipped.no_rate += 1
                    continue
                # The largest amount a need takes depends on the funder's currency alone.
                limit_key = (need.id, funder.currency)
                need_limit = need_limits.get(limit_key)
                if need_limit is None:
                    need_limit = _max_for_need(need.remaining_minor, funder.currency, need.currency, rate)
                    need_limits[limit_key] = need_limit
                high = min(slots[funder_index].capacity_minor, need_limit)
                if funder.ticket_max_minor is not None:
                    high = min(high, funder.ticket_max_minor)
                low = funder.ticket_min_minor or 0
                if high <= 0 or low > high:
                    skipped.outside_ticket_range += 1
                    continue
                pair_funder.append(funder_index)
                pair_need.append(first_need + offset)
                pair_scores.append(score)
                lows.append(low)
                highs.append(high)

    return Problem(
        funders=slots, needs=needs,
        rates={key: rate for key, rate in rates.items() if rate is not None},
        pair_funder=np.asarray(pair_funder, dtype=np.int64),
        pair_need=np.asarray(pair_need, dtype=np.int64),
        score=np.asarray(pair_scores, dtype=np.float64),
        low_minor=np.asarray(lows, dtype=np.int64),
        high_minor=np.asarray(highs, dtype=np.int64),
        skipped=skipped, open_minor=dict(open_minor), objective_currency=objective_currency, values=values,
    )


# Solving.

@dataclass
class Solution:
    """Integer amounts per pair (minor units of the funder's currency) and the solver's figures."""

    amounts: np.ndarray
    need_amounts: np.ndarray
    # The method whose proposal this is: "lp" or "milp".
    method: str
    solver_status: str
    solver_message: str
    # Sum of score times need covered, in major units of the problem's objective currency, from the rounded amounts.
    objective: float
    # Best bound the solver proved for the objective (the LP relaxation's optimum for the LP method).
    bound: float | None
    # How far the rounded proposal may be from the optimum: (bound - objective) / bound.
    gap: float | None
    seconds: float
    variables: int
    constraints: int
    # Binary indicators of the MILP: one per pair with a minimum ticket, 0 when the MILP did not run.
    indicators: int
    # False when the solver returned no proposal at all; amounts are then all 0.
    found: bool = True

    @property
    def chosen(self) -> np.ndarray:
        return np.flatnonzero(self.amounts)


STATUS_NAMES = {0: "optimal", 1: "time_limit", 2: "infeasible", 3: "unbounded", 4: "error"}
# Largest bound of an amount in solver units. Each funder's columns and each need's row are
# counted in a power of ten of major units that keeps its amounts at or below this, so that
# the indicator rows (x <= high * y) do not mix coefficients of very different sizes.
UNIT_MAX = 1e5
# Column generation: the first restricted LP takes the best pairs of each need and of each
# funder, and each pricing round adds at most ADD_PER_ROUND pairs with a negative reduced cost.
START_PER_NEED = 5
START_PER_FUNDER = 50
ADD_PER_ROUND = 20_000
# The dive stops after this many LPs, or once the count of pairs below their minimum ticket
# has not fallen for DIVE_PATIENCE LPs in a row.
DIVE_MAX_ROUNDS = 50
DIVE_PATIENCE = 5


def _unit(largest_major: float) -> float:
    """Return the power of ten (1 or more) of major units that brings an amount to UNIT_MAX or less."""
    unit = 1.0
    while largest_major / unit > UNIT_MAX:
        unit *= 10.0
    return unit


def _need_values(problem: Problem) -> np.ndarray:
    """Return the worth of one major unit of each need's currency in the objective's currency."""
    return np.array([float(problem.values.get(slot.currency, 1)) for slot in problem.needs])


@dataclass
class _Scaled:
    """The LP part of the problem in solver units: one column per pair, one row per need, then one per funder."""

    minor_per_unit: np.ndarray
    # Costs to minimise: minus score times need covered, per solver unit.
    objective: np.ndarray
    # Each column has two entries: need_coefficient in its need's row and 1 in its funder's row.
    need_coefficient: np.ndarray
    matrix: sparse.csc_matrix
    upper: np.ndarray
    low: np.ndarray
    high: np.ndarray


def _scaled(problem: Problem) -> _Scaled:
    pairs, needs = problem.size, len(problem.needs)
    funder_exponent = np.array([10.0 ** minor_units(slot.currency) for slot in problem.funders])
    need_exponent = np.array([10.0 ** minor_units(slot.currency) for slot in problem.needs])
    rate_by_key = {key: float(rate) for key, rate in problem.rates.items()}
    pair_rate = np.fromiter(
        (rate_by_key[(problem.funders[f].currency, problem.needs[n].currency)]
         for f, n in zip(problem.pair_funder.tolist(), problem.pair_need.tolist())),
        dtype=np.float64, count=pairs,
    )
    # Solver unit of each funder, in its major units, from the largest upper bound of its pairs.
    largest = np.zeros(len(problem.funders))
    np.maximum.at(largest, problem.pair_funder, problem.high_minor / funder_exponent[problem.pair_funder])
    funder_unit = np.array([_unit(value) for value in largest])
    need_major = np.array([slot.remaining_minor for slot in problem.needs], dtype=np.float64) / need_exponent
    need_unit = np.array([_unit(value) for value in need_major])
    capacity_major = np.array([slot.capacity_minor for slot in problem.funders], dtype=np.float64) / funder_exponent

    column_unit = funder_unit[problem.pair_funder]
    need_coefficient = pair_rate * column_unit / need_unit[problem.pair_need]
    columns = np.arange(pairs)
    matrix = sparse.csc_matrix(
        (np.concatenate([need_coefficient, np.ones(pairs)]),
         (np.concatenate([problem.pair_need, needs + problem.pair_funder]), np.concatenate([columns, columns]))),
        shape=(needs + len(problem.funders), pairs),
    )
    minor_per_unit = column_unit * funder_exponent[problem.pair_funder]
    return _Scaled(
        minor_per_unit=minor_per_unit,
        objective=-(problem.score * pair_rate * column_unit * _need_values(problem)[problem.pair_need]),
        need_coefficient=need_coefficient,
        matrix=matrix,
        upper=np.concatenate([need_major / need_unit, capacity_major / funder_unit]),
        low=problem.low_minor / minor_per_unit,
        high=problem.high_minor / minor_per_unit,
    )


@dataclass
class _Run:
    """One solver result: its status, message, the amounts in minor units (floats) and the best bound it proved."""

    status: str
    message: str
    values: np.ndarray | None
    bound: float | None


def _solve_milp(problem: Problem, scaled: _Scaled, settings: AllocationSettings, time_limit: float) -> _Run:
    """Solve the MILP: a binary indicator y per pair with a minimum ticket, and low * y <= x <= high * y.

    The indicators are explicit because HiGHS 1.12.0, the version scipy 1.17 bundles, can end a
    model with semi-continuous columns (integrality 2) in "Solve error" after it claimed
    optimality, when such a column sits at its lower bound.
    """
    pairs = problem.size
    semi = np.flatnonzero(problem.low_minor > 0)
    count = semi.size
    indicator_columns = pairs + np.arange(count)
    link_rows = np.arange(2 * count)
    # Row 2k: x - high * y <= 0. Row 2k + 1: x - low * y >= 0.
    links = sparse.csr_matrix(
        (np.concatenate([np.ones(2 * count), -scaled.high[semi], -scaled.low[semi]]),
         (np.concatenate([link_rows, link_rows[0::2], link_rows[1::2]]),
          np.concatenate([np.repeat(semi, 2), indicator_columns, indicator_columns]))),
        shape=(2 * count, pairs + count),
    )
    lp_rows = sparse.hstack([scaled.matrix, sparse.csr_matrix((scaled.matrix.shape[0], count))])
    result = milp(
        np.concatenate([scaled.objective, np.zeros(count)]),
        integrality=np.concatenate([np.zeros(pairs, dtype=np.uint8), np.ones(count, dtype=np.uint8)]),
        bounds=Bounds(np.zeros(pairs + count), np.concatenate([scaled.high, np.ones(count)])),
        constraints=LinearConstraint(
            sparse.vstack([lp_rows, links], format="csr"),
            np.concatenate([np.full(scaled.upper.size, -np.inf), np.tile([-np.inf, 0.0], count)]),
            np.concatenate([scaled.upper, np.tile([0.0, np.inf], count)]),
        ),
        options={"time_limit": max(time_limit, 1.0), "mip_rel_gap": settings.mip_gap, "presolve": True, "disp": False},
    )
    status = STATUS_NAMES.get(result.status, f"status_{result.status}")
    values = None if result.x is None else result.x[:pairs] * scaled.minor_per_unit
    bound = getattr(result, "mip_dual_bound", None)
    return _Run(status, str(result.message), values, -bound if bound is not None and math.isfinite(bound) else None)


def _best_per_group(groups: np.ndarray, costs: np.ndarray, count: int) -> np.ndarray:
    """Return the indexes of the `count` lowest costs within each group."""
    order = np.lexsort((costs, groups))
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    rank = np.arange(order.size) - np.repeat(starts, np.diff(np.r_[starts, order.size]))
    return order[rank < count]


@dataclass
class _Restricted:
    """The last LP of a column generation, with its values in solver units for every pair."""

    values: np.ndarray
    objective: float
    status: str
    message: str
    # True when no pair outside the restricted LP could improve it, so its optimum is the full LP's.
    converged: bool


def _column_generation(problem: Problem, scaled: _Scaled, low: np.ndarray, high: np.ndarray, allowed: np.ndarray,
                       start: np.ndarray, deadline: float) -> _Restricted | None:
    """Solve the LP over the allowed pairs, starting from `start` and adding pairs priced with the duals.

    A pair outside the restricted LP sits at 0 and improves it when its reduced cost (cost minus
    the duals of its need row and funder row) is negative. Returns None when HiGHS returns no
    solution at all.
    """
    chosen = np.zeros(problem.size, dtype=bool)
    chosen[start] = True
    chosen |= low > 0
    chosen &= allowed
    tolerance = 1e-7 * np.maximum(1.0, np.abs(scaled.objective))
    need_rows = len(problem.needs)
    while True:
        columns = np.flatnonzero(chosen)
        result = linprog(
            scaled.objective[columns], A_ub=scaled.matrix[:, columns], b_ub=scaled.upper,
            bounds=np.column_stack([low[columns], high[columns]]), method="highs-ds",
            options={"time_limit": max(deadline - time.perf_counter(), 1.0), "presolve": True},
        )
        status = STATUS_NAMES.get(result.status, f"status_{result.status}")
        if result.x is None:
            logger.warning("allocation LP returned no solution: status=%s message=%s", status, result.message)
            return None
        values = np.zeros(problem.size)
        values[columns] = result.x
        if status != "optimal":
            return _Restricted(values, -result.fun, status, str(result.message), False)
        duals = result.ineqlin.marginals
        reduced = scaled.objective - scaled.need_coefficient * duals[problem.pair_need] - duals[need_rows + problem.pair_funder]
        candidates = np.flatnonzero(allowed & ~chosen & (high > 0) & (reduced < -tolerance))
        if candidates.size == 0:
            return _Restricted(values, -result.fun, status, str(result.message), True)
        if time.perf_counter() > deadline:
            return _Restricted(values, -result.fun, "time_limit", "Time limit reached during column generation.", False)
        if candidates.size > ADD_PER_ROUND:
            candidates = candidates[np.argpartition(reduced[candidates], ADD_PER_ROUND)[:ADD_PER_ROUND]]
        chosen[candidates] = True


def _solve_lp(problem: Problem, scaled: _Scaled, settings: AllocationSettings) -> _Run:
    """Solve the LP relaxation (0 <= x <= high), then dive towards the minimum tickets.

    Each dive round fixes at 0 the pairs that the last LP gave less than their minimum ticket,
    keeps the pairs that got at least their minimum inside [low, high], and solves again. The last
    LP fixes at 0 every pair still short of its minimum. An LP's solution with those pairs set
    to 0 is feasible for the next LP, so each LP's optimum is at least the previous solution's
    value once rounding has set its pairs below their minimum to 0. The relaxation's optimum
    bounds the MILP's from above. All LPs use column
    generation, because HiGHS's dual simplex took 77 seconds on all 2.6 million pairs of the
    benchmark and 1 second on the 70,000 that column generation needed.
    """
    started = time.perf_counter()
    deadline = started + settings.time_limit
    has_minimum = problem.low_minor > 0
    start = np.union1d(_best_per_group(problem.pair_need, scaled.objective, START_PER_NEED),
                       _best_per_group(problem.pair_funder, scaled.objective, START_PER_FUNDER))
    low = np.zeros(problem.size)
    high = scaled.high.copy()
    allowed = np.ones(problem.size, dtype=bool)
    relaxation = _column_generation(problem, scaled, low, high, allowed, start, deadline)
    if relaxation is None:
        return _Run("error", "HiGHS returned no solution for the LP relaxation.", None, None)
    bound = relaxation.objective if relaxation.converged else None

    current = relaxation
    rounds = 0
    fewest_below, stalled = problem.size + 1, 0
    while rounds < DIVE_MAX_ROUNDS and time.perf_counter() < deadline:
        amounts = current.values * scaled.minor_per_unit
        below = has_minimum & (amounts > 0.5) & (amounts < problem.low_minor - 1.0)
        count = int(np.count_nonzero(below))
        if count == 0:
            break
        if count < fewest_below:
            fewest_below, stalled = count, 0
        else:
            stalled += 1
            if stalled >= DIVE_PATIENCE:
                break
        kept = has_minimum & ~below & (amounts > 0.5)
        allowed &= ~below
        high[below] = 0.0
        low[kept] = scaled.low[kept]
        following = _column_generation(problem, scaled, low, high, allowed, np.flatnonzero(current.values > 0), deadline)
        rounds += 1
        if following is None or following.status != "optimal":
            break
        current = following

    # Last LP: pairs short of their minimum (or at 0) with a minimum ticket stay at 0.
    amounts = current.values * scaled.minor_per_unit
    short = has_minimum & (amounts < problem.low_minor - 1.0)
    if np.any(short & (amounts > 0.5)):
        final_low = np.where(has_minimum & ~short, scaled.low, 0.0)
        final_high = np.where(short, 0.0, high)
        final = _column_generation(problem, scaled, final_low, final_high, ~short,
                                   np.flatnonzero((current.values > 0) & ~short), deadline + settings.time_limit)
        if final is not None and final.status == "optimal":
            current = final
    logger.info("allocation LP finished in %.1f s: %s dive rounds, bound=%s objective=%s status=%s",
                time.perf_counter() - started, rounds, bound, current.objective, current.status)
    return _Run(current.status, current.message, current.values * scaled.minor_per_unit, bound)


@dataclass
class _Proposal:
    amounts: np.ndarray
    objective: float
    run: _Run
    method: str


def _propose(problem: Problem, run: _Run, method: str) -> _Proposal:
    """Round a solver run to integer minor units, repair rounding overshoots and value the result."""
    amounts = _round(problem, run.values)
    _repair(problem, amounts)
    problems = violations(problem, amounts)
    if problems:
        raise AllocationError(f"The rounded proposal breaks {len(problems)} bound(s), first: {problems[0]}")
    return _Proposal(amounts, _objective(problem, amounts), run, method)


def _need_amounts(problem: Problem, amounts: np.ndarray) -> np.ndarray:
    return np.array(
        [problem.need_amount(index, amount) if amount else 0 for index, amount in enumerate(amounts.tolist())],
        dtype=np.int64,
    )


def _objective(problem: Problem, amounts: np.ndarray) -> float:
    need_exponent = np.array([10.0 ** minor_units(slot.currency) for slot in problem.needs])
    worth = _need_values(problem) / need_exponent
    return float(np.sum(problem.score * _need_amounts(problem, amounts) * worth[problem.pair_need]))


def solve(problem: Problem, settings: AllocationSettings) -> Solution:
    """Solve the allocation problem, round to minor units and check every bound with integers.

    Method "lp" runs the LP relaxation and its dive, and "milp" the MILP. Method "auto" runs
    "lp" first. When that proposal is further than ALLOCATION_MIP_GAP from the bound and the
    instance has at most ALLOCATION_MILP_MAX_INDICATORS indicators, it also runs the MILP in
    the time left and keeps the better proposal. Raises AllocationError when a rounded
    proposal breaks a bound by more than rounding explains.
    """
    started = time.perf_counter()
    pairs = problem.size
    indicators = int(np.count_nonzero(problem.low_minor > 0))
    rows = len(problem.needs) + len(problem.funders)
    if pairs == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Solution(empty, empty, settings.method, "optimal", "No funder-need pair qualifies.",
                        0.0, None, None, time.perf_counter() - started, 0, 0, 0)

    scaled = _scaled(problem)
    proposals: list[_Proposal] = []
    bounds: list[float] = []
    milp_used = False
    if settings.method in ("lp", "auto"):
        run = _solve_lp(problem, scaled, settings)
        if run.values is not None:
            proposals.append(_propose(problem, run, "lp"))
        if run.bound is not None:
            bounds.append(run.bound)
    lp_gap = _gap(proposals[0].objective, min(bounds)) if proposals and bounds else None
    wants_milp = settings.method == "milp" or (
        settings.method == "auto" and indicators <= settings.milp_max_indicators
        and (lp_gap is None or lp_gap > settings.mip_gap)
    )
    if wants_milp:
        milp_used = True
        run = _solve_milp(problem, scaled, settings, settings.time_limit - (time.perf_counter() - started))
        if run.values is not None:
            proposals.append(_propose(problem, run, "milp"))
        if run.bound is not None:
            bounds.append(run.bound)

    variables = pairs + (indicators if milp_used else 0)
    rows += 2 * indicators if milp_used else 0
    bound = min(bounds) if bounds else None
    if not proposals:
        # HiGHS found no proposal at all, e.g. the time limit struck before the first one.
        last = run
        logger.warning("allocation solver found no solution: status=%s message=%s", last.status, last.message)
        empty = np.zeros(pairs, dtype=np.int64)
        return Solution(empty, empty, settings.method, last.status, last.message, 0.0, bound, None,
                        time.perf_counter() - started, variables, rows, indicators if milp_used else 0, found=False)
    best = max(proposals, key=lambda proposal: proposal.objective)
    return Solution(
        best.amounts, _need_amounts(problem, best.amounts), best.method, best.run.status, best.run.message,
        best.objective, bound, _gap(best.objective, bound), time.perf_counter() - started,
        variables, rows, indicators if milp_used else 0,
    )


def _gap(objective: float, bound: float | None) -> float | None:
    if bound is None or bound <= 0:
        return None
    return max(bound - objective, 0.0) / bound


def _round(problem: Problem, values: np.ndarray) -> np.ndarray:
    """Turn the solver's amounts (in minor units, as floats) into integers within each pair's ticket range.

    Values round down; one that sits within one minor unit below the minimum ticket is the solver
    meaning the minimum and snaps onto it. A value further below the minimum (only the LP method
    leaves those) becomes 0, which every bound allows.
    """
    amounts = np.floor(values + ROUNDING_SLACK).astype(np.int64)
    amounts = np.minimum(np.maximum(amounts, 0), problem.high_minor)
    below = (amounts > 0) & (amounts < problem.low_minor)
    snap = below & (problem.low_minor - values <= 1.0)
    amounts[snap] = problem.low_minor[snap]
    amounts[below & ~snap] = 0
    return amounts


def _take_off(problem: Problem, amounts: np.ndarray, members: np.ndarray, excess_of: Callable[[], int],
              units_for: Callable[[int, int], int]) -> int:
    """Lower the members' amounts until excess_of() is 0, taking first from the most room above the minimum."""
    taken = 0
    while (excess := excess_of()) > 0:
        live = members[amounts[members] > 0]
        if live.size == 0:
            break
        room = amounts[live] - problem.low_minor[live]
        index = live[int(np.argmax(room))]
        cut = min(units_for(int(index), excess), int(room.max()))
        if cut <= 0:
            # Every member sits at its minimum ticket: drop the smallest one.
            index = live[int(np.argmin(amounts[live]))]
            cut = int(amounts[index])
        amounts[index] -= cut
        taken += cut
    return taken


def _repair(problem: Problem, amounts: np.ndarray) -> int:
    """Take off the few minor units by which rounding can overshoot a funder's capacity or a need's open amount."""
    taken = 0
    by_funder = defaultdict(list)
    by_need = defaultdict(list)
    for index, (f, n) in enumerate(zip(problem.pair_funder, problem.pair_need)):
        if amounts[index]:
            by_funder[int(f)].append(index)
            by_need[int(n)].append(index)

    for funder_index, members in by_funder.items():
        members = np.array(members)
        capacity = problem.funders[funder_index].capacity_minor
        taken += _take_off(problem, amounts, members, lambda: int(amounts[members].sum()) - capacity,
                           lambda index, excess: excess)

    for need_index, members in by_need.items():
        members = np.array(members)
        need = problem.needs[need_index]

        def excess() -> int:
            return sum(problem.need_amount(int(i), int(amounts[i])) for i in members if amounts[i]) - need.remaining_minor

        def units_for(index: int, excess_minor: int) -> int:
            funder = problem.funders[problem.pair_funder[index]]
            if funder.currency == need.currency:
                return excess_minor
            major = Decimal(excess_minor).scaleb(-minor_units(need.currency)) / problem.rate(index)
            return max(int(major.scaleb(minor_units(funder.currency)).to_integral_value(rounding=ROUND_CEILING)), 1)

        taken += _take_off(problem, amounts, members, excess, units_for)
    if taken:
        logger.info("allocation rounding repaired: %s minor units taken off", taken)
    return taken


def violations(problem: Problem, amounts: np.ndarray) -> list[str]:
    """List every bound the integer amounts break: ticket range, funder capacity, need open amount."""
    found: list[str] = []
    funder_totals: dict[int, int] = defaultdict(int)
    need_totals: dict[int, int] = defaultdict(int)
    for index, amount in enumerate(amounts.tolist()):
        if amount == 0:
            continue
        funder_index, need_index = int(problem.pair_funder[index]), int(problem.pair_need[index])
        funder, need = problem.funders[funder_index], problem.needs[need_index]
        if amount < 0 or amount < problem.low_minor[index] or amount > problem.high_minor[index]:
            found.append(f"funder {funder.id} need {need.id}: {amount} outside "
                         f"[{problem.low_minor[index]}, {problem.high_minor[index]}]")
        funder_totals[funder_index] += amount
        need_totals[need_index] += problem.need_amount(index, amount)
    for funder_index, total in funder_totals.items():
        funder = problem.funders[funder_index]
        if total > funder.capacity_minor:
            found.append(f"funder {funder.id}: {total} above capacity {funder.capacity_minor} {funder.currency}")
    for need_index, total in need_totals.items():
        need = problem.needs[need_index]
        if total > need.remaining_minor:
            found.append(f"need {need.id}: {total} above open amount {need.remaining_minor} {need.currency}")
    return found


# The service: runs against the database, and acceptance of rows as matches.
# Functions flush and never commit; the caller commits.

def _check_coordinator(user: User, action: str) -> None:
    if not user.is_coordinator:
        raise Forbidden(f"Only coordinators can {action}.")


def _open_projects(now: datetime) -> list[ProjectProfile]:
    """Snapshot the published projects that have an open need with an amount left."""
    query = (
        select(Project)
        .where(Project.status == "published", Project.needs.any(FundingNeed.status == "open"))
        .options(selectinload(Project.tags), selectinload(Project.needs))
        .order_by(Project.id)
    )
    profiles = (project_profile(project, now) for project in db.session.scalars(query))
    return [profile for profile in profiles if profile is not None]


def _rejected_pairs() -> frozenset[tuple[int, int]]:
    rows = db.session.execute(select(Match.project_id, Match.funder_id).where(Match.status == "rejected"))
    return frozenset((project_id, funder_id) for project_id, funder_id in rows)


def run_allocation(user: User) -> AllocationRun:
    """Solve the allocation of all open needs and store the run with one row per proposed amount.

    Raises Forbidden unless the user is a coordinator, and ValueError for invalid MATCH_* or
    ALLOCATION_* settings. A run whose solver finds no proposal is stored with status failed.
    """
    _check_coordinator(user, "start an allocation run")
    started = time.perf_counter()
    settings = AllocationSettings.from_config()
    match_settings = MatchSettings.from_config()
    now = utcnow()
    today = now.date()
    logger.info("allocation run started user=%s method=%s", user.id, settings.method)

    projects = _open_projects(now)
    funders = load_funder_profiles(now)
    problem = build_problem(
        projects, funders, match_settings.weights, match_settings.min_score, today,
        rate_of=lambda base, quote: find_rate(base, quote, today),
        unbudgeted_tickets=settings.unbudgeted_tickets, rejected=_rejected_pairs(),
    )
    solution = solve(problem, settings)

    run = AllocationRun(
        created_by_id=user.id, created_at=now,
        status="proposed" if solution.found else "failed",
        method=solution.method, solver_status=solution.solver_status, solver_message=solution.solver_message,
        variables=solution.variables, constraints=solution.constraints,
        objective=round(solution.objective, 2), objective_currency=problem.objective_currency,
        bound=None if solution.bound is None else round(solution.bound, 2), gap=solution.gap,
        open_need=dict(sorted(problem.open_minor.items())), skipped=problem.skipped.as_dict(),
        settings={
            "method": settings.method, "time_limit": settings.time_limit, "mip_gap": settings.mip_gap,
            "milp_max_indicators": settings.milp_max_indicators, "unbudgeted_tickets": settings.unbudgeted_tickets,
            "weights": match_settings.weights, "min_score": match_settings.min_score,
            "indicators": solution.indicators, "solve_seconds": round(solution.seconds, 3),
            "pairs": problem.size, "needs": len(problem.needs), "funders": len(problem.funders),
        },
    )
    db.session.add(run)

    singles = {need.id: single for project in projects for single, need in zip(single_need_projects(project), project.needs)}
    profiles = {funder.id: funder for funder in funders}
    proposed: dict[str, int] = defaultdict(int)
    for index in solution.chosen.tolist():
        funder_slot = problem.funders[problem.pair_funder[index]]
        need_slot = problem.needs[problem.pair_need[index]]
        pair = score_pair(singles[need_slot.id], profiles[funder_slot.id], match_settings.weights, today)
        need_amount = int(solution.need_amounts[index])
        proposed[need_slot.currency] += need_amount
        run.rows.append(AllocationRow(
            funder_id=funder_slot.id, project_id=need_slot.project_id, need_id=need_slot.id,
            amount_minor=int(solution.amounts[index]), currency=funder_slot.currency,
            need_amount_minor=need_amount, need_currency=need_slot.currency, rate=problem.rate(index),
            score=pair.score, parts={name: round(pair.parts[name], PRECISION) for name in PARTS},
            explanation=explain(pair),
        ))
    run.proposed = dict(sorted(proposed.items()))
    run.seconds = round(time.perf_counter() - started, 3)
    db.session.flush()
    logger.info(
        "allocation run finished id=%s user=%s status=%s solver=%s method=%s pairs=%s rows=%s gap=%s seconds=%.2f",
        run.id, user.id, run.status, run.solver_status, run.method, problem.size, len(run.rows), run.gap, run.seconds,
    )
    return run


def get_run(user: User, run_id: int | None = None) -> AllocationRun | None:
    """Return a run by id (NotFound when unknown), or the latest run, or None before the first.

    Raises Forbidden unless the user is a coordinator.
    """
    _check_coordinator(user, "see allocation runs")
    if run_id is None:
        return db.session.scalar(select(AllocationRun).order_by(AllocationRun.id.desc()).limit(1))
    run = db.session.get(AllocationRun, run_id)
    if run is None:
        raise NotFound(f"Allocation run {run_id} not found.")
    return run


def list_runs(user: User, page: int = 1, per_page: int = 20) -> tuple[list[AllocationRun], int]:
    """Return one page of allocation runs, newest first, and their total count.

    Raises Forbidden unless the user is a coordinator.
    """
    _check_coordinator(user, "see allocation runs")
    total = db.session.scalar(select(func.count()).select_from(AllocationRun)) or 0
    runs = db.session.scalars(
        select(AllocationRun).order_by(AllocationRun.id.desc()).limit(per_page).offset((page - 1) * per_page)
    ).all()
    return list(runs), total


def list_rows(run: AllocationRun, page: int = 1, per_page: int = 50) -> tuple[list[AllocationRow], int]:
    """Return one page of a run's rows, by project, need and amount, and their total count."""
    query = select(AllocationRow).where(AllocationRow.run_id == run.id)
    total = db.session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = db.session.scalars(
        query.options(selectinload(AllocationRow.funder), selectinload(AllocationRow.project), selectinload(AllocationRow.need))
        .order_by(AllocationRow.project_id, AllocationRow.need_id, AllocationRow.amount_minor.desc(), AllocationRow.id)
        .limit(per_page).offset((page - 1) * per_page)
    ).all()
    return list(rows), total


@dataclass
class AcceptResult:
    """Rows accepted by this call, and rows of the request that were accepted before."""

    accepted: list[AllocationRow]
    already: list[AllocationRow]


def _best_pair(project: Project, funder: Funder, now: datetime, weights: dict[str, float]) -> PairScore | None:
    """Score a project-funder pair as a match run would, or return None when no need of the project is open."""
    profile = project_profile(project, now)
    if profile is None:
        return None
    used = budget_used(now, funder.id).get((funder.id, funder.currency), 0)
    return score_pair(profile, funder_profile(funder, used, now.year), weights, now.date())


def _accept_match(user: User, run: AllocationRun, project: Project, funder: Funder, pair: PairScore,
                  weights: dict[str, float], now: datetime) -> Match:
    """Create or update the project-funder match as accepted, with the numbers a match run would store.

    A match that is already accepted keeps its review. Otherwise the match takes the engine's
    best need, score, parts and digest for the pair, so that the next match run finds it unchanged.
    """
    match = db.session.scalar(
        select(Match).where(Match.project_id == project.id, Match.funder_id == funder.id).with_for_update()
    )
    if match is not None and match.status == "accepted":
        return match
    previous = None if match is None else match.status
    if match is None:
        match = Match(project_id=project.id, funder_id=funder.id)
        db.session.add(match)
    match.need_id = pair.need.id
    match.score = pair.score
    match.parts = {name: round(pair.parts[name], PRECISION) for name in PARTS}
    match.weights = weights
    match.explanation = explain(pair)
    match.inputs_digest = inputs_digest(pair.project, pair.need, pair.funder)
    match.status = "accepted"
    match.review_reason = f"Accepted from allocation run {run.id}"
    match.reviewed_by_id = user.id
    match.reviewed_at = now
    db.session.flush()
    audit.record(user, "accept", "match", match.id, {"status": previous}, {"status": "accepted"}, match.review_reason)
    notifications.match_accepted(match)
    logger.info("match accepted id=%s project=%s funder=%s from=%s run=%s user=%s",
                match.id, project.id, funder.id, previous, run.id, user.id)
    return match


def accept_rows(user: User, run_id: int, row_ids: Iterable[int]) -> AcceptResult:
    """Accept rows of a run: each one's project-funder match becomes accepted, introduced to both sides.

    Rows accepted before are skipped and listed in `already`. Raises Forbidden unless the user is a
    coordinator, and NotFound for an unknown run. Raises ValidationFailed on field "row_ids" when
    no row or a row of another run is given. Raises Conflict, changing nothing, when a row's
    project is no longer published or its need no longer open.
    """
    # NOTE: two coordinators who accept rows of the same new project-funder pair at once can both
    # insert its match. The later commit then fails on the unique constraint and must be repeated.
    _check_coordinator(user, "accept allocation rows")
    run = db.session.get(AllocationRun, run_id)
    if run is None:
        raise NotFound(f"Allocation run {run_id} not found.")
    wanted = sorted(set(row_ids))
    if not wanted:
        raise ValidationFailed("Tick at least one row to accept.", {"row_ids": "Tick at least one row to accept."})
    rows = list(db.session.scalars(
        select(AllocationRow).where(AllocationRow.run_id == run.id, AllocationRow.id.in_(wanted))
        .order_by(AllocationRow.id).with_for_update()
    ))
    unknown = sorted(set(wanted) - {row.id for row in rows})
    if unknown:
        listed = ", ".join(str(row_id) for row_id in unknown)
        message = f"Row {listed} is not part of allocation run {run.id}." if len(unknown) == 1 else \
            f"Rows {listed} are not part of allocation run {run.id}."
        raise ValidationFailed(message, {"row_ids": message})

    now = utcnow()
    weights = MatchSettings.from_config().weights
    already = [row for row in rows if row.accepted]
    pending = [row for row in rows if not row.accepted]
    pairs: dict[tuple[int, int], PairScore] = {}
    closed: list[str] = []
    for row in pending:
        key = (row.project_id, row.funder_id)
        if key not in pairs:
            pair = _best_pair(row.project, row.funder, now, weights) if row.project.status == "published" else None
            if pair is not None:
                pairs[key] = pair
        open_needs = {need.id for need in pairs[key].project.needs} if key in pairs else set()
        if row.need_id not in open_needs:
            closed.append(f"row {row.id} (need {row.need_id})")
    if closed:
        raise Conflict(
            f"These rows ask for needs that no longer take pledges: {', '.join(closed)}. Untick them and accept again.",
            {"row_ids": f"Need no longer open: {', '.join(closed)}."},
        )

    matches: dict[tuple[int, int], Match] = {}
    for row in pending:
        key = (row.project_id, row.funder_id)
        if key not in matches:
            matches[key] = _accept_match(user, run, row.project, row.funder, pairs[key], weights, now)
        row.match = matches[key]
        row.accepted = True
        row.accepted_by_id = user.id
        row.accepted_at = now
    if pending and run.status != "accepted":
        run.status = "accepted"
        run.accepted_at = now
    db.session.flush()
    logger.info("allocation rows accepted run=%s user=%s accepted=%s already=%s",
                run.id, user.id, [row.id for row in pending], [row.id for row in already])
    return AcceptResult(pending, already)


# Totals of a run for the page: by funder, region and theme, each per currency.

@dataclass
class RunTotals:
    # (funder id, funder name, currency, amount in minor units, rows), largest first within a currency.
    by_funder: list[tuple[int, str, str, int, int]]
    # (slug or "", currency, need amount in minor units); "" for projects without a region or theme.
    by_region: list[tuple[str, str, int]]
    by_theme: list[tuple[str, str, int]]
    # (currency, proposed, open need) in minor units of the currency.
    progress: list[tuple[str, int, int]]


def _regions_of(tags: list[ProjectTag]) -> set[str]:
    regions = {tag.code for tag in tags if tag.kind == "region"}
    for tag in tags:
        if tag.kind == "country":
            try:
                region = reference.region_of_country(tag.code)
            except reference.UnknownCode:
                region = None
            if region:
                regions.add(region)
    return regions


def _themes_of(tags: list[ProjectTag]) -> set[str]:
    themes = {tag.code for tag in tags if tag.kind == "theme"}
    for tag in tags:
        if tag.kind == "sector":
            try:
                themes.update(reference.themes_of_sector(tag.code))
            except reference.UnknownCode:
                pass
    return themes


def run_totals(run: AllocationRun) -> RunTotals:
    """Add up a run's rows by funder (in the funder's currency) and by region and theme (in the needs' currencies).

    A project in two regions or with two themes counts in each, so those lists can add up to
    more than the total. Amounts in different currencies are never added together.
    """
    funder_rows = db.session.execute(
        select(AllocationRow.funder_id, Funder.name, AllocationRow.currency,
               func.sum(AllocationRow.amount_minor), func.count())
        .join(Funder, Funder.id == AllocationRow.funder_id)
        .where(AllocationRow.run_id == run.id)
        .group_by(AllocationRow.funder_id, Funder.name, AllocationRow.currency)
    ).all()
    by_funder = sorted(
        ((funder_id, name, currency, int(amount), int(count)) for funder_id, name, currency, amount, count in funder_rows),
        key=lambda item: (item[2], -item[3], item[1], item[0]),
    )

    project_rows = db.session.execute(
        select(AllocationRow.project_id, AllocationRow.need_currency, func.sum(AllocationRow.need_amount_minor))
        .where(AllocationRow.run_id == run.id)
        .group_by(AllocationRow.project_id, AllocationRow.need_currency)
    ).all()
    tags: dict[int, list[ProjectTag]] = defaultdict(list)
    project_ids = {project_id for project_id, _, _ in project_rows}
    if project_ids:
        for tag in db.session.scalars(select(ProjectTag).where(ProjectTag.project_id.in_(select(AllocationRow.project_id).where(AllocationRow.run_id == run.id)))):
            tags[tag.project_id].append(tag)
    regions: dict[tuple[str, str], int] = defaultdict(int)
    themes: dict[tuple[str, str], int] = defaultdict(int)
    for project_id, currency, amount in project_rows:
        for region in _regions_of(tags[project_id]) or {""}:
            regions[(region, currency)] += int(amount)
        for theme in _themes_of(tags[project_id]) or {""}:
            themes[(theme, currency)] += int(amount)

    def ordered(totals: dict[tuple[str, str], int]) -> list[tuple[str, str, int]]:
        return sorted(((code, currency, amount) for (code, currency), amount in totals.items()),
                      key=lambda item: (item[1], -item[2], item[0]))

    currencies = sorted(set(run.open_need) | set(run.proposed))
    progress = [(code, int(run.proposed.get(code, 0)), int(run.open_need.get(code, 0))) for code in currencies]
    return RunTotals(by_funder, ordered(regions), ordered(themes), progress)
