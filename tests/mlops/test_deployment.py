"""Issue 17's deployment, end to end, as docs/mlflow.md sets it up: a real `mlflow server`
(SQLite) whose own dispatcher delivers `model_version.created` webhooks over HTTPS to
`reef-forensics serve`, a worker process signing with a key and stamping reports at an RFC 3161
timestamp authority (on loopback), and registrations made by a separate process that holds only
MLflow (no reef_forensics). A victim is added after its derivative was registered; the worker is
stopped with SIGTERM in the middle of a job and started again. At the end every version is
screened against every victim, the reports name the registered models, and a timestamped report
is VALID for `verify` and for pyHanko's validator, offline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reef_forensics.cli.main import main
from reef_forensics.crypto.keys import CA_KEY, generate_keys
from reef_forensics.demo.toy_models import derive, make_model
from reef_forensics.mlops.jobqueue import JobQueue
from tests.mlops.test_mlflow import PASS, REEF, start_server, tags, trusting, wait_for
from tests.report.test_report import pyhanko_validate
from tests.tls_certs import make_server_certs
from tests.tsa import issue_tsa, load_ca, serve_tsa

pytestmark = pytest.mark.slow
SECRET = "webhook-s3cret"
VICTIMS = ["victim-a", "victim-b"]
SUSPECTS = ["suspect-a", "suspect-b", "unrelated"]
REFERENCES = [f"reference-{i}" for i in range(3)]

#: The registrant: plain MLflow only. reef_forensics cannot be imported in it.
REGISTRANT = """
import json, sys
sys.modules["reef_forensics"] = None  # this process has MLflow and transformers, not us
try:
    import reef_forensics  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("reef_forensics importable in the registrant")
import mlflow
from mlflow import MlflowClient
from transformers import AutoModelForCausalLM, AutoTokenizer

url, plan = sys.argv[1], json.loads(sys.argv[2])
mlflow.set_tracking_uri(url)
mlflow.set_registry_uri(url)
mlflow.set_experiment("users")
client = MlflowClient(url, url)
for name, folder, role in plan:
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with mlflow.start_run():
        info = mlflow.transformers.log_model(
            {"model": model, "tokenizer": tokenizer}, name="model", task="text-generation",
            registered_model_name=name, pip_requirements=["transformers"],
        )
    if role:  # as docs/mlflow.md shows: right after the registration
        client.set_model_version_tag(name, str(info.registered_model_version), "reef.role", role)
