"""Measure the IATI import of a large file: MB/s, peak memory, and a bare lxml iterparse.

The script writes an IATI 2.03 activity file of about --megabytes MB by repeating the real
2.03 activities under data/iati-activities, each copy under its own iati-identifier. It
recreates the benchmark database and runs `flask iati import` on the file in a child
process, twice: the first import creates the projects, the second updates them. Then
child processes read the same file with the project's parser alone (no database) and with
a bare lxml iterparse (same parser options, each activity freed after use). Each step
prints its MB/s and the child's peak resident memory; the last line of output is one JSON
object with every figure.

    .venv/bin/python benchmarks/iati_import.py --megabytes 100
"""

import argparse
import json
import logging
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import psycopg
from lxml import etree
from sqlalchemy.engine import make_url

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
sys.path.insert(0, str(ROOT))
# The pledge benchmark's helpers, also when this file is imported from elsewhere (tests).
sys.path.insert(0, str(BENCHMARKS))

from pledges import libpq_url, machine, postgres_version, recreate_database  # noqa: E402

logger = logging.getLogger("benchmarks.iati_import")

TEMPLATE_DIR = ROOT / "data" / "iati-activities"
# Stands in for the iati-identifier in each template until a copy gets its own.
PLACEHOLDER = b"IATI-BENCHMARK-IDENTIFIER"
MEBIBYTE = 1024 * 1024


# Generating the file ----------------------------------------------------------------------

def template_activities(directory: Path = TEMPLATE_DIR) -> list[tuple[str, bytes]]:
    """Return (identifier, serialised activity) for every activity of the 2.0x files in `directory`.

    The serialised activity contains PLACEHOLDER where its identifier was.
    """
    templates = []
    for path in sorted(directory.glob("*.xml")):
        with open(path, "rb") as handle:
            templates.extend(_file_templates(handle))
    if not templates:
        raise SystemExit(f"No IATI 2.0x activity with an iati-identifier found under {directory}")
    return templates


def _file_templates(handle) -> list[tuple[str, bytes]]:
    templates = []
    root_seen = False
    events = etree.iterparse(handle, events=("start", "end"), tag=("iati-activities", "iati-activity"),
                             resolve_entities=False, no_network=True, load_dtd=False)
    for event, element in events:
        if not root_seen:
            root_seen = True
            if element.tag != "iati-activities" or not (element.get("version") or "").startswith("2."):
                break
            continue
        if event != "end" or element.tag != "iati-activity":
            continue
        identifier_element = element.find("iati-identifier")
        identifier = (identifier_element.text or "").strip() if identifier_element is not None else ""
        if identifier:
            identifier_element.text = PLACEHOLDER.decode()
            templates.append((identifier, etree.tostring(element, encoding="utf-8", with_tail=False)))
        element.clear(keep_tail=True)
    return templates


def write_activities(path: Path, target_bytes: int | None = None, count: int | None = None,
                     templates: list[tuple[str, bytes]] | None = None) -> dict:
    """Write an IATI 2.03 file of real activities under new identifiers; stop at `count` or `target_bytes`.

    Copy k of an activity has the identifier "<original>-B<k>", so every activity of the
    file is new to a database that has not imported this file. Returns the number of
    activities and bytes written.
    """
    if target_bytes is None and count is None:
        raise ValueError("write_activities needs target_bytes or count")
    templates = templates or template_activities()
    written = 0
    activities = 0
    with open(path, "wb") as handle:
        header = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<iati-activities version="2.03" generated-datetime="{datetime.now(timezone.utc).isoformat(timespec="seconds")}">\n'
        ).encode()
        handle.write(header)
        written += len(header)
        while (count is None or activities < count) and (target_bytes is None or written < target_bytes):
            identifier, body = templates[activities % len(templates)]
            copy = activities // len(templates)
            new_identifier = f"{identifier}-B{copy:05d}".encode()
            chunk = body.replace(PLACEHOLDER, new_identifier, 1) + b"\n"
            handle.write(chunk)
            written += len(chunk)
            activities += 1
        footer = b"</iati-activities>\n"
        handle.write(footer)
        written += len(footer)
    return {"activities": activities, "bytes": written}


