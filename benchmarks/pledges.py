"""Measure pledges per second through gunicorn and PostgreSQL, next to pgbench doing the same SQL.

The script drops and recreates the benchmark database, migrates it with `flask db upgrade`,
seeds published needs and donors with API tokens, starts gunicorn, and sends
POST /api/v1/pledges from many client threads on keep-alive connections for a fixed time.
Then it checks that no need is over-funded and empties the pledges. Last, pgbench runs the
core SQL of a pledge with the same client count and duration: a conditional UPDATE of the
need, then INSERTs of the pledge and its ledger row, in one transaction. The last line of
output is one JSON object with every figure.

    .venv/bin/python benchmarks/pledges.py --clients 16 --seconds 20 --workers 4
"""

import argparse
import http.client
import json
import logging
import os
import platform
import random
import re
import resource
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

logger = logging.getLogger("benchmarks.pledges")

HOST = "127.0.0.1"
PASSWORD = "benchmark password"
# Pledge amounts in EUR minor units, drawn uniformly: 1.00 to 500.00 EUR.
AMOUNT_RANGE = (100, 50_000)
NEEDS_PER_PROJECT = 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/financing_bench",
                        help="PostgreSQL database to drop, recreate and use; its name must contain 'bench' "
                             "(default: %(default)s)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent client threads and pgbench clients (default: %(default)s)")
    parser.add_argument("--seconds", type=int, default=20, help="duration of each measured run, in seconds (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn worker processes (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn gthread worker (default: %(default)s)")
    parser.add_argument("--needs", type=int, default=200, help="published funding needs to pledge to (default: %(default)s)")
    parser.add_argument("--donors", type=int, default=64, help="donor accounts with API tokens (default: %(default)s)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured pledging before the run (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port for gunicorn on 127.0.0.1; 0 picks a free one (default: %(default)s)")
    parser.add_argument("--pgbench", default="/usr/bin/pgbench", help="path of the pgbench program (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random needs, goals and amounts (default: %(default)s)")
    args = parser.parse_args(argv)
    for name in ("clients", "seconds", "workers", "threads", "needs", "donors"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, not {getattr(args, name)}")
    url = make_url(args.database_url)
    if not url.drivername.startswith("postgresql"):
        parser.error(f"--database-url must be a PostgreSQL URL, not {url.drivername}")
    if "bench" not in (url.database or ""):
        parser.error(f"--database-url names database {url.database!r}; the script drops it, so its name must contain 'bench'")
    if not Path(args.pgbench).is_file():
        parser.error(f"--pgbench {args.pgbench} does not exist")
    return args


# Database set-up ------------------------------------------------------------------------

def libpq_url(database_url: str, database: str | None = None) -> str:
    """Return the SQLAlchemy URL as a plain postgresql:// URL for psycopg, optionally for another database."""
    url = make_url(database_url).set(drivername="postgresql")
    if database is not None:
        url = url.set(database=database)
    return url.render_as_string(hide_password=False)


def recreate_database(database_url: str) -> None:
    name = make_url(database_url).database
    with psycopg.connect(libpq_url(database_url, "postgres"), autocommit=True) as connection:
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    logger.info("database %s recreated", name)


def app_environment(database_url: str) -> dict[str, str]:
    """Return the environment for `flask` and gunicorn: the default Config on the benchmark database."""
    env = dict(os.environ)
    env.pop("FINANCING_ENV", None)
    env["DATABASE_URL"] = database_url
    env["SECRET_KEY"] = secrets.token_hex(32)
    return env


def migrate(database_url: str) -> None:
    command = [sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"]
    result = subprocess.run(command, cwd=ROOT, env=app_environment(database_url), capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"flask db upgrade failed with exit code {result.returncode}:\n{result.stderr[-3000:]}")
    logger.info("database migrated to head")


@dataclass
class Seed:
    need_ids: list[int]
    tokens: list[str]
    # Donor user ids and their funder ids, in the same order.
    donor_user_ids: list[int]
    donor_funder_ids: list[int]


def seed(database_url: str, needs: int, donors: int, rng: random.Random) -> Seed:
    """Create published projects with `needs` EUR needs, and donors with funders and API tokens.

    About a quarter of the needs have goals of 500 to 2,000 EUR, so they fill up during a run.
    The others have goals of 50,000 to 5,000,000 EUR.
    """
    from financing import create_app
    from financing.accounts.services import create_token, create_user
    from financing.config import Config
    from financing.extensions import db
    from financing.funders.services import funder_for_user
    from financing.projects.services import NeedInput, ProjectInput, create_project, publish_project, submit_project

    app = create_app(Config, SQLALCHEMY_DATABASE_URI=database_url)
    with app.app_context():
        owner = create_user("owner@bench.example.org", PASSWORD, "owner", name="Benchmark owner", organisation="Benchmark Ministry of ICT")
        coordinator = create_user("coordinator@bench.example.org", PASSWORD, "coordinator", name="Benchmark coordinator")
        users = [create_user(f"donor{index}@bench.example.org", PASSWORD, "donor", name=f"Donor {index}") for index in range(donors)]
        funders = [funder_for_user(user) for user in users]
        tokens = [create_token(user, name="benchmark")[1] for user in users]

        need_ids: list[int] = []
        for start in range(0, needs, NEEDS_PER_PROJECT):
            count = min(NEEDS_PER_PROJECT, needs - start)
            data = ProjectInput(
                title=f"Benchmark broadband project {start // NEEDS_PER_PROJECT + 1}",
                summary="Seeded by benchmarks/pledges.py.",
                countries=["KE"],
                themes=["broadband"],
                needs=[NeedInput(title=f"Need {start + offset + 1}", goal_minor=goal_minor(rng), currency="EUR") for offset in range(count)],
            )
            project = create_project(owner, data)
            submit_project(owner, project)
            publish_project(coordinator, project)
            db.session.flush()
            need_ids.extend(need.id for need in project.needs)
        db.session.commit()
        result = Seed(need_ids, tokens, [user.id for user in users], [funder.id for funder in funders])
        db.engine.dispose()
    logger.info("seeded %d needs and %d donors", len(need_ids), donors)
    return result


def goal_minor(rng: random.Random) -> int:
    if rng.random() < 0.25:
        return rng.randint(500, 2_000) * 100
    return rng.randint(50_000, 5_000_000) * 100


def vacuum(database_url: str) -> None:
    with psycopg.connect(libpq_url(database_url), autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE")


def check_needs(database_url: str) -> dict[str, int]:
    """Count over-funded needs, needs whose running total disagrees with their pledges, and rows."""
    query = """
        SELECT
            count(*) FILTER (WHERE NOT n.allow_overfunding
                             AND (n.pledged_minor > n.goal_minor OR coalesce(a.active, 0) > n.goal_minor)),
            count(*) FILTER (WHERE n.pledged_minor <> coalesce(a.active, 0)),
            count(*) FILTER (WHERE n.pledged_minor >= n.goal_minor * 0.9),
            (SELECT count(*) FROM pledge),
            (SELECT count(*) FROM pledge_event)
        FROM funding_need AS n
        LEFT JOIN (
            SELECT need_id, sum(need_amount_minor - refunded_minor) AS active
            FROM pledge WHERE state NOT IN ('cancelled', 'refunded') GROUP BY need_id
        ) AS a ON a.need_id = n.id
    """
    with psycopg.connect(libpq_url(database_url)) as connection:
        overfunded, mismatched, nearly_full, pledges, events = connection.execute(query).fetchone()
    return {
        "overfunded_needs": overfunded, "mismatched_needs": mismatched, "needs_over_90_percent": nearly_full,
        "pledge_rows": pledges, "ledger_rows": events,
    }


def empty_pledges(database_url: str) -> None:
    """Delete every pledge and ledger row and set each need's running total back to zero."""
    with psycopg.connect(libpq_url(database_url)) as connection:
        connection.execute("TRUNCATE pledge_event, pledge RESTART IDENTITY CASCADE")
        connection.execute("UPDATE funding_need SET pledged_minor = 0, status = 'open'")


# gunicorn ---------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


class Gunicorn:
    """gunicorn serving wsgi:app in its own process group, so that stop() ends all its workers."""

    def __init__(self, database_url: str, port: int, workers: int, threads: int, log_path: Path):
        self.port = port
        self.log_path = log_path
        self.command = [
            sys.executable, "-m", "gunicorn", "-w", str(workers), "-k", "gthread", "--threads", str(threads),
            "-b", f"{HOST}:{port}", "--graceful-timeout", "5", "wsgi:app",
        ]
        self.env = app_environment(database_url)
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        logger.info("gunicorn started pid=%s port=%s log=%s", self.process.pid, self.port, self.log_path)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until GET /healthz returns 200; raise SystemExit if gunicorn exits or the wait times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"gunicorn exited with code {self.process.returncode}; see {self.log_path}:\n{self.log_tail()}")
            try:
                connection = http.client.HTTPConnection(HOST, self.port, timeout=2)
                connection.request("GET", "/healthz")
                status = connection.getresponse().status
                connection.close()
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"gunicorn did not return 200 for /healthz within {timeout:.0f} seconds; see {self.log_path}")

    def stop(self) -> None:
        """Send SIGTERM to gunicorn's process group, and SIGKILL if it is still running after 15 seconds."""
        if self.process is None or self.process.poll() is not None:
            return
        pid = self.process.pid
        os.killpg(pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            logger.error("gunicorn pid=%s ignored SIGTERM for 15 seconds; sending SIGKILL", pid)
            os.killpg(pid, signal.SIGKILL)
            self.process.wait()
        logger.info("gunicorn stopped pid=%s exit=%s", pid, self.process.returncode)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


# Load generator ---------------------------------------------------------------------------

@dataclass
class RunResult:
    elapsed: float = 0.0
    statuses: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)


class Client:
    """One keep-alive connection sending pledges with random needs, donors and amounts."""

    def __init__(self, port: int, seed_data: Seed, rng: random.Random):
        self.connection = http.client.HTTPConnection(HOST, port, timeout=60)
        self.seed = seed_data
        self.rng = rng

    def pledge(self, result: RunResult) -> None:
        amount = self.rng.randint(*AMOUNT_RANGE)
        body = json.dumps({
            "need_id": self.rng.choice(self.seed.need_ids), "amount": f"{amount // 100}.{amount % 100:02d}",
            "currency": "EUR", "kind": "commitment",
        })
        headers = {
            "Authorization": f"Bearer {self.rng.choice(self.seed.tokens)}", "Idempotency-Key": str(uuid.uuid4()),
            "Content-Type": "application/json", "Accept": "application/json",
        }
        started = time.perf_counter()
        try:
            self.connection.request("POST", "/api/v1/pledges", body=body, headers=headers)
            response = self.connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as error:
            # Count every failure and log the first of each kind; the next request reconnects.
            name = type(error).__name__
            result.errors[name] += 1
            if result.errors[name] == 1:
                logger.warning("pledge request failed on a client connection: %s: %s", name, error)
            self.connection.close()
            return
        result.latencies.append(time.perf_counter() - started)
        result.statuses[response.status] += 1

    def close(self) -> None:
        self.connection.close()


def drive(port: int, seed_data: Seed, clients: int, seconds: float, rng_seed: int) -> RunResult:
    """Run `clients` threads that pledge for `seconds`, starting together; merge their results."""
    results = [RunResult() for _ in range(clients)]
    times: dict[str, float] = {}
    barrier = threading.Barrier(clients + 1, action=lambda: times.setdefault("start", time.perf_counter()))
    failures: list[BaseException] = []

    def run(index: int) -> None:
        client = Client(port, seed_data, random.Random(rng_seed * 100_003 + index))
        try:
            barrier.wait()
            stop_at = times["start"] + seconds
            while time.perf_counter() < stop_at:
                client.pledge(results[index])
        except BaseException as error:
            failures.append(error)
        finally:
            client.close()

    threads = [threading.Thread(target=run, args=(index,), name=f"client-{index}", daemon=True) for index in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"client threads failed: {failures!r}")

    merged = RunResult(elapsed=time.perf_counter() - times["start"])
    for result in results:
        merged.statuses.update(result.statuses)
        merged.errors.update(result.errors)
        merged.latencies.extend(result.latencies)
    return merged


def percentiles_ms(latencies: list[float]) -> dict[str, float | None]:
    if len(latencies) < 2:
        return {"p50": None, "p95": None, "p99": None}
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"p50": round(cuts[49] * 1000, 2), "p95": round(cuts[94] * 1000, 2), "p99": round(cuts[98] * 1000, 2)}


