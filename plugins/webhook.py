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
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

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
    except ValueError:
        return HTTPStatus.UNAUTHORIZED, {"error": "bad timestamp"}
    if abs(age) > max_age:
        return HTTPStatus.UNAUTHORIZED, {"error": "stale or future timestamp"}
    try:
        payload = json.loads(body)
        event = f"{payload['entity']}.{payload['action']}"
        data = payload["data"]
    except (ValueError, KeyError, TypeError):
        return HTTPStatus.BAD_REQUEST, {"error": "not an MLflow webhook payload"}
    if queue.seen_delivery(delivery_id):
        return HTTPStatus.OK, {"status": "replay ignored"}
    if event != "model_version.created":
        return HTTPStatus.OK, {"status": f"event {event} ignored"}
    try:
        name, version = str(data["name"]), str(data["version"])
    except (KeyError, TypeError):
        return HTTPStatus.BAD_REQUEST, {"error": "the payload names no model version"}
    created = queue.enqueue(name, version, data.get("source"))
    return HTTPStatus.OK, {"status": "queued" if created else "already queued"}


def make_server(
    host: str, port: int, queue: JobQueue, secret: str, max_age: float
) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        server_version = "reef-forensics-webhook"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
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
