"""Check the local PostgreSQL and Redis that `scripts/production` starts the platform on.

    python scripts/check_services.py postgres URL   # loopback, reachable; creates the database if missing
    python scripts/check_services.py redis URL      # loopback, PING succeeds

Each check prints one line and exits with status 0, or prints the problem to stderr and
exits with status 1.
"""

import argparse
import ipaddress
import sys
import time

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def is_loopback(host: str | None) -> bool:
    """Return True for a loopback name or address; an empty host means a local Unix socket."""
    if not host or host.startswith("/"):
        return True
    host = host.strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def retry(check, attempts: int, delay: float):
    """Call `check` until it succeeds, up to `attempts` times, and re-raise its last error."""
    for attempt in range(1, attempts + 1):
        try:
            return check()
        except Exception:
            if attempt == attempts:
                raise
            time.sleep(delay)


def check_postgres(url_text: str, attempts: int) -> None:
    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(url_text)
    except ArgumentError as error:
        raise SystemExit(f"DATABASE_URL is not a valid database URL: {error}")
    if not url.drivername.startswith("postgresql"):
        raise SystemExit(f"DATABASE_URL must be a PostgreSQL URL (postgresql+psycopg://...), not {url.drivername}://...")
    socket_dir = url.query.get("host")
    host = url.host or (socket_dir if isinstance(socket_dir, str) else None)
    if not is_loopback(host):
        raise SystemExit(
            f"DATABASE_URL points at host {host!r}, which is not this machine. scripts/production runs "
            "the stack on one machine; for a remote database start gunicorn and rq workers directly "
            "(see docs/deployment.md)."
        )
    if not url.database:
        raise SystemExit("DATABASE_URL names no database; add one, as in postgresql+psycopg://user@127.0.0.1:5432/financing.")

    maintenance = url.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    try:
        connection = retry(lambda: psycopg.connect(maintenance, autocommit=True, connect_timeout=5), attempts, 1.0)
    except psycopg.OperationalError as error:
        raise SystemExit(f"PostgreSQL at {host or 'the local socket'}:{url.port or 5432} is not reachable: {error}".strip())
    with connection:
        version = connection.execute("SHOW server_version").fetchone()[0]
        exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (url.database,)).fetchone()
        if exists:
            print(f"PostgreSQL {version} at {host or 'local socket'}:{url.port or 5432}: database {url.database} exists")
            return
        try:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(url.database)))
        except psycopg.Error as error:
            raise SystemExit(f"Could not create database {url.database!r}: {error}".strip())
    print(f"PostgreSQL {version} at {host or 'local socket'}:{url.port or 5432}: database {url.database} created")


def check_redis(url_text: str, attempts: int) -> None:
    from redis import Redis
    from redis.exceptions import RedisError

    try:
        client = Redis.from_url(url_text, socket_connect_timeout=5, socket_timeout=5)
    except ValueError as error:
        raise SystemExit(f"REDIS_URL is not a valid Redis URL: {error}")
    options = client.connection_pool.connection_kwargs
    host = options.get("host") or options.get("path")
    if not is_loopback(host):
        raise SystemExit(
            f"REDIS_URL points at host {host!r}, which is not this machine. scripts/production runs "
            "the stack on one machine (see docs/deployment.md)."
        )
    try:
        retry(client.ping, attempts, 1.0)
        version = client.info("server").get("redis_version", "?")
    except RedisError as error:
        raise SystemExit(f"Redis at {host}:{options.get('port', '')} is not reachable: {error}")
    print(f"Redis {version} at {host}:{options.get('port', '')} database {options.get('db', 0)}: PING succeeded")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("service", choices=("postgres", "redis"), help="the service to check")
    parser.add_argument("url", help="DATABASE_URL or REDIS_URL")
    parser.add_argument("--attempts", type=int, default=10, help="connection attempts, one second apart (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        if args.service == "postgres":
            check_postgres(args.url, args.attempts)
        else:
            check_redis(args.url, args.attempts)
    except SystemExit as error:
        if isinstance(error.code, str):
            print(f"error: {error.code}", file=sys.stderr)
            raise SystemExit(1) from None
        raise


if __name__ == "__main__":
    main()
