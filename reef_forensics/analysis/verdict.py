"""The verdict: the decision rule of each findings format, and the words that explain it.

`decide` turns a calibration (the CKA tests against the reference panel) and the
neuron-matching outcome into `derived`, `unrelated` or `inconclusive`, with its reasons;
`DecisionRule` is the rule written into every findings record. Pure: numbers in, words out.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from reef_forensics.analysis.neuron_test import UnitsOutcome
from reef_forensics.formats.findings_record import FindingsRecord, RuleRecord
from reef_forensics.formats.json_records import Absent, present
from reef_forensics.similarity.statistics import (
    CombinedCalibration,
)
from reef_forensics.similarity.unit_matching import format_log10_p

if TYPE_CHECKING:
    pass


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
        # the findings record states the rule: 3.0 is no count, and true no probability
        if isinstance(self.min_references, bool) or not isinstance(self.min_references, int):
            raise ValueError(f"min_references must be an integer, not {self.min_references!r}")
        for name in ("alpha", "unrelated_alpha", "margin"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, not {value!r}")
        if self.min_references < 3:
            raise ValueError("a verdict needs at least 3 references: min_references must be >= 3")
        if not 0 < self.alpha <= self.unrelated_alpha < 1:
            raise ValueError("need 0 < alpha <= unrelated_alpha < 1")
        if self.margin < 0:
            raise ValueError("the margin cannot be negative")

    @classmethod
    def from_record(cls, recorded: RuleRecord) -> DecisionRule:
        """The rule a findings record states (the text is not an input); ValueError when the
        record states no usable rule."""
        return cls(
            alpha=recorded.alpha,
            unrelated_alpha=recorded.unrelated_alpha,
            margin=recorded.margin,
            min_references=recorded.min_references,
        )

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


def p_text(p_value: float | None, log10_p_value: float | Absent | None = None) -> str:
    """A combined p-value for people ("n/a" when there is none): from its log10 (findings of
    version 3 on), so that p-values below a double's range still print."""
    log10_p = present(log10_p_value)
    if log10_p is not None:
        return format_log10_p(log10_p)
    return "n/a" if p_value is None else format_p(p_value)


def units_p_text(record: FindingsRecord) -> str:
    """The neuron-matching test's combined p-value for people, or why it did not run."""
    units = present(record.units_test)
    if units is None:
        return "n/a"
    log10_p = present(units.log10_p_value)
    if not units.ran or log10_p is None:
        return "not run"
    return format_log10_p(log10_p)


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


def _cka_standing(
    calibration: CombinedCalibration, rule: DecisionRule, layer_names: Sequence[str]
) -> tuple[bool, list[str]]:
    """Whether the CKA tests are calibrated well enough to decide, and what the reasons say of
    them."""
    mean = calibration.mean.calibration
    enough = len(mean.references) >= rule.min_references and not math.isnan(mean.score)
    if enough:
        return True, _cka_described(calibration, layer_names)
    if math.isnan(mean.score):
        return False, ["CKA: the similarity could not be computed."]
    return False, [
        f"CKA: only {len(mean.references)} independent reference model(s) were measured; at "
        f"least {rule.min_references} are needed to calibrate the CKA tests, so they do not "
        "decide. Their numbers are reported all the same."
    ]


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
    count = tests_counted(calibration, units)
    enough, described = _cka_standing(calibration, rule, layer_names)
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
