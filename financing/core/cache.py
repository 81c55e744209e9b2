"""Cached public pages and list counts, kept exact by generations.

Reading the same public lists and project pages again and again is most of the platform's
traffic, and the exact `total` of a filtered list costs tens of milliseconds at 100,000
projects (docs/benchmarks.md). Both are cached with Flask-Caching's backends: Redis when
REDIS_URL is set, so that every gunicorn worker and host shares one cache.

A *generation* is a random token stored in the cache that names the state of some of the
data. Each entry is stored with the generations it depends on and is used only while they
are all still current. A commit that wrote rows replaces generations once it has succeeded,
so no request that starts after a write is given what was computed before it: lists, counts
and project pages are never stale, whatever changed. There are four kinds:

- the *global* generation, on which every entry depends;
- the *catalogue* generation, on which lists, counts and totals depend: it names which
  projects are public and what a filter or a sort finds;
- the *funding* generation, on which the entries that add up every project depend (the
  home page, the reports);
- one generation per project, on which the pages that call `shows_projects` (a project
  page) or `lists_projects` (a list) depend, for each project they show.

A write to rows of PROJECT_TABLES whose project can be found from rows in the session
replaces the generations of those projects and the funding one. When it wrote a project or
its tags, it replaces the catalogue generation as well, since the project may have entered
or left a list. So a pledge leaves the cached pages of every other project, the lists that
do not show its project and the counts as they are, and publishing a project leaves every
other project's page. A write to REPORT_TABLES (funders) replaces the funding generation
alone. Any other write to a table outside UNTRACKED_TABLES replaces the global generation.

A lookup fetches the global, catalogue and funding generations with the entry in one round
trip (MGET), and the project generations of a page that names its projects in a second
one. Those are known only once the page is rendered, so they are read after it;
SEQUENCE_KEY shows whether one was replaced in between.

Pages of totals (the home page, /stats) may lag behind funding writes by CACHE_TOTALS_LAG
seconds, because they take up to seconds to compute and pledges come every few seconds on
a platform in use. Such a page is served from an entry of an older funding generation
while the entry is younger than the lag. After that, one request computes the page again
while the others are still served the older entry (`X-Cache: stale`). With a lag of 0 they
are exact like the rest.

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
import threading
import time
from collections.abc import Callable, Iterable
from functools import wraps
from itertools import chain
from urllib.parse import parse_qsl, urlencode

from flask import Flask, current_app, has_app_context, has_request_context, request
from sqlalchemy import event
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import TextClause
from werkzeug.exceptions import HTTPException
from werkzeug.http import parse_cookie

from financing.extensions import cache, db

logger = logging.getLogger(__name__)

GENERATION_KEY = "generation"
CATALOGUE_KEY = "generation:catalogue"
FUNDING_KEY = "generation:funding"
# A counter that every replacement increments first. A project's generation is the counter's
# value when it was replaced, so a page that reads its projects' generations after rendering
# can tell a write made during the request (a greater value) and not store the page. It
# starts at the time in microseconds, so a counter that was lost and starts again still
# counts on from every value it gave before.
SEQUENCE_KEY = "generation:sequence"
# How long a project's generation is kept when nothing replaces it. It only has to outlive
# the entries stored with it; a project generation that is gone makes them unreachable.
PROJECT_GENERATION_TIMEOUT = 24 * 3600

# Tables whose rows no cached page or value shows. Cached pages are anonymous, and accounts,
# suggested matches, allocation runs, review snapshots and Stripe events are shown only to
# users who are logged in. A commit that wrote only to these keeps the cache.
UNTRACKED_TABLES = frozenset({
    "audit_entry", "notification", "outbox_message", "notification_preference", "api_token", "user_account",
    "match", "allocation_run", "allocation_row", "project_snapshot", "stripe_event",
})

# Tables shown only in totals and reports (the home page, /stats, /dashboard): a write to
# them replaces the funding generation alone. A donor's first pledge creates a funder.
REPORT_TABLES = frozenset({"funder"})

# Tables whose rows belong to one project, and how to reach the project from a row: the
# column naming the parent row, the parent's table (None: the column is the project id),
# and whether a write can change which projects a list contains or their order. A write to
# the others (needs, pledges and their ledger) changes only what the project's pages and
# list entries show, and the totals.
PROJECT_TABLES = {
    "project": ("id", None, True),
    "project_tag": ("project_id", None, True),
    "funding_need": ("project_id", None, False),
    "pledge": ("need_id", "funding_need", False),
    "pledge_event": ("pledge_id", "pledge", False),
}

# Execution option of an UPDATE or DELETE on a table of PROJECT_TABLES that changes only
# the row with this primary key, e.g. `.execution_options(cache_row=need_id)`.
ROW_OPTION = "cache_row"

# First words of SQL text that only reads.
READ_ONLY_SQL = ("select", "with", "show", "explain", "values")

ALL = "all"
PENDING = "cache_generation_stale"
# WSGI environ keys: the lookup's generations and key, the mark of a cacheable view, and
# the projects that the page shows.
LOOKUP = "financing.page_cache.lookup"
CACHEABLE = "financing.page_cache.cacheable"
SHOWN = "financing.page_cache.projects"
LISTED = "financing.page_cache.listed"
# Maximum seconds that one request may take to compute a page of totals again while others
# are served the older entry.
RECOMPUTE_CLAIM_TIMEOUT = 60
# Headers never stored with a page.
UNSTORED_HEADERS = frozenset({"set-cookie", "x-cache"})


# Generations ---------------------------------------------------------------------------

def project_key(project_id: int) -> str:
    return f"generation:project:{project_id}"


def generation() -> str | None:
    """Return the global generation, starting the generations when the cache has none.

    Return None when the cache stores nothing (NullCache).
    """
    return generations()[0]


def generations() -> tuple[str | None, str | None, str | None]:
    """Return the global, catalogue and funding generations, starting those the cache lacks."""
    keys = (GENERATION_KEY, CATALOGUE_KEY, FUNDING_KEY)
    current = cache.get_many(*keys)
    if None in current:
        for key in keys:
            cache.add(key, _token(), timeout=0)
        current = cache.get_many(*keys)
    return tuple(current)


def new_generation(reason: str) -> None:
    """Make every cached page and count unreachable."""
    _replace({GENERATION_KEY: _token()}, reason)


def new_project_generations(project_ids: Iterable[int], reason: str, catalogue: bool = False) -> None:
    """Make the cached pages of these projects, the lists that show them and the totals unreachable.

    With catalogue=True, make every list and count unreachable too.
    """
    tokens = {FUNDING_KEY: _token()}
    if catalogue:
        tokens[CATALOGUE_KEY] = _token()
    _replace(tokens, reason, project_ids)


# Redis increments atomically. The memory cache of one process reads, then writes, so its
# threads take turns.
_sequence_lock = threading.Lock()


def _replace(tokens: dict, reason: str, project_ids: Iterable[int] = ()) -> None:
    try:
        with _sequence_lock:
            cache.add(SEQUENCE_KEY, time.time_ns() // 1000, timeout=0)
            number = cache.cache.inc(SEQUENCE_KEY)
        cache.set_many(tokens, timeout=0)
        if project_ids and number is not None:
            cache.set_many({project_key(project_id): number for project_id in project_ids}, timeout=PROJECT_GENERATION_TIMEOUT)
    except Exception:
        logger.exception("cache generation not replaced after %s; entries may be old for up to %s s",
                         reason, current_app.config.get("CACHE_DEFAULT_TIMEOUT"))


def _token() -> str:
    return secrets.token_hex(8)


# What a commit wrote -------------------------------------------------------------------

def _note(session: Session, scope) -> None:
    """Add what a flush or statement wrote to what the session's commit must replace."""
    pending = session.info.get(PENDING)
    if pending == ALL or scope == ALL:
        session.info[PENDING] = ALL
        return
    projects, catalogue = scope
    if pending is not None:
        projects, catalogue = pending[0] | projects, pending[1] or catalogue
    session.info[PENDING] = (projects, catalogue)


