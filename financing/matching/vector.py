"""Score every need against every funder at once with NumPy, to pick each project's best funders.

`engine.score_pair` explains one pair, and this module computes the same score for all pairs
in blocks of needs. The funders' preference weights are dense matrices and the projects' codes
sparse 0/1 matrices, so each share is one sparse-dense product. Scores are
float32, which agrees with `score_pair` to about 1e-6; the engine rescores the pairs that it
keeps with `score_pair`, so that stored scores and explanations come from one place.

The region and theme parts belong to the project, the other parts to each need. A project's
score for a funder is the score of its best need, taken on the logarithm of the geometric
mean before the exponential, which keeps the order and saves an exponential per need.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date

import numpy as np
from scipy import sparse

from financing.matching import engine
from financing.matching.engine import FunderProfile, ProjectProfile

# Needs per block: about 32 MB per float32 array with 2,000 funders.
BLOCK_NEEDS = 4096


class _Codes:
    """Column numbers of the codes of one kind, shared by funders and needs."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}

    def add(self, code: str) -> int:
        return self.index.setdefault(code, len(self.index))

    def __len__(self) -> int:
        return len(self.index)


@dataclass
class FunderMatrix:
    """The funders of a run as arrays, one row per funder."""

    profiles: list[FunderProfile]
    codes: dict[str, _Codes]
    # Preference weights, funders x codes: countries, regions, themes, sectors, categories, and
    # for each theme the summed weight of the funder's sectors that it covers.
    country: np.ndarray
    region: np.ndarray
    theme: np.ndarray
    sector: np.ndarray
    category: np.ndarray
    cover: np.ndarray
    has_geography: np.ndarray
    has_topic: np.ndarray
    currency: np.ndarray
    has_range: np.ndarray
    low_log_bound: np.ndarray   # log10 of the minimum ticket, -1e30 without one (no NaN to clean up)
    high_log_bound: np.ndarray  # log10 of the maximum ticket, 1e30 without one
    high_float: np.ndarray      # maximum ticket, inf without one
    available: np.ndarray     # budget left this year, NaN without a budget
    available_float: np.ndarray  # available as float32, 0 without a budget
    decision: np.ndarray      # decision days, NaN when unknown
    learned: np.ndarray
    compares_currency: np.ndarray
    experience_log: np.ndarray  # weighted log term of the experience part

    @classmethod
    def build(cls, funders: Sequence[FunderProfile], weights: dict[str, float],
              currencies: dict[str, int] | None = None) -> FunderMatrix:
        codes = {kind: _Codes() for kind in ("country", "region", "theme", "sector", "category")}
        for funder in funders:
            for code in funder.countries:
                codes["country"].add(code)
            for code in funder.regions:
                codes["region"].add(code)
            for code in funder.themes | set(funder.cover_weights):
                codes["theme"].add(code)
            for code in funder.sectors:
                codes["sector"].add(code)
            for code in funder.category_weights:
                codes["category"].add(code)
        n = len(funders)

        def dense(kind: str, rows: Callable[[FunderProfile], dict[str, float]]) -> np.ndarray:
            matrix = np.zeros((n, max(len(codes[kind]), 1)), dtype=np.float32)
            for row, funder in enumerate(funders):
                for code, weight in rows(funder).items():
                    matrix[row, codes[kind].index[code]] += weight
            return matrix

        currencies = {} if currencies is None else currencies
        total = sum(weights.values())
        experience = np.array([engine.experience_fit(funder)[0] for funder in funders], dtype=np.float64)
        return cls(
            profiles=list(funders),
            codes=codes,
            country=dense("country", lambda f: f.weights["country"]),
            region=dense("region", lambda f: f.weights["region"]),
            theme=dense("theme", lambda f: f.weights["theme"]),
            sector=dense("sector", lambda f: f.weights["sector"]),
            category=dense("category", lambda f: f.category_weights),
            cover=dense("theme", lambda f: {theme: sum(covered.values()) for theme, covered in f.cover_weights.items()}),
            has_geography=np.array([bool(f.countries or f.regions) for f in funders]),
            has_topic=np.array([bool(f.themes or f.sectors) for f in funders]),
            currency=np.array([currencies.setdefault(f.currency, len(currencies)) for f in funders], dtype=np.int32),
            has_range=np.array([f.ticket_min_minor is not None or f.ticket_max_minor is not None for f in funders]),
            low_log_bound=np.array([math.log10(max(f.ticket_min_minor, 1)) if f.ticket_min_minor is not None else -1e30
                                    for f in funders], dtype=np.float32),
            high_log_bound=np.array([math.log10(max(f.ticket_max_minor, 1)) if f.ticket_max_minor is not None else 1e30
                                     for f in funders], dtype=np.float32),
            high_float=np.array([f.ticket_max_minor if f.ticket_max_minor is not None else np.inf for f in funders],
                                dtype=np.float32),
            available_float=np.array([max(f.annual_budget_minor - f.used_minor, 0) if f.annual_budget_minor is not None
                                      else 0 for f in funders], dtype=np.float32),
            available=np.array([max(f.annual_budget_minor - f.used_minor, 0) if f.annual_budget_minor is not None
                                else np.nan for f in funders], dtype=np.float64),
            decision=np.array([f.decision_days if f.decision_days is not None else np.nan for f in funders],
                              dtype=np.float32),
            learned=np.array([f.learned for f in funders]),
            compares_currency=np.array([f.learned and f.currency_known for f in funders]),
            experience_log=(weights["experience"] / total * np.log(engine.FLOOR + experience)).astype(np.float32),
        )


