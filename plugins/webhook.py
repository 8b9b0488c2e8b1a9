"""The webhook receiver: MLflow's ``model_version.created`` deliveries into the job queue.

For servers that cannot load the registry-store plugin. MLflow signs each delivery:
``X-MLflow-Signature: v1,<base64 HMAC-SHA256 of "{delivery id}.{timestamp}.{body}">`` with the
webhook's secret, and sends ``X-MLflow-Delivery-Id`` and ``X-MLflow-Timestamp``. A delivery is
accepted only when the signature matches (else 401), the timestamp is within ``max_age`` seconds
of now (else 401: a stale or future delivery), and the delivery id was not seen before (a
replay is answered 200 and queues nothing). Other events are acknowledged and ignored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from reef_forensics.files import lone_surrogate, parse_json
from reef_forensics.jobqueue import JobQueue

MAX_BODY = 1 << 20
_log = logging.getLogger(__name__)


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
) -> ThreadingHTTPServer:
    """The receiver. A client that sends less body than it announced is dropped after
    ``read_timeout`` seconds of silence, not waited for forever."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "reef-forensics-webhook"
        timeout = read_timeout  # on each connection's socket (socketserver.StreamRequestHandler)

        def do_POST(self) -> None:
            length = content_length(self.headers.get("Content-Length"))
            if length is None:
                self.close_connection = True  # the body's end is unknown: nothing after it
                self._answer(HTTPStatus.BAD_REQUEST, {"error": "bad Content-Length"})
                return
            if length > MAX_BODY:
                self._answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "too large"})
                return
            body = self.rfile.read(length)
            status, answer = handle_delivery(queue, secret, self.headers, body, max_age=max_age)
            self._answer(status, answer)

        def do_GET(self) -> None:
            self._answer(HTTPStatus.OK, {"status": "ok", "jobs": queue.counts()})

        def _answer(self, status: int, answer: dict[str, Any]) -> None:
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            _log.info("%s %s", self.address_string(), format % args)

    return ThreadingHTTPServer((host, port), Handler)
