"""The MLflow integration against a real `mlflow server` on 127.0.0.1 with a SQLite backend: the
registry-store plugin queues each registration, the worker fingerprints and screens it, the
webhook receiver takes MLflow's own signed deliveries."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from reef_forensics.cli.main import main
from reef_forensics.crypto.keys import generate_keys
from reef_forensics.demo.toy_models import make_model
from reef_forensics.mlops.config import load_config
from reef_forensics.mlops.jobqueue import JobQueue
from reef_forensics.mlops.worker import Worker
from tests.tls_certs import make_server_certs

PASS = "mlflow-test"
MLFLOW = str(Path(sys.executable).parent / "mlflow")
REEF = str(Path(sys.executable).parent / "reef-forensics")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], Any], seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"not within {seconds} s: {what}")


def start_server(
    root: Path, *, plugin: bool, env: dict[str, str], port: int | None = None
) -> Iterator[str]:
    """A server on 127.0.0.1 (a free port unless ``port``); stopped when the generator closes.
    Its log is appended to ``root/server.log``, so a restart on the same root keeps the first."""
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    db = f"sqlite:///{root / 'mlflow.db'}"
    command = [
        MLFLOW, "server", "--backend-store-uri", db,
        "--registry-store-uri", ("reef+" if plugin else "") + db,
        "--default-artifact-root", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    log = (root / "server.log").open("a")
    process = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **env},
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        import urllib.request

        def healthy() -> bool:
            if process.poll() is not None:
                raise AssertionError(
                    "mlflow server exited:\n" + (root / "server.log").read_text()[-3000:]
                )
            try:
                with urllib.request.urlopen(url + "/health", timeout=1) as answer:
                    return bool(answer.status == 200)
            except OSError:
                return False

        wait_for(healthy, 90, "mlflow server healthy")
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def offline() -> Iterator[None]:
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")  # mlflow's transformers flavor looks for a model card
    mp.setenv("REEF_KEY_PASSPHRASE", PASS)
    yield
    mp.undo()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, offline: None) -> Iterator[dict[str, Any]]:
    """A server with the store plugin, a queue, keys, a small probe file and a configuration."""
    root = tmp_path_factory.mktemp("mlflow")
    keys = generate_keys(root / "keys", PASS.encode())
    from reef_forensics.formats.probes import load_probes

    probes = root / "probes.txt"
    probes.write_text("\n".join(load_probes().texts[:60]) + "\n")
    queue = root / "queue.sqlite"
    for url in start_server(root / "server", plugin=True, env={"REEF_QUEUE": str(queue)}):
        config = root / "reef.toml"
        config.write_text(
            f'tracking_uri = "{url}"\nqueue = "{queue}"\nprobes = "{probes}"\nwork_dir = "{root / "work"}"\n'
            f'[signing]\nkey = "{keys.private_key}"\ncert = "{keys.signer_certificate}"\n'
            "[worker]\nlease_seconds = 3\nbackoff_seconds = 0.2\nmax_attempts = 3\n"
        )
        yield {"url": url, "queue": queue, "config": config, "keys": keys, "root": root}


def register(url: str, model_dir: Path, name: str) -> Any:
    """What a user does: log a transformers model and register it, with MLflow's own API."""
    import mlflow
    from transformers import AutoModelForCausalLM, AutoTokenizer

    mlflow.set_tracking_uri(url)
    mlflow.set_registry_uri(url)
    mlflow.set_experiment("users")
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with mlflow.start_run():
        info = mlflow.transformers.log_model(
            {"model": model, "tokenizer": tokenizer},
            name="model",
            task="text-generation",
            registered_model_name=name,
            pip_requirements=["transformers"],
        )
    return info