@dataclass
class NeedBlock:
    """A run of whole projects, one row per open need, with the projects' codes per project."""

    projects: list[ProjectProfile]
    # For each need row, the row of its project in this block.
    project_row: np.ndarray
    # Start row of each project's needs, for np.maximum.reduceat.
    starts: np.ndarray
    remaining: np.ndarray
    remaining_log: np.ndarray
    currency: np.ndarray
    days_left: np.ndarray     # days to the deadline, NaN without one
    # Projects x codes, 0/1: countries, regions of the countries, region tags, both of these, themes with
    # the themes of the sectors, theme tags only, sectors, categories.
    country: sparse.csr_matrix
    country_region: sparse.csr_matrix
    region: sparse.csr_matrix
    place: sparse.csr_matrix
    theme: sparse.csr_matrix
    theme_tag: sparse.csr_matrix
    sector: sparse.csr_matrix
    category: sparse.csr_matrix
    is_global: np.ndarray
    untagged: np.ndarray

    @classmethod
    def build(cls, projects: Sequence[ProjectProfile], funders: FunderMatrix, today: date,
              currencies: dict[str, int]) -> NeedBlock:
        codes = funders.codes
        shape = {kind: max(len(codes[kind]), 1) for kind in codes}
        columns: dict[str, list[list[int]]] = {name: [] for name in
                                               ("country", "country_region", "region", "place", "theme", "theme_tag", "sector", "category")}

        def known(kind: str, values) -> list[int]:
            index = codes[kind].index
            return sorted({index[value] for value in values if value in index})

        project_row, remaining, currency, days_left, starts = [], [], [], [], []
        for row, project in enumerate(projects):
            sector_themes = {theme for _, covering in project.sector_themes for theme in covering}
            columns["country"].append(known("country", project.countries))
            columns["country_region"].append(known("region", {region for _, region in project.country_regions}))
            columns["region"].append(known("region", project.regions))
            columns["place"].append(known("region", project.regions | {region for _, region in project.country_regions}))
            columns["theme"].append(known("theme", project.themes | sector_themes))
            columns["theme_tag"].append(known("theme", project.themes))
            columns["sector"].append(known("sector", project.sectors))
            columns["category"].append(known("category", {category for _, category in project.sector_categories}))
            starts.append(len(project_row))
            for need in project.needs:
                project_row.append(row)
                remaining.append(need.remaining_minor)
                currency.append(currencies.setdefault(need.currency, len(currencies)))
                days_left.append((need.deadline - today).days if need.deadline is not None else np.nan)

        def indicator(name: str, kind: str) -> sparse.csr_matrix:
            rows = columns[name]
            indptr = np.cumsum([0] + [len(row) for row in rows])
            indices = np.array([column for row in rows for column in row], dtype=np.int32)
            data = np.ones(len(indices), dtype=np.float32)
            return sparse.csr_matrix((data, indices, indptr), shape=(len(rows), shape[kind]))

        remaining_array = np.array(remaining, dtype=np.float64)
        return cls(
            projects=list(projects),
            project_row=np.array(project_row, dtype=np.int64),
            starts=np.array(starts, dtype=np.int64),
            remaining=remaining_array,
            remaining_log=np.log10(np.maximum(remaining_array, 1)).astype(np.float32),
            currency=np.array(currency, dtype=np.int32),
            days_left=np.array(days_left, dtype=np.float32),
            country=indicator("country", "country"),
            country_region=indicator("country_region", "region"),
            region=indicator("region", "region"),
            place=indicator("place", "region"),
            theme=indicator("theme", "theme"),
            theme_tag=indicator("theme_tag", "theme"),
            sector=indicator("sector", "sector"),
            category=indicator("category", "category"),
            is_global=np.array([not project.countries and not project.regions for project in projects]),
            untagged=np.array([not project.themes and not project.sectors for project in projects]),
        )


