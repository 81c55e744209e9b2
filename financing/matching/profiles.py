"""Learned funder profiles: preferences and a ticket range taken from a funder's IATI portfolio.

A funder imported from IATI states no preferences, but the activities it funded show where
its money goes. Learning turns those activities into FunderPreference rows:

- Each funded activity is one `Funding`: its tags and the funder's committed amount (the
  pledge's need_amount_minor). Inside one currency, an activity weighs by its share of the
  funder's committed amount in that currency. Each currency weighs by its share of the
  funder's activities, because amounts in different currencies are not comparable without
  exchange rates. Activities without a known amount form one more group of equal weights.
- An activity's amount is split over its countries and its sectors by their IATI
  percentages, divided by the larger of their sum and 100, so that a share the file leaves
  to regions or to other vocabularies stays unassigned. Codes without a percentage share
  the activity equally. A country's share also counts for its ITU-D region, and a region
  tag gets what the countries leave. A theme's share comes from its own tag percentage.
- A preference's weight is the share of the funder's committed amount that went to it,
  from 0 to 1. Only the MAX_PER_KIND largest weights of at least MIN_WEIGHT are kept, so
  the weights of one kind add up to at most 1.
- The ticket range runs from the 10th to the 90th percentile (nearest rank) of the pledge
  amounts in the funder's main currency, which is the currency of most of its pledges.

`learn_profiles` writes the learned preferences, ticket range and `learned_from` of the
funders that have an IATI reference. A preference with weight None was entered by hand. A
funder with at least one hand-set preference has taken its profile over, so learning leaves
its preferences, ticket range and learned_from alone and only counts it in the report.

The second half of the module ranks funders for a project with the learned weights
(`rank_parts`, `rank_score`). The matching quality benchmark uses these functions, and the
engine can use them through `learned_profile` and `rank_parts` (see docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from financing import reference
from financing.core.errors import NotFound
from financing.extensions import db
from financing.funders.models import Funder, FunderPreference
from financing.pledges.models import RELEASED_STATES, Pledge
from financing.projects.models import FundingNeed, Project

if TYPE_CHECKING:
    # Only for annotations, so that the engine can import this module.
    from financing.matching.engine import NeedProfile, ProjectProfile

logger = logging.getLogger(__name__)

KINDS = ("country", "region", "sector", "theme")
# Preferences below this share of the committed amount are dropped, so profiles stay readable.
MIN_WEIGHT = 0.05
MAX_PER_KIND = 10
TICKET_PERCENTILES = (10, 90)
# Stored weights are cut (not rounded) to the 6 decimals of FunderPreference.weight, so the
# weights of one kind never add up to more than 1.
WEIGHT_STEP = Decimal("0.000001")
# Projects loaded per query in learn_profiles, to keep the IN lists short.
PROJECT_BATCH = 500


@dataclass(frozen=True)
class Funding:
    """One activity a funder funded: its tags with IATI percentages and the committed amount.

    `amount_minor` is None when the funder is named as a funding organisation but no
    commitment or disbursement of it is known.
    """

    activity: str
    amount_minor: int | None
    currency: str | None
    countries: Mapping[str, Decimal | None] = field(default_factory=dict)
    regions: frozenset[str] = frozenset()
    sectors: Mapping[str, Decimal | None] = field(default_factory=dict)
    themes: Mapping[str, Decimal | None] = field(default_factory=dict)


@dataclass(frozen=True)
class LearnedProfile:
    """Preference weights by kind and a ticket range, learned from a funder's portfolio or read from its profile."""

    activities: int
    currency: str | None
    ticket_min_minor: int | None
    ticket_max_minor: int | None
    # Kind ("country", "region", "sector", "theme") -> code -> weight from 0 to 1.
    weights: dict[str, dict[str, float]]
    # DAC 3-digit category -> the sum of the kept sector weights in it.
    categories: dict[str, float] = field(default_factory=dict)

    @classmethod
    def build(cls, activities: int, currency: str | None, ticket: tuple[int | None, int | None],
              weights: Mapping[str, Mapping[str, float]]) -> LearnedProfile:
        """Make a profile and derive its category weights from the sector weights."""
        kinds = {kind: dict(weights.get(kind, {})) for kind in KINDS}
        categories: dict[str, float] = defaultdict(float)
        for code, weight in kinds["sector"].items():
            categories[category_of(code)] += weight
        return cls(activities, currency, ticket[0], ticket[1], kinds, dict(categories))


