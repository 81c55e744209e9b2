"""Match scoring: rate each published project's open funding needs against every funder and store the best pairs.

A run loads the projects, funders and existing matches in a few queries, scores every
project-funder pair with NumPy (`financing.matching.vector`), rescores the best pairs of each
project here to explain them, and upserts one Match per kept pair. A pair's score is the
weighted geometric mean of seven parts, each in [0, 1]:

- region, hierarchical for preferences set by hand: a preferred country gives 1.0, a
  country inside a preferred ITU-D region 0.8, a region-wide project in a preferred region
  0.6, elsewhere 0. For a learned profile, whose weights are shares of its money, the part is
  (country share + 0.8 x region share) / 1.8, so that both the country and the region count.
  Global projects (no country, no region) get 0.6; a funder without geographic preferences
  gets the neutral 0.5, or 0 when its profile is learned.
- theme: the share on the project's themes (its tags and the themes covering its DAC
  sectors), on its sectors, or on the funder sectors that a project theme covers, times 1.0;
  or the share on the project's DAC 3-digit categories times 0.5 (a neighbouring sector),
  whichever is highest. 0.5 for a funder without theme or sector preferences (0 when its
  profile is learned), 0 for a project with no tags.
- ticket: 1.0 when the need's open amount is inside the funder's ticket range, halved for
  each factor of 10 outside it. 0.5 without a range or in another currency.
- capacity: the funder's budget for the year minus this year's confirmed pledges, against
  what it would put in (the open amount capped at its maximum ticket). 0.5 without a budget.
- time: 1.0 without a deadline or when the deadline leaves the funder its decision time,
  else the share of that time left. 0.5 when the decision time is unknown.
- currency: for a funder with a learned profile, 1.0 when the need is in its main currency,
  0 when not. 0.5 for profiles made by hand. Its default weight is 0: on the IATI files the
  grid search found that it adds nothing once the ticket part compares amounts.
- experience: log(1 + activities) / log(501) for a learned profile, at most 1; 0.5 otherwise.

Learned preferences carry a weight from 0 to 1 (the share of the funder's committed money that
went to the code, see `profiles`); preferences set by hand weigh 1. Each part is raised by
FLOOR before the geometric mean, so a single 0 lowers the score a lot without wiping out the
rest. Default weights and minimum score come from `benchmarks/matching_quality.py`
(docs/benchmarks.md). A pair is only suggested when a funder preference matches the
project's region or theme, because neutral parts alone would suggest every funder that
states nothing. The run flushes and never commits, so the caller commits.
"""

import functools
import hashlib
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal

from flask import current_app
from sqlalchemy import Row, func, select, text
from sqlalchemy.orm import selectinload

from financing import reference
from financing.core.errors import NotFound
from financing.core.time import utcnow
from financing.extensions import db
from financing.funders.models import Funder, FunderPreference
from financing.matching.models import Match
from financing.money import format_compact, to_decimal
from financing.pledges.models import Pledge, PledgeEvent
from financing.pledges.services import CONFIRMED_STATES, deadline_passed
from financing.projects.models import FundingNeed, Project

logger = logging.getLogger(__name__)

PARTS = ("region", "theme", "ticket", "capacity", "time", "currency", "experience")
# Chosen by the grid search of benchmarks/matching_quality.py (docs/benchmarks.md). Capacity
# and time are unknown in IATI data, so the search cannot weigh them; they get 1 each.
DEFAULT_WEIGHTS = {"region": 1.0, "theme": 1.0, "ticket": 3.0, "capacity": 1.0, "time": 1.0,
                   "currency": 0.0, "experience": 3.0}
DEFAULT_MIN_SCORE = 0.2
DEFAULT_MAX_PER_PROJECT = 20
# Part value when the funder or the project gives nothing to compare.
NEUTRAL = 0.5
GLOBAL_REGION_FIT = 0.6
COUNTRY_FIT, COUNTRY_IN_REGION_FIT, REGION_TAG_FIT = 1.0, 0.8, 0.6
SAME_CATEGORY_FIT = 0.5
# A learned region part is (country share + 0.8 x region share) / 1.8, so that both count.
LEARNED_REGION_SCALE = COUNTRY_FIT + COUNTRY_IN_REGION_FIT
# Added to every part before the geometric mean, so that a part of 0 counts as 0.01.
FLOOR = 0.01
# Portfolio size at which the experience part reaches 1.
EXPERIENCE_FULL = 500
REVIEWED = ("accepted", "rejected")
# Digits kept for scores, parts and weights, so that a rerun with the same inputs stores the same numbers.
PRECISION = 4
# Preference kinds of a funder profile.
KINDS = ("country", "region", "sector", "theme")