def cpu_times() -> tuple[int, int] | None:
    """Return (busy, total) jiffies of all CPUs from /proc/stat, or None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    values = [int(value) for value in fields]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def background_busy_percent(seconds: float = 3.0) -> float | None:
    """Return how busy the CPUs are while this script waits; other programs take CPU from the runs."""
    before = cpu_times()
    time.sleep(seconds)
    return busy_percent(before, cpu_times())


def busy_percent(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    if before is None or after is None or after[1] == before[1]:
        return None
    return round(100 * (after[0] - before[0]) / (after[1] - before[1]), 1)


# CPU time per request --------------------------------------------------------------------
# Requests per second fall when other programs run on the machine. The CPU time that gunicorn
# and the PostgreSQL backends spend per request changes less, so the script reports both.

def process_cpu_seconds(pid: int) -> float | None:
    """Return the user plus system CPU time of a process from /proc, or None once it has exited."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # utime and stime are fields 14 and 15 of proc(5), so indexes 11 and 12 after the command name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """Return the process and its direct children, found by their parent id in /proc."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            children.append(int(stat.parent.name))
    return [pid, *children]


def backend_pids(connection: psycopg.Connection) -> list[int]:
    """Return the PostgreSQL backends connected to this database, except the one asking."""
    rows = connection.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    ).fetchall()
    return [pid for (pid,) in rows]


