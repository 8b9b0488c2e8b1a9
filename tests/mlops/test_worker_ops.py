"""The worker's operations side without an MLflow server: structured log lines per job, metrics
and their endpoint, skipped versions, reasons without scratch paths, a stop signal mid-job.
(tests/mlops/test_mlflow.py runs the same against a real server and a real worker process.)"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from reef_forensics.mlops.config import Config
from reef_forensics.mlops.jobqueue import Job
from reef_forensics.mlops.observability import configure_logging, log_event, serve_metrics
from reef_forensics.mlops.screener import JobFailed, JobSkipped
from reef_forensics.mlops.worker import Worker
from reef_forensics.mlops.worker_ops import scrub, stop_signals


def log_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.fixture
def worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Worker, list[tuple[str, str]]]:
    """A worker whose registry is a list of tags (no server), with one job queued."""
    config = Config(
        tracking_uri="http://127.0.0.1:9",
        queue=tmp_path / "queue.sqlite",
        work_dir=tmp_path / "work",
        probes="builtin:default",
        backoff_seconds=0.1,
        reconcile_seconds=0,  # no registry to reconcile with
    )
    queue = config.open_queue()
    queue.enqueue("model", "1")
    made = Worker(config, queue)
    tags: list[tuple[str, str]] = []
    monkeypatch.setattr(made, "tag", lambda name, version, key, value: tags.append((key, value)))
    configure_logging()
    return made, tags


def test_log_lines_are_json_with_a_utc_timestamp(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging()
    log_event("job.finish", job=7, model="m", status="done", duration_s=1.5)
    (line,) = log_lines(capsys.readouterr().err)
    stamp = datetime.fromisoformat(line["ts"].replace("Z", "+00:00"))
    assert abs(datetime.now(timezone.utc) - stamp) < timedelta(seconds=30)
    assert line["ts"].endswith("Z") and line["level"] == "info"
    assert (line["event"], line["job"], line["status"], line["duration_s"]) == (
        "job.finish",
        7,
        "done",
        1.5,
    )


def test_each_job_is_logged_and_counted(
    worker: tuple[Worker, list[tuple[str, str]]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    made, _ = worker
    monkeypatch.setattr(made, "process", lambda job: time.sleep(0.05))
    assert made.run(until_empty=True) == 1
    events = log_lines(capsys.readouterr().err)
    assert [e["event"] for e in events] == [
        "worker.start",
        "job.start",
        "job.finish",
        "worker.stop",
    ]
    finish = events[2]
    assert (finish["model"], finish["version"], finish["status"]) == ("model", "1", "done")
    assert finish["job"] == 1 and 0.05 <= finish["duration_s"] < 5
    assert made.metrics is not None
    text = made.metrics.exposition().decode()
    assert 'reef_jobs_processed_total{outcome="done"} 1.0' in text
    assert 'reef_job_duration_seconds_count{outcome="done"} 1.0' in text
    assert 'reef_jobs{state="done"} 1.0' in text


def test_a_failure_is_logged_with_its_reason_and_no_scratch_path(
    worker: tuple[Worker, list[tuple[str, str]]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    made, tags = worker
    scratch = made.config.work_dir / "reef-job-abc123"

    def broken(job: Job) -> None:
        raise JobFailed(f"cannot read {scratch}/model/download/config.json: bad", retry=False)

    monkeypatch.setattr(made, "process", broken)
    made.run(until_empty=True)
    failure = [e for e in log_lines(capsys.readouterr().err) if e["event"] == "job.failure"]
    assert len(failure) == 1 and failure[0]["level"] == "warning"
    assert failure[0]["status"] == "failed" and failure[0]["ts"].endswith("Z")
    expected = "cannot read model/download/config.json: bad"
    assert failure[0]["reason"] == expected
    (job,) = made.queue.jobs()
    assert job.last_error == expected
    assert ("reef.status.reason", expected) in tags
    assert str(made.config.work_dir) not in json.dumps([tags, failure, job.last_error])


def test_a_version_that_is_not_a_transformers_model_is_skipped_not_failed(
    worker: tuple[Worker, list[tuple[str, str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    made, tags = worker
    reason = "not a transformers model (MLflow flavors: python_function, sklearn): ..."

    def pyfunc(job: Job) -> None:
        raise JobSkipped(reason)

    monkeypatch.setattr(made, "process", pyfunc)
    made.run(until_empty=True)
    (job,) = made.queue.jobs()
    assert (job.state, job.attempts, job.last_error) == ("skipped", 1, reason)
    assert tags == [("reef.status", "skipped"), ("reef.status.reason", reason)]
    assert made.queue.claim("another") is None  # never retried


def test_a_stop_signal_mid_job_hands_the_job_back(
    worker: tuple[Worker, list[tuple[str, str]]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    made, tags = worker
    reached_the_end = []

    def long_job(job: Job) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # the signal's handler raises in here
        reached_the_end.append(job)

    monkeypatch.setattr(made, "process", long_job)
    started = time.monotonic()
    with stop_signals(made.request_stop):
        assert made.run() == 1  # no until_empty: only the signal ends the loop
    assert time.monotonic() - started < 5 and reached_the_end == []
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # put back
    (job,) = made.queue.jobs()
    assert (job.state, job.attempts) == ("pending", 0)  # released, the attempt not counted
    assert ("reef.status", "pending") in tags
    events = log_lines(capsys.readouterr().err)
    finish = [e for e in events if e["event"] == "job.finish"]
    assert finish[0]["outcome"] == "released" and events[-1]["event"] == "worker.stop"


def test_scrub_keeps_what_is_below_the_scratch_folder(tmp_path: Path) -> None:
    work = tmp_path / "work"
    assert scrub(f"no file {work}/reef-job-x1/model/a.json", work) == "no file model/a.json"
    assert scrub(f"in {work}/other/b", work) == "in <scratch>"
    assert scrub("cannot download models:/m/1: 404", work) == "cannot download models:/m/1: 404"


def get(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_the_worker_metrics_endpoint_wants_the_token(
    worker: tuple[Worker, list[tuple[str, str]]],
) -> None:
    made, _ = worker
    assert made.metrics is not None
    server, _ = serve_metrics("127.0.0.1", 0, made.metrics, "t0ken")
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert get(base + "/healthz") == (200, '{"status": "ok"}')
        assert get(base + "/metrics")[0] == 401
        assert get(base + "/metrics", "wrong")[0] == 401
        status, text = get(base + "/metrics", "t0ken")
        assert status == 200 and 'reef_jobs{state="pending"} 1.0' in text
        assert get(base + "/")[0] == 404 and get(base + "/jobs", "t0ken")[0] == 404
    finally:
        server.shutdown()
        server.server_close()
    unprotected, _ = serve_metrics("127.0.0.1", 0, made.metrics, None)
    try:  # no token configured: /metrics answers no one
        assert get(f"http://127.0.0.1:{unprotected.server_address[1]}/metrics", "")[0] == 401
    finally:
        unprotected.shutdown()
        unprotected.server_close()
