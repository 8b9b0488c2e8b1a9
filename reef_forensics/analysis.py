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

import math
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from . import __version__
from .alignment import monotone_alignment
from .cka import (
    CkaMethod,
    Float64Array,
    center_gram,
    centered_grams,
    cka,
    cka_curve,
    cka_matrix,
    curve_sizes,
    gram,
)
from .comparison import headline_layer
from .digests import canonical_json
from .errors import BadInputError, ComparisonError, first_line
from .fingerprint import (
    EMBEDDINGS_LAYER,
    Fingerprint,
    created_timestamp,
    layer_selection_mismatch,
    replace_directory,
)
from .neuron_test import STATISTIC as UNITS_STATISTIC
from .neuron_test import UnitsOutcome, VictimCache, compare_units, summary
from .probes import ProbeSet, load_probes
from .statistics import CombinedCalibration, Statistic, bootstrap_curve, combined_calibration
from .unit_matching import format_log10_p

if TYPE_CHECKING:
    from .keys import Signer

FINDINGS_FORMAT = "reef-findings"
FINDINGS_VERSION = 4
#: Findings versions `verify` reads, each re-derived with its own rule: version 2 (two CKA
#: tests), version 3 (three tests; `unrelated` only when every corrected p >= unrelated_alpha),
#: version 4 (as 3, and `unrelated` also when the neuron-matching test, able to find the
#: suspect's units, finds nothing while no CKA test reaches alpha).
READABLE_FINDINGS = (2, 3, 4)
VERDICTS = ("derived", "unrelated", "inconclusive")


@dataclass(frozen=True)
class DecisionRule:
    """`derived` needs at least ``min_references`` references and one of the two tests (the mean
    over the blocks, or the most extreme block) with a combined p-value below ``alpha`` and the
    suspect above every reference on that test's statistic by at least ``margin``; `unrelated`
    needs the same panel and a combined p-value of at least ``unrelated_alpha`` (the similarity is
    ordinary among independent models); anything else is `inconclusive`."""

    alpha: float = 0.01
    unrelated_alpha: float = 0.05
    margin: float = 0.05
    min_references: int = 3

    def __post_init__(self) -> None:
        if self.min_references < 3:
            raise ValueError("a verdict needs at least 3 references: min_references must be >= 3")
        if not 0 < self.alpha <= self.unrelated_alpha < 1:
            raise ValueError("need 0 < alpha <= unrelated_alpha < 1")
        if self.margin < 0:
            raise ValueError("the margin cannot be negative")

    @classmethod
    def from_json(cls, recorded: dict[str, Any]) -> DecisionRule:
        """The rule a findings record states (its ``as_json``; the text is not an input).
        TypeError or ValueError when the record states no usable rule."""
        if not isinstance(recorded, dict):
            raise TypeError("the decision rule is not an object")
        return cls(**{k: v for k, v in recorded.items() if k != "text"})

    def as_json(self, version: int = FINDINGS_VERSION) -> dict[str, Any]:
        if version >= 4:
            return {**self.as_json(2), "text": self._text_v4()}
        if version == 3:
            return {**self.as_json(2), "text": self._text_v3()}
        return {
            "alpha": self.alpha,
            "unrelated_alpha": self.unrelated_alpha,
            "margin": self.margin,
            "min_references": self.min_references,
            "text": (
                f"derived: at least {self.min_references} references, and the mean test or the "
                f"layer test with a combined p < {self.alpha} and the suspect above every reference "
                f"on that test's score by at least {self.margin}; unrelated: at least "
                f"{self.min_references} references and combined p >= {self.unrelated_alpha}; "
                "otherwise inconclusive. Combined p: twice the smaller of the two tests' p-values; "
                "the layer test's p-value is Bonferroni-corrected for the number of blocks tested"
            ),
        }

    def _text_v3(self) -> str:
        return (
            f"Three tests: the CKA mean test, the CKA layer test (both calibrated on the "
            f"references) and the neuron-matching test (needs no references); each p-value is "
            f"multiplied by the number of tests that ran (Bonferroni). derived: the neuron-matching "
            f"test with a corrected p < {self.alpha}, or, with at least {self.min_references} "
            f"references, a CKA test with a corrected p < {self.alpha} and the suspect above every "
            f"reference on that test's score by at least {self.margin}; unrelated: at least "
            f"{self.min_references} references and every test's corrected p >= "
            f"{self.unrelated_alpha} (a neuron-matching test that could not run is stated); "
            "otherwise inconclusive"
        )

    def _text_v4(self) -> str:
        return (
            f"{self._text_v3().removesuffix('; otherwise inconclusive')}; also unrelated: at "
            f"least {self.min_references} references, the neuron-matching test's corrected p >= "
            f"{self.unrelated_alpha} although had the suspect's units been the victim's it could "
            f"have reached a corrected p < {self.alpha}, and every CKA test's corrected p >= "
            f"{self.alpha} (a CKA test calibrated on the references does not hold back a verdict "
            "the reference-free test settles); otherwise inconclusive"
        )


