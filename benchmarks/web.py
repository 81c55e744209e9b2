"""Measure the browse page, the API list and the project page at 100,000 projects.

The script recreates the benchmark database, builds the schema, seeds projects with needs,
tags and pledges by COPY, and serves the platform with gunicorn and gunicorn.conf.py. Then
16 client threads, spread over a few processes, send requests on keep-alive connections for
a fixed time to each endpoint in turn. In the same run, a bare Flask app (bare_app.py) on the
same gunicorn settings serves the same load, so the ratio of the two can be read. The last
line of output is one JSON object with every figure.

    .venv/bin/python benchmarks/web.py --projects 100000 --clients 16 --seconds 15

With --explain the script also runs each page once in-process, counts its SQL statements and
prints EXPLAIN ANALYZE for each of them.
"""

import argparse
import http.client
import json
import logging
import multiprocessing
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
sys.path.insert(0, str(ROOT))
# The pledge benchmark's helpers, also when this file is imported from elsewhere (tests).
sys.path.insert(0, str(BENCHMARKS))

from pledges import (  # noqa: E402
    CpuMeter,
    backend_pids,
    busy_percent,
    cpu_times,
    free_port,
    libpq_url,
    machine,
    per_unit_ms,
    percentiles_ms,
    postgres_version,
    process_tree,
    recreate_database,
)

logger = logging.getLogger("benchmarks.web")

