"""Time the matching engine at scale: 100,000 open needs against 2,000 funders, no database.

Projects and funders come from the generator of benchmarks/allocation.py: recipient countries
weighted towards Africa and Asia-Pacific, a few themes and DAC sectors each, log-normal goals
and tickets, three currencies. A third of the funders also get learned preference weights and
a portfolio size, as `flask match learn` gives funders imported from IATI. The script prints:

- full recompute: the top 20 funders of every project with `vector.top_funders`, as
  `match run` computes them, including building the funder and need matrices;
- one project changed: `vector.top_funders` for one project against the prepared funder
  matrix, then `engine.score_pair` and `engine.explain` on the pairs it keeps, which is the
  scoring part of `run_matching(project_id=...)` (median and 95th percentile over 200 projects);
- peak memory of the process (maximum resident set size), and what it was before the full
  recompute, which is what the generated projects and funders take;
- on a 2,000-need subset, the same top 20 from a plain Python double loop over
  `engine.score_pair`, its time, the speed-up, and whether both pick the same funders;
- unless --no-allocation, an allocation run on 10,000 needs and 500 funders
  (benchmarks/allocation.py in a subprocess).

The last line of output is one JSON object with every figure.

    .venv/bin/python benchmarks/matching.py
    .venv/bin/python benchmarks/matching.py --needs 20000 --funders 500 --no-allocation
"""

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from allocation import TODAY, generate  # noqa: E402

from financing.matching import engine, vector  # noqa: E402
from financing.matching.engine import FunderProfile, MatchSettings, has_evidence, score_pair  # noqa: E402

