"""The forensic check: a suspect against a victim, calibrated on independent references.

`check` turns fingerprints into `Findings`:

- per-layer similarity: the layer-by-layer CKA matrix in the debiased linear estimator (which
  drives the verdict: it is unbiased in the number of texts and near 0 for independent
  representations, where REEF's biased estimator is inflated) and the biased one (REEF's, for
  comparison), each victim layer's best match, and a monotone alignment path;
- the verdict statistic: the mean CKA along the alignment path over the victim's blocks
  (embeddings excluded: models that share a tokenizer share their embedding geometry);
- sample-size stability at REEF's layer, with resampling bands (random subsets of n texts);
- controls: invariance (the victim against transformed copies of itself: must be 1), positive
  (fingerprints of derivatives of the victim), negative (the reference panel);
- a calibrated verdict (see `decide`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from reef_forensics._version import __version__
from reef_forensics.analysis.comparison import headline_layer
from reef_forensics.analysis.findings import Findings
from reef_forensics.analysis.neuron_test import STATISTIC as UNITS_STATISTIC
from reef_forensics.analysis.neuron_test import UnitsOutcome, VictimCache, compare_units, summary
from reef_forensics.analysis.verdict import (
    FINDINGS_FORMAT,
    FINDINGS_VERSION,
    READABLE_FINDINGS,
    DecisionRule,
    decide,
)
from reef_forensics.digests import canonical_json
from reef_forensics.errors import ComparisonError
from reef_forensics.files import parse_json
from reef_forensics.formats.findings_record import FindingsRecord, UnitsTest
from reef_forensics.formats.fingerprint import EMBEDDINGS_LAYER, Fingerprint
from reef_forensics.formats.fingerprint_writer import created_timestamp
from reef_forensics.formats.json_records import decode
from reef_forensics.formats.measurement import layer_selection_mismatch
from reef_forensics.similarity.alignment import monotone_alignment
from reef_forensics.similarity.cka import (
    CkaMethod,
    Float64Array,
    center_gram,
    centered_grams,
    cka_curve,
    cka_matrix,
    curve_sizes,
    gram,
)
from reef_forensics.similarity.statistics import (
    bootstrap_curve,
)

if TYPE_CHECKING:
    pass
from reef_forensics.analysis.calibration import _clean, calibrate, calibration_record
from reef_forensics.analysis.invariance import invariance_controls


def _stack(fingerprint: Fingerprint, method: CkaMethod) -> Float64Array:
    return centered_grams(
        (f for _, f in fingerprint.iter_layers()), method, count=len(fingerprint.layers)
    )


def _both_stacks(fingerprint: Fingerprint, method: CkaMethod) -> tuple[Float64Array, Float64Array]:
    """Debiased and biased centered stacks, each layer read and its Gram matrix built once
    (the kernel does not depend on the estimator; only the centering does)."""
    n, count = fingerprint.num_samples, len(fingerprint.layers)
    debiased, biased = np.empty((count, n, n)), np.empty((count, n, n))
    for i, (_, features) in enumerate(fingerprint.iter_layers()):
        raw = gram(features, method)
        biased[i] = center_gram(raw, "biased")
        debiased[i] = center_gram(raw, "debiased")
    return debiased, biased


def _aligned_score(
    matrix: Float64Array, layers_a: list[str], layers_b: list[str]
) -> tuple[float, list[int]]:
    """The verdict statistic: mean CKA along the monotone alignment, blocks only on both sides
    (models that share a tokenizer share their embedding geometry; it is not evidence)."""
    blocks = [i for i, name in enumerate(layers_a) if name != EMBEDDINGS_LAYER]
    if not blocks or all(name == EMBEDDINGS_LAYER for name in layers_b):
        raise ComparisonError("a fingerprint without transformer blocks cannot be checked")
    columns = [j for j, name in enumerate(layers_b) if name != EMBEDDINGS_LAYER]
    aligned = monotone_alignment(matrix[np.ix_(blocks, columns)])
    path = [0] * len(layers_a)  # an embeddings row pairs with the other side's embeddings
    for row, column in zip(blocks, aligned, strict=True):
        path[row] = columns[column]
    values = _block_scores(matrix, layers_a, path)
    return (float(np.mean(values)) if not np.any(np.isnan(values)) else float("nan")), path


def _block_scores(matrix: Float64Array, layers_a: list[str], path: list[int]) -> list[float]:
    """The scores along the alignment at the victim's blocks: what the layer test tests."""
    return [
        float(matrix[i, path[i]]) for i, name in enumerate(layers_a) if name != EMBEDDINGS_LAYER
    ]


def _describe(fingerprint: Fingerprint) -> dict[str, Any]:
    """A model as the findings name it: its name, and the registered version (``registry``)
    when its signed fingerprint records one (absent otherwise, as in findings made before)."""
    described = fingerprint.describe()
    entry: dict[str, Any] = {
        "name": described["model_name"],
        "digest": described["digest"],
        "model_digest": described["model_digest"],
        "layers": len(fingerprint.layers),
    }
    if fingerprint.registry is not None:
        entry["registry"] = fingerprint.registry
    return entry