# Reference look-ups that tolerate codes missing from the shipped lists.

def region_of(country: str) -> str | None:
    try:
        return reference.region_of_country(country)
    except reference.UnknownCode:
        return None


def themes_of(sector: str) -> tuple[str, ...]:
    try:
        return tuple(reference.themes_of_sector(sector))
    except reference.UnknownCode:
        return ()


def category_of(sector: str) -> str:
    try:
        return reference.sector(sector).category
    except reference.UnknownCode:
        return sector[:3]


# Learning from plain values.

def tag_shares(tags: Mapping[str, Decimal | None]) -> dict[str, float]:
    """Split one activity over its codes by their percentages.

    With every percentage known and a positive sum, each code gets its percentage divided
    by the larger of the sum and 100. Otherwise the codes share the activity equally.
    """
    if not tags:
        return {}
    percentages = list(tags.values())
    if all(value is not None for value in percentages):
        total = sum(percentages, Decimal(0))
        if total > 0:
            divisor = float(max(total, Decimal(100)))
            return {code: float(value) / divisor for code, value in tags.items()}
    share = 1.0 / len(tags)
    return {code: share for code in tags}


def activity_shares(funding: Funding) -> dict[str, dict[str, float]]:
    """Split one activity over countries, ITU-D regions, sectors and themes, each kind adding up to at most 1."""
    countries = tag_shares(funding.countries)
    regions: dict[str, float] = defaultdict(float)
    for code, share in countries.items():
        region = region_of(code)
        if region is not None:
            regions[region] += share
    # Region tags share what the countries leave, e.g. a regional programme with no country.
    rest = 1.0 - sum(countries.values())
    if funding.regions and rest > 1e-9:
        for slug in funding.regions:
            regions[slug] += rest / len(funding.regions)
    return {
        "country": countries,
        "region": dict(regions),
        "sector": tag_shares(funding.sectors),
        "theme": tag_shares(funding.themes),
    }


def activity_weights(fundings: Sequence[Funding]) -> list[float]:
    """Weigh each activity: its share of the amount in its currency, times that currency's share of the activities.

    Activities without an amount form one group in which each weighs the same. The weights
    add up to 1.
    """
    groups: dict[str | None, list[int]] = defaultdict(list)
    for index, funding in enumerate(fundings):
        key = funding.currency if funding.amount_minor else None
        groups[key].append(index)
    weights = [0.0] * len(fundings)
    count = len(fundings)
    for key, members in groups.items():
        group_weight = len(members) / count
        if key is None:
            for index in members:
                weights[index] = group_weight / len(members)
            continue
        total = sum(fundings[index].amount_minor for index in members)
        for index in members:
            weights[index] = group_weight * fundings[index].amount_minor / total
    return weights


