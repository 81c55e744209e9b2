"""Cached public pages and list counts, kept exact by a data generation.

Reading the same public lists and project pages again and again is most of the platform's
traffic, and the exact `total` of a filtered list costs tens of milliseconds at 100,000
projects (docs/benchmarks.md). Both are cached with Flask-Caching's backends: Redis when
REDIS_URL is set, so that every gunicorn worker and host shares one cache.

A *generation*, a random token stored in the cache, names the state of the data. Every
entry is stored with the generation that was current when its request began, and is used
only while that generation is still current. A commit that wrote rows replaces the token
once the commit has succeeded, so no request that starts after a write can be given what
was computed before it: lists, counts and project pages are never stale, whatever changed.
A lookup fetches the generation and the entry in one round trip (MGET).

Writes that bypass SQLAlchemy sessions (psql, a restore, COPY) are not seen; run
`flask cache clear` after them. Entries also expire after CACHE_DEFAULT_TIMEOUT seconds,
which bounds how long a lost replacement (the cache down at the moment of a commit) can
show old data.

Pages are served by a WSGI middleware in front of Flask, so a hit costs about what a bare
Flask app does. It serves anonymous GET and HEAD requests of the views marked with
`public_page`: a request with a session or remember cookie or an Authorization header goes
to the view. A 200 response is stored unless it sets a cookie (a flash message or a CSRF
token writes the session).
"""

import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from functools import wraps
from itertools import chain
from urllib.parse import parse_qsl, urlencode

from flask import Flask, current_app, has_app_context, request
from sqlalchemy import event
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import TextClause
from werkzeug.exceptions import HTTPException
from werkzeug.http import parse_cookie

from financing.extensions import cache

logger = logging.getLogger(__name__)

GENERATION_KEY = "generation"

# Tables whose rows no cached page or count shows. A commit that wrote only to these keeps
# the cache; any other write replaces the generation.
UNTRACKED_TABLES = frozenset({"audit_entry", "notification", "outbox_message", "notification_preference", "api_token"})

# First words of SQL text that only reads.
READ_ONLY_SQL = ("select", "with", "show", "explain", "values")

PENDING = "cache_generation_stale"
# WSGI environ keys: the lookup's generation and key, and the mark of a cacheable view.
LOOKUP = "financing.page_cache.lookup"
CACHEABLE = "financing.page_cache.cacheable"
# Headers never stored with a page.
UNSTORED_HEADERS = frozenset({"set-cookie", "x-cache"})


# Generation ----------------------------------------------------------------------------

def generation() -> str | None:
    """Return the current generation, starting one when the cache has none.

    Return None when the cache stores nothing (NullCache).
    """
    value = cache.get(GENERATION_KEY)
    if value is None:
        cache.add(GENERATION_KEY, secrets.token_hex(8), timeout=0)
        value = cache.get(GENERATION_KEY)
    return value


def new_generation(reason: str) -> None:
    """Make every cached page and count unreachable."""
    try:
        cache.set(GENERATION_KEY, secrets.token_hex(8), timeout=0)
    except Exception:
        logger.exception("cache generation not replaced after %s; entries may be old for up to %s s",
                         reason, current_app.config.get("CACHE_DEFAULT_TIMEOUT"))


def _writes_tracked_rows(session: Session) -> bool:
    instances = chain(session.new, session.dirty, session.deleted)
    return any(getattr(instance, "__tablename__", None) not in UNTRACKED_TABLES for instance in instances)


def _statement_writes(statement) -> bool:
    """Tell whether an executed statement may write rows of a tracked table."""
    if isinstance(statement, TextClause):
        words = statement.text.split(None, 1)
        return bool(words) and words[0].lower() not in READ_ONLY_SQL
    if getattr(statement, "is_select", False):
        return False
    return getattr(getattr(statement, "table", None), "name", None) not in UNTRACKED_TABLES


@event.listens_for(Session, "after_flush")
def _note_flush(session: Session, flush_context) -> None:
    if not session.info.get(PENDING) and _writes_tracked_rows(session):
        session.info[PENDING] = True


@event.listens_for(Session, "do_orm_execute")
def _note_statement(state) -> None:
    if not state.session.info.get(PENDING) and _statement_writes(state.statement):
        state.session.info[PENDING] = True


@event.listens_for(Session, "after_commit")
def _replace_after_commit(session: Session) -> None:
    if session.info.pop(PENDING, False) and has_app_context() and "cache" in current_app.extensions:
        new_generation("commit")


@event.listens_for(Session, "after_rollback")
def _forget_on_rollback(session: Session) -> None:
    session.info.pop(PENDING, None)


# Computed values -----------------------------------------------------------------------

def cached_value(parts: tuple, compute: Callable[[], object]):
    """Return compute(), cached under `parts`, which must name everything the value depends on.

    The value must be picklable. An exception from compute() propagates and nothing is stored.
    """
    key = "value:" + _digest(f"{_utc_day()}:{parts!r}")
    try:
        current, entry = cache.get_many(GENERATION_KEY, key)
        if current is None:
            current = generation()
    except Exception:
        logger.exception("cache unavailable; computing without it")
        return compute()
    if current is None:
        return compute()
    if entry is not None and entry[0] == current:
        return entry[1]
    value = compute()
    try:
        cache.set(key, (current, value))
    except Exception:
        logger.exception("value not cached key=%s", key)
    return value