LEARNED_SHARE = 1 / 3
UPDATE_SAMPLES = 200


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--needs", type=int, default=100_000, help="open funding needs (default: %(default)s)")
    parser.add_argument("--funders", type=int, default=2_000, help="funders (default: %(default)s)")
    parser.add_argument("--subset", type=int, default=2_000, help="needs in the pure Python comparison (default: %(default)s)")
    parser.add_argument("--top", type=int, default=engine.DEFAULT_MAX_PER_PROJECT, help="funders kept per project (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None, help="threads for the blocks (default: up to 4, one per CPU)")
    parser.add_argument("--seed", type=int, default=2026, help="random seed (default: %(default)s)")
    parser.add_argument("--no-allocation", action="store_true", help="skip the allocation run on 10,000 x 500")
    return parser.parse_args(argv)


def with_learned_weights(funders: list[FunderProfile], seed: int) -> list[FunderProfile]:
    """Give a share of the funders weights that add up to at most 1 per kind, and a portfolio size."""
    rng = np.random.default_rng(seed)
    changed = []
    for funder in funders:
        if rng.random() >= LEARNED_SHARE:
            changed.append(funder)
            continue
        weights = {}
        for kind, codes in (("country", funder.countries), ("region", funder.regions),
                            ("theme", funder.themes), ("sector", funder.sectors)):
            codes = sorted(codes)
            shares = rng.dirichlet(np.ones(len(codes) + 1))[:-1] if codes else []
            weights[kind] = {code: round(float(max(share, 0.05)), 6) for code, share in zip(codes, shares)}
        changed.append(dataclasses.replace(funder, weights=weights, activities=int(rng.integers(1, 800))))
    return changed


def python_top(projects, funders, weights, min_score: float, top: int) -> dict[int, list[tuple[int, float]]]:
    """Score every pair with score_pair in a plain double loop and sort, the straightforward way."""
    result = {}
    for project in projects:
        passing = []
        for index, funder in enumerate(funders):
            pair = score_pair(project, funder, weights, TODAY)
            if pair.score >= min_score and has_evidence(pair):
                passing.append((index, pair.score))
        passing.sort(key=lambda item: (-item[1], item[0]))
        result[project.id] = passing[:top]
    return result


def update_one(project, matrix, funders, weights, min_score: float, top: int) -> None:
    """Rescore one changed project as run_matching does, without the database."""
    found = vector.top_funders([project], matrix, weights, TODAY, min_score, top + engine.CANDIDATE_MARGIN, workers=1)
    for index, _ in found.get(project.id, ()):
        pair = score_pair(project, funders[index], weights, TODAY)
        engine.explain(pair)


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def allocation_figures() -> dict:
    command = [sys.executable, str(ROOT / "benchmarks" / "allocation.py"), "--needs", "10000", "--funders", "500"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"error": f"exit status {done.returncode}", "stderr": done.stderr[-500:]}
    figures = json.loads(lines[-1])
    figures["total_seconds"] = round(seconds, 1)
    return figures


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = MatchSettings.from_config({})
    weights, min_score = settings.weights, settings.min_score

    started = time.perf_counter()
    projects, funders = generate(args.needs, args.funders, args.seed)
    funders = with_learned_weights(funders, args.seed)
    generate_seconds = time.perf_counter() - started
    rss_before = max_rss_mb()

    started = time.perf_counter()
    top = vector.top_funders(projects, funders, weights, TODAY, min_score, args.top, workers=args.workers)
    full_seconds = time.perf_counter() - started
    rss_after = max_rss_mb()
    suggestions = sum(len(found) for found in top.values())

    started = time.perf_counter()
    matrix = vector.FunderMatrix.build(funders, weights, {})
    matrix_seconds = time.perf_counter() - started
    rng = np.random.default_rng(args.seed)
    sample = [projects[int(i)] for i in rng.choice(len(projects), size=min(UPDATE_SAMPLES, len(projects)), replace=False)]
    update_times = []
    for project in sample:
        started = time.perf_counter()
        update_one(project, matrix, funders, weights, min_score, args.top)
        update_times.append((time.perf_counter() - started) * 1000)
    update_times.sort()

    subset, count = [], 0
    for project in projects:
        if count >= args.subset:
            break
        subset.append(project)
        count += len(project.needs)
    started = time.perf_counter()
    fast = vector.top_funders(subset, funders, weights, TODAY, min_score, args.top, workers=args.workers)
    subset_vector_seconds = time.perf_counter() - started
    started = time.perf_counter()
    slow = python_top(subset, funders, weights, min_score, args.top)
    subset_python_seconds = time.perf_counter() - started
    same = sum(
        1 for project in subset
        if np.allclose([s for _, s in fast.get(project.id, [])], [s for _, s in slow[project.id]], atol=1e-4)
    )

    allocation = None if args.no_allocation else allocation_figures()

    figures = {
        "needs": args.needs, "projects": len(projects), "funders": args.funders, "top": args.top,
        "learned_funders": sum(1 for funder in funders if funder.learned), "seed": args.seed,
        "generate_seconds": round(generate_seconds, 2),
        "full_recompute_seconds": round(full_seconds, 2), "pairs": args.needs * args.funders,
        "suggestions_kept": suggestions,
        "funder_matrix_seconds": round(matrix_seconds, 3),
        "update_ms_median": round(statistics.median(update_times), 2),
        "update_ms_p95": round(update_times[int(0.95 * (len(update_times) - 1))], 2),
        "peak_rss_mb": round(rss_after, 1), "rss_before_scoring_mb": round(rss_before, 1),
        "subset_needs": count, "subset_projects": len(subset),
        "subset_vector_seconds": round(subset_vector_seconds, 3),
        "subset_python_seconds": round(subset_python_seconds, 2),
        "speed_up": round(subset_python_seconds / subset_vector_seconds, 1),
        "subset_same_top": f"{same}/{len(subset)}",
        "allocation": allocation,
        "cpus": os.cpu_count(), "load_average": [round(value, 2) for value in os.getloadavg()],
        "python": platform.python_version(), "numpy": np.__version__,
    }
    print(f"needs x funders         {args.needs:,} x {args.funders:,} ({len(projects):,} projects, "
          f"{figures['learned_funders']} funders with learned weights)")
    print(f"full recompute          {full_seconds:.2f} s for the top {args.top} of every project "
          f"({suggestions:,} suggestions kept)")
    print(f"one project changed     median {figures['update_ms_median']} ms, p95 {figures['update_ms_p95']} ms "
          f"(funder matrix prepared once in {matrix_seconds * 1000:.0f} ms)")
    print(f"peak memory             {figures['peak_rss_mb']} MB resident, of which {figures['rss_before_scoring_mb']} MB "
          f"before scoring (the generated projects and funders)")
    print(f"pure Python, {count:,} needs  {subset_python_seconds:.1f} s against {subset_vector_seconds:.3f} s vectorised: "
          f"{figures['speed_up']}x; same top {args.top} for {same} of {len(subset)} projects")
    if allocation is not None:
        if "error" in allocation:
            print(f"allocation 10,000 x 500 failed: {allocation['error']}")
        else:
            print(f"allocation 10,000 x 500 scoring {allocation['score_seconds']} s, solve {allocation['solve_seconds']} s "
                  f"({allocation['kept_method']}, gap {allocation['gap']}), {allocation['violations']} bounds broken")
    print(json.dumps(figures, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