def register_pyfunc(url: str, name: str) -> None:
    """Register a python_function model that is no transformers model (it echoes its input)."""
    import mlflow

    class Echo(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
        def predict(self, context: Any, model_input: Any, params: Any = None) -> Any:
            return model_input

    mlflow.set_tracking_uri(url)
    mlflow.set_registry_uri(url)
    mlflow.set_experiment("users")
    with mlflow.start_run():
        mlflow.pyfunc.log_model(name="model", python_model=Echo(), registered_model_name=name)


def tags(url: str, name: str, version: str | int) -> dict[str, str]:
    from mlflow import MlflowClient

    return dict(MlflowClient(url, url).get_model_version(name, str(version)).tags)


def run_worker(deployment: dict[str, Any]) -> int:
    config = load_config(deployment["config"])
    return Worker(config, config.open_queue()).run(until_empty=True)


def drain(deployment: dict[str, Any], seconds: float = 120) -> None:
    """Run the worker until no job is pending or running (retries have short backoffs here)."""
    queue = JobQueue(deployment["queue"])

    def idle() -> bool:
        run_worker(deployment)
        counts = queue.counts()
        return counts["pending"] == 0 and counts["running"] == 0

    wait_for(idle, seconds, "the queue drained")


@pytest.fixture(scope="module")
def registered(deployment: dict[str, Any], zoo: dict[str, Path], probes: Any) -> dict[str, Any]:
    """A victim and three references, registered, fingerprinted and given their roles."""
    from mlflow import MlflowClient

    url = deployment["url"]
    refs_root = deployment["root"] / "refs"
    register(url, zoo["victim"], "flagship")
    for i in range(3):
        model = make_model(refs_root / f"ref{i}", probes.texts, family="llama", seed=300 + i)
        register(url, model, f"independent-{i}")
    drain(deployment)
    client = MlflowClient(url, url)
    client.set_model_version_tag("flagship", "1", "reef.role", "victim")
    for i in range(3):
        client.set_model_version_tag(f"independent-{i}", "1", "reef.role", "reference")
    return deployment


def test_registration_is_queued_fingerprinted_signed_and_screened(
    registered: dict[str, Any],
    zoo: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    import mlflow

    url, keys = registered["url"], registered["keys"]
    assert tags(url, "flagship", 1)["reef.status"] == "done"
    started = time.monotonic()
    register(url, zoo["derived"], "suspect")
    assert tags(url, "suspect", 1)["reef.status"] == "pending"  # set inside the registration
    drain(registered)
    assert time.monotonic() - started < 120
    found = tags(url, "suspect", 1)
    assert found["reef.status"] == "done", found
    for key in ("reef.model.digest", "reef.fingerprint.digest", "reef.probes.digest"):
        assert found[key].startswith("sha256:")
    screen = found["reef.screen.flagship.v1"]
    verdict = screen.split()[0]
    assert verdict in ("derived", "inconclusive"), screen
    assert "refs=3" in screen
    fingerprint = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=found["reef.fingerprint.uri"],
            dst_path=str(tmp_path / "fp"),
            tracking_uri=url,
        )
    )
    code = main(["verify", str(fingerprint), "--trust", str(keys.ca_certificate)])
    assert code == 0
    base = found["reef.fingerprint.uri"].removesuffix("/fingerprint") + "/screening/flagship.v1"
    screening = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=base, dst_path=str(tmp_path / "screening"), tracking_uri=url
        )
    )
    assert main(["verify", str(screening / "findings"), "--trust", str(keys.ca_certificate)]) == 0
    capsys.readouterr()
    code = main(["verify", str(screening / "report.pdf"), "--trust", str(keys.ca_certificate)])
    out = capsys.readouterr().out
    assert code == 0, out
    record = json.loads((screening / "findings" / "findings.json").read_text())
    assert (
        record["verdict"] == verdict
        and record["suspect"]["digest"] == found["reef.fingerprint.digest"]
    )
    assert record["victim"]["digest"] == tags(url, "flagship", 1)["reef.fingerprint.digest"]