def _flush_scope(session: Session):
    """Return what the flush wrote: None for nothing tracked, ALL, or (projects, catalogue).

    `projects` is the set of projects whose rows it wrote, empty when it wrote only report
    tables, and `catalogue` is True when it may have changed which projects a list contains.
    """
    instances = list(chain(session.new, session.dirty, session.deleted))
    # Rows inserted by this flush are not in the identity map until it ends.
    flushed = {(instance.__tablename__, instance.__dict__.get("id")): instance for instance in instances if hasattr(instance, "__tablename__")}
    projects, catalogue, tracked = set(), False, False
    for instance in instances:
        table = getattr(instance, "__tablename__", None)
        if table in UNTRACKED_TABLES:
            continue
        tracked = True
        if table in REPORT_TABLES:
            continue
        project_id = _project_of(session, table, instance.__dict__, flushed)
        if project_id is None:
            return ALL
        projects.add(project_id)
        catalogue = catalogue or PROJECT_TABLES[table][2]
    return (projects, catalogue) if tracked else None


def _project_of(session: Session, table: str | None, values: dict, flushed: dict | None = None) -> int | None:
    """Return the project of a row of PROJECT_TABLES, found through rows in the session, or None when they do not lead to one."""
    while table in PROJECT_TABLES:
        column, parent, _ = PROJECT_TABLES[table]
        value = values.get(column)
        if value is None or parent is None:
            return value
        row = (flushed or {}).get((parent, value)) or _row_in_session(session, parent, value)
        if row is None:
            return None
        table, values = parent, row.__dict__
    return None


