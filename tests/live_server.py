"""Serve a Flask app over real HTTP on 127.0.0.1 from a background thread, for tests.

Werkzeug's threaded server handles each connection in its own thread, so requests sent
from several client threads reach the app concurrently, each in its own app context and
database session, as they do under gunicorn's gthread workers.
"""

import http.client
import json
import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from flask import Flask
from werkzeug.serving import make_server

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"


@dataclass
class Response:
    """Status, headers and the parsed JSON body (None when the body is not JSON)."""

    status: int
    headers: dict[str, str]
    body: Any
    text: str


class LiveServer:
    """A werkzeug ThreadedWSGIServer on a free loopback port; start() and stop() it."""

    def __init__(self, app: Flask):
        self.app = app
        self.in_flight = 0
        # Maximum number of requests inside the app at the same time since start() or reset_peak().
        self.peak_in_flight = 0
        self._lock = threading.Lock()
        self.server = make_server(HOST, 0, self._counting, threaded=True)
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, name=f"live-server-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _counting(self, environ, start_response):
        """Call the app and count the requests inside it; Flask builds the whole response body in this call."""
        with self._lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return self.app(environ, start_response)
        finally:
            with self._lock:
                self.in_flight -= 1

    def reset_peak(self) -> None:
        with self._lock:
            self.peak_in_flight = self.in_flight

    def start(self) -> "LiveServer":
        self.thread.start()
        logger.info("live server started url=%s", self.url)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting requests, wait for the serving thread and close the socket."""
        self.server.shutdown()
        self.thread.join(timeout)
        self.server.server_close()
        if self.thread.is_alive():
            raise RuntimeError(f"Live server thread on port {self.port} did not stop within {timeout} seconds.")
        logger.info("live server stopped url=%s", self.url)

    def connection(self, timeout: float = 60.0) -> http.client.HTTPConnection:
        """Return a new, not yet connected HTTP/1.1 connection to the server."""
        return http.client.HTTPConnection(HOST, self.port, timeout=timeout)

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                connection: http.client.HTTPConnection | None = None) -> Response:
        """Send one request, on `connection` if given (it stays open), else on a new one."""
        own = connection is None
        connection = connection or self.connection()
        try:
            return send(connection, method, path, body, headers)
        finally:
            if own:
                connection.close()


def send(connection: http.client.HTTPConnection, method: str, path: str, body: Any = None,
         headers: dict[str, str] | None = None) -> Response:
    """Send a request whose body, unless None or bytes, is encoded as JSON; read the response."""
    headers = dict(headers or {})
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    headers.setdefault("Accept", "application/json")
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    raw = response.read().decode("utf-8", errors="replace")
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = None
    return Response(response.status, dict(response.getheaders()), parsed, raw)


@contextmanager
def live_server(app: Flask) -> Iterator[LiveServer]:
    """Run `app` in a LiveServer for the duration of the with-block, and always stop it."""
    server = LiveServer(app).start()
    try:
        yield server
    finally:
        server.stop()
