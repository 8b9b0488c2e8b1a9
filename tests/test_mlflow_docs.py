"""Names, reconciliation, governance and docs/mlflow.md sections 5 and 6, against a real
`mlflow server` on 127.0.0.1 (SQLite backend, the store plugin), as a platform team runs it:
models registered with MLflow's own API, roles set with its client, the worker and the CLI."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reef_forensics.cli.main import main
from reef_forensics.demo.toy_models import derive, make_model
from tests.mlops.test_mlflow import REEF, drain, register, start_server, tags

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
DOCS = Path(__file__).resolve().parent.parent / "docs" / "mlflow.md"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, probes: Any) -> Iterator[dict[str, Any]]:
    """A server with the store plugin, keys, a probe file under a server-local path, and the
    models: a victim, a derivative, three independent references."""
    from reef_forensics.crypto.keys import generate_keys
    from tests.mlops.test_mlflow import PASS

    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("REEF_KEY_PASSPHRASE", PASS)
    root = tmp_path_factory.mktemp("names")
    keys = generate_keys(root / "keys", PASS.encode())
    probe_file = root / "srv" / "reef" / "deployment-probes.txt"
    probe_file.parent.mkdir(parents=True)
    probe_file.write_text("\n".join(probes.texts[:60]) + "\n")
    models = {"victim": make_model(root / "m" / "victim", probes.texts, seed=0)}
    models["derived"] = derive(models["victim"], root / "m" / "derived", noise=0.1, prune=0.3)
    for i in range(3):
        models[f"ref{i}"] = make_model(root / "m" / f"ref{i}", probes.texts, seed=400 + i)
    queue = root / "queue.sqlite"
    for url in start_server(root / "server", plugin=True, env={"REEF_QUEUE": str(queue)}):
        config = root / "reef.toml"
        config.write_text(
            f'tracking_uri = "{url}"\nqueue = "{queue}"\nprobes = "{probe_file}"\n'
            f'work_dir = "{root / "work"}"\n'
            f'[signing]\nkey = "{keys.private_key}"\ncert = "{keys.signer_certificate}"\n'
            "[worker]\nlease_seconds = 5\nbackoff_seconds = 0.2\nmax_attempts = 3\n"
        )
        mp.setenv("REEF_CONFIG", str(config))
        yield {
            "url": url,
            "queue": queue,
            "config": config,
            "keys": keys,
            "root": root,
            "models": models,
            "probe_dir": str(probe_file.parent),
        }
    mp.undo()


@pytest.fixture(scope="module")
def screened(site: dict[str, Any]) -> dict[str, Any]:
    """References, and a byte-identical copy of the victim registered before any victim
    exists; then the victim, tagged right after its registration, and a derivative."""
    from mlflow import MlflowClient

    url, models = site["url"], site["models"]
    client = MlflowClient(url, url)
    for i in range(3):
        register(url, models[f"ref{i}"], f"independent-{i}")
        client.set_model_version_tag(f"independent-{i}", "1", "reef.role", "reference")
    register(url, models["victim"], "early-copy")
    drain(site)
    assert not [k for k in tags(url, "early-copy", 1) if k.startswith("reef.screen.")]
    register(url, models["victim"], "flagship")
    client.set_model_version_tag("flagship", "1", "reef.role", "victim")  # after registration
    register(url, models["derived"], "other")
    drain(site)
    return site


def test_a_victim_added_later_screens_earlier_versions_and_roles_set_late_count(
    screened: dict[str, Any],
) -> None:
    url = screened["url"]
    copy = tags(url, "early-copy", 1)
    assert copy["reef.screen.flagship.v1"].startswith("derived"), copy  # the same bytes
    assert not [k for k in tags(url, "flagship", 1) if k.startswith("reef.screen.")]
    assert tags(url, "other", 1)["reef.screen.flagship.v1"].split()[0] in (
        "derived",
        "inconclusive",
    )
    code = subprocess.run(
        [REEF, "reconcile", "--config", str(screened["config"]), "--json", "-"],
        capture_output=True,
        text=True,
        env={**os.environ},
    )
    assert code.returncode == 0, code.stderr
    assert json.loads(code.stdout)["unqueued"] == []
    assert json.loads(code.stdout)["unscreened"] == {}


def test_reconcile_queues_a_version_that_was_never_queued(screened: dict[str, Any]) -> None:
    from mlflow import MlflowClient

    url = screened["url"]
    client = MlflowClient(url, url)
    before = tags(url, "independent-2", 1)
    for key in list(tags(url, "independent-2", 1)):
        if key.startswith("reef.") and key != "reef.role":
            client.delete_model_version_tag("independent-2", "1", key)  # as if never queued
    assert main(["reconcile", "--config", str(screened["config"])]) == 0
    drain(screened)
    after = tags(url, "independent-2", 1)
    assert after["reef.status"] == "done"
    # fingerprinted again, the same measurement: the published fingerprint is kept, so the
    # findings that name it (the next test reproduces one) still find it
    for key in ("reef.fingerprint.digest", "reef.fingerprint.uri", "reef.evidence.run"):
        assert after[key] == before[key], key


def test_evidence_goes_to_the_service_experiment_not_the_users_runs(
    screened: dict[str, Any],
) -> None:
    from mlflow import MlflowClient

    url = screened["url"]
    client = MlflowClient(url, url)
    found = tags(url, "other", 1)
    run = client.get_run(found["reef.evidence.run"])
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "reef-evidence"
    assert run.data.tags["reef.model.uri"] == "models:/other/1"
    assert found["reef.fingerprint.uri"] == f"runs:/{run.info.run_id}/fingerprint"
    version = client.get_model_version("other", "1")
    users_run = client.get_run(version.run_id)
    assert client.get_experiment(users_run.info.experiment_id).name == "users"
    kept = {a.path for a in client.list_artifacts(version.run_id)}
    assert not kept & {"reef", "fingerprint", "screening"}, kept


def test_findings_and_report_name_the_registered_versions_and_reproduce(
    screened: dict[str, Any], tmp_path: Path
) -> None:
    url, ca = screened["url"], str(screened["keys"].ca_certificate)
    assert (
        main(["evidence", "models:/other/1", "--out", str(tmp_path / "ev"), "--tracking-uri", url])
        == 0
    )
    case = tmp_path / "ev" / "screening" / "flagship.v1"
    record = json.loads((case / "findings" / "findings.json").read_text())
    assert record["victim"]["registry"]["uri"] == "models:/flagship/1"
    assert record["suspect"]["registry"] == {
        "name": "other",
        "version": "1",
        "uri": "models:/other/1",
    }
    assert [r["registry"]["uri"] for r in record["references"]] == [
        f"models:/independent-{i}/1" for i in range(3)
    ]
    text = subprocess.run(
        ["pdftotext", "-layout", str(case / "report.pdf"), "-"], capture_output=True, text=True
    ).stdout
    flat = " ".join(text.split())
    assert "Victim (protected model) flagship version 1 (models:/flagship/1)" in flat
    assert "Suspect other version 1 (models:/other/1)" in flat
    plain = subprocess.run(
        ["pdftotext", str(case / "report.pdf"), "-"], capture_output=True, text=True
    ).stdout
    flat_plain = " ".join(plain.split())
    for i in range(3):  # the reference table and the digests, each name with its digest
        assert re.search(
            rf"independent-{i} version 1 \(models:/independent-{i}/1\) sha256:[0-9a-f]{{12}}",
            flat_plain,
        ), flat_plain
    assert screened["probe_dir"] not in text and "deployment-probes.txt" in text
    assert "VICTIM_FINGERPRINT" not in flat and "REFERENCE_1 ..." not in flat
    appendix = text.split("Commands", 1)[1].split("Digests", 1)[0]
    joined = re.sub(r"\\\s*\n\s*", " ", appendix)  # the shell's line continuations
    commands = [line.strip() for line in joined.splitlines() if line.strip().startswith("reef-")]
    assert [c.split()[1] for c in commands] == ["evidence"] * 5 + ["check", "verify"]
    work = tmp_path / "reproduce"
    work.mkdir()
    (work / "report.pdf").write_bytes((case / "report.pdf").read_bytes())
    env = {**os.environ, "MLFLOW_TRACKING_URI": url}
    for command in commands:  # the report's own commands, as printed
        argv = shlex.split(command.replace("CA_CERT", ca))
        done = subprocess.run([REEF, *argv[1:]], cwd=work, env=env, capture_output=True, text=True)
        assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-2000:])
    again = json.loads((work / "findings" / "findings.json").read_text())
    assert again["verdict"] == record["verdict"] and again["score"] == record["score"]


def test_verify_a_version_catches_an_edited_verdict_tag(
    screened: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow import MlflowClient

    url, ca = screened["url"], str(screened["keys"].ca_certificate)
    assert main(["verify", "models:/other/1", "--trust", ca, "--tracking-uri", url]) == 0
    assert "VALID: models:/other/1" in capsys.readouterr().out
    client = MlflowClient(url, url)
    key = "reef.screen.flagship.v1"
    honest = tags(url, "other", 1)[key]
    client.set_model_version_tag("other", "1", key, "unrelated " + honest.split(" ", 1)[1])
    try:
        assert main(["verify", "models:/other/1", "--trust", ca, "--tracking-uri", url]) == 1
        out = capsys.readouterr().out
        assert f"FAIL  tag {key}" in out and "NOT VALID: models:/other/1" in out
    finally:
        client.set_model_version_tag("other", "1", key, honest)


def _block(section: str, language: str) -> str:
    text = DOCS.read_text()
    part = text[text.index(section) :]
    return part.split(f"```{language}\n", 1)[1].split("```", 1)[0]


def test_docs_section_5_runs_as_written(screened: dict[str, Any], tmp_path: Path) -> None:
    url, ca = screened["url"], str(screened["keys"].ca_certificate)
    script = (
        _block("## 5. Auditing", "sh")
        .replace("http://mlflow.internal:5000", url)
        .replace("models:/other/7", "models:/other/1")
        .replace("flagship.v3", "flagship.v1")
        .replace("ca-cert.pem", ca)
    )
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script.replace("reef-forensics ", f"{REEF} ")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("VALID: ") == 4 and "NOT VALID" not in done.stdout
    mlflow = Path(REEF).parent / "mlflow"
    run = tags(url, "other", 1)["reef.evidence.run"]
    raw = subprocess.run(
        [str(mlflow), "artifacts", "download", "-r", run, "-d", "raw"],
        cwd=tmp_path,
        env={**os.environ, "MLFLOW_TRACKING_URI": url},
        capture_output=True,
        text=True,
    )
    assert raw.returncode == 0, raw.stderr[-2000:]
    assert main(["verify", str(tmp_path / "raw" / "fingerprint"), "--trust", ca]) == 0


def test_docs_section_6_runs_as_written_for_a_version_without_a_model_id(
    screened: dict[str, Any], tmp_path: Path
) -> None:
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    url = screened["url"]
    client = MlflowClient(url, url)
    info = register(url, screened["models"]["derived"], "derived-logged")
    files = mlflow.artifacts.download_artifacts(
        artifact_uri=info.model_uri, dst_path=str(tmp_path / "files"), tracking_uri=url
    )
    run = client.create_run(client.get_experiment_by_name("users").experiment_id)
    client.log_artifacts(run.info.run_id, files, artifact_path="model")
    client.create_registered_model("no-id")  # registered from a run: no MLflow model id
    made = client.create_model_version("no-id", f"runs:/{run.info.run_id}/model", run.info.run_id)
    assert made.model_id is None
    code = _block("## 6. From an evaluation", "python")
    for old, new in (
        ("models:/other/7", f"models:/no-id/{made.version}"),
        ("models:/flagship/3", "models:/flagship/1"),
        *[(f"models:/independent-{x}/1", f"models:/independent-{i}/1") for i, x in enumerate("abc")],
    ):  # fmt: skip
        assert old in code
        code = code.replace(old, new)
    df = pd.DataFrame({"inputs": ["unused"]})
    with mlflow.start_run() as run:
        exec(code, {"mlflow": mlflow, "df": df})
    local = Path(
        mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="reef", dst_path=str(tmp_path), tracking_uri=url
        )
    )
    record = json.loads((local / "findings" / "findings.json").read_text())
    assert record["probes"]["count"] == 60  # the deployment's probe set, not the built-in one
    assert record["suspect"]["registry"]["uri"] == f"models:/no-id/{made.version}"
    assert client.get_run(run.info.run_id).data.tags["reef.verdict"] == record["verdict"]
