"""The Ray fleet (`reef-forensics fleet`) against a real `mlflow server` on 127.0.0.1 with SQLite,
on a local Ray instance: each fingerprint extracted once, every (suspect, victim) pair compared,
and what it writes back is what the single-machine worker writes for the same models."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

from reef_forensics.cli.main import main
from reef_forensics.demo.toy_models import derive, make_model
from reef_forensics.formats.fingerprint import read_fingerprint
from reef_forensics.formats.naming import registry_identity
from reef_forensics.mlops.config import load_config
from reef_forensics.mlops.fleet import screen_fleet
from tests.mlops.test_mlflow import (  # noqa: F401
    deployment,
    offline,
    register,
    register_pyfunc,
    run_worker,
    tags,
)

pytestmark = pytest.mark.slow
SUSPECTS = ["models:/fleet-derived/1", "models:/fleet-unrelated/1"]
VICTIMS = ["fleet-victim-a", "fleet-victim-b"]


@pytest.fixture(scope="module")
def same_bytes() -> Iterator[None]:
    """A fixed manifest time (SOURCE_DATE_EPOCH), so that the fleet's and the worker's
    fingerprints of the same files have the same digest. Set before any Ray instance starts:
    its workers inherit it, as they inherit the key's passphrase."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SOURCE_DATE_EPOCH", "1767225600")
    yield
    mp.undo()


@pytest.fixture(scope="module")
def fleet(
    deployment: dict[str, Any],  # noqa: F811
    probes: Any,
    same_bytes: None,
) -> dict[str, Any]:
    """Two victims, three references and two suspects (a derivative of victim A, an unrelated
    model), registered and given their roles; the same two suspects registered again as
    `worker-*` (the same files) for the single-machine worker."""
    from mlflow import MlflowClient

    url, root = deployment["url"], deployment["root"] / "fleet-models"
    texts = probes.texts
    victim_a = make_model(root / "victim-a", texts, seed=0)
    models = {
        "fleet-victim-a": victim_a,
        "fleet-victim-b": make_model(root / "victim-b", texts, seed=11),
        "fleet-derived": derive(victim_a, root / "derived", noise=0.1, prune=0.3),
        "fleet-unrelated": make_model(root / "unrelated", texts, seed=7),
        **{f"fleet-ref-{i}": make_model(root / f"ref{i}", texts, seed=300 + i) for i in range(3)},
    }
    client = MlflowClient(url, url)
    for name, folder in models.items():
        register(url, folder, name)
    for name in VICTIMS:
        client.set_model_version_tag(name, "1", "reef.role", "victim")
    for i in range(3):
        client.set_model_version_tag(f"fleet-ref-{i}", "1", "reef.role", "reference")
    for kind in ("derived", "unrelated"):  # the same files, a second registered model
        source = client.get_model_version(f"fleet-{kind}", "1")
        client.create_registered_model(f"worker-{kind}")
        client.create_model_version(
            f"worker-{kind}",
            source.source,
            source.run_id,
            model_id=source.model_id or source.source.removeprefix("models:/"),
        )
    return deployment


def broken_version(url: str, tmp_path: Path) -> str:
    """A version whose files are no model: it cannot be fingerprinted."""
    import mlflow
    from mlflow import MlflowClient

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "README.txt").write_text("not a model\n")
    mlflow.set_experiment("users")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(notes), artifact_path="notes")
    client = MlflowClient(url, url)
    client.create_registered_model("fleet-broken")
    client.create_model_version("fleet-broken", f"runs:/{run.info.run_id}/notes", run.info.run_id)
    return "models:/fleet-broken/1"