def _matrix_json(matrix: Float64Array) -> list[list[float | None]]:
    return [[_clean(v) for v in row] for row in matrix]


@dataclass
class _Measured:
    """The suspect's, the references' and the controls' CKA against the victim."""

    matrix: Float64Array
    matrix_biased: Float64Array
    score: float
    path: list[int]
    units_record: dict[str, Any] | None
    reference_rows: list[dict[str, Any]]
    positive_rows: list[dict[str, Any]]


def check(
    victim: Fingerprint,
    suspect: Fingerprint,
    references: Sequence[Fingerprint] = (),
    *,
    positive_controls: Sequence[tuple[str, Fingerprint]] = (),
    skipped_positive_controls: str | None = None,
    positive_skips: Sequence[dict[str, str]] = (),
    rule: DecisionRule | None = None,
    resamples: int = 200,
    seed: int = 0,
    progress: bool = False,
    findings_version: int = FINDINGS_VERSION,
) -> Findings:
    """Compare ``suspect`` with ``victim`` and calibrate on ``references``.

    ``findings_version`` 2 makes the record an earlier release made (no neuron-matching test):
    what `verify --evidence` recomputes for findings of that version."""
    if findings_version not in READABLE_FINDINGS:
        raise ValueError(f"findings version {findings_version} is not one this tool writes")
    _check_comparable(victim, suspect, references, positive_controls)
    chosen_rule = rule or DecisionRule()
    method = CkaMethod(estimator="debiased")
    measured = _measure(
        victim, suspect, references, positive_controls, method, findings_version >= 3, progress
    )
    measured.positive_rows.extend(dict(skip) for skip in positive_skips)
    blocks = [name for name in victim.layers if name != EMBEDDINGS_LAYER]
    calibration = calibrate(
        measured.score,
        _block_scores(measured.matrix, victim.layers, measured.path),
        [(r["score"], r["block_scores"]) for r in measured.reference_rows],
        findings_version,
    )
    units = measured.units_record
    outcome = UnitsOutcome.from_record(decode(UnitsTest, units)) if units is not None else None
    verdict, reasons = decide(calibration, chosen_rule, blocks, outcome, findings_version)
    identical = victim.model_digest == suspect.model_digest
    if identical:
        reasons.insert(
            0, "The suspect is the victim itself: both fingerprints name the same model digest."
        )
    stability, x_head = _stability(victim, suspect, method, resamples, seed)
    record: dict[str, Any] = {
        "format": FINDINGS_FORMAT,
        "format_version": findings_version,
        "tool": {"name": "reef-forensics", "version": __version__},
        "created": created_timestamp(),
        "verdict": verdict,
        "score": _clean(measured.score),
        "statistic": "mean linear-debiased CKA along the monotone alignment path over the victim's blocks",
        **calibration_record(calibration, blocks, outcome),
        "decision_rule": chosen_rule.as_json(findings_version),
        "reasons": reasons,
        "identical": identical,
        "victim": _describe(victim),
        "suspect": _describe(suspect),
        "probes": {
            "name": str(victim.manifest["probes"].get("name", "")),
            "digest": victim.probes_digest,
            "count": victim.num_samples,
        },
        "extraction": dict(victim.manifest["extraction"]),
        "reef_layer": stability["reef_layer"],
        "per_layer": _per_layer(victim, suspect, method, measured),
        "stability": stability["stability"],
        "stability_method": stability["stability_method"],
        "controls": {
            "invariance": invariance_controls(x_head, method, seed),
            "positive": measured.positive_rows,
            "positive_skipped": skipped_positive_controls,
            "negative": measured.reference_rows,
        },
        "references": measured.reference_rows,
    }
    if units is not None:
        record["units_test"] = {**units, "statistic": UNITS_STATISTIC}
    # read back from its canonical JSON through the typed record, as verify reads it: a record
    # verify could not read is never written, let alone signed
    return Findings(FindingsRecord.from_json(parse_json(canonical_json(record))))


def _check_comparable(
    victim: Fingerprint,
    suspect: Fingerprint,
    references: Sequence[Fingerprint],
    positive_controls: Sequence[tuple[str, Fingerprint]],
) -> None:
    """Refuse fingerprints made on other texts or layers than the victim's, and references
    that are the victim, the suspect or each other."""
    for role, other in [
        ("suspect", suspect),
        *[(f"reference {r.path}", r) for r in references],
        *[(f"positive control {n}", f) for n, f in positive_controls],
    ]:
        if other.probes_digest != victim.probes_digest:
            raise ComparisonError(
                f"the {role} was fingerprinted on other probe texts ({other.probes_digest[:19]}...) "
                f"than the victim ({victim.probes_digest[:19]}...): fingerprint it on the victim's probe set"
            )
        mismatch = layer_selection_mismatch(victim, other)
        if mismatch:
            raise ComparisonError(f"the {role} took other layers than the victim: {mismatch}")
    seen: dict[str, str] = {
        victim.model_digest: "the victim",
        suspect.model_digest: "the suspect",
    }
    for reference in references:
        if reference.model_digest in seen:
            raise ComparisonError(
                f"the reference {reference.path} is the same model as {seen[reference.model_digest]}: "
                "references must be models independent of the victim, the suspect and each other"
            )
        seen[reference.model_digest] = str(reference.path)