@dataclass(frozen=True)
class MatchSettings:
    """Weights, minimum score and per-project limit of a run, read from the app config."""

    weights: dict[str, float]
    min_score: float
    max_per_project: int

    @classmethod
    def from_config(cls, config: Mapping | None = None) -> "MatchSettings":
        """Read MATCH_WEIGHTS, MATCH_MIN_SCORE and MATCH_MAX_PER_PROJECT, raising ValueError on an invalid value."""
        config = current_app.config if config is None else config
        configured = config.get("MATCH_WEIGHTS") or {}
        unknown = sorted(set(configured) - set(PARTS))
        if unknown:
            raise ValueError(f"MATCH_WEIGHTS has unknown part {unknown[0]!r}. Use {', '.join(PARTS)}.")
        weights = {**DEFAULT_WEIGHTS, **configured}
        for name, value in weights.items():
            if isinstance(value, bool) or not isinstance(value, int | float | Decimal) or value < 0:
                raise ValueError(f"MATCH_WEIGHTS[{name!r}] is {value!r}. Use a number of 0 or more.")
        total = sum(float(value) for value in weights.values())
        if total <= 0:
            raise ValueError("MATCH_WEIGHTS are all zero. Give at least one part a positive weight.")

        min_score = config.get("MATCH_MIN_SCORE", DEFAULT_MIN_SCORE)
        if isinstance(min_score, bool) or not isinstance(min_score, int | float | Decimal) or not 0 <= min_score <= 1:
            raise ValueError(f"MATCH_MIN_SCORE is {min_score!r}. Use a number from 0 to 1.")
        max_per_project = config.get("MATCH_MAX_PER_PROJECT", DEFAULT_MAX_PER_PROJECT)
        if isinstance(max_per_project, bool) or not isinstance(max_per_project, int) or max_per_project < 1:
            raise ValueError(f"MATCH_MAX_PER_PROJECT is {max_per_project!r}. Use a whole number of 1 or more.")

        normalised = {name: round(float(weights[name]) / total, PRECISION) for name in PARTS}
        return cls(normalised, float(min_score), max_per_project)


