"""gunicorn settings for production: `gunicorn -c gunicorn.conf.py wsgi:app`.

Every value can be set through an environment variable, listed in docs/deployment.md.
The defaults bind to loopback only, because TLS ends in a reverse proxy in front of
gunicorn. gunicorn reads this file as Python; command-line flags and GUNICORN_CMD_ARGS
override it.
"""

import multiprocessing
import os
import re
import uuid


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not a whole number; unset it or give a number such as {default}.") from None
    if value < 1:
        raise SystemExit(f"{name}={raw!r} must be at least 1.")
    return value


bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
# Processes rather than threads: a request that renders a page keeps the GIL, and the other
# threads of its worker wait for it. On 2 cores, 9 workers of 1 thread gave latencies close
# to those of 5 workers of 4 threads (docs/benchmarks.md), and no worker crashed.
# NOTE: with 4 threads per worker, 3 of 8 runs of benchmarks/web.py lost workers to SIGSEGV
# while threads rendered the browse page. The C extension at fault was not found.
workers = _int_env("GUNICORN_WORKERS", 4 * multiprocessing.cpu_count() + 1)
worker_class = "gthread"
# Each thread serves one request at a time and uses one database connection while it does,
# so a worker needs up to `threads` connections (see "Connections" in docs/deployment.md).
threads = _int_env("GUNICORN_THREADS", 1)
timeout = _int_env("GUNICORN_TIMEOUT", 30)
graceful_timeout = _int_env("GUNICORN_GRACEFUL_TIMEOUT", 30)
keepalive = _int_env("GUNICORN_KEEPALIVE", 5)

# Off, so that each worker imports the app and opens its own database pool after the fork.
# post_fork below also covers `--preload` given on the command line.
preload_app = False

# gunicorn 25.1 and later open a control socket at one path per user, which two gunicorn
# masters on one host would both claim. It is opened only when GUNICORN_CONTROL_SOCKET names
# a path; older gunicorn versions ignore both settings.
control_socket = os.environ.get("GUNICORN_CONTROL_SOCKET", "")
control_socket_disable = not control_socket

accesslog = os.environ.get("GUNICORN_ACCESS_LOG", "-")
errorlog = os.environ.get("GUNICORN_ERROR_LOG", "-")
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")
# Client address, request id, request line, status, response bytes, duration in milliseconds,
# referrer and user agent.
access_log_format = '%(h)s %({x-request-id}i)s "%(r)s" %(s)s %(b)s %(M)sms "%(f)s" "%(a)s"'

# A request id is kept when the proxy in front sends one that looks like an id: letters,
# digits, dots, underscores and dashes, at most 64 characters. Otherwise gunicorn replaces it.
REQUEST_ID_HEADER = "X-REQUEST-ID"
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")


def pre_request(worker, req):
    """Give every request an X-Request-ID header before the app and the access log see it."""
    request_id = None
    headers = []
    for name, value in req.headers:
        if name.upper() == REQUEST_ID_HEADER:
            if request_id is None and REQUEST_ID_PATTERN.fullmatch(value):
                request_id = value
            continue
        headers.append((name, value))
    headers.append((REQUEST_ID_HEADER, request_id or uuid.uuid4().hex))
    req.headers = headers


def post_fork(server, worker):
    """Drop database connections inherited from the master when the app was preloaded.

    SQLAlchemy's pooling documentation recommends `engine.dispose(close=False)` in each
    forked child process, so that parent and child never share a socket.
    """
    if not server.cfg.preload_app:
        return
    from financing.extensions import db

    flask_app = server.app.wsgi()
    with flask_app.app_context():
        for engine in db.engines.values():
            engine.dispose(close=False)
    server.log.info("worker pid=%s disposed the database pools inherited from the master", worker.pid)
