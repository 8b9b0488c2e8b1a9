"""Where a registered version's evidence lives, how to fetch it, and whether its tags tell the
truth.

The worker writes evidence into an experiment the service owns (``[evidence] experiment``,
default ``reef-evidence``), one run per model version, never into the data scientists' own
runs; the version's tag ``reef.evidence.run`` names that run and ``reef.fingerprint.uri`` the
fingerprint in it. A run holds ``fingerprint/`` (signed) and ``screening/VICTIM.vN/findings/``
(signed; with ``report.pdf`` for `derived` and `inconclusive`). Versions done before this layout
keep their evidence where it was (``reef/NAME/vN/`` in the version's own run); both read the
same way, from the URI the tag names.

`verify_version` checks what the registry says against what was signed: the version's
digest tags against its signed fingerprint, and each ``reef.screen.*`` tag against the signed
findings of that screening, so that an edited verdict tag is caught.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from reef_forensics.crypto.results import TrustPolicy, VerificationResult
from reef_forensics.errors import BadInputError
from reef_forensics.mlops.registry import (
    SCREEN_PREFIX,
    TAG_FINGERPRINT_DIGEST,
    TAG_FINGERPRINT_URI,
    TAG_MODEL_DIGEST,
    TAG_PROBES_DIGEST,
    parse_models_uri,
)

TAG_EVIDENCE_RUN = "reef.evidence.run"
RUN_TAG_MODEL = "reef.model.uri"
_RUNS_URI = re.compile(r"^runs:/(?P<run>[0-9a-f]+)/(?P<path>.+)$")


def evidence_run(mlflow_client: Any, experiment: str, name: str, version: str) -> str:
    """The service's run for ``models:/NAME/VERSION`` in ``experiment`` (both made if need be)."""
    found = mlflow_client.get_experiment_by_name(experiment)
    if found is None:
        try:
            experiment_id = mlflow_client.create_experiment(experiment)
        except Exception:  # another worker made it first
            found = mlflow_client.get_experiment_by_name(experiment)
            if found is None:
                raise
            experiment_id = found.experiment_id
    else:
        experiment_id = found.experiment_id
    uri = f"models:/{name}/{version}"
    runs = mlflow_client.search_runs(
        [experiment_id], filter_string=f"tags.`{RUN_TAG_MODEL}` = '{uri}'", max_results=1
    )
    if runs:
        return str(runs[0].info.run_id)
    run = mlflow_client.create_run(
        experiment_id, run_name=f"{name}-v{version}", tags={RUN_TAG_MODEL: uri}
    )
    mlflow_client.set_terminated(run.info.run_id)
    return str(run.info.run_id)


def published_before(mlflow_client: Any, run_id: str, dest: Path) -> Path | None:
    """The fingerprint an evidence run already holds (``fingerprint/``), downloaded into
    ``dest``; None when it holds none."""
    import mlflow

    if not mlflow_client.list_artifacts(run_id, "fingerprint"):
        return None
    dest.mkdir(parents=True, exist_ok=True)
    return Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"runs:/{run_id}/fingerprint",
            dst_path=str(dest),
            tracking_uri=mlflow_client.tracking_uri,
        )
    )


def fingerprint_folder(digest: str) -> str:
    """Where in an evidence run a version's fingerprint goes when the run already holds another
    one (its probe set changed, say): a folder of its own, so the earlier one and the findings
    that name it stay reproducible."""
    return f"fingerprints/{digest.removeprefix('sha256:')[:16]}"


def evidence_base(version: Any) -> tuple[str, str] | None:
    """(run id, artifact folder) of a version's evidence, from its ``reef.fingerprint.uri``."""
    match = _RUNS_URI.match(version.tags.get(TAG_FINGERPRINT_URI, ""))
    if match is None:
        return None
    return match["run"], match["path"].removesuffix("fingerprint").rstrip("/")


