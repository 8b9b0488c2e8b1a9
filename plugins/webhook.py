"""The webhook receiver: MLflow's ``model_version.created`` deliveries into the job queue.

For servers that cannot load the registry-store plugin. MLflow signs each delivery:
``X-MLflow-Signature: v1,<base64 HMAC-SHA256 of "{delivery id}.{timestamp}.{body}">`` with the
webhook's secret, and sends ``X-MLflow-Delivery-Id`` and ``X-MLflow-Timestamp``. A delivery is
accepted only when the signature matches (else 401), the timestamp is within ``max_age`` seconds
of now (else 401: a stale or future delivery), and the delivery id was not seen before (a
replay is answered 200 and queues nothing). Other events, and MLflow's test delivery (the
example payload its Test button sends), are acknowledged and queue nothing.

The HTTP side bounds what one client can hold: each request (request line, headers and body
together) has ``request_timeout`` seconds, and each read ``read_timeout`` (a client trickling a
byte at a time is dropped at the deadline, not when it stops); at most ``max_handlers``
connections are handled at once, and one more is answered 503 at once, without a thread. A
client that hangs up is a line in the log, never a traceback.

``GET /healthz`` answers ``{"status": "ok"}`` to anyone; ``GET /metrics`` the Prometheus metrics
(the queue's counts by state among them) only with ``Authorization: Bearer TOKEN``; any other
path 404 (`reef_forensics.mlops.observability.answer_get`). Each request is one JSON log line
(``http.request``: method, path, status, outcome, duration; never a header or a body).

Over HTTPS (``make_server(..., tls=tls.server_context(cert, key))``, ``serve --certfile``) the
handshake happens in the connection's thread and within the same deadline.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import io
import json
import logging
import os
import re
import socket
import ssl
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from reef_forensics.files import lone_surrogate, parse_json
from reef_forensics.mlops.jobqueue import JobQueue
from reef_forensics.mlops.observability import Metrics, answer_get, log_event

from . import tls as _tls

MAX_BODY = 1 << 20
_log = logging.getLogger(__name__)


#: What MLflow's webhook test (`MlflowClient.test_webhook`, the UI's Test button) sends for
#: model_version.created: `ModelVersionCreatedPayload.example()` of MLflow 3.
TEST_PAYLOAD = {
    "name": "example_model",
    "version": "1",
    "source": "models:/123",
    "run_id": "abcd1234abcd5678",
    "tags": {"example_key": "example_value"},
    "description": "An example model version",
}


def signature(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    signed = delivery_id.encode() + b"." + timestamp.encode() + b"." + body
    digest = hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def handle_delivery(
    queue: JobQueue,
    secret: str,
    headers: Any,
    body: bytes,
    *,
    max_age: float = 300.0,
    now: float | None = None,
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON answer) for one delivery; the job is queued when it should be."""
    delivery_id = headers.get("X-MLflow-Delivery-Id") or ""
    timestamp = headers.get("X-MLflow-Timestamp") or ""
    given = headers.get("X-MLflow-Signature") or ""
    if not delivery_id or not timestamp or not given:
        return HTTPStatus.UNAUTHORIZED, {"error": "unsigned delivery"}
    expected = signature(secret, delivery_id, timestamp, body)
    if not hmac.compare_digest(given.encode(), expected.encode()):
        return HTTPStatus.UNAUTHORIZED, {"error": "bad signature"}
    try:
        age = (time.time() if now is None else now) - int(timestamp)
    except (ValueError, OverflowError):  # not an integer, or too large to compare with now
        return HTTPStatus.UNAUTHORIZED, {"error": "bad timestamp"}
    if abs(age) > max_age:
        return HTTPStatus.UNAUTHORIZED, {"error": "stale or future timestamp"}
    try:
        payload = parse_json(body)  # every failure a ValueError, deep nesting included
        event = f"{payload['entity']}.{payload['action']}"
        data = payload["data"]
    except (ValueError, KeyError, TypeError):
        return HTTPStatus.BAD_REQUEST, {"error": "not an MLflow webhook payload"}
    # a delivery accepted at T has a timestamp within max_age of T, so any replay of it is
    # refused by its timestamp after T + 2 max_age: its id need not be kept longer than that
    if queue.seen_delivery(delivery_id, forget_after=2 * max_age + 60):
        return HTTPStatus.OK, {"status": "replay ignored"}
    if event != "model_version.created":
        return HTTPStatus.OK, {"status": f"event {event} ignored"}
    if data == TEST_PAYLOAD:  # MLflow's "Test webhook": acknowledged, nothing to queue
        return HTTPStatus.OK, {"status": "test delivery acknowledged"}
    try:
        name, version = str(data["name"]), str(data["version"])
        source = data.get("source")
    except (KeyError, TypeError):
        return HTTPStatus.BAD_REQUEST, {"error": "the payload names no model version"}
    if not all(_is_text(v) for v in (name, version)) or not (source is None or _is_text(source)):
        return HTTPStatus.BAD_REQUEST, {
            "error": "the model version's name, version or source is not text"
        }
    created = queue.enqueue(name, version, source)
    return HTTPStatus.OK, {"status": "queued" if created else "already queued"}