def format_p(p: float) -> str:
    """A probability for people: two significant digits, and no false zero."""
    return "< 1e-16" if p < 1e-16 else f"{p:.2g}"


def p_text(record: dict[str, Any]) -> str:
    """A findings record's combined p-value for people ("n/a" when there is none): from its
    log10 (version 3), so that p-values below a double's range still print."""
    if record.get("log10_p_value") is not None:
        return format_log10_p(float(record["log10_p_value"]))
    return "n/a" if record.get("p_value") is None else format_p(float(record["p_value"]))


def units_p_text(record: dict[str, Any]) -> str:
    """The neuron-matching test's combined p-value for people, or why it did not run."""
    units = record.get("units_test")
    if units is None:
        return "n/a"
    if not units["ran"]:
        return "not run"
    return format_log10_p(float(units["log10_p_value"]))


def _range(values: Sequence[float]) -> str:
    return f"{min(values):.3f} to {max(values):.3f}"


def decide(
    calibration: CombinedCalibration,
    rule: DecisionRule,
    layer_names: Sequence[str] = (),
    units: UnitsOutcome | None = None,
    version: int = FINDINGS_VERSION,
) -> tuple[str, list[str]]:
    """The verdict and the sentences that explain it (``layer_names``: the blocks tested), by
    the rule of findings format ``version``.

    ``units`` is the neuron-matching test (findings versions 3 and 4); None decides as version 2
    did, from the two CKA tests alone."""
    if units is not None:
        return _decide_three(calibration, rule, layer_names, units, panel_free=version >= 4)
    return _decide_cka(calibration, rule, layer_names)


def tests_counted(calibration: CombinedCalibration, units: UnitsOutcome) -> int:
    """How many tests a p-value is corrected for: the two CKA tests, and the neuron-matching
    test when it ran."""
    return 2 + (1 if units.ran else 0)


def overall_log10_p(calibration: CombinedCalibration, units: UnitsOutcome) -> float | None:
    """log10 of the combined p-value of every test that ran (Bonferroni over the tests)."""
    logs = [_log10(t.p_value) for t in calibration.tests if t.p_value is not None]
    if units.ran:
        logs.append(units.log10_p)
    if not logs:
        return None
    return min(0.0, math.log10(tests_counted(calibration, units)) + min(logs))


def _log10(p: float) -> float:
    return math.log10(p) if p > 0 else math.log10(sys.float_info.min * sys.float_info.epsilon)


def _unusual_block(calibration: CombinedCalibration, layer_names: Sequence[str]) -> list[str]:
    """The sentence on the layer test's block, when there is one."""
    layer = calibration.layer
    if layer is None or layer.layer is None:
        return []
    name = layer_names[layer.layer] if layer.layer < len(layer_names) else f"#{layer.layer}"
    return [
        f"Its most unusual block, {name}, scores {layer.calibration.score:.3f} where the "
        f"references score {_range(layer.calibration.references)}."
    ]


def _cka_described(calibration: CombinedCalibration, layer_names: Sequence[str]) -> list[str]:
    mean = calibration.mean.calibration
    described = [
        f"CKA: the suspect scores {mean.score:.3f} on average over the victim's blocks. The "
        f"{len(mean.references)} independent reference models score {_range(mean.references)} "
        "against the same victim."
    ]
    described.extend(_unusual_block(calibration, layer_names))
    return described


