"""Processes killed with SIGKILL in the middle of their work leave nothing half-done.

- An IATI import (`flask iati import`) killed half-way through a large file, then run
  again, ends with the same rows as an import that was never interrupted.
- An RQ worker killed with its work horse while they run a job: a new worker retries the
  job and completes it.
- An RQ worker started by scripts/rq-worker builds the app once, before the processes of
  its jobs fork, and not once per job.

Both start real processes on the test database, so they run on PostgreSQL only. The RQ
test also needs Redis on 127.0.0.1:6379 and uses database 7 of it, which it empties.
"""

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from financing.funders.models import Funder, FunderPreference
from financing.jobs import QUEUE_NAME, run_ready_jobs
from financing.matching.engine import LOCK_ALL
from financing.matching.models import Match
from financing.projects.services import NeedInput, ProjectInput, create_project, publish_project, submit_project

ROOT = Path(__file__).resolve().parent.parent
TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "")
REDIS_URL = "redis://127.0.0.1:6379/7"

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(
        not TEST_DATABASE_URL.startswith("postgresql"),
        reason="robustness tests start other processes on the test database: set TEST_DATABASE_URL=postgresql+psycopg://...",
    ),
]

# Activities in the generated file: enough for an import of several seconds.
ACTIVITIES = 1200
TABLES = ("project", "funding_need", "project_tag", "organisation", "funder", "pledge", "pledge_event")


def libpq_url() -> str:
    return make_url(TEST_DATABASE_URL).set(drivername="postgresql").render_as_string(hide_password=False)