# Child processes ----------------------------------------------------------------------------

def high_water_rss_kib(pid: int | str = "self") -> int | None:
    """Return a process's peak resident memory (VmHWM in /proc/PID/status), or None once it is gone.

    Unlike ru_maxrss, which Linux carries over from the parent across fork, VmHWM starts
    again with each exec.
    """
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def run_child(command: list[str], env: dict | None = None) -> dict:
    """Run a command to its end; return its exit status, wall time, CPU time, peak RSS and output.

    The peak RSS is the child's VmHWM, sampled every 0.1 s, so growth in its last 0.1 s
    can be missed.
    """
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout_chunks, stderr_chunks = [], []

    def pump(stream, chunks):
        for line in stream:
            chunks.append(line)

    readers = [threading.Thread(target=pump, args=(process.stdout, stdout_chunks), daemon=True),
               threading.Thread(target=pump, args=(process.stderr, stderr_chunks), daemon=True)]
    for reader in readers:
        reader.start()
    peak_kib = 0
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        peak_kib = max(peak_kib, high_water_rss_kib(process.pid) or 0)
        time.sleep(0.1)
    seconds = time.perf_counter() - started
    for reader in readers:
        reader.join()
    return {
        "exit_status": os.waitstatus_to_exitcode(status),
        "seconds": round(seconds, 2),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "stdout": b"".join(stdout_chunks).decode(errors="replace"),
        "stderr": b"".join(stderr_chunks).decode(errors="replace"),
    }


# Each reader runs in a fresh interpreter that imports only what it needs, times its own
# loop, and prints JSON: the activities read, the loop's seconds, and its peak RSS (VmHWM)
# before and after the loop.
READER_HEADER = """
import json, sys, time


def high_water_rss_kib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
"""
READERS = {
    "parse_only": READER_HEADER + """
from financing.iati.parser import iter_activities
before = high_water_rss_kib()
started = time.perf_counter()
count = sum(1 for _ in iter_activities(sys.argv[1], max_bytes=10**12))
seconds = time.perf_counter() - started
print(json.dumps({"count": count, "seconds": seconds, "rss_before_kib": before, "rss_peak_kib": high_water_rss_kib()}))
""",
    "bare_iterparse": READER_HEADER + """
from lxml import etree
before = high_water_rss_kib()
started = time.perf_counter()
count = 0
events = etree.iterparse(sys.argv[1], events=("end",), tag="iati-activity", resolve_entities=False,
                         no_network=True, huge_tree=False, load_dtd=False, remove_comments=True, remove_pis=True)
for _, element in events:
    count += 1
    element.clear(keep_tail=True)
    parent = element.getparent()
    while parent is not None and element.getprevious() is not None:
        del parent[0]
seconds = time.perf_counter() - started
print(json.dumps({"count": count, "seconds": seconds, "rss_before_kib": before, "rss_peak_kib": high_water_rss_kib()}))
""",
}


# Main -----------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/financing_bench_iati",
                        help="PostgreSQL database to drop, recreate and import into; its name must contain 'bench' (default: %(default)s)")
    parser.add_argument("--megabytes", type=float, default=100.0, help="size of the generated file in MiB (default: %(default)s)")
    parser.add_argument("--file", type=Path, help="import this file instead of generating one")
    parser.add_argument("--keep-file", action="store_true", help="keep the generated file and print its path")
    parser.add_argument("--schema", choices=("models", "migrations"), default="models",
                        help="build the schema from the models (db.create_all) or with `flask db upgrade` (default: %(default)s)")
    parser.add_argument("--no-reimport", action="store_true", help="skip the second import of the same file")
    args = parser.parse_args(argv)
    url = make_url(args.database_url)
    if not url.drivername.startswith("postgresql"):
        parser.error(f"--database-url must be a PostgreSQL URL, not {url.drivername}")
    if "bench" not in (url.database or ""):
        parser.error(f"--database-url names database {url.database!r}; the script drops it, so its name must contain 'bench'")
    if args.megabytes <= 0:
        parser.error(f"--megabytes must be positive, not {args.megabytes}")
    if args.file is not None and not args.file.is_file():
        parser.error(f"--file {args.file} does not exist")
    return args


