"""The findings record, typed: what `check` measured and decided, as `findings.json` holds it.

One frozen dataclass per object of the record (see `json_records`: the fields' types are checked
when a record is read, and a record read and written again gives the same canonical bytes, so a
signature made before the types existed still covers it). Formats 2 to 4 share these classes:
fields marked ``| Absent`` are those format 2 lacks (the neuron-matching test, the log10
p-value) or that only some rows have (a skipped control has no score).

``extraction`` (the victim fingerprint's own settings) and ``units_test.kinds`` are kept as
the objects they are: ``verify --evidence`` compares the first with the fingerprint.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reef_forensics.formats.json_records import (
    ABSENT,
    Absent,
    RecordTypeError,
    decode,
    encode,
)


@dataclass(frozen=True)
class Tool:
    name: str
    version: str


@dataclass(frozen=True)
class CkaTest:
    """One CKA test: the mean over the victim's blocks (``layer`` None) or the best block."""

    layer: str | None
    layers_tested: int
    score: float | None
    p_value: float | None
    empirical_p_value: float | None
    margin: float | None
    null_mean: float | None
    null_sd_fisher_z: float | None


@dataclass(frozen=True)
class UnitsTestResult:
    """The neuron-matching test among the tests (format 3 on)."""

    ran: bool
    log10_p_value: float | Absent | None = ABSENT
    p_value: float | Absent | None = ABSENT
    blocks_compared: int | Absent = ABSENT
    lined_up: int | Absent = ABSENT
    skipped: str | Absent | None = ABSENT


@dataclass(frozen=True)
class Tests:
    mean: CkaTest | None
    layer: CkaTest | None
    combination: str
    units: UnitsTestResult | Absent = ABSENT


@dataclass(frozen=True)
class NullModel:
    mean: float | None
    sd_fisher_z: float | None


@dataclass(frozen=True)
class RuleRecord:
    """The decision rule as recorded (``text`` is its statement in words, not an input)."""

    alpha: float
    unrelated_alpha: float
    margin: float
    min_references: int
    text: str


@dataclass(frozen=True)
class RegistryEntry:
    """The registered version a fingerprint was made of (``uri``: ``models:/NAME/VERSION``)."""

    name: str
    version: str
    uri: str


@dataclass(frozen=True, kw_only=True)
class ModelDescription:
    """A fingerprint the record names: ``digest`` is the fingerprint's, ``model_digest`` the
    model's; ``registry`` when it was made of a registered version."""

    name: str
    digest: str
    model_digest: str
    layers: int
    registry: RegistryEntry | Absent = ABSENT


@dataclass(frozen=True)
class UnitsSummary:
    """What a reference's or a control's row keeps of its neuron-matching test."""

    log10_p_value: float | Absent | None = ABSENT
    blocks_compared: int | Absent = ABSENT
    skipped: str | Absent | None = ABSENT


@dataclass(frozen=True, kw_only=True)
class ReferenceRow(ModelDescription):
    """A reference model: described as the victim and suspect are, with its scores against
    the victim (overall and per block) and, from format 3, its neuron-matching test."""

    score: float | None
    block_scores: tuple[float | None, ...]
    units: UnitsSummary | Absent = ABSENT


@dataclass(frozen=True)
class LayerPair:
    layer_a: str
    layer_b: str
    score: float | None


@dataclass(frozen=True)
class ProbeSet:
    name: str
    digest: str
    count: int


@dataclass(frozen=True)
class PerLayer:
    estimator: str
    layers_victim: tuple[str, ...]
    layers_suspect: tuple[str, ...]
    matrix: tuple[tuple[float | None, ...], ...]
    matrix_biased: tuple[tuple[float | None, ...], ...]
    alignment: tuple[LayerPair, ...]
    best_match: tuple[LayerPair, ...]


@dataclass(frozen=True)
class StabilityPoint:
    n: int
    score: float | None
    low: float | None
    high: float | None


@dataclass(frozen=True)
class StabilityMethod:
    layer_a: str
    layer_b: str
    resamples: int
    seed: int
    level: float
    text: str


@dataclass(frozen=True)
class InvarianceControl:
    name: str
    score: float | None


