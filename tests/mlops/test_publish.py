"""A version fingerprinted again (its tags lost, a reconciliation queued it) never overwrites
the fingerprint its evidence run already holds: the same measurement is kept (its digest stays,
so findings that name it stay reproducible), a different one goes to a folder of its own.
Against a real MLflow store (SQLite, local artifacts); only the registry tags are a list."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from reef_forensics import ProbeSet, fingerprint_model
from reef_forensics.formats.fingerprint import read_fingerprint
from reef_forensics.formats.measurement import same_measurement
from reef_forensics.mlops.config import Config
from reef_forensics.mlops.jobqueue import Job
from reef_forensics.mlops.screener import Screener


@pytest.fixture
def screener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Screener, dict[str, str]]:
    config = Config(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        queue=tmp_path / "queue.sqlite",
        work_dir=tmp_path / "work",
    )
    monkeypatch.chdir(tmp_path)  # the SQLite store's artifacts go under ./mlruns
    made = Screener(config)
    tags: dict[str, str] = {}
    monkeypatch.setattr(made, "tag", lambda name, version, key, value: tags.update({key: value}))
    return made, tags


def test_same_measurement_ignores_when_but_not_what(
    zoo: dict[str, Path], small_probes: ProbeSet, probes: ProbeSet, tmp_path: Path
) -> None:
    one = fingerprint_model(zoo["victim"], tmp_path / "a", probes=small_probes)
    again = fingerprint_model(zoo["victim"], tmp_path / "b", probes=small_probes)
    assert same_measurement(one, again)
    other_probes = ProbeSet(name="other", texts=probes.texts[40:80])
    assert not same_measurement(
        one, fingerprint_model(zoo["victim"], tmp_path / "c", probes=other_probes)
    )
    other_model = fingerprint_model(zoo["unrelated"], tmp_path / "d", probes=small_probes)
    assert not same_measurement(one, other_model)
    assert not same_measurement(
        one, fingerprint_model(zoo["victim"], tmp_path / "e", probes=small_probes, max_length=64)
    )


def test_a_version_fingerprinted_again_keeps_its_published_fingerprint(
    screener: tuple[Screener, dict[str, str]],
    zoo: dict[str, Path],
    small_probes: ProbeSet,
    probes: ProbeSet,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made, tags = screener
    job = Job(id=1, name="m", version="1", source=None, state="running", attempts=1)
    first = made.publish(
        job,
        None,
        fingerprint_model(zoo["victim"], tmp_path / "w1" / "fingerprint", probes=small_probes),
    )
    assert (
        first.folder == "" and tags["reef.fingerprint.uri"] == f"runs:/{first.run_id}/fingerprint"
    )
    digest = first.fingerprint.digest
    assert tags["reef.fingerprint.digest"] == digest

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1893456000")  # made later: another digest
    again = fingerprint_model(zoo["victim"], tmp_path / "w2" / "fingerprint", probes=small_probes)
    assert again.digest != digest
    second = made.publish(job, None, again)
    assert (second.run_id, second.folder) == (first.run_id, "")
    assert second.fingerprint.digest == digest == tags["reef.fingerprint.digest"]

    other = ProbeSet(name="other", texts=probes.texts[40:80])
    changed = fingerprint_model(zoo["victim"], tmp_path / "w3" / "fingerprint", probes=other)
    third = made.publish(job, None, changed)
    assert third.run_id == first.run_id and third.folder.startswith("fingerprints/")
    assert tags["reef.fingerprint.uri"] == f"runs:/{first.run_id}/{third.folder}/fingerprint"
    assert tags["reef.fingerprint.digest"] == changed.digest != digest
    import mlflow

    for path, expected in (
        ("fingerprint", digest),
        (f"{third.folder}/fingerprint", changed.digest),
    ):
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"runs:/{first.run_id}/{path}",
            dst_path=str(tmp_path / "down" / path.replace("/", "-")),
            tracking_uri=made.config.tracking_uri,
        )
        assert read_fingerprint(local).digest == expected  # both still there, as published
    shutil.rmtree(tmp_path / "down")