def _row_in_session(session: Session, table: str, primary_key: int):
    """Return the row of `table` with this primary key from the session's identity map, without SQL."""
    mapper = next((mapper for mapper in db.Model.registry.mappers if mapper.local_table.name == table), None)
    if mapper is None:
        return None
    return session.identity_map.get(mapper.identity_key_from_primary_key((primary_key,)))


def _statement_scope(session: Session, statement, options: dict):
    """Return None for a statement that writes no tracked row, else what it wrote."""
    if isinstance(statement, TextClause):
        words = statement.text.split(None, 1)
        return ALL if words and words[0].lower() not in READ_ONLY_SQL else None
    if getattr(statement, "is_select", False):
        return None
    table = getattr(getattr(statement, "table", None), "name", None)
    if table in UNTRACKED_TABLES:
        return None
    if table in REPORT_TABLES:
        return set(), False
    row_id = options.get(ROW_OPTION)
    row = _row_in_session(session, table, row_id) if row_id is not None and table in PROJECT_TABLES else None
    project_id = _project_of(session, table, row.__dict__) if row is not None else None
    return ALL if project_id is None else ({project_id}, PROJECT_TABLES[table][2])


@event.listens_for(Session, "after_flush")
def _note_flush(session: Session, flush_context) -> None:
    if session.info.get(PENDING) != ALL:
        scope = _flush_scope(session)
        if scope is not None:
            _note(session, scope)


@event.listens_for(Session, "do_orm_execute")
def _note_statement(state) -> None:
    if state.session.info.get(PENDING) != ALL:
        scope = _statement_scope(state.session, state.statement, state.execution_options)
        if scope is not None:
            _note(state.session, scope)


@event.listens_for(Session, "after_commit")
def _replace_after_commit(session: Session) -> None:
    scope = session.info.pop(PENDING, None)
    if scope is None or not (has_app_context() and "cache" in current_app.extensions):
        return
    if scope == ALL:
        new_generation("commit")
    else:
        new_project_generations(scope[0], "commit", catalogue=scope[1])


@event.listens_for(Session, "after_rollback")
def _forget_on_rollback(session: Session) -> None:
    session.info.pop(PENDING, None)


# Computed values -----------------------------------------------------------------------

def cached_value(parts: tuple, compute: Callable[[], object], funding: bool = True):
    """Return compute(), cached under `parts`, which must name everything the value depends on.

    With funding=False the value must not depend on needs and pledges (the count of a
    filtered list), and funding writes keep it. The value must be picklable. An exception
    from compute() propagates and nothing is stored.
    """
    key = "value:" + _digest(f"{_utc_day()}:{parts!r}")
    try:
        current, catalogue, current_funding, entry = cache.get_many(GENERATION_KEY, CATALOGUE_KEY, FUNDING_KEY, key)
        if None in (current, catalogue, current_funding):
            current, catalogue, current_funding = generations()
    except Exception:
        logger.exception("cache unavailable; computing without it")
        return compute()
    if current is None:
        return compute()
    depends = (current, catalogue, current_funding if funding else None)
    if entry is not None and entry[0] == depends:
        return entry[1]
    value = compute()
    try:
        cache.set(key, (depends, value))
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


def shows_projects(project_ids: Iterable[int]) -> None:
    """Declare the projects whose rows the page shows, when it shows nothing else from the database but reference rows.

    The cached page then outlives writes to other projects. A page that shows totals across
    projects must not call this, and a list calls `lists_projects`. Without a request, it
    does nothing.
    """
    if has_request_context():
        request.environ.setdefault(SHOWN, set()).update(project_ids)


def lists_projects(project_ids: Iterable[int]) -> None:
    """Declare a list of projects, like shows_projects; a write that may change which projects a list contains also makes it unreachable."""
    if has_request_context():
        shows_projects(project_ids)
        request.environ[LISTED] = True


