"""Operations: structured logs, Prometheus metrics, and the GET side of the HTTP endpoints.

- `configure_logging` makes every ``reef_forensics`` log record one JSON line on stderr, with a
  UTC timestamp (``ts``), the level, the logger, the message and any fields the record carries.
  `log_event` emits such a line with named fields (``event="job.finish"``, ``job=3``, ...).
- `Metrics` holds one process's Prometheus metrics in a registry of its own: jobs by state (read
  from the queue when scraped), jobs processed by outcome, job durations, webhook requests.
- `answer_get` is what ``GET`` answers on `serve` and on the worker's ``--metrics-port``:
  ``/healthz`` 200 to anyone; ``/metrics`` only with ``Authorization: Bearer TOKEN`` (the token
  from the environment variable the configuration names, ``REEF_METRICS_TOKEN`` by default;
  compared in constant time); every other path 404. Nothing about the queue is told to a caller
  who has not authenticated.
"""

from __future__ import annotations

import hmac
import json
import logging
import sys
import threading
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

EVENTS = "reef_forensics.events"
_events = logging.getLogger(EVENTS)
_events.addHandler(logging.NullHandler())  # unconfigured (the library, the demo): silent
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``ts`` (UTC, ISO 8601, milliseconds), ``level``, ``logger``,
    ``msg`` (or ``event`` for `log_event` lines) and the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, tz=timezone.utc)
        line: dict[str, Any] = {
            "ts": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        key = "event" if record.name == EVENTS else "msg"
        line[key] = record.getMessage()
        line.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (not when configured)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        pass


def configure_logging(level: int = logging.INFO) -> None:
    """Send the ``reef_forensics`` loggers to stderr as JSON lines; idempotent."""
    root = logging.getLogger("reef_forensics")
    for handler in list(root.handlers):
        if isinstance(handler, _StderrHandler):
            root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level)


def log_event(event: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """One structured line, e.g. ``log_event("job.finish", job=3, status="done")``."""
    _events.log(level, event, extra=fields)


# --- metrics --------------------------------------------------------------------------------------


class _QueueCollector(Collector):
    """``reef_jobs{state=...}``: the queue's counts, read when scraped."""

    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("reef_jobs", "Jobs in the queue by state", labels=["state"])
        for state, count in self._counts().items():
            family.add_metric([state], count)
        yield family


class Metrics:
    """One process's metrics, in a registry of its own (tests make as many as they like)."""

    def __init__(self, counts: Callable[[], dict[str, int]] | None = None) -> None:
        self.registry = CollectorRegistry()
        self.jobs_processed = Counter(
            "reef_jobs_processed",
            "Jobs a worker handled, by outcome (done, failed, retry, skipped, waiting, released)",
            ["outcome"],
            registry=self.registry,
        )
        self.job_seconds = Histogram(
            "reef_job_duration_seconds",
            "Seconds a worker spent on one job, by outcome",
            ["outcome"],
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 3600, float("inf")),
            registry=self.registry,
        )
        self.requests = Counter(
            "reef_http_requests",
            "HTTP requests answered, by method and status",
            ["method", "status"],
            registry=self.registry,
        )
        if counts is not None:
            self.registry.register(_QueueCollector(counts))

    def job(self, outcome: str, seconds: float) -> None:
        self.jobs_processed.labels(outcome).inc()
        self.job_seconds.labels(outcome).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def authorized(header: str | None, token: str | None) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer TOKEN`` (constant time); never when
    no token is configured."""
    if not token or not header:
        return False
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


def answer_get(
    path: str, authorization: str | None, metrics: Metrics | None, token: str | None
) -> tuple[int, str, bytes]:
    """(status, content type, body) for a GET: ``/healthz``, ``/metrics`` (bearer token), 404."""
    route = path.split("?", 1)[0]
    if route == "/healthz":
        return HTTPStatus.OK, "application/json", b'{"status": "ok"}'
    if route == "/metrics" and metrics is not None:
        if not authorized(authorization, token):
            return (
                HTTPStatus.UNAUTHORIZED,
                "application/json",
                b'{"error": "metrics need Authorization: Bearer TOKEN"}',
            )
        return HTTPStatus.OK, CONTENT_TYPE, metrics.exposition()
    return HTTPStatus.NOT_FOUND, "application/json", b'{"error": "not found"}'


def serve_metrics(
    host: str, port: int, metrics: Metrics, token: str | None
) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """The worker's ``--metrics-port`` endpoint (``/healthz``, ``/metrics``) on a daemon
    thread; ``server.shutdown()`` stops it."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "reef-forensics-worker"
        timeout = 10

        def do_GET(self) -> None:
            status, kind, body = answer_get(
                self.path, self.headers.get("Authorization"), metrics, token
            )
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes every few seconds: not worth a line each

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    return server, thread
