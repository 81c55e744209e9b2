"""Measure how well learned funder profiles rank the real funders of IATI activities.

For each activity with a funder, the script hides the activity and learns every funder's
profile from the other activities. Then it ranks all funders for the hidden activity from what
a project owner would enter: countries, regions, sectors, themes, amount and currency. It reports recall@1,
recall@5, recall@10 and mean reciprocal rank (MRR) of the true funders for the learned
ranking of the matching engine (`engine.score_pair` on profiles learned in memory) and for three
baselines. No database is needed.

    .venv/bin/python benchmarks/matching_quality.py                 # data/iati-activities/*.xml
    .venv/bin/python benchmarks/matching_quality.py FILE.xml ...    # other IATI activity files

Funders are identified as the importer identifies them: the funding participating
organisations and the organisations behind the activity's commitments and disbursements
(financing.iati.importer). A funder's committed amount in an activity is the importer's
pledge amount. A funding organisation with no such amount still counts as a funded activity,
without an amount. The last line of output is one JSON object with every figure.
"""

import argparse
import itertools
import json
import logging
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from financing.iati.importer import ImportReport, _FileImport  # noqa: E402
from financing.iati.parser import ParseError, iter_activities  # noqa: E402
from financing.matching import engine, profiles  # noqa: E402
from financing.matching.engine import MatchSettings, NeedProfile, ProjectProfile  # noqa: E402
from financing.matching.profiles import Funding, LearnedProfile  # noqa: E402

DEFAULT_FILES = ROOT / "data" / "iati-activities"
CUTOFFS = (1, 5, 10)
RANDOM_SEEDS = (1, 2, 3, 4, 5)
# Seed of the fixed random order that breaks ties between equal scores.
TIE_SEED = 0
# Weight values tried for each ranking part in the grid search.
GRID_VALUES = (0.0, 1.0, 2.0, 3.0)
# Parts the grid search weighs. Budget and decision time are unknown in IATI data, so the
# capacity and time parts are the same for every funder and cannot change a ranking.
TUNED_PARTS = ("region", "theme", "ticket", "currency", "experience")
# Funders need at least this many activities to count in the macro average.
MACRO_MIN_ACTIVITIES = 2


@dataclass
class Case:
    """One activity with a funder: what the owner enters, and who funded it."""

    identifier: str
    file: str
    project: ProjectProfile
    need: NeedProfile | None
    # Funder key -> the activity as that funder's Funding.
    funders: dict[str, Funding] = field(default_factory=dict)


# Reading the files with the importer's rules.

def project_profile(index: int, tags: dict, need: NeedProfile | None) -> ProjectProfile:
    """Build the engine's plain project snapshot from importer tags {(kind, code): percentage}."""
    codes = defaultdict(set)
    for kind, code in tags:
        codes[kind].add(code)
    sectors = sorted(codes["sector"])
    return ProjectProfile(
        id=index,
        countries=frozenset(codes["country"]),
        regions=frozenset(codes["region"]),
        themes=frozenset(codes["theme"]),
        sectors=frozenset(sectors),
        country_regions=tuple((code, region) for code in sorted(codes["country"]) if (region := profiles.region_of(code))),
        sector_themes=tuple((code, profiles.themes_of(code)) for code in sectors),
        sector_categories=tuple((code, profiles.category_of(code)) for code in sectors),
        needs=(need,) if need else (),
    )


def read_cases(paths: list[Path]) -> tuple[list[Case], Counter]:
    """Read the activities of the files. A later file's activity replaces an earlier one with the same identifier."""
    found: dict[str, Case] = {}
    counts: Counter = Counter()
    for path in paths:
        # NOTE: _FileImport is the importer's private per-file state. Its tag, currency, flow and
        # funder-key methods use no database, so the benchmark follows the importer exactly.
        run = _FileImport(ImportReport(str(path)))
        try:
            activities = list(iter_activities(path))
        except ParseError as error:
            raise ParseError(f"{path}: {error.message}", error.line) from error
        for activity in activities:
            identifier = run.accept(activity)
            if identifier is None:
                counts["skipped by the importer"] += 1
                continue
            counts["activities"] += 1
            currency = run.need_currency(activity, None)
            flows = run.flows(activity, currency)
            budget = run.budget_total(activity, currency) if currency else 0
            goal = max([budget] + [flow.amount for flow in flows.values()])
            need = NeedProfile(len(found), goal, goal, currency, None) if goal > 0 else None

            tags = run.tags(activity)
            by_kind: dict[str, dict] = defaultdict(dict)
            for (kind, code), percentage in tags.items():
                by_kind[kind][code] = percentage
            keys = [run.participant_key(activity, org) for org in activity.funding_orgs]
            funder_refs = sorted({key.ref for key in keys if key} | set(flows))
            case = Case(identifier, path.name, project_profile(len(found), tags, need), need)
            for ref in funder_refs:
                amount = flows[ref].amount if ref in flows else None
                case.funders[ref] = Funding(
                    activity=identifier, amount_minor=amount or None, currency=currency,
                    countries=by_kind["country"], regions=frozenset(by_kind["region"]),
                    sectors=by_kind["sector"], themes=by_kind["theme"],
                )
            if identifier in found:
                counts["replaced by a later file"] += 1
            found[identifier] = case
    cases = [case for case in found.values() if case.funders]
    counts["without a funder"] = len(found) - len(cases)
    return cases, counts