@dataclass
class MatchRunReport:
    """Counts of one run: matches created, updated, left unchanged, marked stale and removed."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    stale: int = 0
    removed: int = 0
    projects: int = 0
    funders: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        return (
            f"Matching: {self.created} created, {self.updated} updated, {self.unchanged} unchanged, "
            f"{self.stale} stale, {self.removed} removed "
            f"({self.projects} projects x {self.funders} funders) in {self.seconds:.2f} s."
        )


# Snapshots of the inputs, built once per run so that scoring touches no ORM attributes.

@dataclass(frozen=True)
class NeedProfile:
    id: int
    goal_minor: int
    remaining_minor: int
    currency: str
    deadline: date | None


@dataclass(frozen=True)
class ProjectProfile:
    id: int
    countries: frozenset[str]
    regions: frozenset[str]
    themes: frozenset[str]
    sectors: frozenset[str]
    # (country, ITU-D region slug) for each country with a known region, sorted by country.
    country_regions: tuple[tuple[str, str], ...]
    # (sector, slugs of the themes covering it), sorted by sector.
    sector_themes: tuple[tuple[str, tuple[str, ...]], ...]
    # (sector, DAC 3-digit category), sorted by sector.
    sector_categories: tuple[tuple[str, str], ...]
    # Open needs with an amount left, in the project's order.
    needs: tuple[NeedProfile, ...]


@dataclass(frozen=True)
class FunderProfile:
    id: int
    currency: str
    ticket_min_minor: int | None
    ticket_max_minor: int | None
    annual_budget_minor: int | None
    decision_days: int | None
    countries: frozenset[str]
    regions: frozenset[str]
    themes: frozenset[str]
    sectors: frozenset[str]
    # DAC 3-digit category -> the first preferred sector in it.
    categories: dict[str, str]
    # Theme slug -> the first preferred sector that the theme covers.
    sector_themes: dict[str, str]
    # Confirmed pledges of the current calendar year, in minor units of `currency`.
    used_minor: int
    year: int
    # Kind -> code -> weight from 0 to 1. Codes of the sets above missing here weigh 1, as set by hand.
    weights: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    # Activities the profile was learned from; 0 for a profile made by hand.
    activities: int = 0
    # False when no learned amount showed the funder's main currency.
    currency_known: bool = True
    # Derived: DAC category -> sum of its sector weights; theme -> {covered sector: weight}.
    category_weights: dict[str, float] = field(init=False, repr=False, compare=False)
    cover_weights: dict[str, dict[str, float]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        stated = self.weights or {}
        codes = {"country": self.countries, "region": self.regions, "sector": self.sectors, "theme": self.themes}
        weights = {kind: {code: float(stated.get(kind, {}).get(code, 1.0)) for code in codes[kind]} for kind in KINDS}
        category_weights: dict[str, float] = {}
        cover_weights: dict[str, dict[str, float]] = {}
        for code, weight in weights["sector"].items():
            category = _category_of(code)
            category_weights[category] = category_weights.get(category, 0.0) + weight
            for theme in _themes_of(code):
                cover_weights.setdefault(theme, {})[code] = weight
        if not self.categories:
            object.__setattr__(self, "categories", {})
            for code in sorted(self.sectors):
                self.categories.setdefault(_category_of(code), code)
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "category_weights", category_weights)
        object.__setattr__(self, "cover_weights", cover_weights)

    @property
    def learned(self) -> bool:
        return self.activities > 0


@dataclass
class PairScore:
    """The best-scoring need of one project for one funder, with its parts and their reasons."""

    project: ProjectProfile
    funder: FunderProfile
    need: NeedProfile
    score: float
    parts: dict[str, float]
    # Part name -> a tuple naming the rule that applied and the codes involved.
    reasons: dict[str, tuple]


# Part rules. Each returns (value in [0, 1], reason tuple for the explanation).

def _share(weights: Mapping[str, float], codes) -> float:
    return min(sum(weights.get(code, 0.0) for code in codes), 1.0)


def _heaviest(weights: Mapping[str, float], codes) -> str:
    """Return the code with the largest weight, the smallest code on a tie."""
    return min(codes, key=lambda code: (-weights.get(code, 0.0), code))


def _best(options: list[tuple[float, tuple]]) -> tuple[float, tuple] | None:
    """Return the option with the highest value, the earliest on a tie, or None when none is positive."""
    best = None
    for value, reason in options:
        if value > 0 and (best is None or value > best[0]):
            best = (value, reason)
    return best


def region_fit(project: ProjectProfile, funder: FunderProfile) -> tuple[float, tuple]:
    if not project.countries and not project.regions:
        return GLOBAL_REGION_FIT, ("global",)
    if not funder.countries and not funder.regions:
        # A learned profile without places means its money went nowhere in particular.
        return (0.0 if funder.learned else NEUTRAL), ("no_preference",)
    countries, regions = funder.weights["country"], funder.weights["region"]
    options = []
    shared = project.countries & funder.countries
    if shared:
        share = _share(countries, shared)
        options.append((COUNTRY_FIT * share, ("country", _heaviest(countries, shared), share)))
    via_country = {region for _, region in project.country_regions if region in funder.regions}
    if via_country:
        share = _share(regions, via_country)
        region = _heaviest(regions, via_country)
        country = next(code for code, slug in project.country_regions if slug == region)
        options.append((COUNTRY_IN_REGION_FIT * share, ("country_in_region", country, region, share)))
    shared = project.regions & funder.regions
    if shared:
        share = _share(regions, shared)
        options.append((REGION_TAG_FIT * share, ("region", _heaviest(regions, shared), share)))
    best = _best(options) or (0.0, ("elsewhere",))
    if not funder.learned:
        return best
    # Learned weights are evidence: the country share and the region share both count.
    places = (project.regions | {region for _, region in project.country_regions}) & funder.regions
    value = (_share(countries, project.countries & funder.countries)
             + COUNTRY_IN_REGION_FIT * _share(regions, places)) / LEARNED_REGION_SCALE
    return value, best[1]


def theme_fit(project: ProjectProfile, funder: FunderProfile) -> tuple[float, tuple]:
    if not funder.themes and not funder.sectors:
        return (0.0 if funder.learned else NEUTRAL), ("no_preference",)
    if not project.themes and not project.sectors:
        return 0.0, ("untagged",)
    themes, sectors = funder.weights["theme"], funder.weights["sector"]
    options = []
    sector_themes = {theme: sector for sector, covering in reversed(project.sector_themes) for theme in covering}
    shared = (project.themes | set(sector_themes)) & funder.themes
    if shared:
        share = _share(themes, shared)
        theme = _heaviest(themes, shared)
        reason = ("theme", theme, share) if theme in project.themes else ("sector_in_theme", sector_themes[theme], theme, share)
        options.append((share, reason))
    shared = project.sectors & funder.sectors
    if shared:
        share = _share(sectors, shared)
        options.append((share, ("sector", _heaviest(sectors, shared), share)))
    # Each project theme counts the funder sectors it covers, as the vectorised scorer does.
    covering = sorted(theme for theme in project.themes if theme in funder.cover_weights)
    if covering:
        share = min(sum(sum(funder.cover_weights[theme].values()) for theme in covering), 1.0)
        theme, sector = min(((theme, code) for theme in covering for code in funder.cover_weights[theme]),
                            key=lambda item: (-funder.cover_weights[item[0]][item[1]], item[1], item[0]))
        options.append((share, ("theme_covers_sector", theme, sector, share)))
    categories = {category: sector for sector, category in reversed(project.sector_categories)
                  if category in funder.category_weights}
    if categories:
        share = _share(funder.category_weights, categories)
        category = _heaviest(funder.category_weights, categories)
        options.append((SAME_CATEGORY_FIT * share,
                        ("category", categories[category], category, funder.categories[category], share)))
    return _best(options) or (0.0, ("none",))


def ticket_fit(need: NeedProfile, funder: FunderProfile) -> tuple[float, tuple]:
    """Give 1 inside the ticket range and halve it for each factor of 10 outside."""
    low, high = funder.ticket_min_minor, funder.ticket_max_minor
    if low is None and high is None:
        return NEUTRAL, ("no_range",)
    if need.currency != funder.currency:
        return NEUTRAL, ("currency",)
    amount = max(need.remaining_minor, 1)
    if low is not None and amount < low:
        return 0.5 ** math.log10(low / amount), ("below",)
    if high is not None and amount > high:
        return 0.5 ** math.log10(amount / max(high, 1)), ("above",)
    return 1.0, ("inside",)


def capacity_fit(need: NeedProfile, funder: FunderProfile) -> tuple[float, tuple]:
    if funder.annual_budget_minor is None:
        return NEUTRAL, ("no_budget",)
    available = max(funder.annual_budget_minor - funder.used_minor, 0)
    if available == 0:
        return 0.0, ("used_up",)
    if need.currency != funder.currency:
        return NEUTRAL, ("currency",)
    # A funder puts in at most its maximum ticket, so its budget only has to cover that much.
    ask = need.remaining_minor
    if funder.ticket_max_minor is not None:
        ask = min(ask, funder.ticket_max_minor)
    if available >= ask:
        return 1.0, ("covers", available)
    return available / ask, ("partial", available)


def time_fit(need: NeedProfile, funder: FunderProfile, today: date) -> tuple[float, tuple]:
    if need.deadline is None:
        return 1.0, ("no_deadline",)
    if funder.decision_days is None:
        return NEUTRAL, ("unknown",)
    days_left = (need.deadline - today).days
    if days_left >= funder.decision_days:
        return 1.0, ("enough", days_left)
    if funder.decision_days <= 0:
        return 0.0, ("short", days_left)
    return max(days_left, 0) / funder.decision_days, ("short", days_left)


def currency_fit(need: NeedProfile, funder: FunderProfile) -> tuple[float, tuple]:
    """Prefer needs in the main currency of a learned funder; neutral for profiles made by hand."""
    if not funder.learned or not funder.currency_known:
        return NEUTRAL, ("not_learned",)
    if need.currency == funder.currency:
        return 1.0, ("same",)
    return 0.0, ("other",)


def experience_fit(funder: FunderProfile) -> tuple[float, tuple]:
    """Grow from 0.11 for one learned activity to 1 for EXPERIENCE_FULL or more, on a log scale."""
    if not funder.learned:
        return NEUTRAL, ("not_learned",)
    return min(math.log1p(funder.activities) / math.log1p(EXPERIENCE_FULL), 1.0), ("learned", funder.activities)


# Reasons that come from a stated preference of the funder matching the project.
REGION_EVIDENCE = ("country", "country_in_region", "region")
THEME_EVIDENCE = ("theme", "sector_in_theme", "sector", "theme_covers_sector", "category")


def has_evidence(pair: PairScore) -> bool:
    """Tell whether a funder preference matches the project's region or theme.

    Neutral parts alone give a middling score, so without this check every funder without
    preferences would be suggested for every project.
    """
    return pair.reasons["region"][0] in REGION_EVIDENCE or pair.reasons["theme"][0] in THEME_EVIDENCE


def combine(parts: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """Return the weighted geometric mean of the floored parts, less the floor, in [0, 1]."""
    total = sum(weights.get(name, 0.0) for name in PARTS)
    log_mean = sum(weights.get(name, 0.0) * math.log(FLOOR + parts[name]) for name in PARTS) / total
    return min(max(math.exp(log_mean) - FLOOR, 0.0), 1.0)


def score_pair(project: ProjectProfile, funder: FunderProfile, weights: dict[str, float], today: date) -> PairScore:
    """Score every need of the project for the funder and return the best, the earlier need on a tie."""
    region = region_fit(project, funder)
    theme = theme_fit(project, funder)
    experience = experience_fit(funder)

    best: tuple[float, NeedProfile, dict, dict] | None = None
    for need in project.needs:
        found = {
            "region": region, "theme": theme, "ticket": ticket_fit(need, funder),
            "capacity": capacity_fit(need, funder), "time": time_fit(need, funder, today),
            "currency": currency_fit(need, funder), "experience": experience,
        }
        parts = {name: value for name, (value, _) in found.items()}
        total = combine(parts, weights)
        if best is None or total > best[0]:
            best = (total, need, parts, {name: reason for name, (_, reason) in found.items()})

    total, need, parts, reasons = best
    return PairScore(project, funder, need, score=round(total, PRECISION), parts=parts, reasons=reasons)


# Explanation: one plain sentence built from the reasons of the parts.

def _country_name(code: str) -> str:
    try:
        name = reference.country(code).name
    except reference.UnknownCode:
        return code
    # ISO 3166 appends the article to some names, as in "Cook Islands (the)".
    return name.removesuffix(" (the)")


def _region_name(slug: str) -> str:
    try:
        return reference.region(slug).name
    except reference.UnknownCode:
        return slug


def _theme_label(slug: str) -> str:
    """Turn a theme slug into words for a sentence, e.g. "ICT applications"."""
    return " ".join("ICT" if word == "ict" else word for word in slug.split("-"))


def _name_list(names: list[str]) -> str:
    if len(names) > 3:
        names = names[:3] + [f"{len(names) - 3} more"]
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " and " + names[-1]


_SCALES = ((Decimal(10**9), "B"), (Decimal(10**6), "M"), (Decimal(10**3), "k"), (Decimal(1), ""))


def _scale_of(value: Decimal) -> tuple[Decimal, str]:
    for threshold, suffix in _SCALES:
        if value >= threshold:
            return threshold, suffix
    return _SCALES[-1]


def _figure(value: Decimal, scale: tuple[Decimal, str]) -> str:
    """Write an amount in a scale with at most two decimals, e.g. "0.5M" or "5M"."""
    threshold, suffix = scale
    number = (value / threshold).quantize(Decimal("0.01")).normalize()
    return f"{number:f}{suffix}"


def short_amount(amount_minor: int, currency: str) -> str:
    """Write an amount such as "5M EUR" or "250k USD" for explanations."""
    value = to_decimal(amount_minor, currency)
    return f"{_figure(value, _scale_of(value))} {currency}"


def short_range(low_minor: int, high_minor: int, currency: str) -> str:
    """Write a ticket range such as "0.5M to 5M", both bounds in the scale of the upper one when that reads well."""
    low, high = to_decimal(low_minor, currency), to_decimal(high_minor, currency)
    scale = _scale_of(high)
    low_scale = scale if low / scale[0] >= Decimal("0.1") else _scale_of(low)
    return f"{_figure(low, low_scale)} to {_figure(high, scale)}"


def _share_note(reason: tuple) -> str:
    """Say how much of a learned funder's money went to the matched codes, when it is not all."""
    share = reason[-1]
    if not isinstance(share, float) or share >= 1:
        return ""
    return f" ({max(round(share * 100), 1)}% of its funding)"


