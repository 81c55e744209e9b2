"""Make and confirm pledges at a steady rate while `benchmarks/web.py` measures the pages.

A platform that takes pledges writes while people read, and every write makes some cached
pages stale (financing.core.cache). This process runs the platform's own services with the
environment of the benchmark's gunicorn (the same database and Redis), so each pledge and
each confirmation is a commit that replaces cache generations exactly as a request would.

It creates a donor and a coordinator account and makes one pledge, which creates the
donor's funder profile, then prints "ready". Every 1/RATE seconds it pledges 1.00 in the
need's currency to an open need of a random published project and confirms the pledge.
The jobs that a pledge starts (recomputing the project's matches) go to the RQ queue when
REDIS_URL is set, as after a request. Run `scripts/rq-worker` to process them. It stops on
SIGTERM or SIGINT and prints one line of JSON with its counts.

    .venv/bin/python benchmarks/pledge_writer.py --rate 2
"""

import argparse
import json
import logging
import random
import secrets
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

logger = logging.getLogger("benchmarks.pledge_writer")

DONOR_EMAIL = "bench-writer-donor@example.org"
COORDINATOR_EMAIL = "bench-writer-coordinator@example.org"
# Needs drawn from. Pledges of 1.00 leave a need open for a long time.
NEED_SAMPLE = 5_000
AMOUNT_MINOR = 100


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, required=True, help="pledges per second, each made and confirmed")
    parser.add_argument("--seed", type=int, default=1, help="seed of the choice of needs (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.rate <= 0:
        parser.error(f"--rate must be positive, not {args.rate}")
    return args


# Set by SIGTERM and SIGINT. An exception raised in the handler could be swallowed, for
# example when the signal arrives while a weakref callback runs, so the loop polls this.
stop_requested = False
# Maximum sleep between two checks of stop_requested, in seconds.
POLL_SECONDS = 0.05


def request_stop(signum, frame):
    global stop_requested
    stop_requested = True


def sleep_until(moment: float) -> None:
    """Sleep until the monotonic clock reaches `moment` or a stop is requested."""
    while not stop_requested and time.monotonic() < moment:
        time.sleep(min(POLL_SECONDS, moment - time.monotonic()))


def account(email: str, role: str):
    from financing.accounts.models import User
    from financing.accounts.services import create_user
    from financing.extensions import db
    from sqlalchemy import select

    user = db.session.scalar(select(User).where(User.email == email))
    if user is None:
        user = create_user(email, secrets.token_urlsafe(24), role, name=f"Benchmark {role}")
        db.session.commit()
    return user


def open_needs(rng: random.Random) -> list[tuple[int, str]]:
    from financing.extensions import db
    from sqlalchemy import text

    rows = db.session.execute(text(
        "SELECT funding_need.id, funding_need.currency FROM funding_need"
        " JOIN project ON project.id = funding_need.project_id"
        " WHERE project.status = 'published' AND funding_need.status = 'open'"
        " AND (funding_need.deadline IS NULL OR funding_need.deadline > CURRENT_DATE)"
        " ORDER BY funding_need.id"
    )).all()
    if not rows:
        raise SystemExit("No open need of a published project found: seed the database with benchmarks/web.py first.")
    return rng.sample([tuple(row) for row in rows], min(NEED_SAMPLE, len(rows)))


def pledge_once(donor, coordinator, need: tuple[int, str]) -> None:
    from financing.extensions import db
    from financing.jobs import run_ready_jobs
    from financing.pledges.services import create_pledge, transition

    pledge, _ = create_pledge(donor, need[0], AMOUNT_MINOR, need[1])
    db.session.commit()
    transition(pledge.id, "confirm", coordinator)
    db.session.commit()
    # Queue the jobs that the commits started (the project's matches), as a request does.
    run_ready_jobs()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    rng = random.Random(args.seed)

    from financing import create_app
    from financing.extensions import db

    app = create_app()
    pledges_made, failed = 0, 0
    with app.app_context():
        donor, coordinator = account(DONOR_EMAIL, "donor"), account(COORDINATOR_EMAIL, "coordinator")
        needs = open_needs(rng)
        # The first pledge creates the donor's funder profile, a write to another table.
        pledge_once(donor, coordinator, needs[0])
        print("ready", flush=True)
        started = next_at = time.monotonic()
        while True:
            next_at += 1 / args.rate
            sleep_until(next_at)
            if stop_requested:
                break
            try:
                pledge_once(donor, coordinator, rng.choice(needs))
                pledges_made += 1
            except Exception:
                db.session.rollback()
                failed += 1
                logger.exception("benchmark pledge failed; continuing")
    seconds = time.monotonic() - started
    print(json.dumps({"pledges": pledges_made, "failed": failed, "seconds": round(seconds, 1),
                      "pledges_per_second": round(pledges_made / seconds, 2) if seconds else None}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