class CpuMeter:
    """Sample the CPU time of a changing set of processes from a background thread.

    stop() returns the CPU seconds they used since start(). A process that exits between two
    samples loses at most one interval of its time, so the figure is a slight underestimate.
    """

    def __init__(self, list_pids, interval: float = 0.25):
        self.list_pids = list_pids
        self.interval = interval
        self.baseline: dict[int, float] = {}
        self.latest: dict[int, float] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="cpu-meter", daemon=True)

    def _sample(self) -> dict[int, float]:
        samples = {}
        for pid in self.list_pids():
            seconds = process_cpu_seconds(pid)
            if seconds is not None:
                samples[pid] = seconds
        return samples

    def _loop(self) -> None:
        while not self.done.wait(self.interval):
            self.latest.update(self._sample())

    def start(self) -> "CpuMeter":
        self.baseline = self._sample()
        self.latest = dict(self.baseline)
        self.thread.start()
        return self

    def stop(self) -> float:
        self.done.set()
        self.thread.join()
        self.latest.update(self._sample())
        return sum(seconds - self.baseline.get(pid, 0.0) for pid, seconds in self.latest.items())


def per_unit_ms(cpu_seconds: float | None, units: int) -> float | None:
    return round(cpu_seconds * 1000 / units, 3) if cpu_seconds is not None and units else None


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# pgbench ------------------------------------------------------------------------------------