def test_the_fleet_fingerprints_each_version_once_and_screens_every_pair(
    fleet: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import mlflow

    url, keys = fleet["url"], fleet["keys"]
    broken = broken_version(url, tmp_path)
    capsys.readouterr()  # MLflow's own lines about the run
    code = main(["fleet", *SUSPECTS, broken, "--config", str(fleet["config"]), "--workers", "2",
                 "--json", "-"])  # fmt: skip
    out = capsys.readouterr()
    assert code == 1, out.err  # one version failed; the others went through
    result = json.loads(out.out)
    assert list(result["failed"]) == [broken]
    assert result["failed"][broken].startswith("the model cannot be fingerprinted")
    assert tags(url, "fleet-broken", 1)["reef.status"] == "failed"
    assert "cannot be fingerprinted" in tags(url, "fleet-broken", 1)["reef.status.reason"]
    involved = sorted([*SUSPECTS, *(f"models:/{v}/1" for v in VICTIMS),
                       *(f"models:/fleet-ref-{i}/1" for i in range(3))])  # fmt: skip
    assert result["fingerprinted"] == involved  # each version once: victims and references too
    assert result["reused"] == [] and result["skipped"] == []
    assert result["workers"] == 2 and result["comparisons"] == 4  # 2 suspects x 2 victims
    busy = result["task_seconds"]
    assert 0 < busy["extract"] < busy["fingerprint"] and busy["compare"] > 0
    pairs = {(s["suspect"], s["victim"]): s for s in result["screenings"]}
    assert set(pairs) == {(s, f"models:/{v}/1") for s in SUSPECTS for v in VICTIMS}
    assert all(s["references"] == 3 for s in result["screenings"])
    verdicts = {pair: s["verdict"] for pair, s in pairs.items()}
    derived_pair = ("models:/fleet-derived/1", "models:/fleet-victim-a/1")
    assert verdicts.pop(derived_pair) in ("derived", "inconclusive")
    assert set(verdicts.values()) == {"unrelated"}

    for name in ("fleet-derived", "fleet-unrelated"):
        found = tags(url, name, 1)
        assert found["reef.status"] == "done", found
        for key in ("reef.model.digest", "reef.fingerprint.digest", "reef.probes.digest"):
            assert found[key].startswith("sha256:")
        for victim in VICTIMS:
            tagged = found[f"reef.screen.{victim}.v1"]
            assert tagged.split()[0] == pairs[(f"models:/{name}/1", f"models:/{victim}/1")][
                "verdict"
            ] and tagged.endswith("refs=3")
    for name in [*VICTIMS, *(f"fleet-ref-{i}" for i in range(3))]:
        found = tags(url, name, 1)
        assert found["reef.status"] == "done" and found["reef.fingerprint.digest"]
        assert not any(k.startswith("reef.screen.") for k in found)  # not suspects

    derived = tags(url, "fleet-derived", 1)
    fingerprint = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=derived["reef.fingerprint.uri"],
            dst_path=str(tmp_path / "fp"),
            tracking_uri=url,
        )
    )
    assert main(["verify", str(fingerprint), "--trust", str(keys.ca_certificate)]) == 0
    base = derived["reef.fingerprint.uri"].removesuffix("/fingerprint") + "/screening"
    screening = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=base, dst_path=str(tmp_path / "screening"), tracking_uri=url
        )
    )
    # signed findings for every victim (so `verify models:/...` checks each tag), a report only
    # where the verdict is not `unrelated`
    assert sorted(p.name for p in screening.iterdir()) == ["fleet-victim-a.v1", "fleet-victim-b.v1"]
    assert not (screening / "fleet-victim-b.v1" / "report.pdf").exists()
    unrelated = screening / "fleet-victim-b.v1" / "findings"
    assert main(["verify", str(unrelated), "--trust", str(keys.ca_certificate)]) == 0
    assert json.loads((unrelated / "findings.json").read_text())["verdict"] == "unrelated"
    folder = screening / "fleet-victim-a.v1"
    assert main(["verify", str(folder / "findings"), "--trust", str(keys.ca_certificate)]) == 0
    assert main(["verify", str(folder / "report.pdf"), "--trust", str(keys.ca_certificate)]) == 0
    record = json.loads((folder / "findings" / "findings.json").read_text())
    assert record["suspect"]["digest"] == derived["reef.fingerprint.digest"]
    assert record["victim"]["digest"] == tags(url, "fleet-victim-a", 1)["reef.fingerprint.digest"]
    assert record["verdict"] == pairs[derived_pair]["verdict"]


def download(url: str, uri: str, dest: Path) -> Path:
    import mlflow

    return Path(
        mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest), tracking_uri=url)
    )