def _decide_three(
    calibration: CombinedCalibration,
    rule: DecisionRule,
    layer_names: Sequence[str],
    units: UnitsOutcome,
    *,
    panel_free: bool,
) -> tuple[str, list[str]]:
    """Versions 3 and 4: the two CKA tests and the neuron-matching test, Bonferroni over the
    tests. ``panel_free`` (version 4): the neuron-matching test's finding of nothing settles
    `unrelated` where a CKA test is unusual but short of ``alpha`` (see `_units_settle`)."""
    mean = calibration.mean.calibration
    count = tests_counted(calibration, units)
    enough = len(mean.references) >= rule.min_references and not math.isnan(mean.score)
    if enough:
        described = _cka_described(calibration, layer_names)
    elif math.isnan(mean.score):
        described = ["CKA: the similarity could not be computed."]
    else:
        described = [
            f"CKA: only {len(mean.references)} independent reference model(s) were measured; at "
            f"least {rule.min_references} are needed to calibrate the CKA tests, so they do not "
            "decide. Their numbers are reported all the same."
        ]
    units_line = units.sentence()
    if units.ran:
        corrected = min(0.0, math.log10(count) + units.log10_p)
        if corrected < math.log10(rule.alpha):
            return "derived", [
                units_line,
                *described,
                f"The neuron-matching test decides: after correcting for {count} tests the "
                f"probability is {format_log10_p(corrected)}, below the threshold {rule.alpha}. The "
                "suspect's units are the victim's units: the evidence indicates it was derived "
                "from it.",
            ]
    firing = [
        t
        for t in calibration.tests
        if enough
        and t.p_value is not None
        and min(1.0, count * t.p_value) < rule.alpha
        and t.margin is not None
        and t.margin >= rule.margin
    ]
    if firing:
        test = min(firing, key=lambda t: t.p_value or 0.0)
        corrected_p, margin = min(1.0, count * (test.p_value or 0.0)), test.margin or 0.0
        what = (
            "A mean similarity this high"
            if test.name == "mean"
            else f"A block this similar (after correcting for {test.layers_tested} blocks)"
        )
        return "derived", [
            *described,
            units_line,
            f"The CKA {test.name} test decides: {what} would be expected from an independent model "
            f"with probability {format_p(corrected_p)} (below the threshold {rule.alpha}; corrected "
            f"for {count} tests), and it exceeds every reference by {margin:.3f}. The suspect's "
            "representations match the victim's far more closely than independent models do: the "
            "evidence indicates it was derived from it.",
        ]
    overall = overall_log10_p(calibration, units)
    if not enough or overall is None:
        return "inconclusive", [
            *described,
            units_line,
            "No test found evidence of derivation, but without a calibrated CKA panel no "
            "conclusion of independence is drawn.",
        ]
    if overall >= math.log10(rule.unrelated_alpha):
        unrun = "" if units.ran else " (the neuron-matching test could not run, as said above)"
        return "unrelated", [
            *described,
            units_line,
            f"Independent models give results like these with probability "
            f"{format_log10_p(overall)} (the smallest of the tests' p-values, corrected for {count} "
            f"tests): no test found evidence of derivation{unrun}.",
        ]
    if panel_free and (settled := _units_settle(calibration, rule, units, count)):
        return "unrelated", [*described, units_line, *settled]
    return "inconclusive", [
        *described,
        units_line,
        f"The results are unusual for an independent model (probability "
        f"{format_log10_p(overall)}, corrected for {count} tests) but do not meet the bar for a "
        f"finding of derivation (below {rule.alpha}, and for a CKA test a margin of {rule.margin} "
        "over every reference). More references or probe texts may settle it.",
    ]