# Values of the pledge and ledger columns in the pgbench script; pgbench replaces :name.
PLEDGE_VALUES = {
    "need_id": ":need_id", "funder_id": ":funder_id", "kind": "'commitment'", "state": "'pledged'",
    "amount_minor": ":amount", "currency": "'EUR'", "need_amount_minor": ":amount", "rate": "1",
    "disbursed_minor": "0", "refunded_minor": "0", "disputed": "false",
    "idempotency_key": "gen_random_uuid()::text", "created_by_id": ":user_id",
    "created_at": "now()", "updated_at": "now()",
}
EVENT_VALUES = {
    "pledge_id": ":pledge_id", "actor_id": ":user_id", "at": "now()", "from_state": "NULL",
    "to_state": "'pledged'", "amount_minor": ":amount", "reason": "''",
}


def insert_sql(connection: psycopg.Connection, table: str, values: dict[str, str]) -> str:
    """Build an INSERT for the table's current columns; fail on a required column with no value here."""
    rows = connection.execute(
        "SELECT column_name, is_nullable = 'NO' AND column_default IS NULL AND is_identity = 'NO' "
        "FROM information_schema.columns WHERE table_name = %s ORDER BY ordinal_position", (table,)
    ).fetchall()
    missing = [name for name, required in rows if required and name not in values]
    if missing:
        raise SystemExit(f"The pgbench script has no value for required column(s) {', '.join(missing)} of {table}; add them to benchmarks/pledges.py.")
    names = [name for name, _ in rows if name in values]
    return f"INSERT INTO {table} ({', '.join(names)})\n    VALUES ({', '.join(values[name] for name in names)})"