def test_an_unloadable_registration_fails_with_a_reason_and_the_queue_goes_on(
    registered: dict[str, Any], zoo: dict[str, Path], tmp_path: Path
) -> None:
    import mlflow
    from mlflow import MlflowClient

    url = registered["url"]
    client = MlflowClient(url, url)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "README.txt").write_text("not a model\n")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(notes), artifact_path="notes")
    client.create_registered_model("broken")
    client.create_model_version("broken", f"runs:/{run.info.run_id}/notes", run.info.run_id)
    register(url, zoo["unrelated"], "after-broken")
    drain(registered)
    broken = tags(url, "broken", 1)
    assert broken["reef.status"] == "failed"
    assert "cannot be fingerprinted" in broken["reef.status.reason"]
    for leftover in (str(registered["root"]), "/tmp/", "reef-job-"):  # the scratch is gone
        assert leftover not in broken["reef.status.reason"], broken["reef.status.reason"]
    assert tags(url, "after-broken", 1)["reef.status"] == "done"
    assert tags(url, "after-broken", 1)["reef.screen.flagship.v1"].startswith("unrelated")
    jobs = {(j.name, j.version): j for j in JobQueue(registered["queue"]).jobs()}
    assert jobs[("broken", "1")].state == "failed" and jobs[("broken", "1")].attempts == 1


def test_twenty_registrations_in_a_burst_are_all_fingerprinted(registered: dict[str, Any]) -> None:
    from mlflow import MlflowClient

    url = registered["url"]
    client = MlflowClient(url, url)
    source = client.get_model_version("flagship", "1")
    client.create_registered_model("burst")
    errors: list[BaseException] = []

    def create() -> None:
        try:
            client.create_model_version(
                "burst",
                source.source,
                source.run_id,
                model_id=source.model_id or source.source.removeprefix("models:/"),
            )
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    versions = client.search_model_versions("name = 'burst'")
    assert len(versions) == 20
    drain(registered, seconds=240)
    statuses = [tags(url, "burst", v.version)["reef.status"] for v in versions]
    assert statuses == ["done"] * 20
    digests = {tags(url, "burst", v.version)["reef.model.digest"] for v in versions}
    assert digests == {tags(url, "flagship", 1)["reef.model.digest"]}  # the same files, each time


