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

The engine scores pairs with the stored weights (`engine.funder_profile`); `funder_snapshot`
gives the quality benchmark the same snapshot for a profile learned in memory.
"""

from __future__ import annotations

import logging
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
    from financing.matching.engine import FunderProfile

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


def funder_snapshot(profile: LearnedProfile, funder_id: int = 0, currency: str = "EUR") -> FunderProfile:
    """Turn a learned profile into the engine's funder snapshot, for scoring without a database.

    Budget and decision time are unknown, so the engine treats those parts as neutral.
    """
    from financing.matching.engine import FunderProfile

    weights = profile.weights
    return FunderProfile(
        id=funder_id, currency=profile.currency or currency,
        ticket_min_minor=profile.ticket_min_minor, ticket_max_minor=profile.ticket_max_minor,
        annual_budget_minor=None, decision_days=None,
        countries=frozenset(weights["country"]), regions=frozenset(weights["region"]),
        themes=frozenset(weights["theme"]), sectors=frozenset(weights["sector"]),
        categories={}, sector_themes={}, used_minor=0, year=0,
        weights=weights, activities=profile.activities, currency_known=profile.currency is not None,
    )
