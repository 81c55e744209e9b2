"""Health checks of the services the app depends on, for GET /healthz."""

import logging

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from financing.extensions import db

logger = logging.getLogger(__name__)

# Seconds to wait for Redis before reporting it down; a load balancer polls often.
REDIS_TIMEOUT_SECONDS = 2.0


def check_database() -> bool:
    """Run SELECT 1; return False, after a rollback, when the database is unreachable or the query fails."""
    try:
        db.session.execute(text("SELECT 1"))
    except SQLAlchemyError as error:
        logger.error("health check failed: database unavailable: %s", error.__class__.__name__)
        db.session.rollback()
        return False
    return True


def check_redis(url: str) -> bool:
    """Send PING to the Redis server at url; return False when it is unreachable or times out."""
    client = Redis.from_url(url, socket_connect_timeout=REDIS_TIMEOUT_SECONDS, socket_timeout=REDIS_TIMEOUT_SECONDS)
    try:
        return bool(client.ping())
    except (RedisError, OSError) as error:
        logger.error("health check failed: redis unavailable: %s", error.__class__.__name__)
        return False
    finally:
        client.close()


def health_report(redis_url: str) -> tuple[dict, bool]:
    """Check the database, and Redis when redis_url is set; return the report and whether all are up.

    The report has "status" ("ok" or "unavailable"), one "up"/"down" entry per component
    checked, and "failed", the names of the components that are down.
    """
    components = {"database": check_database()}
    if redis_url:
        components["redis"] = check_redis(redis_url)
    failed = [name for name, up in components.items() if not up]
    report = {"status": "unavailable" if failed else "ok", "failed": failed}
    report.update({name: "up" if up else "down" for name, up in components.items()})
    return report, not failed