"""


def register(url: str, env: dict[str, str], *plan: tuple[str, Path, str | None]) -> None:
    rows = [(name, str(folder), role) for name, folder, role in plan]
    done = subprocess.run(
        [sys.executable, "-c", REGISTRANT, url, json.dumps(rows)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def start(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)


def stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


def events(log: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]


@pytest.fixture
def site(tmp_path: Path, probes: Any) -> Iterator[dict[str, Any]]:
    """Keys, a TSA, a TLS certificate for the receiver, the models, a configuration."""
    keys = generate_keys(tmp_path / "keys", PASS.encode())
    ca = load_ca(keys.ca_certificate, keys.private_key.parent / CA_KEY, PASS.encode())
    certs = make_server_certs(tmp_path / "tls")
    texts = probes.texts
    m = tmp_path / "models"
    models = {"victim-a": make_model(m / "victim-a", texts, seed=0)}
    models["victim-b"] = make_model(m / "victim-b", texts, seed=11)
    models["suspect-a"] = derive(models["victim-a"], m / "suspect-a", noise=0.1, prune=0.3)
    models["suspect-b"] = derive(models["victim-b"], m / "suspect-b", noise=0.1, prune=0.3)
    models["unrelated"] = make_model(m / "unrelated", texts, seed=7)
    for i, name in enumerate(REFERENCES):
        models[name] = make_model(m / name, texts, seed=600 + i)
    probe_file = tmp_path / "probes.txt"
    probe_file.write_text("\n".join(texts[:60]) + "\n")
    with serve_tsa(issue_tsa(ca)) as tsa_url:
        yield {
            "root": tmp_path,
            "keys": keys,
            "certs": certs,
            "models": models,
            "probes": probe_file,
            "tsa": tsa_url,
        }


def test_a_deployment_as_documented_screens_every_version_against_every_victim(
    site: dict[str, Any],
) -> None:
    from cryptography.fernet import Fernet

    root, certs = site["root"], site["certs"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    server_env = {
        "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",  # 127.0.0.1; schemes: the default, https
        **trusting(root, certs.ca_cert),
    }
    server = start_server(root / "server", plugin=False, env=server_env)
    url = next(server)  # stopped when the generator closes, below
    try:
        screen_a_deployment(url, site, env)
        check_the_evidence(url, site)
    finally:
        server.close()


def screen_a_deployment(url: str, site: dict[str, Any], env: dict[str, str]) -> None:
    from mlflow import MlflowClient

    root, keys, certs, models = site["root"], site["keys"], site["certs"], site["models"]
    queue = root / "queue.sqlite"
    config = root / "reef.toml"
    config.write_text(
        f'tracking_uri = "{url}"\nqueue = "{queue}"\nprobes = "{site["probes"]}"\n'
        f'work_dir = "{root / "work"}"\n'
        f'[signing]\nkey = "{keys.private_key}"\ncert = "{keys.signer_certificate}"\n'
        f'chain = "{keys.ca_certificate}"\ntsa_url = "{site["tsa"]}"\n'
        "[worker]\nlease_seconds = 10\nbackoff_seconds = 0.2\nmax_attempts = 3\n"
        "reconcile_seconds = 2\n"
        f'[webhook]\ncertfile = "{certs.cert}"\nkeyfile = "{certs.key}"\n'
    )
    with (root / "serve.log").open("ab") as serve_log:
        serve = subprocess.Popen(
            [REEF, "serve", "--config", str(config), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=serve_log,
            env={**env, "REEF_WEBHOOK_SECRET": SECRET},
        )
    workers: list[subprocess.Popen[bytes]] = []
    try:
        line = serve.stdout.readline().decode() if serve.stdout else ""
        assert line.startswith("receiving MLflow webhooks on https://"), line
        hook = line.split()[4].rstrip("/") + "/webhook"
        MlflowClient(url, url).create_webhook(
            name="reef", url=hook, events=["model_version.created"], secret=SECRET
        )
        register(
            url,
            env,
            ("victim-a", models["victim-a"], "victim"),
            *((name, models[name], "reference") for name in REFERENCES),
            *((name, models[name], None) for name in SUSPECTS),  # suspect-b: B is no victim yet
        )
        wait_for(lambda: len(JobQueue(queue).jobs()) == 7, 60, "7 deliveries queued")

        worker_env = {**env, "REEF_KEY_PASSPHRASE": PASS}
        command = [REEF, "worker", "--config", str(config), "--poll", "0.2"]
        first_log = root / "worker-1.log"
        workers.append(start(command, first_log, worker_env))
        running = wait_for(
            lambda: [j for j in JobQueue(queue).jobs() if j.state == "running"], 120, "a job"
        )
        assert stop(workers[0]) == 0, first_log.read_text()[-3000:]
        released = [
            e
            for e in events(first_log)
            if e.get("event") == "job.finish" and e["outcome"] == "released"
        ]
        assert [e["job"] for e in released] == [running[0].id]  # handed back mid-job
        assert not [j for j in JobQueue(queue).jobs() if j.state == "running"]

        workers.append(start(command, root / "worker-2.log", worker_env))
        register(url, env, ("victim-b", models["victim-b"], "victim"))  # added afterwards

        def all_screened() -> bool:
            for name in SUSPECTS:
                found = tags(url, name, 1)
                if not all(f"reef.screen.{v}.v1" in found for v in VICTIMS):
                    return False
            return all(tags(url, n, 1).get("reef.status") == "done" for n in VICTIMS + REFERENCES)

        wait_for(all_screened, 600, "every version screened against every victim")
    finally:
        for process in (*workers, serve):
            if process.poll() is None:
                stop(process)


def check_the_evidence(url: str, site: dict[str, Any]) -> None:
    root, keys = site["root"], site["keys"]
    verdicts = {
        (name, victim): tags(url, name, 1)[f"reef.screen.{victim}.v1"].split()[0]
        for name in SUSPECTS
        for victim in VICTIMS
    }
    assert verdicts.pop(("suspect-a", "victim-a")) in ("derived", "inconclusive")
    assert verdicts.pop(("suspect-b", "victim-b")) in ("derived", "inconclusive")
    assert set(verdicts.values()) == {"unrelated"}, verdicts
    for name in (*VICTIMS, *REFERENCES):  # fingerprinted, not screened
        assert not [k for k in tags(url, name, 1) if k.startswith("reef.screen.")]

    ca = str(keys.ca_certificate)
    evidence = root / "evidence"
    for name in ("suspect-a", "suspect-b"):
        version = f"models:/{name}/1"
        out = str(evidence / name)
        assert main(["evidence", version, "--out", out, "--tracking-uri", url]) == 0
        assert main(["verify", version, "--trust", ca, "--tracking-uri", url]) == 0
    report = evidence / "suspect-b" / "screening" / "victim-b.v1" / "report.pdf"
    text = subprocess.run(
        ["pdftotext", str(report), "-"], capture_output=True, text=True, check=True
    ).stdout
    flat = " ".join(text.split())
    assert "victim-b version 1 (models:/victim-b/1)" in flat, flat[:2000]
    assert "suspect-b version 1 (models:/suspect-b/1)" in flat
    done = subprocess.run(
        [REEF, "verify", str(report), "--trust", ca, "--json", "-"],
        capture_output=True,
        text=True,
    )
    found = json.loads(done.stdout)
    assert done.returncode == 0 and found["valid"], done.stdout[-3000:]
    assert found["time"]["source"] == "RFC 3161 timestamp authority"
    validated = pyhanko_validate(report, keys.ca_certificate)
    assert validated.returncode == 0, validated.stdout + validated.stderr
    for said in (
        "This timestamp is backed by a time stamping authority.",
        "The TSA certificate is trusted.",
        "The signature is judged VALID.",
    ):
        assert said in validated.stdout, validated.stdout