def download_evidence(mlflow_client: Any, uri: str, dest: Path) -> Path:
    """A version's signed evidence laid out as ``dest/fingerprint`` and
    ``dest/screening/VICTIM.vN/``; returns ``dest``."""
    import mlflow

    name, number = parse_models_uri(uri)
    version = mlflow_client.get_model_version(name, number)
    base = evidence_base(version)
    if base is None:
        raise BadInputError(f"{uri} has no published fingerprint (tag {TAG_FINGERPRINT_URI})")
    run_id, folder = base
    prefix = f"{folder}/" if folder else ""
    dest.mkdir(parents=True, exist_ok=True)
    for part in ("fingerprint", "screening"):
        listed = mlflow_client.list_artifacts(run_id, f"{prefix}{part}")
        if not listed:
            continue
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"runs:/{run_id}/{prefix}{part}",
            dst_path=str(dest),
            tracking_uri=mlflow_client.tracking_uri,
        )
    return dest


def verify_version(
    mlflow_client: Any, uri: str, trust: TrustPolicy, scratch: Path
) -> VerificationResult:
    """The version's signed evidence, and each ``reef.*`` tag against it."""
    from reef_forensics.evidence.verify import verify_evidence
    from reef_forensics.formats.fingerprint import read_fingerprint

    name, number = parse_models_uri(uri)
    version = mlflow_client.get_model_version(name, number)
    result = VerificationResult(Path(uri))
    local = download_evidence(mlflow_client, uri, scratch / "evidence")
    if not result.add("fingerprint", (local / "fingerprint").is_dir(), "downloaded"):
        return result
    signed = verify_evidence(local / "fingerprint", trust)
    result.merge(signed, "fingerprint")
    result.signer = signed.signer
    result.add("signature", signed.valid, "the version's signed fingerprint verifies")
    fingerprint = read_fingerprint(local / "fingerprint")
    for tag, value in (
        (TAG_FINGERPRINT_DIGEST, fingerprint.digest),
        (TAG_MODEL_DIGEST, fingerprint.model_digest),
        (TAG_PROBES_DIGEST, fingerprint.probes_digest),
    ):
        recorded = version.tags.get(tag)
        result.add(f"tag {tag}", recorded == value, f"{recorded} (signed: {value})")
    registry = fingerprint.registry
    if registry is not None:
        result.add("fingerprint names the version", registry["uri"] == uri, registry["uri"])
    _verify_screenings(version, local / "screening", fingerprint.digest, trust, result)
    return result


def _verify_screenings(
    version: Any, folder: Path, suspect_digest: str, trust: TrustPolicy, result: VerificationResult
) -> None:
    """Each screening tag against its signed findings, and no signed findings without a tag."""
    from reef_forensics.analysis.findings import FINDINGS_FILE
    from reef_forensics.evidence.verify import verify_evidence
    from reef_forensics.files import parse_json
    from reef_forensics.formats.findings_record import FindingsRecord

    tags = {k: v for k, v in version.tags.items() if k.startswith(SCREEN_PREFIX)}
    signed = {p.name for p in folder.iterdir() if p.is_dir()} if folder.is_dir() else set()
    for key, value in sorted(tags.items()):
        victim = key.removeprefix(SCREEN_PREFIX)
        findings = folder / victim / "findings"
        where = f"tag {key}"
        if not findings.is_dir():
            result.add(where, False, f"says {value!r}, but no signed findings back it")
            continue
        check = verify_evidence(findings, trust)
        result.merge(check, f"screening {victim}")
        if not check.valid:
            continue
        record = FindingsRecord.from_json(parse_json((findings / FINDINGS_FILE).read_bytes()))
        words = value.split()
        score = f"score={record.score:.4f}"
        agrees = (
            bool(words)
            and words[0] == record.verdict
            and score in words
            and record.suspect.digest == suspect_digest
        )
        result.add(where, agrees, f"{value!r}; signed findings: {record.verdict} {score}")
    for victim in sorted(signed - {k.removeprefix(SCREEN_PREFIX) for k in tags}):
        result.add(f"screening {victim}", False, "signed findings with no tag on the version")