def percentile_minor(amounts: Sequence[int], percent: int) -> int:
    """Return the nearest-rank percentile of integer amounts, itself one of the amounts."""
    ordered = sorted(amounts)
    rank = max((percent * len(ordered) + 99) // 100, 1)
    return ordered[rank - 1]


def main_currency(fundings: Iterable[Funding], preferred: str | None = None) -> str | None:
    """Return the currency of the most funded amounts, on a tie `preferred` if it is tied, else the first code."""
    counts: dict[str, int] = defaultdict(int)
    for funding in fundings:
        if funding.amount_minor and funding.currency:
            counts[funding.currency] += 1
    if not counts:
        return None
    most = max(counts.values())
    tied = sorted(code for code, count in counts.items() if count == most)
    return preferred if preferred in tied else tied[0]


def top_weights(totals: Mapping[str, float], min_weight: float = MIN_WEIGHT, limit: int = MAX_PER_KIND) -> dict[str, float]:
    """Keep the `limit` largest weights of at least `min_weight`, the smaller code first on a tie."""
    ranked = sorted(totals.items(), key=lambda item: (-item[1], item[0]))
    return {code: weight for code, weight in ranked[:limit] if weight >= min_weight}


def learn(fundings: Sequence[Funding], preferred_currency: str | None = None,
          min_weight: float = MIN_WEIGHT, limit: int = MAX_PER_KIND) -> LearnedProfile:
    """Learn a profile from the activities one funder funded."""
    totals: dict[str, dict[str, float]] = {kind: defaultdict(float) for kind in KINDS}
    for funding, weight in zip(fundings, activity_weights(fundings)):
        for kind, shares in activity_shares(funding).items():
            for code, share in shares.items():
                totals[kind][code] += weight * share

    currency = main_currency(fundings, preferred_currency)
    ticket: tuple[int | None, int | None] = (None, None)
    if currency is not None:
        amounts = [f.amount_minor for f in fundings if f.amount_minor and f.currency == currency]
        ticket = tuple(percentile_minor(amounts, percent) for percent in TICKET_PERCENTILES)
    activities = len({funding.activity for funding in fundings})
    weights = {kind: top_weights(totals[kind], min_weight, limit) for kind in KINDS}
    return LearnedProfile.build(activities, currency, ticket, weights)


# Learning from the database.

@dataclass
class LearnReport:
    """Counts of one learning run."""

    funders: int = 0
    learned: int = 0
    hand_edited: int = 0
    without_pledges: int = 0
    cleared: int = 0
    preferences: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        return (
            f"Learned profiles: {self.learned} of {self.funders} IATI funders learned "
            f"({self.preferences} preferences), {self.hand_edited} kept as edited by hand, "
            f"{self.without_pledges} without imported pledges ({self.cleared} cleared) in {self.seconds:.2f} s."
        )


def is_hand_edited(funder: Funder) -> bool:
    """Tell whether the funder set a preference itself: a preference without a learned weight."""
    return any(pref.weight is None for pref in funder.preferences)


def project_funding(project: Project, amount_minor: int, currency: str) -> Funding:
    """Describe one funded project as a Funding, with its tag percentages."""
    tags: dict[str, dict[str, Decimal | None]] = {kind: {} for kind in KINDS}
    for tag in project.tags:
        tags[tag.kind][tag.code] = tag.percentage
    return Funding(
        activity=str(project.id), amount_minor=amount_minor, currency=currency,
        countries=tags["country"], regions=frozenset(tags["region"]),
        sectors=tags["sector"], themes=tags["theme"],
    )


def _imported_fundings(funder_id: int | None) -> dict[int, list[Funding]]:
    """Load the active imported pledges of the IATI funders (or of one) as Fundings, one per pledge."""
    query = (
        select(Pledge.funder_id, Pledge.need_amount_minor, FundingNeed.currency, FundingNeed.project_id)
        .join(FundingNeed, Pledge.need_id == FundingNeed.id)
        .join(Funder, Pledge.funder_id == Funder.id)
        .where(Funder.iati_ref.is_not(None), Pledge.import_key.is_not(None), Pledge.state.not_in(RELEASED_STATES))
        .order_by(Pledge.funder_id, Pledge.id)
    )
    if funder_id is not None:
        query = query.where(Pledge.funder_id == funder_id)
    rows = db.session.execute(query).all()
    project_ids = sorted({row.project_id for row in rows})
    projects: dict[int, Project] = {}
    for start in range(0, len(project_ids), PROJECT_BATCH):
        batch = project_ids[start:start + PROJECT_BATCH]
        query = select(Project).where(Project.id.in_(batch)).options(selectinload(Project.tags))
        projects.update((project.id, project) for project in db.session.scalars(query))

    fundings: dict[int, list[Funding]] = defaultdict(list)
    for row in rows:
        if row.need_amount_minor > 0:
            fundings[row.funder_id].append(project_funding(projects[row.project_id], row.need_amount_minor, row.currency))
    return fundings


def stored_weight(weight: float) -> Decimal:
    return Decimal(repr(weight)).quantize(WEIGHT_STEP, rounding=ROUND_DOWN)


def apply_profile(funder: Funder, profile: LearnedProfile) -> int:
    """Replace the funder's learned preferences and ticket range with `profile`, and return the number of preferences."""
    wanted = {
        (kind, code): stored_weight(weight)
        for kind, codes in profile.weights.items() for code, weight in codes.items()
    }
    wanted = {key: weight for key, weight in wanted.items() if weight > 0}
    for pref in list(funder.preferences):
        key = (pref.kind, pref.code)
        if key not in wanted:
            funder.preferences.remove(pref)
        elif pref.weight != wanted[key]:
            pref.weight = wanted[key]
    present = {(pref.kind, pref.code) for pref in funder.preferences}
    for (kind, code) in sorted(set(wanted) - present):
        funder.preferences.append(FunderPreference(kind=kind, code=code, weight=wanted[(kind, code)]))

    funder.learned_from = profile.activities
    # The budget is in the funder's currency, so a funder with a budget keeps its currency and
    # gets a ticket range only when its main currency is that one.
    if profile.currency and (profile.currency == funder.currency or funder.annual_budget_minor is None):
        funder.currency = profile.currency
        funder.ticket_min_minor = profile.ticket_min_minor
        funder.ticket_max_minor = profile.ticket_max_minor
    return len(wanted)


def learn_profiles(funder_id: int | None = None) -> LearnReport:
    """Learn the profiles of the IATI funders (or of one) from their imported pledges, and flush.

    A funder counts when it has an IATI reference. Pledges count when they were imported
    (import_key set) and are not cancelled or refunded. A funder whose profile was edited by
    hand is left as it is. A funder that has no such pledge any more loses its learned
    preferences and gets learned_from 0. The caller commits. Raises NotFound for an unknown
    funder id.
    """
    started = time.perf_counter()
    report = LearnReport()
    logger.info("learn profiles started funder=%s", funder_id)
    if funder_id is not None and db.session.get(Funder, funder_id) is None:
        raise NotFound(f"Funder {funder_id} not found.")
    query = (
        select(Funder).where(Funder.iati_ref.is_not(None))
        .options(selectinload(Funder.preferences)).order_by(Funder.id)
    )
    if funder_id is not None:
        query = query.where(Funder.id == funder_id)
    funders = list(db.session.scalars(query))
    report.funders = len(funders)
    fundings = _imported_fundings(funder_id)

    for funder in funders:
        if is_hand_edited(funder):
            report.hand_edited += 1
            logger.info("learn profiles kept hand-edited funder=%s", funder.id)
            continue
        own = fundings.get(funder.id)
        if not own:
            report.without_pledges += 1
            if funder.learned_from or funder.preferences:
                # NOTE: the ticket range stays, because nothing records whether it was learned.
                funder.preferences.clear()
                funder.learned_from = 0
                report.cleared += 1
            continue
        profile = learn(own, preferred_currency=funder.currency)
        report.preferences += apply_profile(funder, profile)
        report.learned += 1

    db.session.flush()
    report.seconds = time.perf_counter() - started
    logger.info("learn profiles finished funder=%s: %s", funder_id, report)
    return report


def learned_profile(funder: Funder) -> LearnedProfile:
    """Read a funder's stored preferences back as a profile for ranking.

    Hand-set preferences (weight None) count as fully preferred: each gets weight 1.
    """
    weights: dict[str, dict[str, float]] = {kind: {} for kind in KINDS}
    for pref in funder.preferences:
        weights[pref.kind][pref.code] = 1.0 if pref.weight is None else float(pref.weight)
    ticket = (funder.ticket_min_minor, funder.ticket_max_minor)
    return LearnedProfile.build(funder.learned_from, funder.currency, ticket, weights)


# Ranking funders for a project with the learned weights.

RANK_PARTS = ("country", "region", "sector", "category", "theme", "ticket", "currency", "experience")
# Chosen by the grid search of benchmarks/matching_quality.py on the IATI files in
# data/iati-activities, except theme: the grid gave it 0 because only 96 of those 1,276
# activities have an ICT theme, and theme 1 costs 0.003 of MRR there (docs/benchmarks.md).
DEFAULT_RANK_WEIGHTS = {
    "country": 1.0, "region": 1.0, "sector": 1.0, "category": 0.0, "theme": 1.0,
    "ticket": 3.0, "currency": 1.0, "experience": 3.0,
}
# Portfolio size at which the experience part reaches 1. Below it, the part grows with the logarithm.
EXPERIENCE_FULL = 500
NEUTRAL = 0.5
# Added to every part before the geometric mean, so that a part of 0 counts as 0.01.
RANK_FLOOR = 0.01


def _share(weights: Mapping[str, float], codes: Iterable[str]) -> float:
    return min(sum(weights.get(code, 0.0) for code in codes), 1.0)


def ticket_part(need: NeedProfile | None, profile: LearnedProfile) -> float:
    """Compare the need's remaining amount with the learned range on a log scale.

    Inside the range gives 1. Each factor of 10 outside it costs half, so a need 10 times
    the maximum ticket gives 0.5. Without a need, a range or the same currency the part is
    neutral (0.5).
    """
    low, high = profile.ticket_min_minor, profile.ticket_max_minor
    if need is None or low is None or high is None or need.currency != profile.currency:
        return NEUTRAL
    amount = need.remaining_minor
    if low <= amount <= high:
        return 1.0
    ratio = low / amount if amount < low else amount / high
    return 0.5 ** math.log10(ratio)


def currency_part(need: NeedProfile | None, profile: LearnedProfile) -> float:
    """Give 1 when the need is in the funder's main currency, 0 when not, 0.5 when either is unknown."""
    if need is None or profile.currency is None:
        return NEUTRAL
    return 1.0 if need.currency == profile.currency else 0.0


def experience_part(profile: LearnedProfile) -> float:
    """Grow from 0.11 for one learned activity to 1 for EXPERIENCE_FULL or more, on a log scale.

    A profile learned from no activity, such as one made by hand, gets the neutral 0.5, so
    that it does not rank below every funder learned from IATI.
    """
    if profile.activities == 0:
        return NEUTRAL
    return min(math.log1p(profile.activities) / math.log1p(EXPERIENCE_FULL), 1.0)


def project_regions(project: ProjectProfile) -> set[str]:
    """Return the project's region tags and the regions of its countries."""
    return set(project.regions) | {region for _, region in project.country_regions}


def project_themes(project: ProjectProfile) -> set[str]:
    """Return the project's theme tags and the themes that cover its sectors."""
    return set(project.themes) | {theme for _, themes in project.sector_themes for theme in themes}


def rank_parts(project: ProjectProfile, need: NeedProfile | None, profile: LearnedProfile) -> dict[str, float]:
    """Score each part of a project-funder pair from 0 to 1 with the funder's learned weights.

    The geographic and thematic parts are the share of the funder's committed money that went
    to the project's countries, regions, sectors, DAC categories and themes.
    """
    weights = profile.weights
    return {
        "country": _share(weights["country"], project.countries),
        "region": _share(weights["region"], project_regions(project)),
        "sector": _share(weights["sector"], project.sectors),
        "category": _share(profile.categories, {category for _, category in project.sector_categories}),
        "theme": _share(weights["theme"], project_themes(project)),
        "ticket": ticket_part(need, profile),
        "currency": currency_part(need, profile),
        "experience": experience_part(profile),
    }


def rank_score(parts: Mapping[str, float], weights: Mapping[str, float] = DEFAULT_RANK_WEIGHTS) -> float:
    """Combine the parts into one score from 0 to 1: their weighted geometric mean.

    Each part is raised by RANK_FLOOR first, so that one part of 0 lowers the score a lot
    without wiping out the others, and the floor is taken off the result again. Parts with
    weight 0 or no weight do not count.
    """
    total = sum(weights.get(name, 0.0) for name in RANK_PARTS)
    log_mean = sum(weights.get(name, 0.0) * math.log(RANK_FLOOR + parts[name]) for name in RANK_PARTS) / total
    return min(max(math.exp(log_mean) - RANK_FLOOR, 0.0), 1.0)