# Pages ---------------------------------------------------------------------------------

def public_page(view: Callable) -> Callable:
    """Let the page cache store the view's anonymous 200 responses, one per query string."""

    @wraps(view)
    def marked(*args, **kwargs):
        request.environ[CACHEABLE] = True
        return view(*args, **kwargs)

    marked.public_page = True
    return marked


class PageCache:
    """WSGI middleware that serves anonymous GET and HEAD requests from the cache and stores misses."""

    def __init__(self, app: Flask, wsgi_app):
        self.app = app
        self.wsgi_app = wsgi_app
        self.backend = app.extensions["cache"][cache]
        self.private_cookies = (app.config["SESSION_COOKIE_NAME"], app.config.get("REMEMBER_COOKIE_NAME", "remember_token"))

    def __call__(self, environ: dict, start_response):
        if not (environ.get("REQUEST_METHOD") in ("GET", "HEAD") and self._anonymous(environ) and self._public(environ)):
            return self.wsgi_app(environ, start_response)
        key = page_key(environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", ""))
        try:
            current, entry = self.backend.get_many(GENERATION_KEY, key)
        except Exception:
            logger.exception("page cache unavailable path=%s", environ.get("PATH_INFO"))
            return self.wsgi_app(environ, start_response)
        if current is not None and entry is not None and entry[0] == current:
            status, headers, body = entry[1:]
            start_response(status, [*headers, ("X-Cache", "hit")])
            return [body] if environ["REQUEST_METHOD"] == "GET" else []
        environ[LOOKUP] = (current, key)
        return self._serve_and_store(environ, start_response)

    def _anonymous(self, environ: dict) -> bool:
        if "HTTP_AUTHORIZATION" in environ:
            return False
        cookie_header = environ.get("HTTP_COOKIE")
        if not cookie_header:
            return True
        cookies = parse_cookie(cookie_header)
        return not any(name in cookies for name in self.private_cookies)

    def _public(self, environ: dict) -> bool:
        """Tell whether the URL routes to a view marked with public_page."""
        try:
            endpoint, _ = self.app.url_map.bind_to_environ(environ).match()
        except HTTPException:
            return False
        return getattr(self.app.view_functions.get(endpoint), "public_page", False)

    def _serve_and_store(self, environ: dict, start_response):
        captured = {}

        def capture(status, headers, exc_info=None):
            captured["status"], captured["headers"] = status, headers
            return start_response(status, [*headers, ("X-Cache", "miss")], exc_info)

        body_parts = self.wsgi_app(environ, capture)
        if not self._storable(environ, captured):
            return body_parts
        try:
            body = b"".join(body_parts)
        finally:
            if hasattr(body_parts, "close"):
                body_parts.close()
        current, key = environ[LOOKUP]
        if current is not None and environ["REQUEST_METHOD"] == "GET":
            headers = [(name, value) for name, value in captured["headers"] if name.lower() not in UNSTORED_HEADERS]
            try:
                self.backend.set(key, (current, captured["status"], headers, body))
            except Exception:
                logger.exception("page not cached path=%s", environ.get("PATH_INFO"))
        return [body]

    @staticmethod
    def _storable(environ: dict, captured: dict) -> bool:
        if not environ.get(CACHEABLE) or not captured.get("status", "").startswith("200"):
            return False
        return not any(name.lower() == "set-cookie" for name, _ in captured["headers"])


def page_key(path: str, query_string: str) -> str:
    """Name a page by the UTC day, its path and its query parameters in sorted order.

    The day is part of the key because pages change with it when nothing is written: a
    funding need stops taking pledges at the end of its deadline's day (UTC).
    """
    # NOTE: pages are rendered in the default locale only. When a locale selector is added,
    # the chosen locale must become part of this key.
    query = urlencode(sorted(parse_qsl(query_string, keep_blank_values=True)))
    return "page:" + _digest(f"{_utc_day()}:{path}?{query}")


def _utc_day() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


def init_cache(app: Flask) -> None:
    """Bind the cache, put the page cache in front of the app, and add `flask cache clear`."""
    if app.config.get("CACHE_TYPE", "").endswith("RedisCache"):
        # A Redis that does not respond costs a request half a second, and the request is then served uncached.
        app.config.setdefault("CACHE_OPTIONS", {"socket_timeout": 0.5, "socket_connect_timeout": 0.5})
    cache.init_app(app)
    app.wsgi_app = PageCache(app, app.wsgi_app)

    @app.before_request
    def start_generation():
        # The middleware found no generation: start one before the view reads any data, so
        # that what it computes is stored under a generation older than the data.
        lookup = request.environ.get(LOOKUP)
        if lookup is not None and lookup[0] is None:
            try:
                request.environ[LOOKUP] = (generation(), lookup[1])
            except Exception:
                logger.exception("cache generation not started")

    @app.cli.group("cache")
    def cache_group():
        """Cached pages and counts."""

    @cache_group.command("clear")
    def clear_command():
        """Make every cached page and count unreachable, after writes made outside the app."""
        new_generation("flask cache clear")
        logger.info("cache generation replaced by flask cache clear")
        print("Cached pages and counts cleared.")

    if app.config.get("CACHE_TYPE", "").endswith("NullCache"):
        logger.info("cache off: pages and counts are computed for every request")
    else:
        logger.info("cache ready type=%s", app.config.get("CACHE_TYPE"))


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