def _units_settle(
    calibration: CombinedCalibration, rule: DecisionRule, units: UnitsOutcome, count: int
) -> list[str]:
    """Why the neuron-matching test settles `unrelated` (version 4), or nothing when it does not.

    It settles only when (1) it ran and found nothing (corrected p >= ``unrelated_alpha``),
    (2) it had the power to find something: had every matched unit been paired alike, as a
    derivative's are, its corrected p would have been below ``alpha``, and (3) no CKA test
    reaches ``alpha`` (such a test still makes the case inconclusive, or derived with its
    margin). What remains is a CKA test between ``alpha`` and ``unrelated_alpha``: unusual
    against the reference panel, which is only as representative as the models in it, where the
    test that needs no panel finds the suspect's units independent of the victim's."""
    if not units.ran:
        return []
    corrected = min(0.0, math.log10(count) + units.log10_p)
    best = min(0.0, math.log10(count) + units.best_log10_p)
    cka = [(t, min(1.0, count * t.p_value)) for t in calibration.tests if t.p_value is not None]
    if (
        corrected < math.log10(rule.unrelated_alpha)
        or best >= math.log10(rule.alpha)
        or not cka
        or any(p < rule.alpha for _, p in cka)
    ):
        return []
    test, p = min(cka, key=lambda pair: pair[1])
    return [
        f"The CKA {test.name} test finds the suspect somewhat unusual against the reference "
        f"models (probability {format_p(p)}, corrected for {count} tests), short of the "
        f"{rule.alpha} a finding needs; the CKA tests are only as sure as the reference panel "
        "is representative.",
        f"The neuron-matching test needs no reference models and finds nothing: the suspect's "
        f"units pair with the victim's no more often than chance (probability "
        f"{format_log10_p(corrected)}, corrected for {count} tests), where units taken from the "
        f"victim would have given {format_log10_p(best)}. No test meets the bar for a finding of "
        "derivation, and the one that needs no panel finds the suspect's units independent of the "
        "victim's: the evidence indicates an independent model.",
    ]


def _decide_cka(
    calibration: CombinedCalibration, rule: DecisionRule, layer_names: Sequence[str]
) -> tuple[str, list[str]]:
    """Version 2: the two CKA tests."""
    mean = calibration.mean.calibration
    score, refs = mean.score, mean.references
    if math.isnan(score):
        return "inconclusive", ["The similarity could not be computed, so no conclusion is drawn."]
    if len(refs) < rule.min_references:
        return "inconclusive", [
            f"Only {len(refs)} independent reference model(s) were measured; at least "
            f"{rule.min_references} are needed to know how similar unrelated models look to this "
            "victim, so no verdict is given. The numbers are reported all the same."
        ]
    p = calibration.p_value
    described = [
        f"The suspect scores {score:.3f} on average over the victim's blocks. The {len(refs)} "
        f"independent reference models score {_range(refs)} against the same victim."
    ]
    described.extend(_unusual_block(calibration, layer_names))
    if p is None:
        return "inconclusive", [*described, f"No p-value could be computed: {mean.reason}."]
    firing = [
        t
        for t in calibration.tests
        if (c := calibration.corrected(t)) is not None
        and c < rule.alpha
        and t.margin is not None
        and t.margin >= rule.margin
    ]
    if firing:
        test = min(firing, key=lambda t: calibration.corrected(t) or 0.0)
        corrected, margin = calibration.corrected(test) or 0.0, test.margin or 0.0
        if test.name == "mean":
            found = (
                f"A mean similarity this high would be expected from an independent model with "
                f"probability {format_p(corrected)} (below the threshold {rule.alpha}; corrected "
                f"for testing two statistics), and it exceeds every reference by {margin:.3f}."
            )
        else:
            found = (
                f"A block this similar would be expected from an independent model with "
                f"probability {format_p(corrected)} (below the threshold {rule.alpha}; corrected "
                f"for testing {test.layers_tested} blocks and two statistics), and it exceeds every "
                f"reference at that block by {margin:.3f}."
            )
        return "derived", [
            *described,
            found + " The suspect's representations match the victim's far more closely than "
            "independent models do: the evidence indicates it was derived from it.",
        ]
    if p >= rule.unrelated_alpha:
        return "unrelated", [
            *described,
            f"Independent models reach similarity like this with probability {format_p(p)} (the "
            "smaller of the mean test's and the layer test's p-values, corrected for testing "
            "both), so it is what unrelated models show: no evidence of derivation was found.",
        ]
    return "inconclusive", [
        *described,
        f"The similarity is unusual for an independent model (probability {format_p(p)}) but "
        f"does not meet the bar for a finding of derivation (probability below {rule.alpha} and a "
        f"margin of {rule.margin} over every reference). More references or probe texts may settle it.",
    ]