# Training side: profiles learned without the hidden activity.

@dataclass
class Training:
    """Funder keys, full profiles, and the leave-one-out profiles of each case's true funders."""

    keys: list[str]
    counts: np.ndarray  # activities per funder over all cases
    full: list[LearnedProfile | None]
    # (case index, funder index) -> profile learned without that case, None if nothing is left.
    held_out: dict[tuple[int, int], LearnedProfile | None]
    # Funder index -> Counter of ITU-D regions over its activities, for the region baseline.
    regions: list[Counter]


def activity_regions(funding: Funding) -> set[str]:
    return {region for code in funding.countries if (region := profiles.region_of(code))} | set(funding.regions)


def build_training(cases: list[Case], pledges_only: bool = False) -> Training:
    """Learn each funder's profile from all its activities, and from all but each one of them.

    With `pledges_only`, a funder learns only from the activities with a committed amount,
    as learn_profiles does from the database, which keeps no pledge-less funding links.
    """
    by_funder: dict[str, list[tuple[int, Funding]]] = defaultdict(list)
    for index, case in enumerate(cases):
        for ref, funding in case.funders.items():
            if funding.amount_minor or not pledges_only:
                by_funder[ref].append((index, funding))
    for case in cases:
        for ref in case.funders:
            by_funder.setdefault(ref, [])
    keys = sorted(by_funder)
    full, regions, held_out = [], [], {}
    for funder_index, ref in enumerate(keys):
        items = by_funder[ref]
        fundings = [funding for _, funding in items]
        full.append(profiles.learn(fundings) if fundings else None)
        regions.append(Counter(region for funding in fundings for region in activity_regions(funding)))
        for position, (case_index, _) in enumerate(items):
            rest = fundings[:position] + fundings[position + 1:]
            held_out[(case_index, funder_index)] = profiles.learn(rest) if rest else None
    counts = np.array([len(by_funder[ref]) for ref in keys])
    return Training(keys, counts, full, held_out, regions)


@dataclass
class Features:
    """Everything the rankings need, as arrays over cases x funders."""

    candidates: np.ndarray   # bool: the funder has a training activity
    truth: np.ndarray        # bool: the funder funded the case
    popularity: np.ndarray   # training activities of the funder
    in_region: np.ndarray    # bool: the funder funded in one of the case's regions before
    parts: np.ndarray        # float: the engine's parts, in TUNED_PARTS order
    learned: np.ndarray      # float: the engine score with the default weights


def engine_project(case: Case) -> ProjectProfile:
    """Return the case's project for engine.score_pair, which scores needs, with a placeholder need if it has none."""
    if case.need is not None:
        return case.project
    placeholder = NeedProfile(-1, 1, 1, "XXX", None)
    return ProjectProfile(**{**case.project.__dict__, "needs": (placeholder,)})


