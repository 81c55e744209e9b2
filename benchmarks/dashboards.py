"""Time the dashboard figures on a large database: 100,000 projects by default.

The script fills a new database with published projects, funders, pledges and rates. Each
project has one to three recipient countries, one theme or DAC sector, and one to three needs
in EUR, USD or XOF, and most needs have one pledge. Then it builds the dashboard report
(financing.reporting.services.build_report) several times: without filters, with a region,
with a theme and a date range, for the public page and in USD. It prints the median and the
maximum time of each case and the number of SQL statements, and ends with one line of JSON
holding every figure.

    .venv/bin/python benchmarks/dashboards.py --projects 100000
    .venv/bin/python benchmarks/dashboards.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/financing_bench_dash

A SQLite file goes to a temporary directory unless --database-url names a database. The
script drops every table of that database before and after the run, so it refuses a
PostgreSQL database without "bench" in its name unless --drop-tables is given.
"""

import argparse
import json
import logging
import platform
import random
import statistics
import sys
import tempfile
import time
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import event, insert  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from financing import create_app, reference  # noqa: E402
from financing.accounts.models import Organisation  # noqa: E402
from financing.extensions import db  # noqa: E402
from financing.funders.models import Funder  # noqa: E402
from financing.pledges.models import ExchangeRate, Pledge  # noqa: E402
from financing.projects.models import FundingNeed, Project, ProjectTag  # noqa: E402
from financing.reporting.services import ReportFilters, build_report  # noqa: E402

logger = logging.getLogger("benchmarks.dashboards")

TODAY = date(2026, 6, 1)
CURRENCIES = (["EUR", "USD", "XOF"], [0.55, 0.40, 0.05])
PLEDGE_STATES = (["pledged", "confirmed", "partly_disbursed", "disbursed", "cancelled"], [0.3, 0.3, 0.15, 0.15, 0.1])
BATCH = 5_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--projects", type=int, default=100_000, help="published projects (default: %(default)s)")
    parser.add_argument("--funders", type=int, default=2_000, help="funders, a tenth of them individuals (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per case (default: %(default)s)")
    parser.add_argument("--database-url", help="database to fill; default: a SQLite file in a temporary directory")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default: %(default)s)")
    parser.add_argument("--drop-tables", action="store_true", help="accept a PostgreSQL database whose name lacks 'bench'")
    return parser.parse_args(argv)


def at(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, 12, tzinfo=timezone.utc)