def child_environment(**extra: str) -> dict[str, str]:
    """Return the environment of the app's commands and workers: the default Config on the test database."""
    env = dict(os.environ)
    env.pop("FINANCING_ENV", None)
    env.pop("REDIS_URL", None)
    env["DATABASE_URL"] = TEST_DATABASE_URL
    env["SECRET_KEY"] = "robustness-test-secret-key"
    env.update(extra)
    return env


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    """Signal a process started with start_new_session=True, with all its children, and wait for it."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


# IATI import ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def iati_file(tmp_path_factory) -> Path:
    """Write a file of real IATI activities repeated under new identifiers (benchmarks/iati_import.py)."""
    spec = importlib.util.spec_from_file_location("iati_import_benchmark", ROOT / "benchmarks" / "iati_import.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = tmp_path_factory.mktemp("iati") / "activities.xml"
    written = module.write_activities(path, count=ACTIVITIES)
    assert written["activities"] == ACTIVITIES
    return path


def start_import(path: Path, output) -> subprocess.Popen:
    command = [sys.executable, "-m", "flask", "--app", "wsgi", "iati", "import", str(path)]
    return subprocess.Popen(command, cwd=ROOT, env=child_environment(), stdout=output, stderr=output,
                            start_new_session=True)


def run_import(path: Path) -> str:
    """Run an import to its end and return its output, the report line included."""
    log = path.with_suffix(".log")
    with open(log, "wb") as output:
        process = start_import(path, output)
        process.wait(timeout=900)
    text_output = log.read_text(errors="replace")
    assert process.returncode == 0, text_output[-3000:]
    return text_output


def read_position(pid: int, path: Path) -> int | None:
    """Return how far the process has read the file, from /proc/PID/fdinfo, or None if it has it not open."""
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        for fd in fd_dir.iterdir():
            try:
                if os.readlink(fd) == str(path):
                    for line in (Path(f"/proc/{pid}/fdinfo") / fd.name).read_text().splitlines():
                        if line.startswith("pos:"):
                            return int(line.split()[1])
            except OSError:
                continue
    except OSError:
        return None
    return None


def kill_half_way(path: Path) -> None:
    """Start an import and kill it with SIGKILL once it has read half of the file."""
    size = path.stat().st_size
    log = path.with_suffix(".killed.log")
    with open(log, "wb") as output:
        process = start_import(path, output)
    deadline = time.monotonic() + 600
    position = None
    while time.monotonic() < deadline and process.poll() is None:
        position = read_position(process.pid, path)
        if position is not None and position >= size // 2:
            break
        time.sleep(0.02)
    assert process.poll() is None, f"the import ended before it was half-way: {log.read_text(errors='replace')[-2000:]}"
    assert position is not None and position < size, f"the import had read {position} of {size} bytes"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL


def snapshot(db) -> dict:
    """Return row counts, the sets of keys that must be unique, and money totals of the imported data."""
    db.session.rollback()
    counts = {table: db.session.execute(text(f'SELECT count(*) FROM "{table}"')).scalar_one() for table in TABLES}
    identifiers = db.session.execute(text("SELECT iati_identifier FROM project")).scalars().all()
    import_keys = db.session.execute(text("SELECT import_key FROM pledge")).scalars().all()
    funder_refs = db.session.execute(text("SELECT iati_ref FROM funder")).scalars().all()
    needs_per_project = db.session.execute(text("SELECT count(*) FROM funding_need GROUP BY project_id")).scalars().all()
    totals = db.session.execute(text(
        "SELECT coalesce(sum(goal_minor), 0), coalesce(sum(pledged_minor), 0) FROM funding_need"
    )).one()
    db.session.rollback()
    return {
        "counts": counts,
        "identifiers": sorted(identifiers),
        "duplicate_identifiers": len(identifiers) - len(set(identifiers)),
        "duplicate_import_keys": len(import_keys) - len(set(import_keys)),
        "duplicate_funder_refs": len(funder_refs) - len(set(funder_refs)),
        "most_needs_per_project": max(needs_per_project, default=0),
        "goal_minor": int(totals[0]),
        "pledged_minor": int(totals[1]),
    }


def empty_tables(db) -> None:
    db.session.rollback()
    tables = ", ".join(f'"{table.name}"' for table in reversed(db.metadata.sorted_tables))
    db.session.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    db.session.commit()


def test_killed_import_then_import_again(db, iati_file):
    kill_half_way(iati_file)

    assert snapshot(db)["counts"]["project"] == 0, "the killed import committed some activities"

    output = run_import(iati_file)
    assert f"activities: {ACTIVITIES} created, 0 updated" in output
    after_kill = snapshot(db)

    empty_tables(db)
    run_import(iati_file)
    uninterrupted = snapshot(db)

    assert after_kill["duplicate_identifiers"] == 0
    assert after_kill["duplicate_import_keys"] == 0
    assert after_kill["duplicate_funder_refs"] == 0
    assert after_kill["most_needs_per_project"] == 1
    assert after_kill["counts"]["project"] == ACTIVITIES
    assert after_kill == uninterrupted


def test_killed_reimport_changes_nothing(db, iati_file):
    run_import(iati_file)
    imported = snapshot(db)

    kill_half_way(iati_file)
    after_kill = snapshot(db)
    output = run_import(iati_file)
    reimported = snapshot(db)

    assert after_kill == imported
    assert f"activities: 0 created, {ACTIVITIES} updated" in output
    assert reimported == imported


# RQ worker -------------------------------------------------------------------------------------

@pytest.fixture
def redis_db7():
    redis = Redis.from_url(REDIS_URL)
    try:
        redis.ping()
    except RedisConnectionError:
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    redis.flushdb()
    yield redis
    redis.flushdb()
    redis.close()


def start_worker(log_path: Path) -> subprocess.Popen:
    """Start an RQ worker as scripts/production does, with intervals short enough for a test.

    A job's heartbeat expires 60 s after the job monitoring interval, so with 5 s the job of
    a killed worker counts as abandoned after about 65 s.
    """
    env = child_environment(REDIS_URL=REDIS_URL, RQ_MAINTENANCE_INTERVAL="5")
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [str(ROOT / "scripts" / "rq-worker"), "--job-monitoring-interval", "5"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )


def process_tree(pid: int) -> list[int]:
    """Return the process and all its descendants, found by parent id in /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    tree = [pid]
    for parent in tree:
        tree.extend(child for child, ppid in parents.items() if ppid == parent)
    return tree


def kill_worker_and_job(worker: subprocess.Popen) -> None:
    """SIGKILL an RQ worker, its scheduler and the work horse that runs its job.

    The work horse is in a process group of its own (RQ calls setpgrp in it), so it is
    found as a child of the worker. Killing the worker alone leaves the horse to finish the
    job, which then needs no retry.
    """
    tree = process_tree(worker.pid)
    assert len(tree) >= 2, f"the worker pid={worker.pid} has no work horse"
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    worker.wait(timeout=30)


def wait_for(condition, timeout: float, interval: float = 0.5, message: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {message}")


def waiting_on_advisory_lock() -> bool:
    with psycopg.connect(libpq_url(), autocommit=True) as connection:
        row = connection.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'advisory'"
        ).fetchone()
    return row[0] > 0


def jobs_on_redis(app, monkeypatch) -> None:
    """Send the jobs that commits start to the RQ queue on Redis database 7."""
    monkeypatch.setitem(app.config, "JOBS_INLINE", False)
    monkeypatch.setitem(app.config, "REDIS_URL", REDIS_URL)