@dataclass(frozen=True)
class PositiveControl:
    """A derivative made on the spot: measured (``digest``, ``score``) or ``skipped``."""

    name: str
    digest: str | Absent = ABSENT
    score: float | Absent | None = ABSENT
    skipped: str | Absent = ABSENT
    units: UnitsSummary | Absent = ABSENT


@dataclass(frozen=True)
class Controls:
    invariance: tuple[InvarianceControl, ...]
    positive: tuple[PositiveControl, ...]
    positive_skipped: str | None
    negative: tuple[ReferenceRow, ...]


@dataclass(frozen=True)
class UnitsBlock:
    layer_a: str
    layer_b: str
    units_a: int
    units_b: int
    matched: int
    candidates: int
    agreed: int
    spearman: float | None
    log10_p: float


@dataclass(frozen=True)
class UnitsTest:
    """The neuron-matching test in full (format 3 on): per block, the counts its p-value comes
    from."""

    ran: bool
    skipped: str | Absent | None = ABSENT
    kinds: Mapping[str, Any] | Absent = ABSENT
    samples: int | Absent = ABSENT
    max_rows: int | Absent | None = ABSENT
    blocks: tuple[UnitsBlock, ...] | Absent = ABSENT
    blocks_compared: int | Absent = ABSENT
    log10_p_value: float | Absent | None = ABSENT
    statistic: str | Absent = ABSENT


@dataclass(frozen=True)
class FindingsRecord:
    """A findings record of format 2, 3 or 4 (``format_version``)."""

    format: str
    format_version: int
    tool: Tool
    created: str
    verdict: str
    score: float | None
    statistic: str
    p_value: float | None
    p_value_reason: str | None
    empirical_p_value: float | None
    panel_size: int
    null: NullModel
    tests: Tests
    decision_rule: RuleRecord
    reasons: tuple[str, ...]
    identical: bool
    victim: ModelDescription
    suspect: ModelDescription
    probes: ProbeSet
    extraction: Mapping[str, Any]
    reef_layer: LayerPair
    per_layer: PerLayer
    stability: tuple[StabilityPoint, ...]
    stability_method: StabilityMethod
    controls: Controls
    references: tuple[ReferenceRow, ...]
    log10_p_value: float | Absent | None = ABSENT
    units_test: UnitsTest | Absent = ABSENT

    @classmethod
    def from_json(cls, value: Any) -> FindingsRecord:
        """The record a parsed findings.json holds; `RecordTypeError` (a ValueError) naming
        the first field that is missing, unknown or not of its type, or that its format
        version does not have (or lacks)."""
        record = decode(cls, value)
        problem = _version_problem(record)
        if problem:
            raise RecordTypeError(problem)
        return record

    def to_json(self) -> dict[str, Any]:
        """The JSON object: read from a file, the same canonical bytes as the file."""
        return dict(encode(self))


def _version_problem(record: FindingsRecord) -> str | None:
    """The classes serve formats 2 to 4: a format-2 record holds none of the neuron-matching
    fields format 3 added (nothing of format 2 checks them, so they would vouch for numbers no
    check of that format made), and a record of format 3 on holds the test and its log10 p."""
    units_fields: dict[str, object] = {
        "log10_p_value": record.log10_p_value,
        "units_test": record.units_test,
        "tests.units": record.tests.units,
    }
    rows: dict[str, Sequence[ReferenceRow | PositiveControl]] = {
        "references": record.references,
        "controls.negative": record.controls.negative,
        "controls.positive": record.controls.positive,
    }
    for where, found in rows.items():
        for index, row in enumerate(found):
            units_fields[f"{where}[{index}].units"] = row.units
    if record.format_version < 3:
        for where, value in units_fields.items():
            if not isinstance(value, Absent):
                return f"{where} is not a field of findings format {record.format_version}"
        return None
    for where in ("log10_p_value", "units_test", "tests.units"):
        if isinstance(units_fields[where], Absent):
            return f"{where} is missing (findings format {record.format_version} has it)"
    return None


def findings_type_problem(value: Any) -> str | None:
    """Why a parsed findings.json is not a findings record, in words (the first field missing,
    unknown or not of its type); None when it is one."""
    try:
        FindingsRecord.from_json(value)
    except RecordTypeError as exc:
        return str(exc)
    return None