def build_features(cases: list[Case], training: Training) -> Features:
    """Score every case against every funder, each true funder with its profile learned without the case."""
    n_cases, n_funders = len(cases), len(training.keys)
    index_of = {ref: i for i, ref in enumerate(training.keys)}
    candidates = np.zeros((n_cases, n_funders), dtype=bool)
    truth = np.zeros((n_cases, n_funders), dtype=bool)
    popularity = np.tile(training.counts, (n_cases, 1)).astype(float)
    in_region = np.zeros((n_cases, n_funders), dtype=bool)
    parts = np.zeros((n_cases, n_funders, len(TUNED_PARTS)))
    learned = np.zeros((n_cases, n_funders))

    weights = MatchSettings.from_config({}).weights
    # No need has a deadline, so the day only has to be fixed.
    today = date(2000, 1, 1)
    full = [profiles.funder_snapshot(profile, i) if profile else None for i, profile in enumerate(training.full)]
    for case_index, case in enumerate(cases):
        regions = {region for _, region in case.project.country_regions} | set(case.project.regions)
        project = engine_project(case)
        for ref in case.funders:
            truth[case_index, index_of[ref]] = True
        for funder_index in range(n_funders):
            funder = full[funder_index]
            funder_regions = training.regions[funder_index]
            if (case_index, funder_index) in training.held_out:
                # The case is one of the funder's training activities: take it out.
                popularity[case_index, funder_index] -= 1
                profile = training.held_out[(case_index, funder_index)]
                funder = profiles.funder_snapshot(profile, funder_index) if profile else None
                funding = cases[case_index].funders[training.keys[funder_index]]
                funder_regions = funder_regions - Counter(activity_regions(funding))
            if funder is None:
                continue
            candidates[case_index, funder_index] = True
            in_region[case_index, funder_index] = bool(regions & set(funder_regions))
            pair = engine.score_pair(project, funder, weights, today)
            parts[case_index, funder_index] = [pair.parts[name] for name in TUNED_PARTS]
            learned[case_index, funder_index] = pair.score
    return Features(candidates, truth, popularity, in_region, parts, learned)


# Ranks and metrics.

def tie_order(n_funders: int) -> np.ndarray:
    """Return a fixed random tie-break key per funder: among equal scores the lower key ranks first."""
    return np.random.default_rng(TIE_SEED).permutation(n_funders)


def true_ranks(scores: np.ndarray, features: Features, ties: np.ndarray) -> dict[tuple[int, int], float]:
    """Rank every true funder of every case among the case's candidates, or give inf when it is no candidate.

    Rank 1 is best. A funder ranks below every candidate with a higher score, and below those
    with an equal score and a lower tie-break key.
    """
    ranks = {}
    for case_index, funder_index in zip(*np.nonzero(features.truth)):
        if not features.candidates[case_index, funder_index]:
            ranks[(case_index, funder_index)] = np.inf
            continue
        row = scores[case_index]
        own = row[funder_index]
        mask = features.candidates[case_index]
        better = (row > own) | ((row == own) & (ties < ties[funder_index]))
        ranks[(case_index, funder_index)] = 1.0 + np.count_nonzero(better & mask)
    return ranks


def metrics(ranks: dict[tuple[int, int], float], n_cases: int) -> dict[str, float]:
    """Compute recall@k and MRR, micro over cases (best-ranked true funder) and macro over funders.

    The macro average first averages each funder's own rank over the cases it funded, then
    averages those figures over the funders with at least MACRO_MIN_ACTIVITIES cases, so each
    such funder weighs the same.
    """
    best = np.full(n_cases, np.inf)
    by_funder: dict[int, list[float]] = defaultdict(list)
    for (case_index, funder_index), rank in ranks.items():
        best[case_index] = min(best[case_index], rank)
        by_funder[funder_index].append(rank)
    result = {}
    for k in CUTOFFS:
        result[f"micro_recall@{k}"] = float(np.mean(best <= k))
    result["micro_mrr"] = float(np.mean(1.0 / best))
    kept = [np.array(found) for found in by_funder.values() if len(found) >= MACRO_MIN_ACTIVITIES]
    for k in CUTOFFS:
        result[f"macro_recall@{k}"] = float(np.mean([np.mean(found <= k) for found in kept])) if kept else 0.0
    result["macro_mrr"] = float(np.mean([np.mean(1.0 / found) for found in kept])) if kept else 0.0
    result["macro_funders"] = len(kept)
    return result


def mean_metrics(results: list[dict[str, float]]) -> dict[str, float]:
    return {name: float(np.mean([result[name] for result in results])) for name in results[0]}


# Baselines.

