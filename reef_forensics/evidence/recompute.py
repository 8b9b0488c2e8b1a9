"""Recompute a findings record from the fingerprints it names, and say where it disagrees.

The findings name every fingerprint they used by digest: the victim, the suspect, the references
and the positive controls. Given those fingerprints, `check` runs again with the recorded
settings (decision rule, resamples, seed), and every number must agree to ``tolerance``
(absolute), every text and digest exactly. Positive controls whose fingerprints were not given
are not recomputed (they were made in a scratch directory); that is reported, not hidden.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from reef_forensics.analysis.check import check
from reef_forensics.analysis.verdict import DecisionRule
from reef_forensics.formats.findings_record import FindingsRecord
from reef_forensics.formats.fingerprint import Fingerprint
from reef_forensics.formats.json_records import Absent, encode

TOLERANCE = 1e-9
#: Fields that say when and by what the record was made, not what was measured.
NOT_MEASURED = ("created", "tool")


@dataclass
class Recomputation:
    differences: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # required fingerprints not given
    not_recomputed: list[str] = field(default_factory=list)  # positive controls not given
    compared: int = 0  # numbers compared

    @property
    def agrees(self) -> bool:
        return not self.differences and not self.missing


def recompute(
    record: FindingsRecord, fingerprints: Sequence[Fingerprint], tolerance: float = TOLERANCE
) -> Recomputation:
    by_digest = {fp.digest: fp for fp in fingerprints}
    outcome = Recomputation()

    def need(role: str, digest: str) -> Fingerprint | None:
        found = by_digest.get(digest)
        if found is None:
            outcome.missing.append(f"{role} ({digest})")
        return found

    victim = need("the victim", record.victim.digest)
    suspect = need("the suspect", record.suspect.digest)
    references = [
        need(f"reference {i + 1} {r.name}", r.digest) for i, r in enumerate(record.references)
    ]
    controls = []
    for row in record.controls.positive:
        if isinstance(row.digest, Absent):
            continue
        if row.digest in by_digest:
            controls.append((row.name, by_digest[row.digest]))
        else:
            outcome.not_recomputed.append(row.name)
    if victim is None or suspect is None or any(r is None for r in references):
        return outcome
    method = record.stability_method
    again = check(
        victim,
        suspect,
        [r for r in references if r is not None],
        positive_controls=controls,
        skipped_positive_controls=record.controls.positive_skipped,
        positive_skips=[
            encode(row) for row in record.controls.positive if not isinstance(row.skipped, Absent)
        ],
        rule=DecisionRule.from_record(record.decision_rule),
        resamples=method.resamples,
        seed=method.seed,
        findings_version=record.format_version,
    ).as_json()
    recorded = record.to_json()
    expected = {k: v for k, v in recorded.items() if k not in NOT_MEASURED}
    computed = {k: v for k, v in again.items() if k not in NOT_MEASURED}
    if outcome.not_recomputed:  # compare only the controls that were recomputed
        names = {name for name, _ in controls}
        expected["controls"] = {
            **expected["controls"],
            "positive": [
                row
                for row in expected["controls"]["positive"]
                if "digest" not in row or row["name"] in names
            ],
        }
    differences = Differences(abs_tol=tolerance)
    outcome.differences = differences.compare(expected, computed)
    outcome.compared = differences.compared
    return outcome


@dataclass
class Differences:
    """Where two JSON values differ (at most ``limit`` places), and how many numbers were compared."""

    rel_tol: float = 0.0
    abs_tol: float = TOLERANCE
    limit: int = 20
    found: list[str] = field(default_factory=list)
    compared: int = 0

    def compare(self, recorded: Any, computed: Any, where: str = "") -> list[str]:
        """Numbers agree within the tolerances, everything else exactly; returns ``found``."""
        if len(self.found) >= self.limit:
            return self.found
        label = where or "the record"
        if isinstance(recorded, dict) and isinstance(computed, dict):
            if recorded.keys() != computed.keys():
                self.found.append(f"{label}: fields differ")
            else:
                for key in recorded:
                    self.compare(recorded[key], computed[key], f"{where}.{key}".lstrip("."))
            return self.found
        if isinstance(recorded, list) and isinstance(computed, list):
            if len(recorded) != len(computed):
                self.found.append(
                    f"{label}: {len(recorded)} entries recorded, {len(computed)} recomputed"
                )
            else:
                for i, (a, b) in enumerate(zip(recorded, computed, strict=True)):
                    self.compare(a, b, f"{where}[{i}]")
            return self.found
        if _is_number(recorded) and _is_number(computed):
            self.compared += 1
            if not math.isclose(
                float(recorded), float(computed), rel_tol=self.rel_tol, abs_tol=self.abs_tol
            ):
                self.found.append(f"{label}: recorded {recorded!r}, recomputed {computed!r}")
        elif recorded != computed:
            self.found.append(f"{label}: recorded {recorded!r}, recomputed {computed!r}")
        return self.found


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
