"""A local fake of the few Stripe API endpoints that the platform calls, for tests.

It serves POST /v1/checkout/sessions, GET /v1/checkout/sessions/<id>,
POST /v1/checkout/sessions/<id>/expire and POST /v1/refunds on 127.0.0.1 with
http.server.ThreadingHTTPServer. Bodies are form-encoded the way the stripe package sends
them (`line_items[0][price_data][currency]=eur`) and responses are Stripe-shaped JSON objects.
Every request is recorded, a repeated Idempotency-Key gets the first response again as on
Stripe, and `fail()` makes the next requests fail with an error.

It also builds webhook events and signs them with Stripe's scheme:
`Stripe-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<payload>" with the secret>`.
"""

import hashlib
import hmac
import itertools
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

HOST = "127.0.0.1"


@dataclass
class Recorded:
    """One request that reached the fake."""

    method: str
    path: str
    headers: dict[str, str]
    form: dict[str, Any]


@dataclass
class Failure:
    """An error response for the next `times` requests whose path starts with `path`."""

    status: int
    body: dict
    path: str
    times: int


@dataclass
class State:
    sessions: dict[str, dict] = field(default_factory=dict)
    # Payment intent id -> {"amount", "currency", "refunded", "metadata"}.
    intents: dict[str, dict] = field(default_factory=dict)
    refunds: dict[str, dict] = field(default_factory=dict)
    # (Idempotency-Key, method, path) -> (status, body) of the first response.
    idempotent: dict[tuple[str, str, str], tuple[int, dict]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


def parse_form(body: str) -> dict[str, Any]:
    """Decode a Stripe form body into nested dicts and lists.

    `a[b][0][c]=x` becomes {"a": {"b": [{"c": "x"}]}}. Values stay strings, as on the wire.
    """
    root: dict[str, Any] = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        head, _, rest = key.partition("[")
        parts = [head] + ([part.rstrip("]") for part in ("[" + rest).split("[")[1:]] if rest else [])
        node: Any = root
        for position, part in enumerate(parts):
            last = position == len(parts) - 1
            following = None if last else parts[position + 1]
            child_default: Any = [] if following is not None and following.isdigit() else {}
            if isinstance(node, list):
                index = int(part)
                while len(node) <= index:
                    node.append(None)
                if last:
                    node[index] = value
                else:
                    if node[index] is None:
                        node[index] = child_default
                    node = node[index]
            else:
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, child_default)
    return root


def stripe_error(status: int, message: str, type_: str = "invalid_request_error", code: str | None = None, param: str | None = None) -> tuple[int, dict]:
    error = {"type": type_, "message": message}
    if code:
        error["code"] = code
    if param:
        error["param"] = param
    return status, {"error": error}


