"""`mlflow.models.evaluate(suspect, data, evaluators=["reef"], evaluator_config={"reef": {...}})`:
a forensic check of the evaluated model against a victim, logged to the evaluation's run.

``evaluator_config["reef"]``:

- ``victim`` (required): ``models:/NAME/VERSION``, a model folder or a fingerprint directory;
- ``references``: a list of the same kinds (at least 3 for a verdict);
- ``victim_model``: the victim model, when ``victim`` is a fingerprint (positive controls);
- ``positive_controls``: false to skip them (default: made when the victim is a model);
- ``suspect``: the evaluated model as ``models:/NAME/VERSION`` (needed when the version has no
  MLflow model id: one registered from ``runs:/...``);
- ``probes``: the probe set (default: the deployment's, ``probes`` of $REEF_CONFIG), used when
  the victim is a model;
- ``key``, ``cert``, ``chain``, ``passphrase_file``: sign the findings and render the signed report
  (defaults: the deployment configuration, $REEF_CONFIG).

The evaluation data is not used: the probe texts are the victim's. Logged: metrics
``reef_score`` and ``reef_p_value`` (when defined), artifacts ``reef/findings/`` (signed) and
``reef/report.pdf`` (with a key and certificate), and the tag ``reef.verdict``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from mlflow.models.evaluation.base import EvaluationResult, ModelEvaluator

from reef_forensics.formats.json_records import present


class ReefEvaluator(ModelEvaluator):
    @classmethod
    def can_evaluate(cls, *, model_type: Any, evaluator_config: Any, **kwargs: Any) -> bool:
        return isinstance(evaluator_config, dict) and "victim" in evaluator_config

    def evaluate(
        self,
        *,
        model_type: Any,
        dataset: Any,
        run_id: str,
        evaluator_config: dict[str, Any],
        model: Any = None,
        **kwargs: Any,
    ) -> EvaluationResult:
        from mlflow import MlflowClient

        from reef_forensics.casework import run_case
        from reef_forensics.formats.naming import identity_of
        from reef_forensics.formats.probes import load_probes
        from reef_forensics.mlops.config import load_config
        from reef_forensics.mlops.registry import localize

        config = load_config()
        settings = dict(evaluator_config)
        suspect = settings.get("suspect") or (
            f"models:/{kwargs['model_id']}" if kwargs.get("model_id") else None
        )
        if suspect is None:  # a registered version made from a run, not from a logged model
            raise ValueError(
                "reef: the evaluated model has no MLflow model id (a version registered from "
                "runs:/...): give evaluator_config {'reef': {'suspect': 'models:/NAME/VERSION'}}"
            )
        signer = _signer(settings, config)
        client = MlflowClient()
        with tempfile.TemporaryDirectory(prefix="reef-evaluate-") as scratch:
            work = Path(scratch)
            references = list(settings.get("references", []))
            named = [identity_of(v) for v in (settings["victim"], suspect, *references)]
            victim, suspect_path, victim_model, *refs = localize(
                [settings["victim"], suspect, settings.get("victim_model"), *references],
                work / "models",
            )
            assert victim is not None and suspect_path is not None
            out = work / "out"
            out.mkdir()
            certified = signer is not None and signer.certificate is not None
            case = run_case(
                victim,
                suspect_path,
                [r for r in refs if r is not None],
                workdir=work / "check",
                out=out / "findings",
                signer=signer,
                report=out / "report.pdf" if certified else None,
                probes=load_probes(settings.get("probes") or config.probes),
                identities=named,
                positive_controls=bool(settings.get("positive_controls", True)),
                victim_model=victim_model,
            )
            client.log_artifacts(run_id, str(out), artifact_path="reef")
        record = case.findings.record
        units = present(record.units_test)
        measured = {
            "reef_p_value": record.p_value,
            "reef_log10_p_value": present(record.log10_p_value),  # below a double's range
            "reef_units_log10_p_value": present(units.log10_p_value) if units else None,
        }
        # the score always (None when undefined); the p-values when measured
        metrics = {"reef_score": record.score}
        metrics.update((k, v) for k, v in measured.items() if v is not None)
        for name, value in metrics.items():
            if value is not None:
                client.log_metric(run_id, name, value)
        client.set_tag(run_id, "reef.verdict", record.verdict)
        return EvaluationResult(metrics=metrics, artifacts={}, run_id=run_id)


def _signer(settings: dict[str, Any], config: Any) -> Any:
    """The signer ``evaluator_config`` names (``key``, ``cert``, ``chain``,
    ``passphrase_file``), else the configuration's; None without a key."""
    from reef_forensics.crypto.keys import load_signer, read_passphrase

    key = settings.get("key") or config.key
    if not key:
        return None
    return load_signer(
        key,
        passphrase=read_passphrase(settings.get("passphrase_file") or config.passphrase_file),
        certificate=settings.get("cert") or config.cert,
        chain=settings.get("chain") or config.chain,
    )