def test_a_worker_killed_mid_job_leaves_the_job_to_the_next(
    registered: dict[str, Any], zoo: dict[str, Path]
) -> None:
    url = registered["url"]
    register(url, zoo["victim"], "killed")
    worker = subprocess.Popen(
        [REEF, "worker", "--config", str(registered["config"]), "--poll", "0.2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "REEF_KEY_PASSPHRASE": PASS},
    )
    try:
        wait_for(lambda: tags(url, "killed", 1).get("reef.status") == "running", 60, "job running")
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    assert tags(url, "killed", 1)["reef.status"] == "running"  # killed mid-job
    drain(registered)  # the lease (3 s here) runs out; the next worker takes the job again
    assert tags(url, "killed", 1)["reef.status"] == "done"
    (job,) = [j for j in JobQueue(registered["queue"]).jobs() if j.name == "killed"]
    assert job.state == "done" and job.attempts == 2


# --- operations (issue 17) -----------------------------------------------------------------------


def test_a_pyfunc_or_sklearn_version_is_skipped_with_the_reason(
    deployment: dict[str, Any], tmp_path: Path
) -> None:
    """Not a transformers model: nothing to fingerprint, and nothing wrong with it."""
    import mlflow
    import numpy as np
    from sklearn.linear_model import LinearRegression

    url = deployment["url"]
    register_pyfunc(url, "echo")
    with mlflow.start_run():
        regression = LinearRegression().fit(np.eye(3), np.arange(3))
        mlflow.sklearn.log_model(regression, name="lr", registered_model_name="regression")
    drain(deployment)
    for name, flavors in (("echo", "python_function"), ("regression", "python_function, sklearn")):
        found = tags(url, name, 1)
        assert found["reef.status"] == "skipped", found
        reason = found["reef.status.reason"]
        assert reason.startswith(f"not a transformers model (MLflow flavors: {flavors})"), reason
        assert "/tmp/" not in reason and str(deployment["root"]) not in reason
        (job,) = [j for j in JobQueue(deployment["queue"]).jobs() if j.name == name]
        assert (job.state, job.attempts, job.last_error) == ("skipped", 1, reason)


def test_sigterm_mid_job_hands_the_job_back_and_the_worker_exits_0(
    deployment: dict[str, Any], zoo: dict[str, Path]
) -> None:
    """A real worker process, stopped as an orchestrator stops it: the job is back in the queue
    at once (not `running` until its lease runs out), and the next worker finishes it."""
    url = deployment["url"]
    register(url, zoo["victim"], "terminated")
    slow = deployment["root"] / "slow.toml"  # the full probe set: the job lasts a while
    slow.write_text(
        deployment["config"]
        .read_text()
        .replace(f'probes = "{deployment["root"] / "probes.txt"}"', 'probes = "builtin:default"')
    )
    assert 'probes = "builtin:default"' in slow.read_text()
    log = deployment["root"] / "sigterm-worker.log"
    port = free_port()
    metrics = f"http://127.0.0.1:{port}/metrics"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [REEF, "worker", "--config", str(slow), "--poll", "0.2", "--metrics-port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "REEF_KEY_PASSPHRASE": PASS, "REEF_METRICS_TOKEN": "t0ken"},
        )
        try:
            wait_for(
                lambda: tags(url, "terminated", 1).get("reef.status") == "running", 90, "running"
            )
            assert get(metrics)[0] == 401  # no token
            status, text = get(metrics, {"Authorization": "Bearer t0ken"})
            assert status == 200 and 'reef_jobs{state="running"} 1.0' in text, text
            worker.send_signal(signal.SIGTERM)
            code = worker.wait(timeout=30)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    assert code == 0, log.read_text()[-3000:]
    (job,) = [j for j in JobQueue(deployment["queue"]).jobs() if j.name == "terminated"]
    assert (job.state, job.attempts) == ("pending", 0), job  # released, the attempt not counted
    assert tags(url, "terminated", 1)["reef.status"] == "pending"
    events = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    started = [e for e in events if e.get("event") == "job.start" and e["model"] == "terminated"]
    ended = [e for e in events if e.get("event") == "job.finish" and e["model"] == "terminated"]
    assert len(started) == 1 and started[0]["ts"].endswith("Z")
    assert len(ended) == 1 and ended[0]["outcome"] == "released" and ended[0]["duration_s"] > 0
    drain(deployment)
    assert tags(url, "terminated", 1)["reef.status"] == "done"


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers or {}), timeout=5
        ) as a:
            return a.status, a.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_serve_answers_healthz_and_metrics_to_the_token_holder_only(tmp_path: Path) -> None:
    """`reef-forensics serve` as deployed: the token from the environment, JSON request logs."""
    port = free_port()
    (tmp_path / "reef.toml").write_text(f'queue = "{tmp_path / "q.sqlite"}"\n')
    JobQueue(tmp_path / "q.sqlite").enqueue("m", "1")
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [REEF, "serve", "--config", str(tmp_path / "reef.toml"), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "REEF_WEBHOOK_SECRET": "s3cret", "REEF_METRICS_TOKEN": "t0ken"},
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for(lambda: "receiving" in log.read_text(), 60, "serve listening")
            assert get(base + "/healthz") == (200, '{"status": "ok"}')
            assert get(base + "/")[0] == 404
            assert get(base + "/metrics", {"Authorization": "Bearer s3cret"})[0] == 401
            status, text = get(base + "/metrics", {"Authorization": "Bearer t0ken"})
            assert status == 200 and 'reef_jobs{state="pending"} 1.0' in text
            assert 'reef_http_requests_total{method="GET",status="404"} 1.0' in text
        finally:
            server.send_signal(signal.SIGTERM)  # what a service manager sends
            code = server.wait(timeout=20)
    assert code == 0  # stopped on SIGTERM, cleanly
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    assert [(e["path"], e["status"]) for e in lines if e["event"] == "http.request"] == [
        ("/healthz", 200),
        ("/", 404),
        ("/metrics", 401),
        ("/metrics", 200),
    ]
    assert "t0ken" not in log.read_text() and "s3cret" not in log.read_text()