def _region_clause(project: ProjectProfile, reason: tuple) -> str:
    kind = reason[0]
    if kind == "country":
        return f"{_country_name(reason[1])} is one of the funder's preferred countries{_share_note(reason)}"
    if kind == "country_in_region":
        return f"{_country_name(reason[1])} is in {_region_name(reason[2])}, which the funder prefers{_share_note(reason)}"
    if kind == "region":
        return f"the project covers {_region_name(reason[1])}, which the funder prefers{_share_note(reason)}"
    if kind == "global":
        return "the project is global, so every region counts"
    if kind == "no_preference":
        return "the funder states no regional preference"
    places = [_country_name(code) for code in sorted(project.countries)]
    places += [_region_name(slug) for slug in sorted(project.regions)]
    verb = "is" if len(places) == 1 else "are"
    return f"{_name_list(places)} {verb} outside the funder's preferred countries and regions"


def _theme_clause(reason: tuple) -> str:
    kind = reason[0]
    note = _share_note(reason)
    if kind == "theme":
        return f"{_theme_label(reason[1])} is one of the funder's themes{note}"
    if kind == "sector_in_theme":
        return f"{_theme_label(reason[2])} ({reason[1]}) is one of the funder's themes{note}"
    if kind == "sector":
        return f"DAC sector {reason[1]} is one of the funder's sectors{note}"
    if kind == "theme_covers_sector":
        return f"{_theme_label(reason[1])} covers the funder's sector {reason[2]}{note}"
    if kind == "category":
        return f"DAC sector {reason[1]} is in the same category ({reason[2]}) as the funder's sector {reason[3]}{note}"
    if kind == "no_preference":
        return "the funder states no theme preference"
    if kind == "untagged":
        return "the project names no theme or sector to compare with the funder's"
    return "the project shares no theme or sector with the funder"