class StripeFake:
    """The fake server; start() it, point STRIPE_API_BASE at `base`, stop() it."""

    def __init__(self):
        self.state = State()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                fake._serve(self, "GET")

            def do_POST(self):
                fake._serve(self, "POST")

            def log_message(self, format, *args):  # keep test output quiet
                pass

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name=f"stripe-fake-{self.port}", daemon=True)

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> "StripeFake":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(10)
        self.server.server_close()

    def reset(self) -> None:
        with self._lock:
            self.state = State()

    # Test controls

    def fail(self, status: int = 500, message: str = "An unexpected error occurred.", path: str = "/v1/", times: int = 1,
             type_: str = "api_error") -> None:
        """Make the next `times` requests under `path` fail with a Stripe error of `status`."""
        with self._lock:
            self.state.failures.append(Failure(status, stripe_error(status, message, type_)[1], path, times))

    def requests_to(self, method: str, path: str) -> list[Recorded]:
        with self._lock:
            return [request for request in self.state.requests if request.method == method and request.path == path]

    def session(self, session_id: str) -> dict:
        with self._lock:
            return dict(self.state.sessions[session_id])

    def complete_session(self, session_id: str) -> dict:
        """Pay a session as a donor would: it gets a payment intent and status complete."""
        with self._lock:
            session = self.state.sessions[session_id]
            intent_id = f"pi_test_{next(self._ids):06d}"
            metadata = session.get("payment_intent_data", {}).get("metadata", {})
            self.state.intents[intent_id] = {
                "amount": session["amount_total"], "currency": session["currency"], "refunded": 0, "metadata": metadata,
            }
            session.update(status="complete", payment_status="paid", payment_intent=intent_id, url=None)
            return dict(session)

    # Serving

    def _serve(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length).decode() if length else ""
        path = handler.path.split("?", 1)[0]
        form = parse_form(body)
        headers = {name: value for name, value in handler.headers.items()}
        with self._lock:
            self.state.requests.append(Recorded(method, path, headers, form))
            status, answer = self._answer(method, path, headers, form)
        payload = json.dumps(answer).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.send_header("Request-Id", f"req_test_{next(self._ids):06d}")
        handler.end_headers()
        handler.wfile.write(payload)

    def _answer(self, method: str, path: str, headers: dict[str, str], form: dict) -> tuple[int, dict]:
        if not headers.get("Authorization", "").startswith("Bearer sk_test_"):
            return stripe_error(401, "Invalid API Key provided.")
        for failure in self.state.failures:
            if failure.times > 0 and path.startswith(failure.path):
                failure.times -= 1
                return failure.status, failure.body

        key = headers.get("Idempotency-Key")
        if method == "POST" and key and (key, method, path) in self.state.idempotent:
            return self.state.idempotent[(key, method, path)]
        answer = self._route(method, path, form)
        if method == "POST" and key and answer[0] < 500:
            self.state.idempotent[(key, method, path)] = answer
        return answer

    def _route(self, method: str, path: str, form: dict) -> tuple[int, dict]:
        parts = path.strip("/").split("/")
        if method == "POST" and parts == ["v1", "checkout", "sessions"]:
            return self._create_session(form)
        if method == "GET" and parts[:3] == ["v1", "checkout", "sessions"] and len(parts) == 4:
            session = self.state.sessions.get(parts[3])
            if session is None:
                return stripe_error(404, f"No such checkout.session: '{parts[3]}'", code="resource_missing", param="session")
            return 200, session
        if method == "POST" and parts[:3] == ["v1", "checkout", "sessions"] and len(parts) == 5 and parts[4] == "expire":
            return self._expire_session(parts[3])
        if method == "POST" and parts == ["v1", "refunds"]:
            return self._create_refund(form)
        return stripe_error(404, f"Unrecognized request URL ({method}: {path}).")

    def _create_session(self, form: dict) -> tuple[int, dict]:
        items = form.get("line_items") or []
        if form.get("mode") != "payment" or len(items) != 1:
            return stripe_error(400, "This fake takes mode=payment with one line item.", param="line_items")
        price = items[0].get("price_data", {})
        try:
            unit_amount = int(price["unit_amount"])
            quantity = int(items[0].get("quantity", "1"))
        except (KeyError, ValueError):
            return stripe_error(400, "Invalid integer: unit_amount.", param="line_items[0][price_data][unit_amount]")
        currency = price.get("currency", "")
        if currency != currency.lower() or len(currency) != 3:
            return stripe_error(400, f"Invalid currency: {currency}.", param="line_items[0][price_data][currency]")
        session_id = f"cs_test_{next(self._ids):06d}"
        session = {
            "id": session_id, "object": "checkout.session", "mode": "payment", "status": "open",
            "payment_status": "unpaid", "payment_intent": None, "amount_total": unit_amount * quantity,
            "currency": currency, "client_reference_id": form.get("client_reference_id"),
            "metadata": form.get("metadata", {}), "payment_intent_data": form.get("payment_intent_data", {}),
            "success_url": form.get("success_url"), "cancel_url": form.get("cancel_url"),
            "customer_email": form.get("customer_email"), "expires_at": int(form.get("expires_at") or time.time() + 86400),
            "created": int(time.time()), "livemode": False, "url": f"{self.base}/c/pay/{session_id}",
        }
        self.state.sessions[session_id] = session
        return 200, session

    def _expire_session(self, session_id: str) -> tuple[int, dict]:
        session = self.state.sessions.get(session_id)
        if session is None:
            return stripe_error(404, f"No such checkout.session: '{session_id}'", code="resource_missing")
        if session["status"] != "open":
            return stripe_error(400, 'Only Checkout Sessions with a status in ["open"] can be expired.')
        session.update(status="expired", url=None)
        return 200, session

    def _create_refund(self, form: dict) -> tuple[int, dict]:
        intent_id = form.get("payment_intent")
        intent = self.state.intents.get(intent_id or "")
        if intent is None:
            return stripe_error(404, f"No such payment_intent: '{intent_id}'", code="resource_missing", param="payment_intent")
        left = intent["amount"] - intent["refunded"]
        amount = int(form["amount"]) if "amount" in form else left
        if amount <= 0 or amount > left:
            return stripe_error(400, f"Refund amount ({amount}) is greater than unrefunded amount on charge ({left})",
                                code="amount_too_large", param="amount")
        intent["refunded"] += amount
        refund_id = f"re_test_{next(self._ids):06d}"
        refund = {
            "id": refund_id, "object": "refund", "amount": amount, "currency": intent["currency"],
            "payment_intent": intent_id, "status": "succeeded", "metadata": form.get("metadata", {}),
            "created": int(time.time()),
        }
        self.state.refunds[refund_id] = refund
        return 200, refund