FINDINGS_FILE = "findings.json"


def findings_directory(folder: Path) -> bool:
    """True for a directory holding a findings record and at most its signature, nothing else:
    the only kind `--overwrite` may replace."""
    names = {entry.name for entry in folder.iterdir()} if folder.is_dir() else {"(not a directory)"}
    return FINDINGS_FILE in names and names <= {FINDINGS_FILE, "model.sig"}


@dataclass
class Findings:
    """Everything `check` measured, and the verdict; `as_json` is the signed record."""

    record: dict[str, Any] = field(default_factory=dict)

    def write(
        self, out: str | os.PathLike[str], *, signer: Signer | None = None, overwrite: bool = False
    ) -> Path:
        """Write ``out/findings.json`` (canonical JSON) and, with a signer, ``out/model.sig``;
        built in a staging directory and renamed into place."""
        folder = Path(out)
        if folder.exists() and not overwrite:
            raise BadInputError(f"{folder} already exists (pass --overwrite to replace it)")
        if folder.exists() and not findings_directory(folder):
            raise BadInputError(
                f"{folder} exists and is not a findings directory: refusing to replace it"
            )
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(
            tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent)
        )
        try:
            staging.chmod(0o755)  # mkdtemp makes it private; findings are meant to be read
            (staging / FINDINGS_FILE).write_bytes(canonical_json(self.record))
            if signer is not None:
                from .signing import sign_directory

                sign_directory(staging, signer, name=folder.name)
            replace_directory(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return folder / FINDINGS_FILE

    @property
    def verdict(self) -> str:
        return str(self.record["verdict"])

    @property
    def score(self) -> float:
        return float(self.record["score"])

    def as_json(self) -> dict[str, Any]:
        return self.record


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


def _clean(value: float) -> float | None:
    """A number for the record: exact (so that `verify` can recompute from it), or None."""
    return None if value is None or math.isnan(value) or math.isinf(value) else float(value)


def _matrix_json(matrix: Float64Array) -> list[list[float | None]]:
    return [[_clean(v) for v in row] for row in matrix]


def _number(value: float | None) -> float:
    return math.nan if value is None else float(value)


def calibrate(
    score: float | None,
    block_scores: Sequence[float | None],
    references: Sequence[tuple[float | None, Sequence[float | None]]],
    version: int = FINDINGS_VERSION,
) -> CombinedCalibration:
    """The combined calibration from the numbers a findings record holds (None: undefined), so
    that `check` and `verify` compute it from the same inputs the same way; findings of
    ``version`` 2 and 3 with the Student t tail they were made with
    (`statistics.legacy_student_t_sf`)."""
    return combined_calibration(
        _number(score),
        [_number(r) for r, _ in references],
        [_number(v) for v in block_scores],
        [[_number(v) for v in row] for _, row in references],
        legacy_tail=version < 4,
    )


def calibration_record(
    calibration: CombinedCalibration, blocks: Sequence[str], units: UnitsOutcome | None = None
) -> dict[str, Any]:
    """The p-values and the tests, as the findings record states them (``units``: version 3,
    with the neuron-matching test; None: version 2)."""
    record = _calibration_record_v2(calibration, blocks)
    if units is None:
        return record
    overall = overall_log10_p(calibration, units)
    count = tests_counted(calibration, units)
    record["p_value"] = None if overall is None else _clean(10.0**overall)
    record["log10_p_value"] = overall
    record["tests"]["units"] = (
        {
            "ran": True,
            "log10_p_value": units.log10_p,
            "p_value": _clean(10.0**units.log10_p),
            "blocks_compared": units.blocks_compared,
            "lined_up": units.lined_up,
        }
        if units.ran
        else {"ran": False, "skipped": units.skipped}
    )
    record["tests"]["combination"] = (
        f"p_value = min(1, {count} * the smallest p-value of the {count} tests that ran "
        "(Bonferroni), log10_p_value its log10; layer p = min(1, blocks tested * smallest "
        "per-block p); CKA p-values: Student t predictive on Fisher-z reference scores; "
        "neuron-matching p: see units_test.statistic"
    )
    return record


def _calibration_record_v2(
    calibration: CombinedCalibration, blocks: Sequence[str]
) -> dict[str, Any]:
    mean = calibration.mean.calibration

    def test_json(test: Statistic | None) -> dict[str, Any] | None:
        if test is None:
            return None
        c = test.calibration
        return {
            "layer": blocks[test.layer] if test.layer is not None else None,
            "layers_tested": test.layers_tested,
            "score": _clean(c.score),
            "p_value": _clean(test.p_value) if test.p_value is not None else None,
            "empirical_p_value": _clean(c.empirical_p) if c.empirical_p is not None else None,
            "margin": _clean(test.margin) if test.margin is not None else None,
            "null_mean": _clean(c.null_mean) if c.null_mean is not None else None,
            "null_sd_fisher_z": _clean(c.null_sd_z) if c.null_sd_z is not None else None,
        }

    return {
        "p_value": _clean(calibration.p_value) if calibration.p_value is not None else None,
        "p_value_reason": mean.reason,
        "empirical_p_value": _clean(mean.empirical_p) if mean.empirical_p is not None else None,
        "panel_size": mean.panel_size,
        "null": {
            "mean": _clean(mean.null_mean) if mean.null_mean is not None else None,
            "sd_fisher_z": _clean(mean.null_sd_z) if mean.null_sd_z is not None else None,
        },
        "tests": {
            "mean": test_json(calibration.mean),
            "layer": test_json(calibration.layer),
            "combination": "p_value = min(1, 2 * min(mean p, layer p)); layer p = min(1, "
            "blocks tested * smallest per-block p); each p: Student t predictive on Fisher-z "
            "reference scores",
        },
    }


def invariance_controls(
    features: np.ndarray, method: CkaMethod, seed: int = 0
) -> list[dict[str, Any]]:
    """The victim's layer against transformed copies of itself: each must score 1."""
    rng = np.random.default_rng(seed)
    x = np.asarray(features, dtype=np.float64)
    q, _ = np.linalg.qr(rng.normal(size=(x.shape[1], x.shape[1])))
    transforms = {
        "orthogonal transform": x @ q,
        "feature permutation": x[:, rng.permutation(x.shape[1])],
        "isotropic scaling x7.5": 7.5 * x,
    }
    if method.standardize:  # z-scoring is not rotation invariant: test what it is invariant to
        transforms["orthogonal transform"] = x * rng.uniform(0.1, 10.0, size=x.shape[1])
        transforms = {
            ("per-feature scaling" if k == "orthogonal transform" else k): v
            for k, v in transforms.items()
        }
    return [{"name": name, "score": _clean(cka(x, y, method))} for name, y in transforms.items()]


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
    with_units = findings_version >= 3
    chosen_rule = rule or DecisionRule()
    method = CkaMethod(estimator="debiased")
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
        positive_rows.extend(dict(skip) for skip in positive_skips)

    head_v, head_s = headline_layer(victim.layers), headline_layer(suspect.layers)
    x_head, y_head = victim.layer(head_v), suspect.layer(head_s)
    k, l = gram(x_head, method), gram(y_head, method)  # noqa: E741
    sizes = curve_sizes(victim.num_samples)
    curve = cka_curve(k, l, sizes, method.estimator)
    low, high = bootstrap_curve(k, l, sizes, method.estimator, resamples=resamples, seed=seed)

    blocks = [name for name in victim.layers if name != EMBEDDINGS_LAYER]
    calibration = calibrate(
        score,
        _block_scores(matrix, victim.layers, path),
        [(r["score"], r["block_scores"]) for r in reference_rows],
        findings_version,
    )
    outcome = UnitsOutcome.from_record(units_record) if units_record is not None else None
    verdict, reasons = decide(calibration, chosen_rule, blocks, outcome, findings_version)
    identical = victim.model_digest == suspect.model_digest
    if identical:
        reasons.insert(
            0, "The suspect is the victim itself: both fingerprints name the same model digest."
        )
    best = [int(np.nanargmax(row)) if not np.all(np.isnan(row)) else 0 for row in matrix]
    record: dict[str, Any] = {
        "format": FINDINGS_FORMAT,
        "format_version": findings_version,
        "tool": {"name": "reef-forensics", "version": __version__},
        "created": created_timestamp(),
        "verdict": verdict,
        "score": _clean(score),
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
        "reef_layer": {"layer_a": head_v, "layer_b": head_s, "score": _clean(float(curve[-1]))},
        "per_layer": {
            "estimator": method.name,
            "layers_victim": victim.layers,
            "layers_suspect": suspect.layers,
            "matrix": _matrix_json(matrix),
            "matrix_biased": _matrix_json(matrix_biased),
            "alignment": [
                {"layer_a": a, "layer_b": suspect.layers[j], "score": _clean(matrix[i, j])}
                for i, (a, j) in enumerate(zip(victim.layers, path, strict=True))
            ],
            "best_match": [
                {"layer_a": a, "layer_b": suspect.layers[j], "score": _clean(matrix[i, j])}
                for i, (a, j) in enumerate(zip(victim.layers, best, strict=True))
            ],
        },
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
        "controls": {
            "invariance": invariance_controls(x_head, method, seed),
            "positive": positive_rows,
            "positive_skipped": skipped_positive_controls,
            "negative": reference_rows,
        },
        "references": reference_rows,
    }
    if units_record is not None:
        record["units_test"] = {**units_record, "statistic": UNITS_STATISTIC}
    return Findings(record)


def as_fingerprint(
    source: str | os.PathLike[str],
    *,
    probes_from: Fingerprint | None,
    workdir: Path,
    label: str,
    probes: ProbeSet | None = None,
    progress: bool = False,
    identity: Mapping[str, Any] | None = None,
    **fingerprint_options: Any,
) -> Fingerprint:
    """A fingerprint directory as it is, or a model fingerprinted on the victim's probe texts
    (named by ``identity``, `naming.identity_of`, when given)."""
    from .fingerprint import MANIFEST, read_fingerprint

    path = Path(source)
    if path.is_dir() and (path / MANIFEST).is_file():
        return read_fingerprint(path)
    from .fingerprinting import fingerprint_model

    if probes_from is not None:  # the victim's texts, pooling and truncation: comparable rows
        probes = ProbeSet(name=str(probes_from.manifest["probes"]["name"]), texts=probes_from.texts)
        extraction = probes_from.manifest["extraction"]
        fingerprint_options.setdefault("pooling", extraction.get("pooling"))
        fingerprint_options.setdefault("max_length", int(extraction.get("max_length", 512)))
        fingerprint_options.setdefault("layers", extraction.get("layers"))
    return fingerprint_model(
        path,
        workdir / label,
        probes=probes or load_probes(),
        progress=progress,
        overwrite=True,
        **(identity or {}),
        **fingerprint_options,
    )


def check_paths(
    victim: str | os.PathLike[str],
    suspect: str | os.PathLike[str],
    references: Sequence[str | os.PathLike[str]] = (),
    *,
    workdir: str | os.PathLike[str],
    probes: ProbeSet | None = None,
    resamples: int = 200,
    rule: DecisionRule | None = None,
    progress: bool = False,
    positive_controls: bool = True,
    victim_model: str | os.PathLike[str] | None = None,
    merge_with_model: str | os.PathLike[str] | None = None,
    identities: Sequence[Mapping[str, Any] | None] = (),
    **fingerprint_options: Any,
) -> Findings:
    """`check` on paths that are fingerprints or models (models are fingerprinted first, on the
    victim's probe texts, into ``workdir``); ``identities``: the victim's, the suspect's and
    each reference's name (`naming.identity_of`), in that order, where known."""
    named = [*identities, *[None] * (2 + len(references))]
    work = Path(workdir)
    victim_fp = as_fingerprint(
        victim,
        probes_from=None,
        workdir=work,
        label="victim",
        probes=probes,
        progress=progress,
        identity=named[0],
        **fingerprint_options,
    )
    suspect_fp = as_fingerprint(
        suspect,
        probes_from=victim_fp,
        workdir=work,
        label="suspect",
        progress=progress,
        identity=named[1],
        **fingerprint_options,
    )
    reference_fps = [
        as_fingerprint(
            r,
            probes_from=victim_fp,
            workdir=work,
            label=f"reference-{i + 1}",
            progress=progress,
            identity=named[2 + i],
            **fingerprint_options,
        )
        for i, r in enumerate(references)
    ]
    controls: list[tuple[str, Fingerprint]] = []
    skips: list[dict[str, str]] = []
    skipped: str | None = None
    if not positive_controls:
        skipped = "positive controls were not asked for"
    elif Path(victim, "fingerprint.json").is_file() and victim_model is None:
        skipped = (
            "positive controls need the victim model (weight-space derivatives are made from it); "
            "the victim was given as a fingerprint without --victim-model"
        )
    else:
        controls, skips = make_positive_controls(
            victim_model or victim,
            victim_fp,
            work,
            merge_with_model=merge_with_model,
            **fingerprint_options,
        )
    return check(
        victim_fp,
        suspect_fp,
        reference_fps,
        positive_controls=controls,
        positive_skips=skips,
        skipped_positive_controls=skipped,
        rule=rule,
        resamples=resamples,
        progress=progress,
    )


def make_positive_controls(
    victim_model: str | os.PathLike[str],
    victim_fp: Fingerprint,
    workdir: Path,
    *,
    merge_with_model: str | os.PathLike[str] | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    device: str = "cpu",
    **_: Any,
) -> tuple[list[tuple[str, Fingerprint]], list[dict[str, str]]]:
    """Fingerprints of weight-space derivatives of the victim, on the victim's probe texts."""
    from .derivatives import Unsupported, derivative_digest, standard_derivations
    from .fingerprinting import fingerprint_loaded
    from .models import load_model, model_digest, resolve_device, resolve_model

    device = resolve_device(device)
    source = resolve_model(
        victim_model, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code
    )
    if model_digest(source).digest != victim_fp.model_digest:
        raise ComparisonError(
            f"{victim_model} is not the model the victim fingerprint was made from (model digests "
            "differ): positive controls must be derived from the victim itself"
        )
    partner = None
    if merge_with_model is not None:
        partner_source = resolve_model(
            merge_with_model, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code
        )
        partner = load_model(
            partner_source, device=device, trust_remote_code=trust_remote_code
        ).model
    probes = ProbeSet(name=str(victim_fp.manifest["probes"]["name"]), texts=victim_fp.texts)
    made: list[tuple[str, Fingerprint]] = []
    skipped: list[dict[str, str]] = []
    for index, derivation in enumerate(standard_derivations(list(victim_fp.texts), partner)):
        try:
            loaded = load_model(source, device=device, trust_remote_code=trust_remote_code)
            derivation.apply(loaded, index + 1)
            fingerprint = fingerprint_loaded(
                loaded,
                derivative_digest(victim_fp.model_digest, derivation.name, index + 1),
                workdir / f"positive-control-{index + 1}",
                probes=probes,
                pooling=victim_fp.pooling,  # type: ignore[arg-type]
                max_length=int(victim_fp.manifest["extraction"].get("max_length", 512)),
                padding_side=victim_fp.manifest["extraction"].get("padding_side", "right"),
                device=device,
                overwrite=True,
                layers=victim_fp.layer_selection,
            )
        except Unsupported as exc:
            skipped.append({"name": derivation.name, "skipped": str(exc)})
            continue
        except Exception as exc:  # a control that fails is reported, never fatal to the check
            skipped.append({"name": derivation.name, "skipped": f"failed: {first_line(exc)}"})
            continue
        made.append((derivation.name, fingerprint))
    return made, skipped