def app_environment(database_url: str, file_bytes: int) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("FINANCING_ENV", None)
    env.pop("REDIS_URL", None)
    env["DATABASE_URL"] = database_url
    env["SECRET_KEY"] = secrets.token_hex(32)
    # The generated file may exceed the default limit of 200 MB.
    env["IATI_MAX_FILE_BYTES"] = str(max(file_bytes, 200 * MEBIBYTE))
    return env


def create_schema(database_url: str, source: str, env: dict) -> None:
    if source == "migrations":
        result = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"], cwd=ROOT, env=env,
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"flask db upgrade failed with exit code {result.returncode}:\n{result.stderr[-3000:]}")
        return
    from financing import create_app
    from financing.config import Config
    from financing.extensions import db

    app = create_app(Config, SQLALCHEMY_DATABASE_URI=database_url)
    with app.app_context():
        db.create_all()
        db.engine.dispose()


def row_counts(database_url: str) -> dict[str, int]:
    with psycopg.connect(libpq_url(database_url)) as connection:
        return {
            table: connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("project", "funding_need", "project_tag", "funder", "pledge", "pledge_event", "organisation")
        }


def throughput(seconds: float, file_bytes: int, activities: int) -> dict:
    seconds = max(seconds, 1e-9)
    return {
        "seconds": round(seconds, 2),
        "mb_per_second": round(file_bytes / MEBIBYTE / seconds, 2),
        "activities_per_second": round(activities / seconds, 1),
    }


def logged_seconds(stderr: str, start: str, end: str) -> float | None:
    """Return the seconds between the first log lines containing `start` and `end`, from their timestamps."""
    stamps = {}
    for line in stderr.splitlines():
        for marker in (start, end):
            if marker in line and marker not in stamps:
                try:
                    stamps[marker] = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
                except ValueError:
                    pass
    if start in stamps and end in stamps:
        return (stamps[end] - stamps[start]).total_seconds()
    return None


def import_step(name: str, path: Path, env: dict, file_bytes: int, activities: int) -> dict:
    print(f"{name}: flask iati import {path.name} ...", flush=True)
    step = run_child([sys.executable, "-m", "flask", "--app", "wsgi", "iati", "import", str(path)], env)
    if step["exit_status"] != 0:
        raise SystemExit(f"{name} failed with exit status {step['exit_status']}:\n{step['stderr'][-3000:]}\n{step['stdout'][-2000:]}")
    report = step["stdout"].strip().splitlines()[-1] if step["stdout"].strip() else ""
    # The importer logs its start and end; without them, the whole command's time is used.
    seconds = logged_seconds(step["stderr"], "iati import started", "iati import finished") or step["seconds"]
    return throughput(seconds, file_bytes, activities) | {
        "command_seconds": step["seconds"], "cpu_seconds": step["cpu_seconds"], "peak_rss_mib": step["peak_rss_mib"],
        "report": report,
    }


def read_step(name: str, path: Path, file_bytes: int, activities: int) -> dict:
    print(f"{name} of {path.name} ...", flush=True)
    step = run_child([sys.executable, "-c", READERS[name], str(path)])
    if step["exit_status"] != 0:
        raise SystemExit(f"{name} failed with exit status {step['exit_status']}:\n{step['stderr'][-3000:]}")
    result = json.loads(step["stdout"].strip().splitlines()[-1])
    if result["count"] != activities:
        raise SystemExit(f"{name} read {result['count']} activities; the file has {activities}")
    return throughput(result["seconds"], file_bytes, activities) | {
        "command_seconds": step["seconds"], "cpu_seconds": step["cpu_seconds"],
        "peak_rss_mib": round(result["rss_peak_kib"] / 1024, 1),
        "rss_before_reading_mib": round(result["rss_before_kib"] / 1024, 1),
    }


