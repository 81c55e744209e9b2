"""Fuzz the whole JSON API over HTTP with schemathesis and count the responses.

The script builds a fresh database (a temporary SQLite file unless --database-url names a
PostgreSQL database), seeds accounts, projects, pledges, matches, a match fund, rates and an
allocation run, and serves the app on 127.0.0.1 from a thread. Then schemathesis generates
requests for every operation of /api/openapi.json, valid and invalid ones, as an anonymous
client and as a coordinator, an owner and a donor with Bearer tokens. Each response is checked
against the document: no 5xx, a documented status, content type and headers, a body that fits
the schema, and a 4xx for invalid input. The report lists the statuses per operation and every
failure; the last line is one JSON object with the figures. The exit status is 1 when a
response failed a check or fewer than --min-requests requests were sent.

    .venv/bin/python benchmarks/api_fuzz.py --examples 6 --seed 20260101
    .venv/bin/python benchmarks/api_fuzz.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/NAME --reset-database
"""

import argparse
import json
import logging
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import schemathesis
from sqlalchemy.engine import make_url
from werkzeug.serving import make_server

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

logger = logging.getLogger("benchmarks.api_fuzz")

HOST = "127.0.0.1"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=6,
                        help="generated requests per operation, generation mode and identity at most (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=20260101, help="Hypothesis seed of the generated requests (default: %(default)s)")
    parser.add_argument("--database-url", default="",
                        help="PostgreSQL database whose tables the script drops and recreates, together with "
                             "--reset-database (default: a temporary SQLite file)")
    parser.add_argument("--reset-database", action="store_true",
                        help="confirm that every table of --database-url may be dropped")
    parser.add_argument("--min-requests", type=int, default=1000, help="minimum number of requests for a passing run (default: %(default)s)")
    parser.add_argument("--show", type=int, default=20, help="failures printed in full (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.examples < 1:
        parser.error(f"--examples must be at least 1, not {args.examples}")
    if args.database_url:
        url = make_url(args.database_url)
        if not url.drivername.startswith("postgresql"):
            parser.error(f"--database-url must be a PostgreSQL URL, not {url.drivername}")
        if not args.reset_database:
            parser.error(f"the script drops every table of database {url.database!r}; add --reset-database to confirm")
    return args


def build_app(database_url: str):
    """Create the app on an empty database with the test settings: jobs inline, no CSRF, no Stripe."""
    from financing import create_app
    from financing.config import TestConfig
    from financing.extensions import db

    app = create_app(TestConfig, SQLALCHEMY_DATABASE_URI=database_url)
    with app.app_context():
        # NOTE: the tables come from the models, not from the migrations, because the
        # database is thrown away after the run.
        db.drop_all()
        db.create_all()
    return app


def serve(app):
    """Start a threaded werkzeug server on a free loopback port; return it and its thread."""
    server = make_server(HOST, 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="api-fuzz-server", daemon=True)
    thread.start()
    logger.info("server started url=http://%s:%s", HOST, server.server_port)
    return server, thread


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    # Werkzeug logs every request at INFO; the report counts them instead.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    from tests.test_api_schema import fuzz_api, schemathesis_config, seed_platform

    with tempfile.TemporaryDirectory(prefix="api-fuzz-") as directory:
        database_url = args.database_url or f"sqlite:///{Path(directory) / 'fuzz.sqlite'}"
        app = build_app(database_url)
        with app.app_context():
            seeded = seed_platform()
        server, thread = serve(app)
        base_url = f"http://{HOST}:{server.server_port}"
        try:
            schema = schemathesis.openapi.from_url(f"{base_url}/api/openapi.json", config=schemathesis_config())
            started = time.perf_counter()
            report = fuzz_api(schema, seeded, args.examples, identities=tuple(seeded.identities),
                              seed_value=args.seed, base_url=base_url)
            seconds = time.perf_counter() - started
        finally:
            server.shutdown()
            thread.join(timeout=10)
            logger.info("server stopped")
            with app.app_context():
                from financing.extensions import db
                db.engine.dispose()

    print(f"Operations: {len(report.by_operation)}; requests: {report.requests} in {seconds:.1f} s")
    print("Statuses: " + ", ".join(f"{status}: {count}" for status, count in sorted(report.statuses.items())))
    print("Requests per operation:")
    for name, count in sorted(report.by_operation.items()):
        print(f"  {count:5d}  {name}")
    if report.unsatisfiable:
        print("Nothing to break in negative mode: " + "; ".join(sorted(set(report.unsatisfiable))))
    print(f"Server errors: {len(report.server_errors)}; check failures: {len(report.failures)}")
    for failure in report.failures[:args.show]:
        print("-" * 72)
        print(failure)

    summary = {
        **report.summary(),
        "seconds": round(seconds, 1),
        "examples": args.examples,
        "seed": args.seed,
        "database": make_url(database_url).get_backend_name(),
        "schemathesis": schemathesis.__version__,
        "python": platform.python_version(),
    }
    print(json.dumps(summary, sort_keys=True))
    passed = not report.server_errors and not report.failures and report.requests >= args.min_requests
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