def _is_text(value: Any) -> bool:
    """A string the queue can store: JSON's ``"\\ud800"`` (a lone surrogate) is no text."""
    return isinstance(value, str) and lone_surrogate(value) is None


def content_length(value: str | None) -> int | None:
    """The body's length from a Content-Length header (none: 0), or None when the header is not
    a plain decimal number (RFC 9110: digits only). ``int()`` would take ``-1`` (a read until
    the client hangs up), ``+5``, ``1_0`` or ``²``."""
    text = (value or "0").strip(" \t")
    if not _DIGITS.fullmatch(text):
        return None
    return int(text)


_DIGITS = re.compile(r"[0-9]{1,20}")


def make_server(
    host: str,
    port: int,
    queue: JobQueue,
    secret: str,
    max_age: float,
    *,
    read_timeout: float = 30.0,
    request_timeout: float = 60.0,
    max_handlers: int = 32,
    metrics_token: str | None = None,
    metrics: Metrics | None = None,
    tls: ssl.SSLContext | None = None,
) -> ThreadingHTTPServer:
    """The receiver. A client that goes silent for ``read_timeout`` seconds, or whose request is
    not complete ``request_timeout`` seconds after it connected (the TLS handshake included), is
    dropped without an answer; beyond ``max_handlers`` connections at once, a new one is answered
    503 (over TLS, closed: no answer can be sent before a handshake). ``/metrics`` answers only a
    caller that sends ``metrics_token`` as a bearer token. With ``tls`` (see
    ``tls.server_context``) it speaks HTTPS only."""
    if not (read_timeout > 0 and request_timeout > 0 and max_handlers >= 1):
        raise ValueError("the timeouts must be positive and max_handlers at least 1")
    served = metrics or Metrics(queue.counts)

    class Handler(BaseHTTPRequestHandler):
        server_version = "reef-forensics-webhook"
        timeout = min(read_timeout, request_timeout)  # until setup() hands reads to the deadline

        def setup(self) -> None:
            self._started = time.monotonic()
            self._outcome = ""
            deadline = time.monotonic() + request_timeout
            if tls is not None:  # here, in the connection's thread: never in the accept loop
                self.request = _tls.handshake(tls, self.request, deadline, read_timeout)
            super().setup()
            self.rfile.close()  # StreamRequestHandler's socket file: reads go through the deadline
            self.rfile = io.BufferedReader(_DeadlineReader(self.connection, deadline, read_timeout))

        def finish(self) -> None:
            try:
                super().finish()
            finally:
                if tls is not None:  # the server closes the plain socket, which TLS took over
                    _tls.close(self.request)

        def do_POST(self) -> None:
            _receive(self, queue, secret, max_age)

        def do_GET(self) -> None:
            status, kind, data = answer_get(
                self.path, self.headers.get("Authorization"), served, metrics_token
            )
            self._send(status, kind, data)

        def _answer(self, status: int, answer: dict[str, Any]) -> None:
            self._outcome = str(answer.get("status") or answer.get("error") or "")
            self._send(status, "application/json", json.dumps(answer).encode())

        def _send(self, status: int, kind: str, data: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            _log_request(self, code, served)

        def log_message(self, format: str, *args: Any) -> None:
            _log.info("%s %s", self.address_string(), format % args)

    return _Server((host, port), Handler, max_handlers, tls=tls is not None)


def _receive(handler: Any, queue: JobQueue, secret: str, max_age: float) -> None:
    """A delivery: its body read within the limits, checked and queued, and answered."""
    length = content_length(handler.headers.get("Content-Length"))
    if length is None:
        handler.close_connection = True  # the body's end is unknown: nothing after it
        handler._answer(HTTPStatus.BAD_REQUEST, {"error": "bad Content-Length"})
        return
    if length > MAX_BODY:
        handler._answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "too large"})
        return
    try:
        body = handler.rfile.read(length)
    except TimeoutError as exc:  # silent too long, or past the request's deadline
        handler.log_message("dropped: %s", exc)
        handler.close_connection = True
        return
    if len(body) < length:  # the client hung up before sending all it announced
        handler.close_connection = True
        return
    status, answer = handle_delivery(queue, secret, handler.headers, body, max_age=max_age)
    handler._answer(status, answer)