def pgbench_script(database_url: str) -> str:
    """Return the pgbench script: the conditional UPDATE, then both INSERTs only when it matched."""
    with psycopg.connect(libpq_url(database_url)) as connection:
        pledge_insert = insert_sql(connection, "pledge", PLEDGE_VALUES)
        event_insert = insert_sql(connection, "pledge_event", EVENT_VALUES)
    return f"""\\set need_id random(:min_need, :max_need)
\\set amount random({AMOUNT_RANGE[0]}, {AMOUNT_RANGE[1]})
\\set donor random(0, :donors - 1)
\\set user_id :first_user + :donor
\\set funder_id :first_funder + :donor
\\set reserved 0
BEGIN;
UPDATE funding_need SET pledged_minor = pledged_minor + :amount
    WHERE id = :need_id AND (allow_overfunding OR pledged_minor + :amount <= goal_minor)
    RETURNING 1 AS reserved \\aset
\\if :reserved
{pledge_insert}
    RETURNING id AS pledge_id \\gset
{event_insert};
\\endif
END;
"""


def contiguous_start(ids: list[int], what: str) -> int:
    """Return the first id of a run of consecutive ids; pgbench picks rows by offset from it."""
    if ids != list(range(ids[0], ids[0] + len(ids))):
        raise SystemExit(f"The seeded {what} ids are not consecutive, so pgbench cannot pick them by offset.")
    return ids[0]


def run_pgbench(args: argparse.Namespace, seed_data: Seed, workdir: Path) -> dict:
    script = workdir / "pledge.sql"
    script.write_text(pgbench_script(args.database_url))
    url = make_url(args.database_url)
    first_need = contiguous_start(seed_data.need_ids, "need")
    command = [
        args.pgbench, "-n", "-M", "prepared", "-c", str(args.clients), "-j", str(min(args.clients, os.cpu_count() or 1)),
        "-T", str(args.seconds), "-f", str(script),
        "-D", f"min_need={first_need}", "-D", f"max_need={first_need + len(seed_data.need_ids) - 1}",
        "-D", f"donors={len(seed_data.tokens)}",
        "-D", f"first_user={contiguous_start(seed_data.donor_user_ids, 'donor user')}",
        "-D", f"first_funder={contiguous_start(seed_data.donor_funder_ids, 'funder')}",
        "-h", url.host or HOST, "-p", str(url.port or 5432), "-U", url.username or "postgres", url.database,
    ]
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = url.password
    logger.info("pgbench started clients=%s seconds=%s", args.clients, args.seconds)
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"pgbench failed with exit code {result.returncode}:\n{result.stderr[-3000:]}\n{result.stdout[-2000:]}")
    logger.info("pgbench finished")
    return parse_pgbench(result.stdout) | {"script": script.read_text(), "command": command}


def parse_pgbench(output: str) -> dict:
    def number(pattern: str) -> float | None:
        match = re.search(pattern, output)
        return float(match.group(1)) if match else None

    tps = number(r"tps = ([\d.]+) \(without initial connection time\)")
    if tps is None:
        raise SystemExit(f"Could not read the TPS from the pgbench output:\n{output}")
    return {
        "tps": round(tps, 1),
        "transactions": int(number(r"number of transactions actually processed: (\d+)") or 0),
        "failed_transactions": int(number(r"number of failed transactions: (\d+)") or 0),
        "latency_average_ms": number(r"latency average = ([\d.]+) ms"),
    }


# Report -------------------------------------------------------------------------------------

def postgres_version(database_url: str) -> str:
    with psycopg.connect(libpq_url(database_url)) as connection:
        return connection.execute("SHOW server_version").fetchone()[0]