HOST = "127.0.0.1"
# Targets at 100,000 projects, 95th percentile in milliseconds.
TARGET_P95_MS = {"api_list": 30.0, "browse": 50.0, "project": 50.0}
PUBLIC_STATUSES = ("published", "funded", "closed")
# Projects generated before their rows are written with COPY.
SEED_CHUNK = 5_000
# Seconds between starting the client processes and their first request, so that all start together.
START_DELAY = 2.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/financing_bench_web",
                        help="PostgreSQL database to drop, recreate and use; its name must contain 'bench' (default: %(default)s)")
    parser.add_argument("--projects", type=int, default=100_000, help="projects to seed (default: %(default)s)")

    parser.add_argument("--clients", type=int, default=16, help="concurrent client connections (default: %(default)s)")
    parser.add_argument("--client-processes", type=int, default=4,
                        help="processes that the client threads are spread over, so that one GIL does not limit them (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per endpoint (default: %(default)s)")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds per endpoint before its run (default: %(default)s)")

    parser.add_argument("--workers", type=int, default=4 * (os.cpu_count() or 1) + 1,
                        help="gunicorn workers, passed as GUNICORN_WORKERS (default: 4 x cores + 1 as in gunicorn.conf.py, here %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads per worker, passed as GUNICORN_THREADS (default: %(default)s, as in gunicorn.conf.py)")

    parser.add_argument("--schema", choices=("models", "migrations"), default="models",
                        help="build the schema from the models (db.create_all, with every index the models declare) "
                             "or with `flask db upgrade` (default: %(default)s)")
    parser.add_argument("--keep-data", action="store_true",
                        help="reuse the database when it already contains --projects projects, after creating and dropping plain indexes to match the models")
    parser.add_argument("--endpoints", default="bare,api_list,browse,project",
                        help="comma-separated endpoints to measure, in order (default: %(default)s)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15",
                        help="Redis of the production stack: page and count cache, rate limits (default: %(default)s)")
    parser.add_argument("--no-cache", action="store_true",
                        help="serve every request from the database (CACHE_TYPE=NullCache), to measure the uncached path")
    parser.add_argument("--pledges-per-second", type=float, default=0.0,
                        help="while each page is measured, make and confirm this many pledges per second with "
                             "benchmarks/pledge_writer.py, as a platform in use does (default: %(default)s)")
    parser.add_argument("--explain", action="store_true", help="print the SQL statements of each page with EXPLAIN ANALYZE")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated data and of the request mix (default: %(default)s)")
    args = parser.parse_args(argv)

    for name in ("projects", "clients", "client_processes", "workers", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, not {getattr(args, name)}")
    if args.seconds <= 0 or args.warmup < 0 or args.pledges_per_second < 0:
        parser.error("--seconds must be positive, and --warmup and --pledges-per-second not negative")
    args.client_processes = min(args.client_processes, args.clients)
    url = make_url(args.database_url)
    if not url.drivername.startswith("postgresql"):
        parser.error(f"--database-url must be a PostgreSQL URL, not {url.drivername}")
    if "bench" not in (url.database or ""):
        parser.error(f"--database-url names database {url.database!r}; the script drops it, so its name must contain 'bench'")
    args.endpoints = [name.strip() for name in args.endpoints.split(",") if name.strip()]
    unknown = [name for name in args.endpoints if name not in ENDPOINTS]
    if unknown:
        parser.error(f"unknown endpoint(s) {', '.join(unknown)}; choose from {', '.join(ENDPOINTS)}")
    return args


# Schema --------------------------------------------------------------------------------------

def app_environment(database_url: str, redis_url: str = "", cache: bool = True) -> dict[str, str]:
    """Return the environment of `flask` and gunicorn: ProductionConfig on the benchmark database.

    The clients connect to gunicorn directly, so no proxy is trusted (PROXY_HOPS=0). With
    REDIS_URL, as in production, Redis stores the page and count cache and the rate limits;
    no request of the benchmark starts a job.
    """
    env = dict(os.environ)
    env.pop("REDIS_URL", None)
    env.pop("CACHE_TYPE", None)
    env.pop("GUNICORN_CMD_ARGS", None)
    if redis_url:
        env["REDIS_URL"] = redis_url
    if not cache:
        env["CACHE_TYPE"] = "NullCache"
    env["FINANCING_ENV"] = "production"
    env["PROXY_HOPS"] = "0"
    env["DATABASE_URL"] = database_url
    env["SECRET_KEY"] = secrets.token_hex(32)
    return env


def build_app(database_url: str):
    from financing import create_app
    from financing.config import Config

    return create_app(Config, SQLALCHEMY_DATABASE_URI=database_url)


def create_schema(database_url: str, source: str) -> None:
    if source == "migrations":
        command = [sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"]
        result = subprocess.run(command, cwd=ROOT, env=app_environment(database_url), capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"flask db upgrade failed with exit code {result.returncode}:\n{result.stderr[-3000:]}")
        logger.info("schema built by flask db upgrade")
        return
    from financing.extensions import db

    app = build_app(database_url)
    with app.app_context():
        db.create_all()
        db.engine.dispose()
    logger.info("schema built from the models")


def sync_indexes(database_url: str) -> tuple[list[str], list[str]]:
    """Make the plain indexes match the models: create the missing, drop the undeclared.

    Indexes behind primary keys and unique constraints are left alone. Returns the names
    of the created and the dropped indexes.
    """
    from sqlalchemy import inspect, text

    from financing.extensions import db

    app = build_app(database_url)
    created, dropped = [], []
    with app.app_context():
        with db.engine.begin() as connection:
            # Creating the tables would have created it (financing/projects/models.py).
            connection.execute(text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
            inspector = inspect(connection)
            for table in db.metadata.sorted_tables:
                declared = {index.name for index in table.indexes}
                existing = inspector.get_indexes(table.name)
                for index in existing:
                    if index["name"] not in declared and not index.get("unique") and not index.get("duplicates_constraint"):
                        connection.execute(text(f'DROP INDEX "{index["name"]}"'))
                        dropped.append(index["name"])
                present = {index["name"] for index in existing}
                for index in table.indexes:
                    if index.name not in present:
                        index.create(connection)
                        created.append(index.name)
        db.engine.dispose()
    return created, dropped


# Seed data ----------------------------------------------------------------------------------

WHAT_BY_THEME = {
    "broadband": ["Rural broadband", "Wireless access network", "Last-mile fibre", "4G coverage extension", "Community Wi-Fi"],
    "backbones": ["National fibre backbone", "Submarine cable landing station", "Cross-border fibre link", "Internet exchange point"],
    "public-access": ["Public access centres", "Library connectivity", "School connectivity", "Community telecentres"],
    "ict-applications": ["E-health network", "E-government services", "Mobile services for farmers", "Digital identity platform"],
    "policy-harmonization": ["ICT policy harmonization", "Regulatory framework review", "Universal service fund reform"],
    "capacity-building": ["Digital skills training", "ICT academy", "Training for regulator staff"],
    "spectrum": ["Spectrum management system", "Frequency plan update", "Spectrum monitoring stations"],
    "broadcasting": ["Digital terrestrial television switchover", "Community radio network"],
}
THEME_WEIGHTS = {
    "broadband": 30, "backbones": 15, "public-access": 12, "ict-applications": 14,
    "policy-harmonization": 8, "capacity-building": 10, "spectrum": 6, "broadcasting": 5,
}
# Share of projects per ITU-D region, a guess at where ICT development money goes.
REGION_WEIGHTS = {"africa": 40, "asia-pacific": 24, "americas": 12, "arab-states": 10, "cis": 5, "europe": 9}
NEED_TITLES = ["Feasibility study", "Equipment", "Civil works", "Deployment, phase 1", "Deployment, phase 2",
               "Training", "Operations, first year", "Monitoring and evaluation"]
# Currency, minor-unit exponent, weight.
CURRENCIES = [("EUR", 2, 50), ("USD", 2, 38), ("XOF", 0, 5), ("KES", 2, 3), ("GBP", 2, 3), ("JPY", 0, 1)]
STATUS_WEIGHTS = {"published": 82, "funded": 6, "closed": 2, "draft": 4, "submitted": 3, "returned": 1, "withdrawn": 2}
SENTENCES = [
    "The project connects district hospitals, schools and local government offices.",
    "Towers are solar powered, because the grid does not reach most sites.",
    "The regulator licenses the spectrum for ten years on a technology-neutral basis.",
    "An open-access wholesale model lets every operator sell services on the network.",
    "Local technicians are trained to maintain the equipment after handover.",
    "Prices for end users are capped for the first five years of operation.",
    "The network is designed for at least 10 Mbit/s per user at peak hours.",
    "A steering committee of the ministry, the regulator and the operators reviews progress quarterly.",
    "Environmental and social safeguards follow the funder's standards.",
    "Results are published every six months as open data.",
]


@dataclass
class SeedFigures:
    organisations: int = 0
    projects: int = 0
    public_projects: int = 0
    needs: int = 0
    tags: int = 0
    funders: int = 0
    preferences: int = 0
    pledges: int = 0
    seconds: float = 0.0
    public_ids: list[int] = field(default_factory=list)


def weighted(rng: random.Random, weights: dict):
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def column_defaults(table) -> tuple[list[str], dict, set[str]]:
    """Return a table's columns, the scalar defaults the model declares, and the required columns without one."""
    names, defaults, required = [], {}, set()
    for column in table.columns:
        names.append(column.name)
        default = column.default.arg if column.default is not None else None
        if default is not None and not callable(default):
            defaults[column.name] = default
        elif not column.nullable and default is None and column.server_default is None:
            required.add(column.name)
    return names, defaults, required


class Copier:
    """Buffer dict rows of one table and write them with COPY, filling columns left out from the model's defaults.

    One connection runs one COPY at a time, so rows wait in the buffer until flush().
    """

    def __init__(self, connection: psycopg.Connection, table, now: datetime):
        self.connection = connection
        self.table = table.name
        self.names, self.defaults, self.required = column_defaults(table)
        self.now = now
        self.rows = 0
        self.buffer: list[list] = []

    def write(self, row: dict) -> None:
        values = []
        for name in self.names:
            if name in row:
                values.append(row[name])
            elif name in self.defaults:
                values.append(self.defaults[name])
            elif name in ("created_at", "updated_at", "at"):
                values.append(self.now)
            elif name in self.required:
                raise SystemExit(f"The seed sets no value for required column {self.table}.{name}; add it to benchmarks/web.py.")
            else:
                values.append(None)
        self.buffer.append(values)
        self.rows += 1

    def flush(self) -> None:
        columns = ", ".join(f'"{name}"' for name in self.names)
        with self.connection.cursor() as cursor:
            with cursor.copy(f'COPY "{self.table}" ({columns}) FROM STDIN') as copy:
                for values in self.buffer:
                    copy.write_row(values)
        self.buffer.clear()


def description_text(rng: random.Random, place: str) -> str:
    paragraphs = [" ".join(rng.sample(SENTENCES, 3)) for _ in range(rng.randint(2, 4))]
    bullets = "\n".join(f"- {sentence}" for sentence in rng.sample(SENTENCES, 3))
    return f"## Context\n\n{paragraphs[0]} The work takes place in {place}.\n\n" + "\n\n".join(paragraphs[1:]) + f"\n\n## Outputs\n\n{bullets}\n"


def seed(database_url: str, projects: int, rng: random.Random) -> SeedFigures:
    """Seed organisations, funders, projects with tags and needs, and pledges, all by COPY."""
    from financing import reference
    from financing.core.search import search_text
    from financing.extensions import db

    started = time.perf_counter()
    app = build_app(database_url)
    with app.app_context():
        names = ("organisation", "funder", "funder_preference", "project", "project_tag", "funding_need", "pledge")
        tables = {name: db.metadata.tables[name] for name in names}
        db.engine.dispose()
    countries_by_region: dict[str, list[str]] = {}
    for code, country in reference.countries().items():
        if not country.withdrawn and country.region:
            countries_by_region.setdefault(country.region, []).append(code)
    regions = reference.regions()
    themes = reference.themes()
    country_names = {code: country.name for code, country in reference.countries().items()}
    figures = SeedFigures()
    now = datetime.now(timezone.utc)

    with psycopg.connect(libpq_url(database_url)) as connection:
        organisation_count = max(10, projects // 250)
        copier = Copier(connection, tables["organisation"], now)
        kinds = ["government", "government", "regulator", "company", "ngo", "international"]
        for index in range(1, organisation_count + 1):
            region = weighted(rng, REGION_WEIGHTS)
            country = rng.choice(countries_by_region[region])
            copier.write({"id": index, "name": f"Benchmark organisation {index} ({country_names[country]})",
                          "kind": rng.choice(kinds), "country": country})
        copier.flush()
        figures.organisations = copier.rows

        funder_count = max(20, projects // 50)
        copier = Copier(connection, tables["funder"], now)
        institutions: set[int] = set()
        for index in range(1, funder_count + 1):
            institution = rng.random() < 0.3
            if institution:
                institutions.add(index)
            copier.write({"id": index, "name": f"Benchmark {'fund' if institution else 'donor'} {index}",
                          "kind": "institution" if institution else "individual", "currency": "EUR"})
        copier.flush()
        figures.funders = copier.rows

        project_copier = Copier(connection, tables["project"], now)
        tag_copier = Copier(connection, tables["project_tag"], now)
        need_copier = Copier(connection, tables["funding_need"], now)
        pledge_copier = Copier(connection, tables["pledge"], now)
        need_id = 0
        pledge_id = 0
        for project_id in range(1, projects + 1):
            region = weighted(rng, REGION_WEIGHTS)
            country_count = rng.choices([0, 1, 2, 3], weights=[10, 70, 14, 6])[0]
            countries = rng.sample(countries_by_region[region], min(country_count, len(countries_by_region[region])))
            theme_list = list(dict.fromkeys(weighted(rng, THEME_WEIGHTS) for _ in range(rng.choice([1, 1, 2]))))
            sectors = sorted({rng.choice(sorted(themes[theme].sectors)) for theme in theme_list if themes[theme].sectors})
            tags = [("country", code) for code in countries] + [("theme", theme) for theme in theme_list]
            tags += [("sector", code) for code in sectors]
            if not countries or rng.random() < 0.2:
                tags.append(("region", region))
            place = ", ".join(country_names[code] for code in countries) or regions[region].name
            status = weighted(rng, STATUS_WEIGHTS)
            published = status in PUBLIC_STATUSES or status == "withdrawn"
            published_at = now - timedelta(seconds=rng.randint(0, 6 * 365 * 86400)) if published else None
            start = date(2020, 1, 1) + timedelta(days=rng.randint(0, 6 * 365))
            title = f"{rng.choice(WHAT_BY_THEME[theme_list[0]])} for {place}"[:300]
            summary = " ".join(rng.sample(SENTENCES, 2))
            project_copier.write({
                "id": project_id, "organisation_id": rng.randint(1, organisation_count),
                "title": title, "summary": summary, "search_text": search_text(title, summary),
                "description": description_text(rng, place),
                "status": status, "start_date": start, "end_date": start + timedelta(days=rng.randint(180, 1800)),
                "source": "form", "created_at": (published_at or now) - timedelta(days=rng.randint(1, 60)),
                "updated_at": published_at or now, "published_at": published_at,
            })
            for kind, code in tags:
                tag_copier.write({"project_id": project_id, "kind": kind, "code": code})
            if status in PUBLIC_STATUSES:
                figures.public_projects += 1
                figures.public_ids.append(project_id)

            currency, exponent, _ = rng.choices(CURRENCIES, weights=[weight for *_, weight in CURRENCIES])[0]
            for position in range(rng.choices([1, 2, 3, 4], weights=[40, 30, 20, 10])[0]):
                need_id += 1
                goal = rng.randint(50_000, 20_000_000) * 10**exponent
                pledged = 0
                if status in PUBLIC_STATUSES and rng.random() < 0.4:
                    for _ in range(rng.randint(1, 5)):
                        pledge_id += 1
                        amount = max(1, int(goal * rng.uniform(0.01, 0.3)))
                        state = rng.choice(["pledged", "confirmed", "confirmed", "partly_disbursed", "disbursed"])
                        disbursed = 0
                        if state == "disbursed":
                            disbursed = amount
                        elif state == "partly_disbursed":
                            disbursed = amount // 2
                        pledge_copier.write({
                            "id": pledge_id, "need_id": need_id, "funder_id": rng.randint(1, funder_count),
                            "kind": "commitment", "state": state, "amount_minor": amount, "currency": currency,
                            "need_amount_minor": amount, "disbursed_minor": disbursed,
                        })
                        pledged += amount
                need_status = "funded" if pledged >= goal else "open"
                need_copier.write({
                    "id": need_id, "project_id": project_id, "title": NEED_TITLES[position % len(NEED_TITLES)],
                    "goal_minor": goal, "currency": currency, "pledged_minor": pledged, "status": need_status,
                    "deadline": (published_at or now).date() + timedelta(days=rng.randint(30, 720)),
                    "allow_overfunding": rng.random() < 0.2, "position": position,
                })
            if project_id % SEED_CHUNK == 0 or project_id == projects:
                # Tags, needs and pledges reference projects and needs, so they follow in this order.
                for copier in (project_copier, tag_copier, need_copier, pledge_copier):
                    copier.flush()
        figures.projects, figures.tags, figures.needs, figures.pledges = (
            project_copier.rows, tag_copier.rows, need_copier.rows, pledge_copier.rows
        )

        # Preferences are drawn after the projects, so the projects of a seed do not depend on them.
        # Matching needs them: a funder without a preferred region or theme is never suggested.
        preference_copier = Copier(connection, tables["funder_preference"], now)
        for funder_id in range(1, funder_count + 1):
            institution = funder_id in institutions
            chosen = {("theme", weighted(rng, THEME_WEIGHTS)) for _ in range(rng.randint(1, 3) if institution else 1)}
            if institution or rng.random() < 0.5:
                chosen |= {("region", weighted(rng, REGION_WEIGHTS)) for _ in range(rng.randint(1, 2))}
            for kind, code in sorted(chosen):
                preference_copier.write({"funder_id": funder_id, "kind": kind, "code": code})
        preference_copier.flush()
        figures.preferences = preference_copier.rows
        for table in ("organisation", "funder", "project", "funding_need", "pledge"):
            connection.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
        connection.commit()
    with psycopg.connect(libpq_url(database_url), autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE")
    figures.seconds = round(time.perf_counter() - started, 1)
    return figures


def existing_figures(database_url: str) -> SeedFigures:
    with psycopg.connect(libpq_url(database_url)) as connection:
        def count(sql: str) -> int:
            return connection.execute(sql).fetchone()[0]

        figures = SeedFigures(
            organisations=count("SELECT count(*) FROM organisation"), projects=count("SELECT count(*) FROM project"),
            needs=count("SELECT count(*) FROM funding_need"), tags=count("SELECT count(*) FROM project_tag"),
            funders=count("SELECT count(*) FROM funder"), pledges=count("SELECT count(*) FROM pledge"),
            preferences=count("SELECT count(*) FROM funder_preference"),
        )
        figures.public_ids = [row[0] for row in connection.execute(
            "SELECT id FROM project WHERE status IN ('published', 'funded', 'closed') ORDER BY id")]
        figures.public_projects = len(figures.public_ids)
    return figures


def project_count(database_url: str) -> int | None:
    try:
        with psycopg.connect(libpq_url(database_url)) as connection:
            return connection.execute("SELECT count(*) FROM project").fetchone()[0]
    except psycopg.Error:
        return None


# Request mix --------------------------------------------------------------------------------

def api_list_paths(rng: random.Random, count: int) -> list[str]:
    """Filtered API lists: region and theme, one of them, a country or sector, pages 1 to 5."""
    paths = []
    for _ in range(count):
        region, theme = weighted(rng, REGION_WEIGHTS), weighted(rng, THEME_WEIGHTS)
        choice = rng.random()
        if choice < 0.5:
            query = f"region={region}&theme={theme}"
        elif choice < 0.7:
            query = f"region={region}"
        elif choice < 0.85:
            query = f"theme={theme}"
        else:
            query = rng.choice(["country=KE", "country=IN", "sector=22040", "sector=22020", "status=funded"])
        page = rng.choices([1, 2, 3, 4, 5], weights=[60, 15, 10, 8, 7])[0]
        paths.append(f"/api/v1/projects?{query}&page={page}")
    return paths


def browse_paths(rng: random.Random, count: int) -> list[str]:
    """Browse pages: unfiltered or filtered like the API list, pages 1 to 5."""
    paths = []
    for path in api_list_paths(rng, count):
        query = path.split("?", 1)[1]
        paths.append("/projects" if rng.random() < 0.3 else f"/projects?{query}")
    return paths


def project_paths(rng: random.Random, count: int, public_ids: list[int]) -> list[str]:
    return [f"/projects/{rng.choice(public_ids)}" for _ in range(count)]


ENDPOINTS = {
    "bare": "GET / on bare_app.py",
    "api_list": "GET /api/v1/projects with region, theme, country or sector filters, pages 1-5",
    "browse": "GET /projects, unfiltered or filtered, pages 1-5",
    "project": "GET /projects/<id> of a random public project",
}


def endpoint_paths(name: str, rng: random.Random, public_ids: list[int], count: int = 2000) -> list[str]:
    if name == "bare":
        return ["/"]
    if name == "api_list":
        return api_list_paths(rng, count)
    if name == "browse":
        return browse_paths(rng, count)
    return project_paths(rng, count, public_ids)


# Load generator -----------------------------------------------------------------------------

def client_process(port: int, paths: list[str], threads: int, start_at: float, seconds: float, seed_value: int) -> dict:
    """Run `threads` keep-alive clients from `start_at` (wall clock) for `seconds`; return their results."""
    import threading

    latencies = array("d")
    # Latencies of the responses with X-Cache: hit and with X-Cache: miss.
    by_cache_state = {"hit": array("d"), "miss": array("d")}
    statuses: Counter = Counter()
    errors: Counter = Counter()
    lock = threading.Lock()

    def run(index: int) -> None:
        rng = random.Random(seed_value * 1000 + index)
        connection = http.client.HTTPConnection(HOST, port, timeout=60)
        own_latencies, own_statuses, own_errors = array("d"), Counter(), Counter()
        own_by_cache_state = {"hit": array("d"), "miss": array("d")}
        time.sleep(max(0.0, start_at - time.time()))
        stop_at = time.perf_counter() + seconds
        while time.perf_counter() < stop_at:
            path = rng.choice(paths)
            started = time.perf_counter()
            try:
                connection.request("GET", path, headers={"Accept": "text/html,application/json"})
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as error:
                own_errors[type(error).__name__] += 1
                connection.close()
                continue
            latency = time.perf_counter() - started
            own_latencies.append(latency)
            cache_state = response.getheader("X-Cache")
            if cache_state in own_by_cache_state:
                own_by_cache_state[cache_state].append(latency)
            own_statuses[response.status] += 1
        connection.close()
        with lock:
            latencies.extend(own_latencies)
            statuses.update(own_statuses)
            errors.update(own_errors)
            for state, values in own_by_cache_state.items():
                by_cache_state[state].extend(values)

    workers = [threading.Thread(target=run, args=(index,), daemon=True) for index in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return {"latencies": latencies.tobytes(), "statuses": dict(statuses), "errors": dict(errors),
            "by_cache_state": {state: values.tobytes() for state, values in by_cache_state.items()},
            "cpu_seconds": time.process_time()}


def client_signals() -> None:
    """Leave Ctrl-C and SIGTERM to the parent, which stops the pool."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def drive(port: int, paths: list[str], clients: int, processes: int, seconds: float, seed_value: int) -> dict:
    """Spread `clients` threads over `processes` processes and merge what they measured."""
    shares = [clients // processes + (1 if index < clients % processes else 0) for index in range(processes)]
    start_at = time.time() + START_DELAY
    # spawn, not fork: this process runs threads (the CPU meters) that a fork would copy mid-lock.
    context = multiprocessing.get_context("spawn")
    pool = context.Pool(processes, initializer=client_signals)
    try:
        results = pool.starmap(client_process, [
            (port, paths, share, start_at, seconds, seed_value * 100 + index) for index, share in enumerate(shares)
        ])
        pool.close()
    finally:
        pool.terminate()
        pool.join()
    latencies = array("d")
    statuses: Counter = Counter()
    errors: Counter = Counter()
    client_cpu = 0.0
    by_cache_state = {"hit": array("d"), "miss": array("d")}
    for result in results:
        part = array("d")
        part.frombytes(result["latencies"])
        latencies.extend(part)
        statuses.update(result["statuses"])
        errors.update(result["errors"])
        client_cpu += result["cpu_seconds"]
        for state, values in result["by_cache_state"].items():
            by_cache_state[state].frombytes(values)
    return {"latencies": list(latencies), "statuses": statuses, "errors": errors, "client_cpu_seconds": client_cpu,
            "by_cache_state": {state: list(values) for state, values in by_cache_state.items()}}


# gunicorn -----------------------------------------------------------------------------------

class Server:
    """gunicorn with gunicorn.conf.py in its own process group, so that stop() ends all its workers."""

    def __init__(self, name: str, app_spec: str, port: int, args: argparse.Namespace, env: dict, workdir: Path, chdir: Path):
        self.name = name
        self.port = port
        self.log_path = workdir / f"gunicorn-{name}.log"
        self.command = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "--chdir", str(chdir), app_spec]
        self.env = env | {
            "GUNICORN_BIND": f"{HOST}:{port}", "GUNICORN_WORKERS": str(args.workers),
            "GUNICORN_THREADS": str(args.threads), "GUNICORN_ACCESS_LOG": str(workdir / f"access-{name}.log"),
            "GUNICORN_ERROR_LOG": str(self.log_path),
        }
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        # A worker that crashes in C code leaves its Python stack in the stderr file (faulthandler).
        with open(self.log_path.with_suffix(".stderr"), "wb") as stderr:
            self.process = subprocess.Popen(self.command, cwd=ROOT, env=self.env | {"PYTHONFAULTHANDLER": "1"},
                                            stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        logger.info("gunicorn %s started pid=%s port=%s log=%s", self.name, self.process.pid, self.port, self.log_path)

    def wait_ready(self, path: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"gunicorn {self.name} exited with code {self.process.returncode}; see {self.log_path}")
            try:
                connection = http.client.HTTPConnection(HOST, self.port, timeout=2)
                connection.request("GET", path)
                status = connection.getresponse().status
                connection.close()
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"gunicorn {self.name} did not return 200 for {path} within {timeout:.0f} seconds; see {self.log_path}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            logger.error("gunicorn %s pid=%s ignored SIGTERM for 15 seconds; sending SIGKILL", self.name, self.process.pid)
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        logger.info("gunicorn %s stopped", self.name)


def clear_cache(env: dict) -> None:
    """Start each endpoint with an empty page and count cache, as after a deployment."""
    command = [str(Path(sys.executable).with_name("flask")), "--app", "wsgi", "cache", "clear"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr}")


class PledgeWriter:
    """benchmarks/pledge_writer.py in a child process with the environment of gunicorn."""

    def __init__(self, rate: float, env: dict, seed: int, log: Path):
        command = [sys.executable, str(BENCHMARKS / "pledge_writer.py"), "--rate", str(rate), "--seed", str(seed)]
        with log.open("a") as stderr:
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
        line = self.process.stdout.readline().strip()
        if line != "ready":
            self.process.kill()
            raise SystemExit(f"{' '.join(command)} did not start ({line!r}); see {log}")

    def stop(self) -> dict:
        self.process.send_signal(signal.SIGTERM)
        output, _ = self.process.communicate(timeout=60)
        lines = output.strip().splitlines()
        return json.loads(lines[-1]) if lines else {"error": f"exit status {self.process.returncode}"}


def measure(server: Server, name: str, paths: list[str], args: argparse.Namespace) -> dict:
    writer = None
    if name != "bare" and args.pledges_per_second > 0:
        writer = PledgeWriter(args.pledges_per_second, server.env, args.seed, server.log_path.with_name("pledge-writer.stderr"))
    try:
        if name != "bare":
            clear_cache(server.env)
        if args.warmup > 0:
            drive(server.port, paths, args.clients, args.client_processes, args.warmup, args.seed + 7)
        with psycopg.connect(libpq_url(args.database_url), autocommit=True) as connection:
            app_meter = CpuMeter(lambda: process_tree(server.process.pid)).start()
            database_meter = CpuMeter(lambda: backend_pids(connection)).start()
            cpu_before, load_before = cpu_times(), os.getloadavg()
            run = drive(server.port, paths, args.clients, args.client_processes, args.seconds, args.seed)
            cpu_after, load_after = cpu_times(), os.getloadavg()
            app_cpu, database_cpu = app_meter.stop(), database_meter.stop()
    finally:
        writes = writer.stop() if writer is not None else None
    requests = sum(run["statuses"].values())
    ok = run["statuses"].get(200, 0)
    return {
        "endpoint": ENDPOINTS[name],
        "requests": requests,
        # Every client sends requests for `seconds`, all starting at the same moment.
        "requests_per_second": round(requests / args.seconds, 1),
        "latency_ms": percentiles_ms(run["latencies"]),
        "non_200": requests - ok + sum(run["errors"].values()),
        "cache_hit_percent": round(100 * len(run["by_cache_state"]["hit"]) / requests, 1) if requests else None,
        "latency_ms_cache_hits": percentiles_ms(run["by_cache_state"]["hit"]),
        "latency_ms_cache_misses": percentiles_ms(run["by_cache_state"]["miss"]),
        "status_detail": {str(key): value for key, value in (run["statuses"] | run["errors"]).items() if key != 200},
        "cpu_ms_per_request": {
            "gunicorn": per_unit_ms(app_cpu, requests),
            "postgres": per_unit_ms(database_cpu, requests),
            "load_generator": per_unit_ms(run["client_cpu_seconds"], requests),
        },
        "cpu_busy_percent": busy_percent(cpu_before, cpu_after),
        "load_average_1min": [round(load_before[0], 2), round(load_after[0], 2)],
        "pledge_writer": writes,
    }


# Query analysis ------------------------------------------------------------------------------

def explain_pages(database_url: str, public_ids: list[int]) -> dict:
    """Request each page once in-process, count its statements and print EXPLAIN ANALYZE of each."""
    from sqlalchemy import event

    from financing.extensions import db

    app = build_app(database_url)
    pages = {
        "browse": "/projects",
        "browse_filtered": "/projects?region=africa&theme=broadband",
        "api_list": "/api/v1/projects?region=africa&theme=broadband",
        "api_list_page_5": "/api/v1/projects?region=asia-pacific&page=5",
        "project": f"/projects/{public_ids[len(public_ids) // 2]}",
    }
    counts = {}
    with app.app_context():
        statements: list[tuple[str, object]] = []

        def record(conn, cursor, statement, parameters, context, executemany):
            statements.append((statement, parameters))

        client = app.test_client()
        client.get(pages["browse"])  # loads reference data and compiles templates once
        event.listen(db.engine, "before_cursor_execute", record)
        try:
            for name, path in pages.items():
                statements.clear()
                response = client.get(path)
                if response.status_code != 200:
                    raise SystemExit(f"{path} returned {response.status_code} during --explain")
                captured = list(statements)
                counts[name] = len(captured)
                print(f"\n=== {name}: GET {path}: {len(captured)} SQL statements")
                for statement, parameters in captured:
                    plan = db.session.connection().exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
                    print("\n" + " ".join(statement.split())[:600])
                    for (line,) in plan:
                        print("    " + line)
                db.session.rollback()
        finally:
            event.remove(db.engine, "before_cursor_execute", record)
        db.engine.dispose()
    return counts


# Main -----------------------------------------------------------------------------------------

def print_report(figures: dict) -> None:
    print()
    info = figures["machine"]
    print(f"Machine: {info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB RAM, PostgreSQL {info['postgresql']}, "
          f"load average before the runs {info['load_average_before']}")
    print(f"Data: {figures['data']['projects']} projects ({figures['data']['public_projects']} public), "
          f"{figures['data']['needs']} needs, {figures['data']['tags']} tags, {figures['data']['pledges']} pledges")
    print(f"gunicorn -c gunicorn.conf.py: {figures['workers']} workers x {figures['threads']} threads (gthread); "
          f"{figures['clients']} clients in {figures['client_processes']} processes; {figures['seconds']} s per endpoint")
    print(f"Cache: {'Redis ' + figures['redis_url'] if figures['cache'] else 'off (NullCache)'}, "
          "emptied before each endpoint's warm-up")
    if figures["pledges_per_second"]:
        writer_runs = {name: result["pledge_writer"] for name, result in figures["endpoints"].items() if result.get("pledge_writer")}
        print(f"Pledges made and confirmed during each page's run, {figures['pledges_per_second']} per second requested: "
              + "; ".join(f"{name} {writes.get('pledges_per_second')}/s, {writes.get('failed')} failed" for name, writes in writer_runs.items()))
    print(f"{'endpoint':<10} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'non-200':>8} {'hits %':>7} "
          f"{'app CPU ms':>11} {'PG CPU ms':>10} {'load':>12}")
    for name, result in figures["endpoints"].items():
        latency, cpu = result["latency_ms"], result["cpu_ms_per_request"]
        print(f"{name:<10} {result['requests_per_second']:>8} {latency['p50']:>8} {latency['p95']:>8} {latency['p99']:>8} "
              f"{result['non_200']:>8} {result['cache_hit_percent']!s:>7} {cpu['gunicorn']!s:>11} {cpu['postgres']!s:>10} "
              f"{result['load_average_1min'][0]:>5}-{result['load_average_1min'][1]:<5}")
    print("Latency by cache state, ms (p50 / p95 / p99):")
    for name, result in figures["endpoints"].items():
        if name == "bare":
            continue
        hits, misses = result["latency_ms_cache_hits"], result["latency_ms_cache_misses"]
        print(f"{name:<10} hits {hits['p50']} / {hits['p95']} / {hits['p99']}; "
              f"misses {misses['p50']} / {misses['p95']} / {misses['p99']}")
    for name, ratio in figures["ratio_to_bare"].items():
        print(f"{name}: {ratio} of the bare app's requests per second")
    for name, met in figures["targets_met"].items():
        print(f"{name}: p95 target {TARGET_P95_MS[name]} ms {'met' if met else 'NOT met'}")


def raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("financing").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    rng = random.Random(args.seed)

    if args.keep_data and project_count(args.database_url) == args.projects:
        created, dropped = sync_indexes(args.database_url)
        print(f"Reusing {args.projects} projects in {make_url(args.database_url).database}; "
              f"indexes created: {created or 'none'}; dropped: {dropped or 'none'}", flush=True)
        data = existing_figures(args.database_url)
        if created or dropped:
            with psycopg.connect(libpq_url(args.database_url), autocommit=True) as connection:
                connection.execute("VACUUM ANALYZE")
    else:
        recreate_database(args.database_url)
        create_schema(args.database_url, args.schema)
        print(f"Seeding {args.projects} projects ...", flush=True)
        data = seed(args.database_url, args.projects, rng)
        print(f"Seeded in {data.seconds} s", flush=True)

    query_counts = explain_pages(args.database_url, data.public_ids) if args.explain else None

    workdir = Path(tempfile.mkdtemp(prefix="financing-web-bench-"))
    env = app_environment(args.database_url, args.redis_url, cache=not args.no_cache)
    app_server = Server("platform", "wsgi:app", free_port(), args, env, workdir, ROOT)
    bare_server = Server("bare", "bare_app:app", free_port(), args, env, workdir, BENCHMARKS)
    load_before = [round(value, 2) for value in os.getloadavg()]
    results = {}
    try:
        for server in (app_server, bare_server):
            server.start()
        app_server.wait_ready("/healthz")
        bare_server.wait_ready("/")
        for name in args.endpoints:
            server = bare_server if name == "bare" else app_server
            paths = endpoint_paths(name, random.Random(args.seed + len(name)), data.public_ids)
            print(f"Measuring {name} for {args.seconds} s: {ENDPOINTS[name]} ...", flush=True)
            results[name] = measure(server, name, paths, args)
    except KeyboardInterrupt:
        print("Interrupted; stopping gunicorn.", file=sys.stderr)
        return 130
    finally:
        app_server.stop()
        bare_server.stop()

    bare_rate = results.get("bare", {}).get("requests_per_second")
    figures = {
        "benchmark": "web",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine() | {"postgresql": postgres_version(args.database_url), "load_average_before": load_before},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "schema": "reused" if args.keep_data and data.seconds == 0 else args.schema,
        "data": {key: value for key, value in vars(data).items() if key != "public_ids"},
        "workers": args.workers, "threads": args.threads, "clients": args.clients,
        "client_processes": args.client_processes, "seconds": args.seconds,
        "gunicorn_command": " ".join(app_server.command[2:]),
        "redis_url": args.redis_url, "cache": not args.no_cache, "pledges_per_second": args.pledges_per_second,
        "endpoints": results,
        "ratio_to_bare": {
            name: round(result["requests_per_second"] / bare_rate, 3)
            for name, result in results.items() if name != "bare" and bare_rate
        },
        "targets_met": {
            name: results[name]["latency_ms"]["p95"] is not None and results[name]["latency_ms"]["p95"] < target
            for name, target in TARGET_P95_MS.items() if name in results
        },
        "sql_statements_per_page": query_counts,
        "logs": str(workdir),
    }
    print_report(figures)
    print(json.dumps(figures))
    failed = any(result["non_200"] for name, result in results.items())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