def without_registry(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest less the model's name and registered version."""
    model = {k: v for k, v in manifest["model"].items() if k not in ("name", "registry")}
    return {**manifest, "model": model}


def test_the_worker_writes_the_same_and_a_second_fleet_run_does_nothing(
    fleet: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The single-machine worker, given the same files under other names, finds the victims
    and references the fleet published, and writes the same digests and verdicts; a second
    fleet run, on a Ray instance already started here, skips what is done."""
    import torch

    url = fleet["url"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a fleet task, so no core count can change a float sum
    try:
        run_worker(fleet)  # the fleet's versions are done: the worker skips them
    finally:
        torch.set_num_threads(threads)
    for kind in ("derived", "unrelated"):
        by_fleet, by_worker = tags(url, f"fleet-{kind}", 1), tags(url, f"worker-{kind}", 1)
        assert by_worker["reef.status"] == "done", by_worker
        for key in ("reef.model.digest", "reef.probes.digest"):
            assert by_worker[key] == by_fleet[key], key
        # the fingerprints differ only in the registered version they name
        fleet_print, worker_print = (
            read_fingerprint(download(url, found["reef.fingerprint.uri"], tmp_path / who))
            for who, found in (("fleet", by_fleet), ("worker", by_worker))
        )
        assert fleet_print.registry == registry_identity(f"fleet-{kind}", 1)
        assert worker_print.registry == registry_identity(f"worker-{kind}", 1)
        for name in ("probes.jsonl", "representations.safetensors", "units.safetensors"):
            assert (fleet_print.path / name).read_bytes() == (worker_print.path / name).read_bytes()
        assert without_registry(fleet_print.manifest) == without_registry(worker_print.manifest)
        for victim in VICTIMS:
            key = f"reef.screen.{victim}.v1"
            assert by_worker[key] == by_fleet[key]  # verdict, score, p-value, references

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        result = screen_fleet(load_config(fleet["config"]), SUSPECTS)
        assert ray.is_initialized()  # used as it was, not shut down
        code = main(["fleet", *SUSPECTS, "--config", str(fleet["config"])])
    finally:
        ray.shutdown()
    assert result.skipped == SUSPECTS
    assert result.fingerprinted == [] and result.screenings == [] and result.failed == {}
    out = capsys.readouterr().out
    assert code == 0 and "fleet: 0 fingerprinted, 0 reused, 2 already done, 0 comparison(s)" in out


def test_a_version_that_is_not_a_transformers_model_is_skipped_not_failed(
    fleet: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """As the worker does: ``reef.status=skipped`` with the reason, no failure, exit 0."""
    url = fleet["url"]
    register_pyfunc(url, "fleet-echo")
    capsys.readouterr()
    code = main(
        ["fleet", "models:/fleet-echo/1", "--config", str(fleet["config"]), "--workers", "1"]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "0 failed, 1 skipped (not transformers models)" in out, out
    assert (
        "SKIPPED models:/fleet-echo/1: not a transformers model (MLflow flavors: python_function)"
        in out
    )
    found = tags(url, "fleet-echo", 1)
    assert found["reef.status"] == "skipped", found
    assert found["reef.status.reason"].startswith("not a transformers model")
    assert not [k for k in found if k.startswith("reef.screen.")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give the versions to screen"),
        (["models:/fleet-derived/1", "--all"], "give the versions to screen"),
        (["fleet-derived"], "is not a model version URI"),
        (["models:/no-such-model/1"], "cannot read models:/no-such-model/1"),
        (["models:/fleet-derived/1", "--workers", "0"], "at least 1"),
        (["--all", "--workers", "2", "--address", "auto"], "applies to a local Ray instance"),
    ],
)
def test_bad_input_is_one_line_and_exit_2_before_ray_starts(
    fleet: dict[str, Any], capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code = main(["fleet", *args, "--config", str(fleet["config"])])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not ray.is_initialized()


def test_without_ray_the_error_says_what_to_install(
    fleet: dict[str, Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets when it is absent
    code = main(["fleet", "--all", "--config", str(fleet["config"])])
    err = capsys.readouterr().err
    assert code == 1 and "with its ray extra" in err and err.count("\n") == 1, err