def _capped(indicator: sparse.csr_matrix, weights: np.ndarray) -> np.ndarray:
    """Sum each project's code weights for every funder, at most 1: projects x funders."""
    return np.minimum(np.asarray(indicator @ weights.T, dtype=np.float32), 1.0)


def _log(part: np.ndarray, weight: float) -> np.ndarray:
    return weight * np.log(np.float32(engine.FLOOR) + part)


def score_block(block: NeedBlock, funders: FunderMatrix, weights: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Return (scores, evidence) for a block: projects x funders, each project at its best need.

    Each part adds weight x log(FLOOR + part) to a log score. The region, theme and experience
    terms are the same for all needs of a project, so they are added after the maximum over
    the needs. Parts with weight 0 are skipped.
    """
    total = sum(weights.values())
    w = {name: np.float32(value / total) for name, value in weights.items()}
    floor = np.float32(engine.FLOOR)

    def constant_log(value: float, weight: np.float32) -> np.float32:
        return np.float32(weight * math.log(engine.FLOOR + value))

    # Project parts: region and theme.
    region_pref = _capped(block.country, funders.country)
    np.maximum(region_pref, engine.COUNTRY_IN_REGION_FIT * _capped(block.country_region, funders.region), out=region_pref)
    np.maximum(region_pref, engine.REGION_TAG_FIT * _capped(block.region, funders.region), out=region_pref)
    theme_pref = _capped(block.theme, funders.theme)
    np.maximum(theme_pref, _capped(block.sector, funders.sector), out=theme_pref)
    np.maximum(theme_pref, _capped(block.theme_tag, funders.cover), out=theme_pref)
    np.maximum(theme_pref, engine.SAME_CATEGORY_FIT * _capped(block.category, funders.category), out=theme_pref)
    theme_pref[block.untagged] = 0.0
    evidence = (funders.has_geography[None, :] & ~block.is_global[:, None] & (region_pref > 0)) | (
        funders.has_topic[None, :] & (theme_pref > 0))

    project_log = np.broadcast_to(funders.experience_log, region_pref.shape).copy()
    if w["region"]:
        if funders.learned.any():
            learned_region = (_capped(block.country, funders.country)
                              + engine.COUNTRY_IN_REGION_FIT * _capped(block.place, funders.region)) / engine.LEARNED_REGION_SCALE
            region = np.where(funders.learned[None, :], learned_region, region_pref)
        else:
            region = region_pref
        no_geography = np.where(funders.learned, np.float32(0.0), np.float32(engine.NEUTRAL))
        region = np.where(funders.has_geography[None, :], region, no_geography[None, :])
        region[block.is_global] = engine.GLOBAL_REGION_FIT
        project_log += _log(region, w["region"])
    if w["theme"]:
        no_topic = np.where(funders.learned, np.float32(0.0), np.float32(engine.NEUTRAL))
        theme = np.where(funders.has_topic[None, :], theme_pref, no_topic[None, :])
        project_log += _log(theme, w["theme"])

    # Need parts: ticket, capacity, time, currency. Arrays are needs x funders.
    shape = (len(block.remaining), len(funders.profiles))
    same_currency = block.currency[:, None] == funders.currency[None, :]
    need_log = np.zeros(shape, dtype=np.float32)
    if w["ticket"]:
        amount = block.remaining_log[:, None]
        outside = np.subtract(funders.low_log_bound[None, :], amount, dtype=np.float32)
        np.maximum(outside, amount - funders.high_log_bound[None, :], out=outside)
        np.maximum(outside, 0, out=outside)
        # 0.5 to the power of the factors of 10 outside the range.
        np.exp2(-outside, out=outside)
        ticket_log = _log(outside, w["ticket"])
        compared = same_currency & funders.has_range[None, :]
        need_log += np.where(compared, ticket_log, constant_log(engine.NEUTRAL, w["ticket"]))
    if w["capacity"]:
        ask = np.minimum(block.remaining[:, None].astype(np.float32), funders.high_float[None, :])
        capacity = np.divide(funders.available_float[None, :], ask, dtype=np.float32)
        np.minimum(capacity, 1.0, out=capacity)
        capacity_log = _log(capacity, w["capacity"])
        need_log += np.where(same_currency, capacity_log, constant_log(engine.NEUTRAL, w["capacity"]))
        # Funders without a budget are neutral and those with nothing left score 0, whatever the currency.
        fixed = np.isnan(funders.available) | (funders.available == 0)
        if fixed.any():
            columns = np.flatnonzero(fixed)
            values = np.where(funders.available[columns] == 0, constant_log(0.0, w["capacity"]),
                              constant_log(engine.NEUTRAL, w["capacity"])).astype(np.float32)
            need_log[:, columns] += values[None, :] - np.where(
                same_currency[:, columns], capacity_log[:, columns], constant_log(engine.NEUTRAL, w["capacity"]))
    if w["time"]:
        dated = np.flatnonzero(~np.isnan(block.days_left))
        undated_rows = np.isnan(block.days_left)
        need_log[undated_rows] += constant_log(1.0, w["time"])
        if dated.size:
            days = np.maximum(block.days_left[dated], 0)[:, None]
            with np.errstate(divide="ignore", invalid="ignore"):
                timing = np.minimum(days / funders.decision[None, :], 1.0)
            timing = np.nan_to_num(timing, nan=0.0)
            timing = np.where(block.days_left[dated][:, None] >= funders.decision[None, :], np.float32(1.0), timing)
            timing = np.where(np.isnan(funders.decision)[None, :], np.float32(engine.NEUTRAL), timing)
            need_log[dated] += _log(timing.astype(np.float32), w["time"])
    if w["currency"]:
        currency_log = np.where(same_currency, constant_log(1.0, w["currency"]), constant_log(0.0, w["currency"]))
        need_log += np.where(funders.compares_currency[None, :], currency_log, constant_log(engine.NEUTRAL, w["currency"]))

    best_log = np.maximum.reduceat(need_log, block.starts, axis=0)
    best_log += project_log
    scores = np.exp(best_log, out=best_log)
    scores -= floor
    np.clip(scores, 0.0, 1.0, out=scores)
    return scores, evidence


def all_scores(projects: Sequence[ProjectProfile], funders: Sequence[FunderProfile], weights: dict[str, float],
               today: date, block_needs: int = BLOCK_NEEDS) -> tuple[np.ndarray, np.ndarray]:
    """Return (scores, evidence) of every project with every funder: projects x funders, in input order.

    Each project scores at its best need, so a caller that wants every need scored passes one
    profile per need. Scores are float32 and agree with `engine.score_pair` to about 1e-6.
    """
    scores = np.zeros((len(projects), len(funders)), dtype=np.float32)
    evidence = np.zeros((len(projects), len(funders)), dtype=bool)
    if not projects or not funders:
        return scores, evidence
    matrix = FunderMatrix.build(funders, weights, {})
    currencies = {profile.currency: int(index) for profile, index in zip(matrix.profiles, matrix.currency)}
    first = 0
    for chunk in _blocks(projects, block_needs):
        block = NeedBlock.build(chunk, matrix, today, dict(currencies))
        block_scores, block_evidence = score_block(block, matrix, weights)
        scores[first:first + len(chunk)] = block_scores
        evidence[first:first + len(chunk)] = block_evidence
        first += len(chunk)
    return scores, evidence


def _blocks(projects: Sequence[ProjectProfile], size: int) -> list[list[ProjectProfile]]:
    """Cut the projects into runs of about `size` needs, never splitting a project."""
    blocks, current, count = [], [], 0
    for project in projects:
        current.append(project)
        count += len(project.needs)
        if count >= size:
            blocks.append(current)
            current, count = [], 0
    if current:
        blocks.append(current)
    return blocks


def top_funders(projects: Sequence[ProjectProfile], funders: Sequence[FunderProfile] | FunderMatrix,
                weights: dict[str, float], today: date, min_score: float, limit: int,
                workers: int | None = None, block_needs: int = BLOCK_NEEDS) -> dict[int, list[tuple[int, float]]]:
    """Return, per project id, up to `limit` (funder index, score) pairs, best first, that pass the rules.

    A pair passes when a funder preference matches the project's region or theme and its
    score is at least `min_score`. Funder indexes point into `funders`; ties keep the lower index.
    """
    matrix = funders if isinstance(funders, FunderMatrix) else FunderMatrix.build(funders, weights, {})
    result: dict[int, list[tuple[int, float]]] = {}
    if not projects or not matrix.profiles:
        return result
    currencies = {profile.currency: int(index) for profile, index in zip(matrix.profiles, matrix.currency)}

    def run(chunk: list[ProjectProfile]) -> dict[int, list[tuple[int, float]]]:
        block = NeedBlock.build(chunk, matrix, today, dict(currencies))
        scores, evidence = score_block(block, matrix, weights)
        scores[~evidence] = -1.0
        scores[scores < np.float32(min_score) - np.float32(1e-6)] = -1.0
        keep = min(limit, scores.shape[1])
        if keep < scores.shape[1]:
            cut = np.argpartition(-scores, keep - 1, axis=1)[:, :keep]
        else:
            cut = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
        values = np.take_along_axis(scores, cut, axis=1)
        # Best first; among equal scores the lower funder index first.
        order = np.lexsort((cut, -values), axis=1)
        cut = np.take_along_axis(cut, order, axis=1)
        values = np.take_along_axis(values, order, axis=1)
        passing = (values >= 0).sum(axis=1)
        columns, scored = cut.tolist(), values.tolist()
        return {project.id: list(zip(columns[row][:passing[row]], scored[row][:passing[row]]))
                for row, project in enumerate(chunk)}

    chunks = _blocks(projects, block_needs)
    workers = workers or min(len(chunks), os.cpu_count() or 1, 4)
    if workers <= 1:
        for chunk in chunks:
            result.update(run(chunk))
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for found in pool.map(run, chunks):
                result.update(found)
    return result