def _ticket_clause(need: NeedProfile, funder: FunderProfile, reason: tuple) -> str:
    kind = reason[0]
    if kind == "no_range":
        return "the funder states no ticket range"
    if kind == "currency":
        return (f"ticket not compared: different currency "
                f"(the need is in {need.currency}, the ticket range in {funder.currency})")
    amount = format_compact(need.remaining_minor, need.currency)
    low, high, currency = funder.ticket_min_minor, funder.ticket_max_minor, funder.currency
    if kind == "below":
        return f"{amount} is below its minimum ticket of {short_amount(low, currency)}"
    if kind == "above":
        return f"{amount} is above its maximum ticket of {short_amount(high, currency)}"
    if low is not None and high is not None:
        return f"{amount} is inside its {short_range(low, high, currency)} ticket range"
    if low is not None:
        return f"{amount} meets its minimum ticket of {short_amount(low, currency)}"
    return f"{amount} is within its maximum ticket of {short_amount(high, currency)}"


def _capacity_clause(need: NeedProfile, funder: FunderProfile, reason: tuple) -> str | None:
    kind = reason[0]
    if kind == "used_up":
        return f"its {funder.year} budget is fully committed"
    if kind == "currency":
        return "budget not compared: different currency"
    if kind == "covers":
        return f"its remaining {funder.year} budget of {short_amount(reason[1], funder.currency)} covers it"
    if kind == "partial":
        ask = need.remaining_minor if funder.ticket_max_minor is None else min(need.remaining_minor, funder.ticket_max_minor)
        percent = reason[1] * 100 // ask
        return f"its remaining {funder.year} budget of {short_amount(reason[1], funder.currency)} covers {percent}% of it"
    return None


def _time_clause(need: NeedProfile, funder: FunderProfile, reason: tuple) -> str | None:
    if reason[0] != "short":
        return None
    days = reason[1]
    day_word = "day" if days == 1 else "days"
    return (f"the deadline of {need.deadline.isoformat()} leaves {days} {day_word}, "
            f"less than its {funder.decision_days}-day decision time")


def _learned_clause(need: NeedProfile, funder: FunderProfile, reason: tuple) -> str | None:
    if not funder.learned:
        return None
    activities = "activity" if funder.activities == 1 else "activities"
    clause = f"its profile is learned from {funder.activities} IATI {activities}"
    if reason[0] == "other":
        clause += f", mostly in {funder.currency}, while the need is in {need.currency}"
    return clause


def explain(pair: PairScore) -> str:
    """Write the one-sentence explanation of a pair's score, leaving out neutral budget and time parts."""
    clauses = [
        _region_clause(pair.project, pair.reasons["region"]),
        _theme_clause(pair.reasons["theme"]),
        _ticket_clause(pair.need, pair.funder, pair.reasons["ticket"]),
        _capacity_clause(pair.need, pair.funder, pair.reasons["capacity"]),
        _time_clause(pair.need, pair.funder, pair.reasons["time"]),
        _learned_clause(pair.need, pair.funder, pair.reasons["currency"]),
    ]
    text = "; ".join(clause for clause in clauses if clause)
    return text[0].upper() + text[1:] + "."