def fill(projects: int, funders: int, seed: int) -> dict[str, int]:
    """Insert the rows in batches with Core INSERTs and return the row counts."""
    rng = random.Random(seed)
    countries = sorted(code for code, country in reference.countries().items() if country.region)
    themes = sorted(reference.themes())
    sectors = sorted({code for theme in reference.themes().values() for code in theme.sectors})
    first_day = TODAY - timedelta(days=3 * 365)

    organisation = Organisation(name="Benchmark ministry", kind="government")
    db.session.add(organisation)
    db.session.flush()
    funder_rows = [
        {"id": number + 1, "name": f"Funder {number + 1}", "kind": "individual" if number % 10 == 0 else "institution", "currency": "EUR"}
        for number in range(funders)
    ]
    db.session.execute(insert(Funder), funder_rows)

    counts = {"projects": 0, "needs": 0, "tags": 0, "pledges": 0}
    need_id = pledge_id = 0
    for start in range(0, projects, BATCH):
        project_rows, tag_rows, need_rows, pledge_rows = [], [], [], []
        for project_id in range(start + 1, min(start + BATCH, projects) + 1):
            published = first_day + timedelta(days=rng.randrange(3 * 365))
            project_rows.append({
                "id": project_id, "organisation_id": organisation.id, "title": f"Project {project_id}",
                "status": "published", "published_at": at(published), "source": "demo",
            })
            for code in rng.sample(countries, rng.choice([1, 1, 2, 3])):
                tag_rows.append({"project_id": project_id, "kind": "country", "code": code})
            if rng.random() < 0.5:
                tag_rows.append({"project_id": project_id, "kind": "theme", "code": rng.choice(themes)})
            else:
                tag_rows.append({"project_id": project_id, "kind": "sector", "code": rng.choice(sectors)})
            for _ in range(rng.choice([1, 1, 2, 3])):
                need_id += 1
                currency = rng.choices(*CURRENCIES)[0]
                goal = rng.randrange(10_000, 5_000_000) * (100 if currency != "XOF" else 1)
                pledged = 0
                if rng.random() < 0.8:
                    pledge_id += 1
                    state = rng.choices(*PLEDGE_STATES)[0]
                    amount = max(goal // rng.choice([2, 3, 5, 10]), 1)
                    disbursed = 0
                    if state == "disbursed":
                        disbursed = amount
                    elif state == "partly_disbursed":
                        disbursed = amount // 2
                    pledge_rows.append({
                        "id": pledge_id, "need_id": need_id, "funder_id": rng.randrange(1, funders + 1), "kind": "commitment",
                        "state": state, "amount_minor": amount, "currency": currency, "need_amount_minor": amount,
                        "rate": Decimal(1), "disbursed_minor": disbursed, "refunded_minor": 0, "disputed": False,
                        "created_at": at(published + timedelta(days=rng.randrange(60))),
                    })
                    pledged = 0 if state == "cancelled" else amount
                need_rows.append({
                    "id": need_id, "project_id": project_id, "title": "Need", "goal_minor": goal, "currency": currency,
                    "pledged_minor": pledged, "status": "open", "position": 0, "allow_overfunding": False,
                    "created_at": at(published),
                })
        db.session.execute(insert(Project), project_rows)
        db.session.execute(insert(ProjectTag), tag_rows)
        db.session.execute(insert(FundingNeed), need_rows)
        if pledge_rows:
            db.session.execute(insert(Pledge), pledge_rows)
        counts["projects"] += len(project_rows)
        counts["tags"] += len(tag_rows)
        counts["needs"] += len(need_rows)
        counts["pledges"] += len(pledge_rows)
        db.session.commit()
        logger.info("filled projects=%d", counts["projects"])

    db.session.add_all([
        ExchangeRate(base="USD", quote="EUR", rate=Decimal("0.9259"), valid_from=date(2025, 1, 1)),
        ExchangeRate(base="EUR", quote="USD", rate=Decimal("1.08"), valid_from=date(2025, 1, 1)),
    ])
    db.session.commit()
    return counts


def time_case(filters: ReportFilters, currency: str, public: bool, repeat: int) -> dict:
    statements = []

    def count(*args):
        statements.append(1)

    seconds = []
    for _ in range(repeat):
        statements.clear()
        event.listen(db.engine, "before_cursor_execute", count)
        started = time.perf_counter()
        build_report(filters, currency, public=public, today=TODAY)
        seconds.append(time.perf_counter() - started)
        event.remove(db.engine, "before_cursor_execute", count)
        db.session.rollback()
    return {"median_s": round(statistics.median(seconds), 3), "max_s": round(max(seconds), 3), "statements": len(statements)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)

    workdir = tempfile.mkdtemp(prefix="dashboards-bench-")
    url = args.database_url or f"sqlite:///{workdir}/bench.sqlite"
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" and "bench" not in (parsed.database or "") and not args.drop_tables:
        print(f"Refusing database {parsed.database!r}: the script drops its tables, so its name must contain 'bench' or --drop-tables be given.")
        return 2

    app = create_app(SQLALCHEMY_DATABASE_URI=url, RATELIMIT_ENABLED=False)
    with app.app_context():
        db.drop_all()
        db.create_all()
        started = time.perf_counter()
        counts = fill(args.projects, args.funders, args.seed)
        fill_seconds = time.perf_counter() - started
        if parsed.get_backend_name() == "postgresql":
            db.session.execute(db.text("ANALYZE"))
            db.session.commit()

        cases = {
            "all": (ReportFilters(), "EUR", False),
            "public": (ReportFilters(), "EUR", True),
            "region": (ReportFilters(region="africa"), "EUR", False),
            "theme_and_dates": (ReportFilters(theme="broadband", date_from=date(2025, 1, 1), date_to=date(2025, 12, 31)), "EUR", False),
            "usd": (ReportFilters(), "USD", False),
        }
        results = {name: time_case(*case, args.repeat) for name, case in cases.items()}
        db.session.remove()
        db.drop_all()

    print(f"Dashboard report on {parsed.get_backend_name()}, Python {platform.python_version()}, {platform.machine()}")
    print(f"Rows: {counts['projects']:,} projects, {counts['needs']:,} needs, {counts['tags']:,} tags, {counts['pledges']:,} pledges; filled in {fill_seconds:.1f} s")
    for name, result in results.items():
        print(f"  {name:16} median {result['median_s']:.3f} s, max {result['max_s']:.3f} s, {result['statements']} SQL statements")
    print(json.dumps({"database": parsed.get_backend_name(), "rows": counts, "fill_s": round(fill_seconds, 1), "cases": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