def _measure(
    victim: Fingerprint,
    suspect: Fingerprint,
    references: Sequence[Fingerprint],
    positive_controls: Sequence[tuple[str, Fingerprint]],
    method: CkaMethod,
    with_units: bool,
    progress: bool,
) -> _Measured:
    """The layer-by-layer CKA of the suspect, each reference and each positive control against
    the victim, their alignment scores and (``with_units``) the neuron-matching test."""
    total = 2 + len(references) + len(positive_controls)
    with tqdm(
        total=total, desc="check", unit="model", disable=not progress, file=sys.stderr
    ) as bar:
        victim_stack, victim_biased = _both_stacks(victim, method)
        bar.update(1)

        def against(
            other: Fingerprint, other_stack: Float64Array | None = None
        ) -> tuple[Float64Array, float, list[int]]:
            stack = _stack(other, method) if other_stack is None else other_stack
            matrix = cka_matrix(victim_stack, stack)
            score, path = _aligned_score(matrix, victim.layers, other.layers)
            bar.update(1)
            return matrix, score, path

        suspect_stack, suspect_biased = _both_stacks(suspect, method)
        matrix, score, path = against(suspect, suspect_stack)
        matrix_biased = cka_matrix(victim_biased, suspect_biased)
        del suspect_stack, suspect_biased
        victim_units: VictimCache = {}
        units_record = (
            compare_units(victim, suspect, path, cache=victim_units) if with_units else None
        )
        reference_rows = []
        for reference in references:
            ref_matrix, ref_score, ref_path = against(reference)
            row = {
                **_describe(reference),
                "score": _clean(ref_score),
                "block_scores": [
                    _clean(v) for v in _block_scores(ref_matrix, victim.layers, ref_path)
                ],
            }
            if with_units:  # the panel is a second check of the test's null
                row["units"] = summary(
                    compare_units(victim, reference, ref_path, role="reference", cache=victim_units)
                )
            reference_rows.append(row)
        positive_rows = []
        for name, control in positive_controls:
            _, control_score, control_path = against(control)
            row = {"name": name, "digest": control.digest, "score": _clean(control_score)}
            if with_units:
                row["units"] = summary(
                    compare_units(victim, control, control_path, role="control", cache=victim_units)
                )
            positive_rows.append(row)
    return _Measured(
        matrix, matrix_biased, score, path, units_record, reference_rows, positive_rows
    )


def _stability(
    victim: Fingerprint, suspect: Fingerprint, method: CkaMethod, resamples: int, seed: int
) -> tuple[dict[str, Any], np.ndarray]:
    """Sample-size stability at REEF's layer (the record's ``reef_layer``, ``stability`` and
    ``stability_method``), and the victim's representations at that layer."""
    head_v, head_s = headline_layer(victim.layers), headline_layer(suspect.layers)
    x_head, y_head = victim.layer(head_v), suspect.layer(head_s)
    k, l = gram(x_head, method), gram(y_head, method)  # noqa: E741
    sizes = curve_sizes(victim.num_samples)
    curve = cka_curve(k, l, sizes, method.estimator)
    low, high = bootstrap_curve(k, l, sizes, method.estimator, resamples=resamples, seed=seed)
    fields = {
        "reef_layer": {"layer_a": head_v, "layer_b": head_s, "score": _clean(float(curve[-1]))},
        "stability": [
            {"n": n, "score": _clean(value), "low": _clean(lo), "high": _clean(hi)}
            for n, value, lo, hi in zip(sizes, curve, low, high, strict=True)
        ],
        "stability_method": {
            "layer_a": head_v,
            "layer_b": head_s,
            "resamples": resamples,
            "seed": seed,
            "level": 0.95,
            "text": "CKA on the first n texts; bands: 2.5th and 97.5th percentiles over random subsets of n texts (without replacement)",
        },
    }
    return fields, x_head


def _per_layer(
    victim: Fingerprint, suspect: Fingerprint, method: CkaMethod, measured: _Measured
) -> dict[str, Any]:
    """The record's ``per_layer``: both matrices, the alignment path and each best match."""
    matrix = measured.matrix
    best = [int(np.nanargmax(row)) if not np.all(np.isnan(row)) else 0 for row in matrix]
    return {
        "estimator": method.name,
        "layers_victim": victim.layers,
        "layers_suspect": suspect.layers,
        "matrix": _matrix_json(matrix),
        "matrix_biased": _matrix_json(measured.matrix_biased),
        "alignment": [
            {"layer_a": a, "layer_b": suspect.layers[j], "score": _clean(matrix[i, j])}
            for i, (a, j) in enumerate(zip(victim.layers, measured.path, strict=True))
        ],
        "best_match": [
            {"layer_a": a, "layer_b": suspect.layers[j], "score": _clean(matrix[i, j])}
            for i, (a, j) in enumerate(zip(victim.layers, best, strict=True))
        ],
    }