def _serve_stopped_under_load(config: Path, wanted: int) -> tuple[int | None, set[int]]:
    """Start `serve`, let three clients ask /healthz in a loop, send SIGTERM once ``wanted``
    answers came: the exit code (None: still running 20 s later) and the statuses seen."""
    import requests

    port = free_port()
    server = subprocess.Popen(
        [REEF, "serve", "--config", str(config), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "REEF_WEBHOOK_SECRET": "s3cret"},
    )
    answered: list[int] = []
    done = threading.Event()

    def hammer() -> None:
        while not done.is_set():
            with contextlib.suppress(requests.exceptions.RequestException):
                url = f"http://127.0.0.1:{port}/healthz"
                answered.append(requests.get(url, timeout=2).status_code)

    try:
        assert server.stdout is not None and "receiving" in server.stdout.readline()
        for _ in range(3):
            threading.Thread(target=hammer, daemon=True).start()
        wait_for(lambda: len(answered) >= wanted, 60, "requests answered")
        server.send_signal(signal.SIGTERM)
        try:
            return server.wait(timeout=20), set(answered)
        except subprocess.TimeoutExpired:
            return None, set(answered)
    finally:
        done.set()
        if server.poll() is None:
            server.kill()
            server.wait()


def test_serve_stops_on_sigterm_while_requests_keep_arriving(tmp_path: Path) -> None:
    """A stop signal that lands while the accept loop is handing a connection to its thread
    still stops `serve` (CI once saw one lost: the process ran on until a second SIGTERM)."""
    (tmp_path / "reef.toml").write_text(f'queue = "{tmp_path / "q.sqlite"}"\n')
    for attempt in range(4):
        code, statuses = _serve_stopped_under_load(tmp_path / "reef.toml", 20 + 10 * attempt)
        assert code == 0, attempt
        assert statuses == {200}


def test_config_check_contacts_the_tracking_server(
    deployment: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["config", "check", "--config", str(deployment["config"])]) == 0
    out = capsys.readouterr().out
    assert f"ok    tracking uri: {deployment['url']} (the MLflow server answered)" in out
    dead = tmp_path / "dead.toml"
    dead_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    dead.write_text(deployment["config"].read_text().replace(deployment["url"], dead_url))
    assert main(["config", "check", "--config", str(dead)]) == 1
    (line,) = [x for x in capsys.readouterr().out.splitlines() if "tracking uri" in x]
    assert line.startswith(f"FAIL  tracking uri: cannot reach the tracking server {dead_url}")
    assert "refused" in line


# --- webhooks ------------------------------------------------------------------------------------


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[str, JobQueue]]:
    from reef_forensics.plugins.webhook import make_server

    queue = JobQueue(tmp_path / "hooks.sqlite")
    server = make_server("127.0.0.1", 0, queue, "s3cret", 300)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/webhook", queue
    server.shutdown()
    server.server_close()


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def delivery(
    secret: str, name: str = "m", version: str = "1", delivery_id: str = "d-1", age: int = 0
) -> tuple[bytes, dict[str, str]]:
    from reef_forensics.plugins.webhook import signature

    body = json.dumps(
        {"entity": "model_version", "action": "created", "timestamp": "x",
         "data": {"name": name, "version": version, "source": "models:/m-1", "run_id": None}}
    ).encode()  # fmt: skip
    timestamp = str(int(time.time()) - age)
    return body, {
        "Content-Type": "application/json",
        "X-MLflow-Delivery-Id": delivery_id,
        "X-MLflow-Timestamp": timestamp,
        "X-MLflow-Signature": signature(secret, delivery_id, timestamp, body),
    }