def random_scores(features: Features, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(features.truth.shape)


def popularity_scores(features: Features) -> np.ndarray:
    return features.popularity.copy()


def region_scores(features: Features) -> np.ndarray:
    """Rank funders that funded in one of the project's regions first, each group by popularity."""
    return features.in_region * (features.popularity.max() + 1.0) + features.popularity


# Weight tuning.

def grid() -> np.ndarray:
    """Return the weight combinations of the grid search, one row each, without the all-zero one."""
    rows = [values for values in itertools.product(GRID_VALUES, repeat=len(TUNED_PARTS)) if any(values)]
    return np.array(rows)


def pair_ranks(features: Features, weight_rows: np.ndarray, ties: np.ndarray) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Rank each true (case, funder) pair under every weight row: returns the pairs and a rows x pairs array.

    The score of a row is the weighted sum of the logarithms of the floored parts, which
    orders funders as engine.score_pair does with those weights.
    """
    log_parts = np.log(engine.FLOOR + features.parts)
    pairs = [tuple(pair) for pair in zip(*np.nonzero(features.truth))]
    ranks = np.full((len(weight_rows), len(pairs)), np.inf)
    column = 0
    for case_index in range(features.truth.shape[0]):
        mask = features.candidates[case_index]
        scores = log_parts[case_index][mask] @ weight_rows.T  # candidates x rows
        position = np.cumsum(mask) - 1
        candidate_ties = ties[mask]
        for funder_index in np.flatnonzero(features.truth[case_index]):
            if mask[funder_index]:
                own = scores[position[funder_index]]
                higher = np.count_nonzero(scores > own, axis=0)
                tied = np.count_nonzero(scores[candidate_ties < ties[funder_index]] == own, axis=0)
                ranks[:, column] = 1.0 + higher + tied
            column += 1
    return pairs, ranks


def objective(pairs: list[tuple[int, int]], ranks: np.ndarray, selected: set[int]) -> np.ndarray:
    """Score each weight row on the selected cases: micro MRR plus macro MRR."""
    case_of = np.array([case_index for case_index, _ in pairs])
    funder_of = np.array([funder_index for _, funder_index in pairs])
    keep = np.isin(case_of, sorted(selected))
    if not keep.any():
        return np.zeros(len(ranks))
    reciprocal = 1.0 / ranks[:, keep]
    kept_cases, kept_funders = case_of[keep], funder_of[keep]
    # Pairs come in case order, so each case's pairs are one run of columns.
    starts = np.flatnonzero(np.r_[True, kept_cases[1:] != kept_cases[:-1]])
    micro = np.maximum.reduceat(reciprocal, starts, axis=1).mean(axis=1)
    funders, counts = np.unique(kept_funders, return_counts=True)
    macro_funders = funders[counts >= MACRO_MIN_ACTIVITIES]
    if len(macro_funders) == 0:
        return micro
    macro = np.mean([reciprocal[:, kept_funders == funder].mean(axis=1) for funder in macro_funders], axis=0)
    return micro + macro


def tune(pairs, ranks, weight_rows, selected: set[int]) -> np.ndarray:
    """Return the weight row with the best objective on the selected cases, the first on a tie."""
    return weight_rows[int(np.argmax(objective(pairs, ranks, selected)))]


def leave_one_file_out(cases: list[Case], pairs, ranks, weight_rows: np.ndarray) -> tuple[dict, dict]:
    """Rank each file's cases with weights tuned on the other files' cases only."""
    files = sorted({case.file for case in cases})
    chosen_ranks: dict[tuple[int, int], float] = {}
    chosen: dict[str, list[float]] = {}
    for name in files:
        inside = {i for i, case in enumerate(cases) if case.file == name}
        outside = set(range(len(cases))) - inside
        row = tune(pairs, ranks, weight_rows, outside) if outside else weight_rows[0]
        row_index = int(np.flatnonzero((weight_rows == row).all(axis=1))[0])
        chosen[name] = row.tolist()
        for column, pair in enumerate(pairs):
            if pair[0] in inside:
                chosen_ranks[pair] = ranks[row_index, column]
    return chosen_ranks, chosen


# Output.

COLUMNS = ("micro_recall@1", "micro_recall@5", "micro_recall@10", "micro_mrr",
           "macro_recall@1", "macro_recall@5", "macro_recall@10", "macro_mrr")


def print_table(rows: dict[str, dict[str, float]]) -> None:
    width = max(len(name) for name in rows)
    heads = ["R@1", "R@5", "R@10", "MRR"] * 2
    print(f"{'':{width}}  {'micro (per activity)':^27}    {'macro (per funder)':^27}")
    print(f"{'method':{width}}  " + "  ".join(f"{head:>5}" for head in heads[:4]) + "    " + "  ".join(f"{head:>5}" for head in heads[4:]))
    for name, figures in rows.items():
        values = [f"{figures[column]:5.3f}" for column in COLUMNS]
        print(f"{name:{width}}  " + "  ".join(values[:4]) + "    " + "  ".join(values[4:]))


BASELINES = ("random", "popularity", "region filter + popularity")
# Figures on which a ranking has to beat every baseline.
DECIDING = ("micro_mrr", "macro_mrr", "macro_recall@5")


def beats_baselines(rows: dict[str, dict[str, float]], name: str) -> bool:
    return all(rows[name][figure] > rows[baseline][figure] for baseline in BASELINES for figure in DECIDING)


def display_path(path: Path) -> str:
    """Write a path relative to the repository root when it is inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path,
                        help=f"IATI activity files (default: every .xml file in {DEFAULT_FILES.relative_to(ROOT)})")
    parser.add_argument("--no-grid", action="store_true",
                        help="skip the grid search and the leave-one-file-out figure, which take most of the time")
    parser.add_argument("--pledges-only", action="store_true",
                        help="learn only from activities with a committed amount, as learn_profiles does from the database")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    paths = args.files or sorted(DEFAULT_FILES.glob("*.xml"))
    if not paths:
        print(f"No IATI files found in {DEFAULT_FILES}.", file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        cases, counts = read_cases(paths)
    except ParseError as error:
        where = f" (line {error.line})" if error.line else ""
        print(f"Cannot read an IATI file{where}: {error.message}", file=sys.stderr)
        return 2
    if not cases:
        print("No activity in these files names a funder, so there is nothing to rank.", file=sys.stderr)
        return 2
    training = build_training(cases, args.pledges_only)
    features = build_features(cases, training)
    prepared = time.perf_counter() - started
    ties = tie_order(len(training.keys))
    n_cases = len(cases)

    rows: dict[str, dict[str, float]] = {}
    rows["random"] = mean_metrics([metrics(true_ranks(random_scores(features, seed), features, ties), n_cases) for seed in RANDOM_SEEDS])
    rows["popularity"] = metrics(true_ranks(popularity_scores(features), features, ties), n_cases)
    rows["region filter + popularity"] = metrics(true_ranks(region_scores(features), features, ties), n_cases)
    rows["engine score"] = metrics(true_ranks(features.learned, features, ties), n_cases)

    tuned: dict[str, object] = {}
    if not args.no_grid:
        weight_rows = grid()
        pairs, ranks = pair_ranks(features, weight_rows, ties)
        best = tune(pairs, ranks, weight_rows, set(range(n_cases)))
        tuned = {
            "grid_values": list(GRID_VALUES), "combinations": len(weight_rows),
            "best_in_sample": dict(zip(TUNED_PARTS, best.tolist())),
        }
        if len({case.file for case in cases}) > 1:
            chosen_ranks, chosen = leave_one_file_out(cases, pairs, ranks, weight_rows)
            rows["engine score, leave-one-file-out weights"] = metrics(chosen_ranks, n_cases)
            tuned["leave_one_file_out"] = {name: dict(zip(TUNED_PARTS, row)) for name, row in chosen.items()}

    learned = rows["engine score"]
    beats = {name: beats_baselines(rows, name) for name in rows if name.startswith("engine score")}
    seconds = time.perf_counter() - started

    unseen = int(np.count_nonzero(features.truth & ~features.candidates))
    print(f"Files: {len(paths)}; activities read: {counts['activities']}; ranked (with a funder): {n_cases}; "
          f"funders: {len(training.keys)}; funders with >= {MACRO_MIN_ACTIVITIES} activities: {learned['macro_funders']}.")
    print(f"True funder links: {int(features.truth.sum())}, of which {unseen} cannot be ranked, because the funder "
          f"has no other activity to learn from.")
    print(f"Random baseline: mean of seeds {', '.join(map(str, RANDOM_SEEDS))}. Ties break in a fixed random order (seed {TIE_SEED}).")
    print()
    print_table(rows)
    print()
    if tuned:
        print("Best grid weights on all activities (in-sample): "
              + ", ".join(f"{name} {value:g}" for name, value in tuned["best_in_sample"].items()))
    for name, result in beats.items():
        print(f"{name[0].upper()}{name[1:]} beats every baseline on micro MRR, macro MRR and macro recall@5: {'yes' if result else 'no'}.")
    print(f"Time: {seconds:.1f} s ({prepared:.1f} s reading, learning and scoring).")
    summary = {
        "files": [display_path(path) for path in paths], "pledges_only": args.pledges_only,
        "activities": counts["activities"], "cases": n_cases,
        "funders": len(training.keys), "unrankable_links": unseen,
        "weights": engine.DEFAULT_WEIGHTS, "results": rows, "tuning": tuned,
        "beats_baselines": beats, "seconds": round(seconds, 1),
    }
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