def closed_port() -> int:
    """Return a loopback port on which nothing listens, so connecting is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


# Webhook events

_event_ids = itertools.count(1)


def event(type_: str, obj: dict, event_id: str | None = None, created: int | None = None) -> dict:
    """Build a Stripe event of `type_` around `obj`, as a webhook delivers it."""
    return {
        "id": event_id or f"evt_test_{next(_event_ids):06d}_{int(time.time() * 1000)}", "object": "event",
        "type": type_, "api_version": "2024-06-20", "created": created or int(time.time()),
        "livemode": False, "data": {"object": obj},
    }


def charge(intent_id: str, amount: int, currency: str, amount_refunded: int = 0, pledge_id: int | None = None) -> dict:
    """A charge object as in charge.refunded events; `amount_refunded` is cumulative."""
    return {
        "id": f"ch_{intent_id.removeprefix('pi_')}", "object": "charge", "payment_intent": intent_id,
        "amount": amount, "amount_refunded": amount_refunded, "currency": currency,
        "refunded": amount_refunded == amount, "metadata": {"pledge_id": str(pledge_id)} if pledge_id else {},
    }


def payment_intent(intent_id: str, amount: int, currency: str, pledge_id: int | None = None, message: str = "Your card was declined.") -> dict:
    """A payment intent as in payment_intent.payment_failed events."""
    return {
        "id": intent_id, "object": "payment_intent", "amount": amount, "currency": currency,
        "status": "requires_payment_method", "metadata": {"pledge_id": str(pledge_id)} if pledge_id else {},
        "last_payment_error": {"code": "card_declined", "message": message},
    }


def dispute(intent_id: str, amount: int, currency: str, status: str = "needs_response", reason: str = "fraudulent") -> dict:
    return {
        "id": f"dp_{intent_id.removeprefix('pi_')}", "object": "dispute", "charge": f"ch_{intent_id.removeprefix('pi_')}",
        "payment_intent": intent_id, "amount": amount, "currency": currency, "status": status, "reason": reason,
    }


def sign(payload: str, secret: str, timestamp: int | None = None) -> str:
    """Return the Stripe-Signature header of `payload`, signed at `timestamp` (default now)."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"