def test_the_receiver_checks_hmac_age_and_replays(receiver: tuple[str, JobQueue]) -> None:
    url, queue = receiver
    body, headers = delivery("wrong secret")
    assert post(url, body, headers)[0] == 401 and queue.jobs() == []
    body, headers = delivery("s3cret", age=3600)
    assert post(url, body, headers) == (401, {"error": "stale or future timestamp"})
    assert queue.jobs() == []
    body, headers = delivery("s3cret")
    assert post(url, body, headers) == (200, {"status": "queued"})
    assert post(url, body, headers) == (200, {"status": "replay ignored"})  # the same delivery
    body, headers = delivery("s3cret", delivery_id="d-2")  # MLflow's retry: a new delivery
    assert post(url, body, headers) == (200, {"status": "already queued"})
    assert [(j.name, j.version) for j in queue.jobs()] == [("m", "1")]


def test_each_request_is_one_log_line_without_secrets(
    receiver: tuple[str, JobQueue], capsys: pytest.CaptureFixture[str]
) -> None:
    from reef_forensics.mlops.observability import configure_logging

    configure_logging()
    url, _ = receiver
    body, headers = delivery("s3cret", name="logged", delivery_id="d-log")
    assert post(url, body, headers) == (200, {"status": "queued"})
    body, headers = delivery("wrong secret", delivery_id="d-bad")
    assert post(url, body, headers)[0] == 401
    err = capsys.readouterr().err
    lines = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
    requests = [e for e in lines if e.get("event") == "http.request"]
    assert [(e["method"], e["path"], e["status"], e["outcome"]) for e in requests] == [
        ("POST", "/webhook", 200, "queued"),
        ("POST", "/webhook", 401, "bad signature"),
    ]
    assert all(e["ts"].endswith("Z") and e["duration_ms"] >= 0 for e in requests)
    assert "s3cret" not in err and headers["X-MLflow-Signature"] not in err


def test_mlflow_webhooks_reach_the_receiver(
    tmp_path: Path, receiver: tuple[str, JobQueue], offline: None
) -> None:
    """A plain MLflow server (no store plugin) with a webhook to our receiver: registering a
    version queues it, once."""
    from cryptography.fernet import Fernet
    from mlflow import MlflowClient

    url, queue = receiver
    env = {
        "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
    }
    for server in start_server(tmp_path / "plain", plugin=False, env=env):
        client = MlflowClient(server, server)
        client.create_webhook(
            name="reef", url=url, events=["model_version.created"], secret="s3cret"
        )
        client.create_registered_model("hooked")
        run = client.create_run("0")
        client.create_model_version("hooked", f"runs:/{run.info.run_id}/model", run.info.run_id)
        wait_for(lambda: queue.jobs(), 30, "the webhook delivered")
        assert [(j.name, j.version) for j in queue.jobs()] == [("hooked", "1")]
        hook = client.list_webhooks()[0]
        tested = client.test_webhook(hook.webhook_id)  # the UI's Test button
        assert tested.success and json.loads(tested.response_body) == {
            "status": "test delivery acknowledged"
        }
        assert [(j.name, j.version) for j in queue.jobs()] == [("hooked", "1")]  # nothing more


