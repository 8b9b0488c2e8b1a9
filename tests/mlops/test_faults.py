"""Faults and load against a real `mlflow server` on 127.0.0.1 (SQLite) with the store plugin:
workers killed with SIGKILL at random points of a registration stream, the server restarted
mid-stream, and a burst of 100 registrations. The long runs are marked `long` and run with `pytest --long`;
the unit checks of the worker's outage rule always run."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from reef_forensics.cli.main import main
from reef_forensics.mlops.config import Config, load_config
from reef_forensics.mlops.jobqueue import JobQueue
from reef_forensics.mlops.screener import REGISTRY_DOWN, registry_unreachable
from reef_forensics.mlops.worker import Worker
from tests.mlops.test_mlflow import (  # noqa: F401  (deployment and offline are fixtures used below)
    PASS,
    REEF,
    deployment,
    drain,
    free_port,
    offline,
    register,
    start_server,
    tags,
    wait_for,
)

# --- the outage rule ------------------------------------------------------------------------------


def test_what_counts_as_an_unreachable_registry() -> None:
    from mlflow.exceptions import MlflowException

    assert registry_unreachable(ConnectionRefusedError(111, "Connection refused"))
    wrapped = MlflowException(
        "API request to http://127.0.0.1:9/api/2.0/mlflow/model-versions/get failed with "
        "exception HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded"
    )
    assert registry_unreachable(wrapped)
    try:
        try:
            raise ConnectionResetError("reset by peer")
        except ConnectionResetError as inner:
            raise RuntimeError("download failed") from inner
    except RuntimeError as outer:
        assert registry_unreachable(outer)
    assert not registry_unreachable(MlflowException("RESOURCE_DOES_NOT_EXIST: no version 9"))
    assert not registry_unreachable(ValueError("bad config"))


def test_a_job_waits_out_an_unreachable_registry_without_spending_attempts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    config = Config(
        tracking_uri=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        queue=tmp_path / "queue.sqlite",
        work_dir=tmp_path / "work",
        max_attempts=1,  # one failure would be final: a deferral must not count
        backoff_seconds=0.1,
    )
    queue = config.open_queue()
    queue.enqueue("model", "1")
    worker = Worker(config, queue)
    for _ in range(3):
        job = queue.claim("test", now=time.time() + 60)
        assert job is not None
        assert worker.handle(job) == "pending"
    (job,) = queue.jobs()
    assert job.state == "pending" and job.attempts == 0
    assert job.last_error == REGISTRY_DOWN


# --- helpers for the long runs --------------------------------------------------------------------


def start_worker(config: Path) -> subprocess.Popen[bytes]:
    """A worker process; its output goes to a log beside the configuration (the secret-leak
    scan of conftest.py reads every log)."""
    logs = config.parent / "worker-logs"
    logs.mkdir(exist_ok=True)
    with (logs / f"worker-{time.monotonic_ns()}.log").open("wb") as log:
        return subprocess.Popen(
            [REEF, "worker", "--config", str(config), "--poll", "0.2"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "REEF_KEY_PASSPHRASE": PASS},
        )


def held_job(queue: Path, pid: int) -> int | None:
    """The id of the job that the worker process ``pid`` holds, if any."""
    with sqlite3.connect(queue, timeout=30) as db:
        row = db.execute(
            "SELECT id FROM jobs WHERE state = 'running' AND worker LIKE ?", (f"%:{pid}",)
        ).fetchone()
    return None if row is None else int(row[0])


def new_versions(url: str, name: str, count: int) -> list[str]:
    """``count`` new versions of ``name`` from the files of flagship v1 (MLflow's own client)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(url, url)
    source = client.get_model_version("flagship", "1")
    try:
        client.create_registered_model(name)
    except MlflowException as exc:  # made by an earlier call
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    made = []
    for _ in range(count):
        version = client.create_model_version(
            name,
            source.source,
            source.run_id,
            model_id=source.model_id or source.source.removeprefix("models:/"),
        )
        made.append(str(version.version))
    return made


def assert_fingerprinted_once(site: dict[str, Any], name: str, versions: list[str]) -> None:
    """Each version: done, with digests and one fingerprint holding exactly the files of an
    undisturbed one; the queue holds one finished job per version, no more."""
    from mlflow import MlflowClient

    url = site["url"]
    client = MlflowClient(url, url)
    jobs = [j for j in JobQueue(site["queue"]).jobs() if j.name == name]
    assert sorted(j.version for j in jobs) == sorted(versions)  # one job per version
    assert {j.state for j in jobs} == {"done"}, [(j.version, j.state, j.last_error) for j in jobs]

    def files(name: str, version: str) -> set[str]:
        found = tags(url, name, version)
        run_id, path = found["reef.fingerprint.uri"].removeprefix("runs:/").split("/", 1)
        listed = client.list_artifacts(run_id, path)  # the service's evidence run
        return {Path(a.path).name for a in listed}

    expected = files("flagship", "1")  # fingerprinted once, by a worker nobody killed
    assert {"fingerprint.json", "model.sig"} < expected
    for version in versions:
        found = tags(url, name, version)
        assert found["reef.status"] == "done", (version, found.get("reef.status.reason"))
        assert found["reef.fingerprint.digest"].startswith("sha256:")
        assert files(name, version) == expected, version


@pytest.fixture(scope="module")
def stream_deployment(deployment: dict[str, Any], zoo: dict[str, Path]) -> dict[str, Any]:  # noqa: F811
    register(deployment["url"], zoo["victim"], "flagship")
    drain(deployment)
    return deployment


# --- faults ---------------------------------------------------------------------------------------


@pytest.mark.long
def test_twenty_sigkills_during_a_registration_stream_lose_and_duplicate_nothing(
    stream_deployment: dict[str, Any], tmp_path: Path
) -> None:
    site = stream_deployment
    url, queue = site["url"], site["queue"]
    chance = random.Random(2026)
    # every kill counts as an attempt: with 3 allowed, a job killed 3 times would fail (the
    # poison-pill rule, tests/mlops/test_jobqueue.py); here the kills are the test's, not the job's
    config = site["root"] / "reef-many-attempts.toml"
    config.write_text(site["config"].read_text().replace("max_attempts = 3", "max_attempts = 25"))
    versions: list[str] = []
    streaming = threading.Event()
    streaming.set()

    def stream() -> None:  # one registration a second until the last kill
        while streaming.is_set():
            versions.extend(new_versions(url, "stream", 1))
            time.sleep(1.0)

    registrations = threading.Thread(target=stream)
    registrations.start()
    kills = mid_job = 0
    started = time.monotonic()
    try:
        while kills < 20:
            worker = start_worker(config)
            try:
                # a random point: 0 to 8 s after the worker took its first job (the oldest
                # due: the job the last kill interrupted, if any). A worker's first job takes
                # 2 to 5 s (loading), later ones under a second, and one arrives each second:
                # the kills land in first jobs, in later ones, and between jobs
                try:
                    wait_for(lambda w=worker: held_job(queue, w.pid), 120, "the worker claims")
                except AssertionError as exc:
                    jobs = [(j.version, j.state, j.attempts) for j in JobQueue(queue).jobs()]
                    raise AssertionError(f"{exc} after {kills} kills; jobs {jobs}") from None
                time.sleep(chance.uniform(0.0, 8.0))
                mid_job += held_job(queue, worker.pid) is not None
            finally:
                worker.send_signal(signal.SIGKILL)
                worker.wait()
            kills += 1
    finally:
        streaming.clear()
        registrations.join()
    loaded = load_config(config)
    wait_for(  # leases (3 s here) run out; the jobs are taken again
        lambda: (
            Worker(loaded, loaded.open_queue()).run(until_empty=True) >= 0
            and JobQueue(queue).counts()["running"] == 0
        ),
        600,
        "the queue drained",
    )
    assert len(versions) >= 20
    assert_fingerprinted_once(site, "stream", versions)
    jobs = [j for j in JobQueue(queue).jobs() if j.name == "stream"]
    retaken = sum(1 for j in jobs if j.attempts > 1)
    retakes = sum(j.attempts - 1 for j in jobs)  # a job killed twice is taken twice more
    assert mid_job >= 1 and retakes >= mid_job  # some kills landed inside jobs: taken again
    figures = {
        "kills": kills,
        "kills_mid_job": mid_job,
        "versions": len(versions),
        "jobs_retaken": retaken,
        "retakes": retakes,
        "max_attempts_seen": max(j.attempts for j in jobs),
        "seconds": round(time.monotonic() - started, 1),
    }
    print("faults.sigkill", json.dumps(figures))
    (tmp_path / "figures.json").write_text(json.dumps(figures))


@pytest.mark.long
def test_the_queue_resumes_after_the_mlflow_server_restarts(
    tmp_path: Path,
    offline: None,  # noqa: F811
    zoo: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from reef_forensics.crypto.keys import generate_keys
    from reef_forensics.formats.probes import load_probes

    root = tmp_path / "restart"
    keys = generate_keys(root / "keys", PASS.encode())
    queue = root / "queue.sqlite"
    probes = root / "probes.txt"
    probes.write_text("\n".join(load_probes().texts[:60]) + "\n")
    port = free_port()
    config = root / "reef.toml"
    config.write_text(
        f'tracking_uri = "http://127.0.0.1:{port}"\nqueue = "{queue}"\nwork_dir = "{root / "work"}"\n'
        f'probes = "{probes}"\n[signing]\nkey = "{keys.private_key}"\n'
        "[worker]\nlease_seconds = 5\nbackoff_seconds = 0.5\nmax_attempts = 2\n"
    )
    env = {"REEF_QUEUE": str(queue)}
    # Fail fast while it is down: a stopped server refuses connections at once, so no short
    # timeout is needed for that. The generous read timeout is for this test's own
    # registrations, which a loaded CI machine can hold up past 5 s (the first request to a
    # freshly started server imports the store plugin); a retried create could register twice.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")
    first = start_server(root / "server", plugin=True, env=env, port=port)
    url = next(first)
    register(url, zoo["victim"], "flagship")
    before = new_versions(url, "restart", 6)
    stop = threading.Event()
    loaded = load_config(config)
    worker = Worker(loaded, loaded.open_queue())
    thread = threading.Thread(target=lambda: worker.run(poll_seconds=0.2, stop=stop.is_set))
    thread.start()
    servers = [first]
    try:
        wait_for(lambda: JobQueue(queue).counts()["done"] >= 2, 180, "two jobs done")
        first.close()  # the server goes down mid-stream
        wait_for(
            lambda: any(j.last_error == REGISTRY_DOWN for j in JobQueue(queue).jobs()),
            60,
            "a job waits for the registry",
        )
        time.sleep(3)  # a few more rounds against the dead server
        second = start_server(root / "server", plugin=True, env=env, port=port)
        servers.append(second)
        assert next(second) == url
        versions = before + new_versions(url, "restart", 4)
        wait_for(
            lambda: JobQueue(queue).counts()["done"] == 1 + len(versions),
            300,
            "every version done after the restart",
        )
    finally:
        stop.set()
        thread.join()
        for server in servers:
            server.close()
    jobs = [j for j in JobQueue(queue).jobs() if j.name == "restart"]
    assert sorted(j.version for j in jobs) == sorted(versions) and {j.state for j in jobs} == {
        "done"
    }
    assert max(j.attempts for j in jobs) <= 2  # the outage spent no attempts (max_attempts 2)


# --- load -----------------------------------------------------------------------------------------


@pytest.mark.long
def test_a_hundred_registrations_in_a_burst_are_all_fingerprinted(
    stream_deployment: dict[str, Any],
) -> None:
    site = stream_deployment
    url = site["url"]
    new_versions(url, "load", 0)  # the registered model, before the burst
    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        made = list(pool.map(lambda _: new_versions(url, "load", 1)[0], range(100)))
    burst = time.monotonic() - started
    assert len(set(made)) == 100
    statuses = {tags(url, "load", v).get("reef.status") for v in made}
    assert statuses <= {"pending", "running", "done"}  # each queued in its own transaction
    started = time.monotonic()
    workers = [start_worker(site["config"]) for _ in range(2)]
    try:
        wait_for(
            lambda: all(j.state == "done" for j in JobQueue(site["queue"]).jobs()),
            900,
            "100 versions fingerprinted",
        )
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
            worker.wait()
    drained = time.monotonic() - started
    assert_fingerprinted_once(site, "load", made)
    print(
        "load.burst",
        json.dumps(
            {
                "registrations": 100,
                "burst_seconds": round(burst, 2),
                "registrations_per_second": round(100 / burst, 1),
                "fingerprint_seconds_2_workers": round(drained, 1),
                "fingerprints_per_minute": round(100 * 60 / drained, 1),
            }
        ),
    )


def test_the_fingerprint_of_a_stream_version_verifies(
    stream_deployment: dict[str, Any], tmp_path: Path
) -> None:
    """One of the fault fixture's own versions, downloaded from MLflow, verifies (always runs:
    it keeps the long runs' fixture honest)."""
    import mlflow

    url = stream_deployment["url"]
    found = tags(url, "flagship", 1)
    assert found["reef.status"] == "done"
    folder = mlflow.artifacts.download_artifacts(
        artifact_uri=found["reef.fingerprint.uri"], dst_path=str(tmp_path), tracking_uri=url
    )
    ca = stream_deployment["keys"].ca_certificate
    assert main(["verify", folder, "--trust", str(ca)]) == 0