def inputs_digest(project: ProjectProfile, need: NeedProfile, funder: FunderProfile) -> str:
    """Hash the edited inputs of a pair: project tags, the need's goal and deadline, the funder profile.

    Pledge totals and budget use are left out, so that a new pledge does not send every
    reviewed match of a project back to the review queue.
    """
    payload = {
        "project": {
            "id": project.id, "countries": sorted(project.countries), "regions": sorted(project.regions),
            "themes": sorted(project.themes), "sectors": sorted(project.sectors),
        },
        "need": {
            "id": need.id, "goal": need.goal_minor, "currency": need.currency,
            "deadline": need.deadline.isoformat() if need.deadline else None,
        },
        "funder": {
            "id": funder.id, "currency": funder.currency, "ticket_min": funder.ticket_min_minor,
            "ticket_max": funder.ticket_max_minor, "budget": funder.annual_budget_minor,
            "decision_days": funder.decision_days, "countries": sorted(funder.countries),
            "regions": sorted(funder.regions), "themes": sorted(funder.themes), "sectors": sorted(funder.sectors),
            "weights": {kind: sorted(funder.weights[kind].items()) for kind in KINDS}, "activities": funder.activities,
        },
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# Loading: a few queries, then plain snapshots.

def _region_of(country: str) -> str | None:
    try:
        return reference.region_of_country(country)
    except reference.UnknownCode:
        return None


@functools.lru_cache(maxsize=4096)
def _themes_of(sector: str) -> tuple[str, ...]:
    try:
        return tuple(reference.themes_of_sector(sector))
    except reference.UnknownCode:
        return ()


@functools.lru_cache(maxsize=4096)
def _category_of(sector: str) -> str:
    try:
        return reference.sector(sector).category
    except reference.UnknownCode:
        return sector[:3]


def project_profile(project: Project, now: datetime) -> ProjectProfile | None:
    """Snapshot a project and its open needs, or return None when no need is open with an amount left."""
    needs = tuple(
        NeedProfile(need.id, need.goal_minor, need.remaining_minor, need.currency, need.deadline)
        for need in project.needs
        if need.status == "open" and need.remaining_minor > 0 and not deadline_passed(need, now)
    )
    if not needs:
        return None
    countries = frozenset(project.countries)
    sectors = frozenset(project.sectors)
    country_regions = tuple((code, region) for code in sorted(countries) if (region := _region_of(code)))
    return ProjectProfile(
        id=project.id,
        countries=countries,
        regions=frozenset(project.regions),
        themes=frozenset(project.themes),
        sectors=sectors,
        country_regions=country_regions,
        sector_themes=tuple((code, _themes_of(code)) for code in sorted(sectors)),
        sector_categories=tuple((code, _category_of(code)) for code in sorted(sectors)),
        needs=needs,
    )


def funder_profile(funder: Funder, used_minor: int, year: int) -> FunderProfile:
    """Snapshot a funder with its preferences and its budget use this year."""
    preferences = [(row.kind, row.code, row.weight) for row in funder.preferences]
    return _snapshot(funder, preferences, used_minor, year)


# The columns of a funder that its snapshot reads, from a Funder or from a row of these columns.
SNAPSHOT_COLUMNS = ("id", "currency", "ticket_min_minor", "ticket_max_minor", "annual_budget_minor",
                    "decision_days", "learned_from")


def _snapshot(funder: Funder | Row, preferences: list[tuple[str, str, Decimal | None]], used_minor: int,
              year: int) -> FunderProfile:
    codes: dict[str, set[str]] = {kind: set() for kind in KINDS}
    weights: dict[str, dict[str, float]] = {kind: {} for kind in KINDS}
    for kind, code, weight in preferences:
        codes[kind].add(code)
        # A preference set by hand (weight None) weighs 1.
        weights[kind][code] = 1.0 if weight is None else float(weight)
    categories: dict[str, str] = {}
    sector_themes: dict[str, str] = {}
    for code in sorted(codes["sector"]):
        categories.setdefault(_category_of(code), code)
        for theme in _themes_of(code):
            sector_themes.setdefault(theme, code)
    return FunderProfile(
        id=funder.id,
        currency=funder.currency,
        ticket_min_minor=funder.ticket_min_minor,
        ticket_max_minor=funder.ticket_max_minor,
        annual_budget_minor=funder.annual_budget_minor,
        decision_days=funder.decision_days,
        countries=frozenset(codes["country"]),
        regions=frozenset(codes["region"]),
        themes=frozenset(codes["theme"]),
        sectors=frozenset(codes["sector"]),
        categories=categories,
        sector_themes=sector_themes,
        used_minor=used_minor,
        year=year,
        weights=weights,
        activities=funder.learned_from or 0,
    )


def load_funder_profiles(now: datetime, funder_id: int | None = None) -> list[FunderProfile]:
    """Snapshot every funder, or one, in id order, from two queries of plain rows.

    Each pledge starts a recomputation that reads all funders, so this builds no ORM objects.
    With 2,000 funders, a project's recomputation took a median of 166 ms with ORM objects and
    39 ms with plain rows (in-process, see docs/benchmarks.md, "Matching speed").
    """
    funder_query = select(*(getattr(Funder, name) for name in SNAPSHOT_COLUMNS)).order_by(Funder.id)
    preference_query = select(FunderPreference.funder_id, FunderPreference.kind, FunderPreference.code,
                              FunderPreference.weight)
    if funder_id is not None:
        funder_query = funder_query.where(Funder.id == funder_id)
        preference_query = preference_query.where(FunderPreference.funder_id == funder_id)
    preferences: dict[int, list[tuple[str, str, Decimal | None]]] = {}
    for owner, kind, code, weight in db.session.execute(preference_query):
        preferences.setdefault(owner, []).append((kind, code, weight))
    used = budget_used(now, funder_id)
    # NOTE: a confirmed pledge whose own currency and need currency both differ from the
    # funder's currency is not counted against its budget, for want of an exchange rate.
    return [
        _snapshot(row, preferences.get(row.id, []), used.get((row.id, row.currency), 0), now.year)
        for row in db.session.execute(funder_query)
    ]


def budget_used(now: datetime, funder_id: int | None = None) -> dict[tuple[int, str], int]:
    """Sum the pledges confirmed on the platform this calendar year (UTC) by funder and currency.

    A pledge counts in its own currency and in its need's currency, so the caller can pick the
    funder's: key (funder_id, currency) -> minor units.
    """
    # NOTE: pledges imported from IATI are left out. Their ledger rows carry the import time,
    # not the transaction date, so a 2018 commitment would otherwise use up this year's budget.
    year_start = datetime(now.year, 1, 1, tzinfo=timezone.utc)
    confirmed_this_year = select(PledgeEvent.pledge_id).where(
        PledgeEvent.to_state == "confirmed", PledgeEvent.at >= year_start
    )
    query = (
        select(Pledge.funder_id, Pledge.currency, FundingNeed.currency,
               func.sum(Pledge.amount_minor), func.sum(Pledge.need_amount_minor))
        .join(FundingNeed, Pledge.need_id == FundingNeed.id)
        .where(Pledge.state.in_(CONFIRMED_STATES), Pledge.import_key.is_(None), Pledge.id.in_(confirmed_this_year))
        .group_by(Pledge.funder_id, Pledge.currency, FundingNeed.currency)
    )
    if funder_id is not None:
        query = query.where(Pledge.funder_id == funder_id)

    totals: dict[tuple[int, str], int] = {}
    for funder, pledge_currency, need_currency, amount, need_amount in db.session.execute(query):
        totals[(funder, pledge_currency)] = totals.get((funder, pledge_currency), 0) + int(amount)
        if need_currency != pledge_currency:
            totals[(funder, need_currency)] = totals.get((funder, need_currency), 0) + int(need_amount)
    return totals


def _load_projects(project_id: int | None, now: datetime) -> list[ProjectProfile]:
    query = (
        select(Project)
        .where(Project.status == "published", Project.needs.any(FundingNeed.status == "open"))
        .options(selectinload(Project.tags), selectinload(Project.needs))
        .order_by(Project.id)
    )
    if project_id is not None:
        query = query.where(Project.id == project_id)
    profiles = (project_profile(project, now) for project in db.session.scalars(query))
    return [profile for profile in profiles if profile is not None]


def _load_matches(project_id: int | None) -> dict[tuple[int, int], Match]:
    query = select(Match)
    if project_id is not None:
        query = query.where(Match.project_id == project_id)
    return {(match.project_id, match.funder_id): match for match in db.session.scalars(query)}


# Storing.

@dataclass
class _Candidate:
    """A pair competing for one of a project's suggestion slots."""

    score: float
    funder_id: int
    match: Match | None
    # None for an existing suggestion of a funder outside this run, ranked by its stored score.
    pair: PairScore | None = None


def _apply(match: Match, pair: PairScore, digest: str, weights: dict[str, float]) -> bool:
    """Copy a pair's numbers onto a match and tell whether something changed."""
    values = {
        "need_id": pair.need.id, "score": pair.score,
        "parts": {name: round(pair.parts[name], PRECISION) for name in PARTS},
        "weights": weights, "explanation": explain(pair), "inputs_digest": digest,
    }
    changed = False
    for name, value in values.items():
        if getattr(match, name) != value:
            setattr(match, name, value)
            changed = True
    return changed


@dataclass
class _Run:
    settings: MatchSettings
    report: MatchRunReport = field(default_factory=MatchRunReport)

    def keep_reviewed(self, match: Match, pair: PairScore) -> None:
        """Leave a reviewed match alone while its inputs are the same, and mark it stale once they change."""
        digest = inputs_digest(pair.project, pair.need, pair.funder)
        if digest == match.inputs_digest:
            self.report.unchanged += 1
            return
        _apply(match, pair, digest, self.settings.weights)
        if match.status in REVIEWED:
            logger.info("match stale id=%s project=%s funder=%s was=%s", match.id, match.project_id, match.funder_id, match.status)
            match.status = "stale"
            self.report.stale += 1
        else:
            self.report.updated += 1

    def store(self, candidate: _Candidate) -> None:
        pair, match = candidate.pair, candidate.match
        if pair is None:
            # An existing suggestion of a funder outside this run keeps its slot untouched.
            return
        digest = inputs_digest(pair.project, pair.need, pair.funder)
        if match is None:
            match = Match(project_id=pair.project.id, funder_id=pair.funder.id, status="suggested")
            _apply(match, pair, digest, self.settings.weights)
            db.session.add(match)
            self.report.created += 1
        elif _apply(match, pair, digest, self.settings.weights):
            self.report.updated += 1
        else:
            self.report.unchanged += 1

    def remove(self, match: Match) -> None:
        db.session.delete(match)
        self.report.removed += 1


# Extra candidates taken from the vectorised scores, so that float32 rounding near a tie cannot
# push one of a project's true best funders out before score_pair rescores them.
CANDIDATE_MARGIN = 5
# PostgreSQL advisory lock keys: one for the whole match table, one class for single projects.
LOCK_ALL = (7301, 0)
LOCK_PROJECT_CLASS = 7302


def _lock(project_id: int | None) -> None:
    """Serialise runs that could write the same pairs, until the transaction ends (PostgreSQL only).

    A project run holds the table lock shared and its project's lock alone, so runs for
    different projects go on side by side. A full or funder run holds the table lock alone.
    SQLite lets one writer at a time anyway.
    """
    if db.session.get_bind().dialect.name != "postgresql":
        return
    if project_id is None:
        db.session.execute(text("SELECT pg_advisory_xact_lock(:a, :b)"), {"a": LOCK_ALL[0], "b": LOCK_ALL[1]})
        return
    db.session.execute(text("SELECT pg_advisory_xact_lock_shared(:a, :b)"), {"a": LOCK_ALL[0], "b": LOCK_ALL[1]})
    db.session.execute(text("SELECT pg_advisory_xact_lock(:a, :b)"), {"a": LOCK_PROJECT_CLASS, "b": project_id})


def run_matching(project_id: int | None = None, funder_id: int | None = None) -> MatchRunReport:
    """Recompute the match suggestions of one project, one funder, or all, and flush without committing.

    Each project-funder pair keeps one Match for the project's best open need. Suggestions
    that were never reviewed are dropped below MATCH_MIN_SCORE, when no funder preference
    matches the project's region or theme, and beyond the MATCH_MAX_PER_PROJECT best of
    each project. Accepted and rejected matches are kept, and turn stale when their inputs
    changed. On PostgreSQL, runs that could write the same pairs wait for each other (see
    `_lock`), so two runs at once never insert one pair twice. Raises NotFound for an unknown
    project or funder id and ValueError for invalid MATCH_* settings.
    """
    started = time.perf_counter()
    settings = MatchSettings.from_config()
    now = utcnow()
    today = now.date()
    logger.info("match run started project=%s funder=%s", project_id, funder_id)
    _lock(project_id if funder_id is None else None)
    if project_id is not None and db.session.get(Project, project_id) is None:
        raise NotFound(f"Project {project_id} not found.")
    if funder_id is not None and db.session.get(Funder, funder_id) is None:
        raise NotFound(f"Funder {funder_id} not found.")

    from financing.matching import vector

    projects = _load_projects(project_id, now)
    funders = load_funder_profiles(now, funder_id)
    funder_by_id = {funder.id: funder for funder in funders}
    existing = _load_matches(project_id)
    run = _Run(settings)
    run.report.projects, run.report.funders = len(projects), len(funders)
    top = vector.top_funders(projects, funders, settings.weights, today, settings.min_score,
                             settings.max_per_project + CANDIDATE_MARGIN)

    in_scope = {funder.id for funder in funders} if funder_id is not None else None
    by_project: dict[int, list[Match]] = {}
    for (match_project_id, match_funder_id), match in existing.items():
        by_project.setdefault(match_project_id, []).append(match)

    for project in projects:
        candidates = [
            # Suggestions of funders outside this run compete for the slots with their stored scores.
            _Candidate(match.score, match.funder_id, match)
            for match in by_project.get(project.id, ())
            if in_scope is not None and match.funder_id not in in_scope and match.status == "suggested"
        ]
        scored = {funders[index].id for index, _ in top.get(project.id, ())}
        # Stored matches of funders in this run that the scores did not pick are rescored too.
        scored |= {match.funder_id for match in by_project.get(project.id, ())
                   if in_scope is None or match.funder_id in in_scope}
        for funder_id_ in sorted(scored):
            funder = funder_by_id.get(funder_id_)
            match = existing.pop((project.id, funder_id_), None)
            if funder is None:
                # A matched funder that no longer exists: cascade deletes handle it.
                continue
            pair = score_pair(project, funder, settings.weights, today)
            if match is not None and match.status != "suggested":
                run.keep_reviewed(match, pair)
            elif pair.score >= settings.min_score and has_evidence(pair):
                candidates.append(_Candidate(pair.score, funder.id, match, pair))
            elif match is not None:
                run.remove(match)

        candidates.sort(key=lambda candidate: (-candidate.score, candidate.funder_id))
        for candidate in candidates[:settings.max_per_project]:
            run.store(candidate)
        for candidate in candidates[settings.max_per_project:]:
            if candidate.match is not None:
                run.remove(candidate.match)

    # What is left of this run's scope belongs to projects without an open need any more.
    # Unreviewed suggestions are removed, and reviewed matches stay as the record of the decision.
    for (_, match_funder_id), match in existing.items():
        in_run = in_scope is None or match_funder_id in in_scope
        if in_run and match.status == "suggested":
            run.remove(match)

    db.session.flush()
    run.report.seconds = time.perf_counter() - started
    logger.info("match run finished project=%s funder=%s: %s", project_id, funder_id, run.report)
    return run.report


def recompute_for_project(project_id: int) -> None:
    """Job: recompute one project's suggestions after it, a need or a pledge changed."""
    if db.session.get(Project, project_id) is None:
        logger.info("match recompute skipped: project %s no longer exists", project_id)
        return
    run_matching(project_id=project_id)


def recompute_for_funder(funder_id: int) -> None:
    """Job: recompute one funder's suggestions after its profile changed."""
    if db.session.get(Funder, funder_id) is None:
        logger.info("match recompute skipped: funder %s no longer exists", funder_id)
        return
    run_matching(funder_id=funder_id)
