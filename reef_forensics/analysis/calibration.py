"""Calibrating the CKA tests on the reference panel, and the calibration as the findings record writes it (each findings format its own way)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from reef_forensics.analysis.neuron_test import UnitsOutcome
from reef_forensics.analysis.verdict import (
    FINDINGS_VERSION,
    overall_log10_p,
    tests_counted,
)
from reef_forensics.similarity.statistics import (
    CombinedCalibration,
    Statistic,
    combined_calibration,
)

if TYPE_CHECKING:
    pass


def _clean(value: float) -> float | None:
    """A number for the record: exact (so that `verify` can recompute from it), or None."""
    return None if value is None or math.isnan(value) or math.isinf(value) else float(value)


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