def app_figures(run: RunResult, checks: dict[str, int], accepted_total: int) -> dict:
    requests = sum(run.statuses.values())
    other = requests - run.statuses[201] - run.statuses[409] + sum(run.errors.values())
    return {
        "seconds": round(run.elapsed, 2),
        "requests": requests,
        "requests_per_second": round(requests / run.elapsed, 1),
        "pledges_per_second": round(run.statuses[201] / run.elapsed, 1),
        "latency_ms": percentiles_ms(run.latencies),
        "status_counts": {"201": run.statuses[201], "409": run.statuses[409], "other": other},
        "other_detail": {str(key): value for key, value in (run.statuses | run.errors).items() if key not in (201, 409)},
        # 201 responses of the warm-up and the measured run; must equal checks["pledge_rows"].
        "accepted_total": accepted_total,
    } | checks


def print_report(figures: dict) -> None:
    app, bench = figures["app"], figures["pgbench"]
    latency = app["latency_ms"]
    print()
    print(f"Machine: {figures['machine']['cpu']}, {figures['machine']['cores']} cores, "
          f"{figures['machine']['ram_gib']} GiB RAM, PostgreSQL {figures['machine']['postgresql']}, "
          f"CPU busy before the runs {figures['machine']['cpu_busy_percent_before']}%")
    print(f"gunicorn {figures['workers']} workers x {figures['threads']} threads, {figures['clients']} clients, "
          f"{figures['needs']} needs, {figures['seconds']} s per run")
    print(f"App:     {app['pledges_per_second']} pledges/s, {app['requests_per_second']} requests/s "
          f"({app['requests']} requests in {app['seconds']} s)")
    print(f"         latency p50 {latency['p50']} ms, p95 {latency['p95']} ms, p99 {latency['p99']} ms")
    print(f"         201: {app['status_counts']['201']}, 409: {app['status_counts']['409']}, other: {app['status_counts']['other']} {app['other_detail'] or ''}")
    print(f"         over-funded needs: {app['overfunded_needs']}, needs whose total disagrees with their pledges: "
          f"{app['mismatched_needs']}, needs at 90% or more: {app['needs_over_90_percent']}")
    print(f"         pledge rows {app['pledge_rows']}, ledger rows {app['ledger_rows']}, 201 responses {app['accepted_total']}; "
          f"CPU busy {app['cpu_busy_percent']}%")
    print(f"         CPU per request: gunicorn {app['cpu_ms_per_request']['gunicorn']} ms, "
          f"PostgreSQL {app['cpu_ms_per_request']['postgres']} ms, load generator {app['cpu_ms_per_request']['load_generator']} ms")
    print(f"pgbench: {bench['tps']} transactions/s, {bench['pledges_per_second']} pledges/s, "
          f"latency average {bench['latency_average_ms']} ms, over-funded needs {bench['overfunded_needs']}, "
          f"CPU busy {bench['cpu_busy_percent']}%")
    print(f"         CPU per transaction: PostgreSQL {bench['cpu_ms_per_transaction']['postgres']} ms, "
          f"pgbench {bench['cpu_ms_per_transaction']['pgbench']} ms")
    print(f"Ratio app/pgbench (requests/s over transactions/s): {figures['ratio_app_to_pgbench']}")
    print(f"Ratio of server CPU per pledge, pgbench/app (PostgreSQL over gunicorn + PostgreSQL): {figures['cpu_ratio_pgbench_to_app']}")


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    ram_gib = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": ram_gib}


# Main -----------------------------------------------------------------------------------------

def measure_app(args: argparse.Namespace, seed_data: Seed, workdir: Path) -> dict:
    port = args.port or free_port()
    server = Gunicorn(args.database_url, port, args.workers, args.threads, workdir / "gunicorn.log")
    print("Starting:", " ".join(server.command), flush=True)
    server.start()
    try:
        server.wait_ready()
        warmup = drive(port, seed_data, args.clients, args.warmup, args.seed + 1) if args.warmup > 0 else RunResult()
        print(f"Pledging through the app for {args.seconds} s ...", flush=True)
        with psycopg.connect(libpq_url(args.database_url), autocommit=True) as connection:
            app_meter = CpuMeter(lambda: process_tree(server.process.pid)).start()
            database_meter = CpuMeter(lambda: backend_pids(connection)).start()
            cpu_before, process_before = cpu_times(), time.process_time()
            run = drive(port, seed_data, args.clients, args.seconds, args.seed)
            cpu_after, process_after = cpu_times(), time.process_time()
            app_cpu, database_cpu = app_meter.stop(), database_meter.stop()
    finally:
        server.stop()
    figures = app_figures(run, check_needs(args.database_url), warmup.statuses[201] + run.statuses[201])
    requests = figures["requests"]
    figures["cpu_busy_percent"] = busy_percent(cpu_before, cpu_after)
    figures["cpu_ms_per_request"] = {
        "gunicorn": per_unit_ms(app_cpu, requests),
        "postgres": per_unit_ms(database_cpu, requests),
        "load_generator": per_unit_ms(process_after - process_before, requests),
    }
    figures["gunicorn_command"] = " ".join(server.command[2:])
    return figures