def trusting(root: Path, ca_cert: Path) -> dict[str, str]:
    """The environment under which an MLflow server trusts ``ca_cert`` for its webhooks: a copy
    of certifi whose bundle also holds it, first on PYTHONPATH (what a deployment gets by adding
    its CA to the server's certifi bundle), and that bundle as REQUESTS_CA_BUNDLE. From MLflow
    3.15 the dispatcher's requests session has ``trust_env`` off and verifies against
    ``certifi.where()`` only; before, REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE, when set, wins."""
    import certifi

    shim = root / "trust"
    bundle = Path(shutil.copytree(Path(certifi.__file__).parent, shim / "certifi")) / "cacert.pem"
    bundle.write_bytes(bundle.read_bytes() + b"\n" + ca_cert.read_bytes())
    path = os.pathsep.join(p for p in (str(shim), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, "REQUESTS_CA_BUNDLE": str(bundle), "CURL_CA_BUNDLE": str(bundle)}


def test_mlflow_webhooks_reach_the_receiver_over_https(tmp_path: Path, offline: None) -> None:
    """MLflow's own dispatcher, with its default of https-only webhooks, delivers
    ``model_version.created`` to the receiver over TLS, verifying a certificate from a CA made
    here (which nothing trusts by default)."""
    import requests
    from cryptography.fernet import Fernet
    from mlflow import MlflowClient

    from reef_forensics.plugins.tls import server_context
    from reef_forensics.plugins.webhook import make_server

    certs = make_server_certs(tmp_path / "tls")
    queue = JobQueue(tmp_path / "hooks.sqlite")
    receiver = make_server(
        "127.0.0.1", 0, queue, "s3cret", 300, tls=server_context(certs.cert, certs.key)
    )
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{receiver.server_address[1]}/webhook"
    try:
        with pytest.raises(requests.exceptions.SSLError):  # certifi's bundle alone: refused
            requests.get(url, timeout=5)
        health = url.replace("/webhook", "/healthz")
        assert requests.get(health, timeout=5, verify=str(certs.ca_cert)).json() == {"status": "ok"}
        env = {
            "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode(),
            "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",  # 127.0.0.1; schemes: the default, https
            **trusting(tmp_path, certs.ca_cert),
        }
        for server in start_server(tmp_path / "plain", plugin=False, env=env):
            client = MlflowClient(server, server)
            client.create_webhook(
                name="reef", url=url, events=["model_version.created"], secret="s3cret"
            )
            client.create_registered_model("hooked")
            run = client.create_run("0")
            client.create_model_version("hooked", f"runs:/{run.info.run_id}/model", run.info.run_id)
            wait_for(lambda: queue.jobs(), 30, "the webhook delivered over HTTPS")
            assert [(j.name, j.version) for j in queue.jobs()] == [("hooked", "1")]
    finally:
        receiver.shutdown()
        receiver.server_close()


def test_serve_speaks_https_with_the_configured_certificate(tmp_path: Path) -> None:
    """`reef-forensics serve` with [webhook] certfile/keyfile (relative to the file): HTTPS, a
    signed delivery queued, and plain HTTP on the same port answered with nothing."""
    import requests

    certs = make_server_certs(tmp_path / "tls")
    config = tmp_path / "reef.toml"
    config.write_text(
        'queue = "queue.sqlite"\n[webhook]\ncertfile = "tls/server-cert.pem"\n'
        'keyfile = "tls/server-key.pem"\n'
    )
    process = subprocess.Popen(
        [REEF, "serve", "--config", str(config), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "REEF_WEBHOOK_SECRET": "s3cret"},
    )
    try:
        line = process.stdout.readline() if process.stdout else ""
        assert line.startswith("receiving MLflow webhooks on https://127.0.0.1:"), line
        base = line.split()[4].rstrip("/")
        ok = requests.get(base + "/healthz", timeout=5, verify=str(certs.ca_cert))
        assert ok.json() == {"status": "ok"}
        body, headers = delivery("s3cret", name="tls-model")
        answer = requests.post(
            base + "/webhook", data=body, headers=headers, timeout=5, verify=str(certs.ca_cert)
        )
        assert (answer.status_code, answer.json()) == (200, {"status": "queued"})
        jobs = JobQueue(tmp_path / "queue.sqlite").jobs()
        assert [(j.name, j.version) for j in jobs] == [("tls-model", "1")]
        with pytest.raises(requests.exceptions.ConnectionError):  # no plain HTTP answer
            requests.get(base.replace("https://", "http://") + "/", timeout=5)
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_the_evaluator_logs_findings_and_report_to_the_run(
    registered: dict[str, Any], zoo: dict[str, Path], tmp_path: Path
) -> None:
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    url, keys = registered["url"], registered["keys"]
    info = register(url, zoo["derived"], "evaluated")
    with mlflow.start_run() as run:
        result = mlflow.models.evaluate(
            info.model_uri,
            data=pd.DataFrame({"inputs": ["unused: the probe texts are the victim's"]}),
            model_type="text",  # MLflow asks for one; only the reef evaluator runs
            evaluators=["reef"],
            evaluator_config={
                "reef": {
                    "victim": "models:/flagship/1",
                    "references": [f"models:/independent-{i}/1" for i in range(3)],
                    "positive_controls": False,
                    "key": str(keys.private_key),
                    "cert": str(keys.signer_certificate),
                }
            },
        )
    assert 0.0 < result.metrics["reef_score"] <= 1.0
    client = MlflowClient(url, url)
    verdict = client.get_run(run.info.run_id).data.tags["reef.verdict"]
    assert verdict in ("derived", "inconclusive", "unrelated")
    local = Path(
        mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="reef", dst_path=str(tmp_path), tracking_uri=url
        )
    )
    assert main(["verify", str(local / "findings"), "--trust", str(keys.ca_certificate)]) == 0
    assert main(["verify", str(local / "report.pdf"), "--trust", str(keys.ca_certificate)]) == 0
    record = json.loads((local / "findings" / "findings.json").read_text())
    assert record["verdict"] == verdict and record["panel_size"] == 3