class PageCache:
    """WSGI middleware that serves anonymous GET and HEAD requests from the cache and stores misses.

    An entry is (global generation, catalogue generation or None, funding generation or
    None, project generations or None, time of the request that computed it, status,
    headers, body).
    """

    def __init__(self, app: Flask, wsgi_app):
        self.app = app
        self.wsgi_app = wsgi_app
        self.backend = app.extensions["cache"][cache]
        self.private_cookies = (app.config["SESSION_COOKIE_NAME"], app.config.get("REMEMBER_COOKIE_NAME", "remember_token"))

    def __call__(self, environ: dict, start_response):
        if not (environ.get("REQUEST_METHOD") in ("GET", "HEAD") and self._anonymous(environ) and self._public(environ)):
            return self.wsgi_app(environ, start_response)
        key = page_key(environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", ""))
        started = _now()
        try:
            current, catalogue, funding, sequence, entry = self.backend.get_many(
                GENERATION_KEY, CATALOGUE_KEY, FUNDING_KEY, SEQUENCE_KEY, key,
            )
            state = self._state(entry, (current, catalogue, funding), started, key)
        except Exception:
            logger.exception("page cache unavailable path=%s", environ.get("PATH_INFO"))
            return self.wsgi_app(environ, start_response)
        if state is not None:
            status, headers, body = entry[5:]
            start_response(status, [*headers, ("X-Cache", state)])
            return [body] if environ["REQUEST_METHOD"] == "GET" else []
        environ[LOOKUP] = (current, catalogue, funding, sequence or 0, key, started)
        return self._serve_and_store(environ, start_response)

    def _state(self, entry: tuple | None, generations: tuple, now: float, key: str) -> str | None:
        """Return "hit" or "stale" when the entry may be served, None when the page must be computed."""
        current, catalogue, funding = generations
        if entry is None or current is None or entry[0] != current:
            return None
        stored_catalogue, stored_funding, stored_projects, stored_at = entry[1:5]
        if stored_catalogue is not None and stored_catalogue != catalogue:
            return None
        if stored_projects is not None:
            keys = list(stored_projects)
            return "hit" if not keys or self.backend.get_many(*keys) == [stored_projects[name] for name in keys] else None
        if stored_funding == funding:
            return "hit"
        if now - stored_at < self.app.config["CACHE_TOTALS_LAG"]:
            return "stale"
        # Older than the lag: the request that claims the page computes it again, and the
        # others keep being served the older entry meanwhile.
        if self.app.config["CACHE_TOTALS_LAG"] > 0 and not self.backend.add("claim:" + key, 1, timeout=RECOMPUTE_CLAIM_TIMEOUT):
            return "stale"
        return None

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
            if self.app.config["CACHE_TOTALS_LAG"] > 0:
                self._release_claim(environ[LOOKUP][4])
            return body_parts
        try:
            body = b"".join(body_parts)
        finally:
            if hasattr(body_parts, "close"):
                body_parts.close()
        if environ["REQUEST_METHOD"] == "GET":
            try:
                self._store(environ, captured, body)
            except Exception:
                logger.exception("page not cached path=%s", environ.get("PATH_INFO"))
        return [body]

    def _store(self, environ: dict, captured: dict, body: bytes) -> None:
        current, catalogue, funding, sequence, key, started = environ[LOOKUP]
        if current is None:
            return
        project_ids = environ.get(SHOWN)
        projects = None
        if project_ids is not None:
            projects = self._project_generations(sorted(project_ids), sequence)
            if projects is None:
                return
            funding = None
            if not environ.get(LISTED):
                catalogue = None
        headers = [(name, value) for name, value in captured["headers"] if name.lower() not in UNSTORED_HEADERS]
        self.backend.set(key, (current, catalogue, funding, projects, started, captured["status"], headers, body))
        if projects is None and self.app.config["CACHE_TOTALS_LAG"] > 0:
            self._release_claim(key)

    def _release_claim(self, key: str) -> None:
        try:
            self.backend.delete("claim:" + key)
        except Exception:
            logger.exception("recompute claim not released key=%s", key)

    def _project_generations(self, project_ids: list[int], sequence: int) -> dict | None:
        """Return the generations of these projects, or None when one was replaced during the request.

        They are read after the page was rendered. A generation greater than the counter
        read when the request began belongs to a write that may have committed after the
        page read its rows. A project without a generation gets the counter's value from
        the request's start: no write has been counted after that value.
        """
        keys = [project_key(project_id) for project_id in project_ids]
        values = self.backend.get_many(*keys)
        if None in values:
            for name, value in zip(keys, values):
                if value is None:
                    self.backend.add(name, sequence, timeout=PROJECT_GENERATION_TIMEOUT)
            values = self.backend.get_many(*keys)
        if any(not isinstance(value, int) or value > sequence for value in values):
            return None
        return dict(zip(keys, values))

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


def _now() -> float:
    return time.time()


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
        if lookup is not None and None in lookup[:3]:
            try:
                request.environ[LOOKUP] = (*generations(), *lookup[3:])
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