def measure_pgbench(args: argparse.Namespace, seed_data: Seed, workdir: Path) -> dict:
    empty_pledges(args.database_url)
    vacuum(args.database_url)
    print(f"Running pgbench for {args.seconds} s ...", flush=True)
    with psycopg.connect(libpq_url(args.database_url), autocommit=True) as connection:
        database_meter = CpuMeter(lambda: backend_pids(connection)).start()
        cpu_before, children_before = cpu_times(), children_cpu_seconds()
        figures = run_pgbench(args, seed_data, workdir)
        cpu_after, children_after = cpu_times(), children_cpu_seconds()
        database_cpu = database_meter.stop()
    figures["cpu_busy_percent"] = busy_percent(cpu_before, cpu_after)
    figures["cpu_ms_per_transaction"] = {
        "postgres": per_unit_ms(database_cpu, figures["transactions"]),
        "pgbench": per_unit_ms(children_after - children_before, figures["transactions"]),
    }
    checks = check_needs(args.database_url)
    figures["pledges_per_second"] = round(checks["pledge_rows"] / args.seconds, 1)
    return figures | checks


def cpu_ratio(app_cpu: dict, bench_cpu: dict) -> float | None:
    """Divide PostgreSQL's CPU per pgbench transaction by gunicorn's plus PostgreSQL's per app request."""
    if None in (app_cpu["gunicorn"], app_cpu["postgres"], bench_cpu["postgres"]):
        return None
    return round(bench_cpu["postgres"] / (app_cpu["gunicorn"] + app_cpu["postgres"]), 3)


def raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The seeding services log one line per row; keep only their warnings and errors.
    logging.getLogger("financing").setLevel(logging.WARNING)
    args = parse_args(argv)
    # SIGTERM takes the same path as Ctrl-C, so gunicorn is stopped in measure_app's finally.
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="financing-bench-"))
    rng = random.Random(args.seed)

    recreate_database(args.database_url)
    migrate(args.database_url)
    seed_data = seed(args.database_url, args.needs, args.donors, rng)
    vacuum(args.database_url)
    outside_busy = background_busy_percent()
    app = measure_app(args, seed_data, workdir)
    bench = measure_pgbench(args, seed_data, workdir)

    figures = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine() | {"postgresql": postgres_version(args.database_url), "cpu_busy_percent_before": outside_busy},
        "clients": args.clients, "seconds": args.seconds, "workers": args.workers, "threads": args.threads,
        "needs": len(seed_data.need_ids), "donors": len(seed_data.tokens), "seed": args.seed,
        "app": app,
        "pgbench": {key: value for key, value in bench.items() if key != "script"},
        "ratio_app_to_pgbench": round(app["requests_per_second"] / bench["tps"], 3) if bench["tps"] else None,
        "cpu_ratio_pgbench_to_app": cpu_ratio(app["cpu_ms_per_request"], bench["cpu_ms_per_transaction"]),
        "workdir": str(workdir),
    }
    print_report(figures)
    print(f"gunicorn log and pgbench script: {workdir}")
    print(json.dumps(figures, sort_keys=True))
    broken = (
        app["overfunded_needs"] or app["mismatched_needs"]
        or app["pledge_rows"] != app["accepted_total"] or app["ledger_rows"] != app["pledge_rows"]
    )
    return 1 if broken else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("Interrupted; a gunicorn started by this run has been stopped.", file=sys.stderr)
        sys.exit(130)