def test_the_store_never_blocks_a_registration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Embedded (no server): a queue that cannot be opened still lets the version register."""
    from mlflow.entities.model_registry import ModelVersionTag

    from reef_forensics.plugins.store import ReefRegistryStore

    (tmp_path / "queue-is-a-directory").mkdir()
    monkeypatch.setenv("REEF_QUEUE", str(tmp_path / "queue-is-a-directory"))
    store = ReefRegistryStore(f"reef+sqlite:///{tmp_path / 'mlflow.db'}")
    store.create_registered_model("m")
    version = store.create_model_version(
        "m", str(tmp_path / "model"), tags=[ModelVersionTag("team", "a")]
    )
    tags = dict(store.get_model_version("m", version.version).tags)
    assert tags == {"team": "a", "reef.status": "not-queued"}
    monkeypatch.setenv("REEF_QUEUE", str(tmp_path / "queue.sqlite"))
    store = ReefRegistryStore(f"reef+sqlite:///{tmp_path / 'mlflow.db'}")
    version = store.create_model_version("m", str(tmp_path / "model"))
    assert dict(store.get_model_version("m", version.version).tags) == {"reef.status": "pending"}
    assert [(j.name, j.version) for j in JobQueue(tmp_path / "queue.sqlite").jobs()] == [("m", "2")]


def test_check_takes_model_version_uris(
    registered: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url = registered["url"]
    refs = [arg for i in range(3) for arg in ("--reference", f"models:/independent-{i}/1")]
    code = main(
        ["check", "--victim", "models:/flagship/1", "--suspect", "models:/flagship/1", *refs,
         "--tracking-uri", url, "--no-positive-controls", "--out", str(tmp_path / "f"),
         "--json", str(tmp_path / "f.json"), "--no-progress"]
    )  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    record = json.loads((tmp_path / "f.json").read_text())
    assert record["identical"] is True and record["verdict"] == "derived"
    assert record["victim"]["model_digest"] == tags(url, "flagship", 1)["reef.model.digest"]
    code = main(["check", "--victim", "models:/nope/9", "--suspect", "models:/flagship/1",
                 "--tracking-uri", url])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "cannot download models:/nope/9" in err and err.count("\n") == 1