def add_africa_funder(db, *preferences: tuple[str, str]) -> Funder:
    """Add a funder that prefers Africa and the given (kind, code) preferences."""
    funder = Funder(name="Broadband Fund for Africa", kind="institution", currency="EUR")
    funder.preferences = [FunderPreference(kind=kind, code=code) for kind, code in (("region", "africa"), *preferences)]
    db.session.add(funder)
    return funder


def test_killed_worker_job_retried(app, db, make_user, redis_db7, monkeypatch, tmp_path):
    from rq import Queue
    from rq.job import Job, JobStatus

    jobs_on_redis(app, monkeypatch)
    owner = make_user("owner", organisation="Ministry of ICT, Kenya")
    coordinator = make_user("coordinator", organisation=None)
    add_africa_funder(db, ("theme", "broadband"))
    project = create_project(owner, ProjectInput(
        title="Rural broadband for Turkana", countries=["KE"], sectors=["22040"],
        needs=[NeedInput(title="Towers", goal_minor=200_000_000, currency="EUR")],
    ))
    submit_project(owner, project)
    db.session.commit()

    # The match job starts with pg_advisory_xact_lock_shared(LOCK_ALL), so holding that lock
    # exclusively keeps the job waiting until the worker is killed.
    blocker = psycopg.connect(libpq_url(), autocommit=True)
    blocker.execute("SELECT pg_advisory_lock(%s, %s)", LOCK_ALL)
    workers = []
    try:
        publish_project(coordinator, project)
        db.session.commit()
        run_ready_jobs()
        queue = Queue(QUEUE_NAME, connection=redis_db7)
        # Publishing may queue other jobs too, such as notifications.
        match_jobs = [job.id for job in queue.jobs if job.args[0] == "match.project"]
        assert len(match_jobs) == 1
        job_id = match_jobs[0]

        workers.append(start_worker(tmp_path / "worker-1.log"))
        wait_for(lambda: Job.fetch(job_id, connection=redis_db7).get_status() == JobStatus.STARTED, 120, message="the job to start")
        wait_for(waiting_on_advisory_lock, 60, message="the job to wait for the advisory lock")
        kill_worker_and_job(workers[0])
        blocker.close()

        job = Job.fetch(job_id, connection=redis_db7)
        assert job.get_status() == JobStatus.STARTED, "the killed worker's job should be left as started"
        assert db.session.scalar(select(func.count()).select_from(Match).where(Match.project_id == project.id)) == 0

        workers.append(start_worker(tmp_path / "worker-2.log"))
        wait_for(lambda: Job.fetch(job_id, connection=redis_db7).get_status() in (JobStatus.FINISHED, JobStatus.FAILED), 300,
                 interval=1, message="the new worker to retry the job")

        job = Job.fetch(job_id, connection=redis_db7)
        log = (tmp_path / "worker-2.log").read_text(errors="replace")
        assert job.get_status() == JobStatus.FINISHED, log[-3000:]
        assert job.retries_left == 2
        db.session.rollback()
        assert db.session.scalar(select(func.count()).select_from(Match).where(Match.project_id == project.id)) == 1
    finally:
        if not blocker.closed:
            blocker.close()
        for worker in workers:
            stop(worker)


def test_worker_builds_app_once(app, db, make_user, redis_db7, monkeypatch, tmp_path):
    from rq import Queue

    jobs_on_redis(app, monkeypatch)
    owner = make_user("owner", organisation="Ministry of ICT, Kenya")
    coordinator = make_user("coordinator", organisation=None)
    add_africa_funder(db)
    projects = []
    for title in ("Rural broadband for Turkana", "Fibre for Kisumu", "Towers for Garissa"):
        towers = NeedInput(title="Towers", goal_minor=200_000_000, currency="EUR")
        project = create_project(owner, ProjectInput(title=title, countries=["KE"], needs=[towers]))
        submit_project(owner, project)
        publish_project(coordinator, project)
        projects.append(project)
    db.session.commit()
    run_ready_jobs()
    assert Queue(QUEUE_NAME, connection=redis_db7).count >= 3

    log_path = tmp_path / "worker.log"
    env = child_environment(REDIS_URL=REDIS_URL)
    with open(log_path, "ab") as log:
        subprocess.run([str(ROOT / "scripts" / "rq-worker"), "--burst"], cwd=ROOT, env=env, stdout=log,
                       stderr=subprocess.STDOUT, timeout=120, check=True)

    output = log_path.read_text(errors="replace")
    assert output.count("app created") == 1, output[-3000:]
    assert output.count("job finished name=match.project") == 3, output[-3000:]
    db.session.rollback()
    for project in projects:
        assert db.session.scalar(select(func.count()).select_from(Match).where(Match.project_id == project.id)) == 1