def _log_request(handler: Any, code: int | str, metrics: Metrics) -> None:
    """One structured line a request, and its count: no header, no body, no query string."""
    status = int(code) if isinstance(code, int) or str(code).isdigit() else str(code)
    metrics.requests.labels(handler.command or "-", str(status)).inc()
    log_event(
        "http.request",
        method=handler.command,
        path=(handler.path or "").split("?", 1)[0][:200],
        status=status,
        outcome=handler._outcome,
        client=handler.client_address[0],
        duration_ms=round(1000 * (time.monotonic() - handler._started), 1),
    )


class _DeadlineReader(io.RawIOBase):
    """A connection's bytes, each read waiting at most ``read_timeout`` seconds and none going
    past ``deadline`` (``time.monotonic``): TimeoutError then. A socket timeout alone bounds each
    read, so a client sending a byte every few seconds could hold a thread for ever."""

    def __init__(self, connection: socket.socket, deadline: float, read_timeout: float) -> None:
        super().__init__()
        self._connection = connection
        self._deadline = deadline
        self._read_timeout = read_timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request was not complete by its deadline")
        self._connection.settimeout(min(self._read_timeout, left))
        return self._connection.recv_into(buffer)


_BUSY_BODY = json.dumps({"error": "busy: too many connections, retry later"}).encode()
_BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: 5\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
    % (len(_BUSY_BODY), _BUSY_BODY)
)


class _Server(ThreadingHTTPServer):
    """One thread per connection, at most ``max_handlers`` at once; client hang-ups logged,
    not printed as tracebacks."""

    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], handler: type, max_handlers: int, *, tls: bool
    ) -> None:
        self._slots = threading.BoundedSemaphore(max_handlers)
        self._tls = tls
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            _log.info("%s refused: %s", client_address[0], "busy")
            if not self._tls:  # a plain 503 would be noise to a TLS client: just close
                _refuse(request)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: its slot is free again
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, ssl.SSLError):  # e.g. TLSV1_ALERT_UNKNOWN_CA: the sender's trust
            _log.warning("%s TLS failed: %s", client_address[0], error.reason or error)
            return
        if isinstance(error, OSError):  # a hang-up, a reset, a timeout: the client's doing
            _log.info("%s connection ended: %s", client_address[0], type(error).__name__)
            return
        _log.error(
            "internal error on a request from %s: %s: %s",
            client_address[0],
            type(error).__name__,
            error,
            exc_info=bool(os.environ.get("REEF_DEBUG")),
        )


def _refuse(connection: socket.socket) -> None:
    """Answer 503 without a thread: one non-blocking send into an empty socket buffer."""
    with contextlib.suppress(OSError):
        connection.setblocking(False)
        connection.send(_BUSY)
        connection.shutdown(socket.SHUT_WR)
        connection.recv(65536)  # what the client sent already: closing then does not reset