def baseline_rss_mib() -> float:
    """Return the peak RSS of a child that only imports the package and creates the app."""
    step = run_child([sys.executable, "-c", "from financing import create_app; create_app()"],
                     dict(os.environ, DATABASE_URL="sqlite://"))
    return step["peak_rss_mib"]


def print_report(figures: dict) -> None:
    print()
    info = figures["machine"]
    print(f"Machine: {info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB RAM, PostgreSQL {info['postgresql']}, "
          f"load average before the run {figures['load_average_before']}")
    file_info = figures["file"]
    print(f"File: {file_info['bytes'] / MEBIBYTE:.1f} MiB, {file_info['activities']} activities "
          f"({file_info['templates']} real activities repeated)")
    print(f"{'step':<16} {'seconds':>8} {'MiB/s':>8} {'activities/s':>13} {'peak RSS MiB':>13}")
    for name in ("import", "reimport", "parse_only", "bare_iterparse"):
        step = figures.get(name)
        if step:
            print(f"{name:<16} {step['seconds']:>8} {step['mb_per_second']:>8} {step['activities_per_second']:>13} {step['peak_rss_mib']:>13}")
    print("Seconds exclude interpreter start-up: the import's come from its own start and finish log lines, the readers time their loop.")
    for name in ("parse_only", "bare_iterparse"):
        print(f"{name}: peak RSS {figures[name]['peak_rss_mib']} MiB, of which {figures[name]['rss_before_reading_mib']} MiB before reading")
    print(f"Peak RSS of a process that only creates the app: {figures['baseline_rss_mib']} MiB")
    print(f"Import report: {figures['import']['report']}")
    if figures.get("reimport"):
        print(f"Re-import report: {figures['reimport']['report']}")
    print(f"Rows after the import: {figures['rows']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("financing").setLevel(logging.WARNING)

    workdir = Path(tempfile.mkdtemp(prefix="financing-iati-bench-"))
    if args.file is not None:
        path = args.file
        templates = 0
        written = {"bytes": path.stat().st_size, "activities": sum(1 for _ in etree.iterparse(str(path), tag="iati-activity"))}
    else:
        path = workdir / "activities.xml"
        template_list = template_activities()
        templates = len(template_list)
        print(f"Writing {args.megabytes} MiB of IATI activities to {path} ...", flush=True)
        written = write_activities(path, target_bytes=int(args.megabytes * MEBIBYTE), templates=template_list)
    file_bytes, activities = written["bytes"], written["activities"]

    env = app_environment(args.database_url, file_bytes)
    recreate_database(args.database_url)
    create_schema(args.database_url, args.schema, env)
    load_before = [round(value, 2) for value in os.getloadavg()]

    try:
        figures = {
            "benchmark": "iati_import",
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine() | {"postgresql": postgres_version(args.database_url)},
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "load_average_before": load_before,
            "file": {"bytes": file_bytes, "activities": activities, "templates": templates},
            "schema": args.schema,
        }
        figures["import"] = import_step("Import", path, env, file_bytes, activities)
        figures["rows"] = row_counts(args.database_url)
        figures["reimport"] = None if args.no_reimport else import_step("Re-import", path, env, file_bytes, activities)
        figures["parse_only"] = read_step("parse_only", path, file_bytes, activities)
        figures["bare_iterparse"] = read_step("bare_iterparse", path, file_bytes, activities)
        figures["baseline_rss_mib"] = baseline_rss_mib()
        figures["load_average_after"] = [round(value, 2) for value in os.getloadavg()]
        figures["import_over_iterparse_seconds"] = round(figures["import"]["seconds"] / (figures["bare_iterparse"]["seconds"] or 1e-9), 1)
    finally:
        if args.file is None and not args.keep_file:
            path.unlink(missing_ok=True)
    if args.keep_file and args.file is None:
        print(f"Kept the generated file {path}")
    print_report(figures)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
