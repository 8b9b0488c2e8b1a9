"""The typed findings record: every released findings format reads into it and writes back to
the same canonical bytes (so old signatures still cover what is computed on), and a record
that is not of its types is refused with the field's path."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from reef_forensics.analysis.check import check
from reef_forensics.digests import canonical_json
from reef_forensics.formats.findings_record import (
    FindingsRecord,
    RegistryEntry,
    UnitsTest,
    findings_type_problem,
)
from reef_forensics.formats.fingerprint import read_fingerprint
from reef_forensics.formats.json_records import ABSENT, Absent, RecordTypeError, decode, present

GOLDEN = Path(__file__).parent.parent / "golden"
RELEASED = sorted(GOLDEN.glob("*/findings/findings.json"))


@pytest.mark.parametrize("path", RELEASED, ids=[p.parent.parent.name for p in RELEASED])
def test_a_released_record_reads_and_writes_back_byte_for_byte(path: Path) -> None:
    raw = path.read_bytes()
    record = FindingsRecord.from_json(json.loads(raw))
    assert canonical_json(record.to_json()) == raw
    assert record.verdict == "derived" and record.victim.digest.startswith("sha256:")
    if record.format_version == 2:  # fields format 2 lacks are absent, and stay absent
        assert record.units_test is ABSENT and record.log10_p_value is ABSENT
        assert "units_test" not in record.to_json() and "log10_p_value" not in record.to_json()
    else:
        assert isinstance(record.units_test, UnitsTest) and record.units_test.ran


def test_both_released_formats_are_covered() -> None:
    versions = {json.loads(p.read_bytes())["format_version"] for p in RELEASED}
    assert versions == {2, 3}


@pytest.fixture(scope="module")
def made(fingerprints: dict[str, Path]) -> dict[int, dict[str, Any]]:
    """Records of every format `check` writes, as JSON, with the references of the signed
    case."""
    victim, suspect = (read_fingerprint(fingerprints[n]) for n in ("victim", "derived"))
    references = [read_fingerprint(fingerprints[n]) for n in ("unrelated", "bert", "gpt2")]
    return {
        version: check(
            victim,
            suspect,
            references,
            skipped_positive_controls="none made here",
            positive_skips=[{"name": "a merge", "skipped": "no second model"}],
            resamples=20,
            findings_version=version,
        ).as_json()
        for version in (2, 3, 4)
    }


@pytest.mark.parametrize("version", [2, 3, 4])
def test_a_record_check_writes_reads_back_to_the_same_bytes(
    made: dict[int, dict[str, Any]], version: int
) -> None:
    value = made[version]
    record = FindingsRecord.from_json(value)
    assert record.format_version == version
    assert canonical_json(record.to_json()) == canonical_json(value)
    assert record.controls.positive[-1].skipped == "no second model"
    assert record.controls.positive[-1].score is ABSENT
    assert [r.name for r in record.references] == [r["name"] for r in value["references"]]


def test_a_registered_version_keeps_its_registry_entry(made: dict[int, dict[str, Any]]) -> None:
    value = json.loads(json.dumps(made[4]))
    value["suspect"]["registry"] = {"name": "chat", "version": "3", "uri": "models:/chat/3"}
    record = FindingsRecord.from_json(value)
    assert record.suspect.registry == RegistryEntry("chat", "3", "models:/chat/3")
    assert record.victim.registry is ABSENT
    assert canonical_json(record.to_json()) == canonical_json(value)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r["tests"]["mean"].update(p_value="0.001"), "tests.mean.p_value is the text"),
        (lambda r: r.update(panel_size=3.0), "panel_size is the number 3.0 where an integer"),
        (lambda r: r.update(identical=1), "identical is the number 1 where true or false"),
        (lambda r: r["references"][1].pop("digest"), "references[1].digest is missing"),
        (lambda r: r.update(verdict=None), "verdict is null where text belongs"),
        (lambda r: r["per_layer"].update(matrix=[[0.5, "x"]]), "per_layer.matrix[0][1]"),
        (lambda r: r.update(stability={}), "stability is an object where a list belongs"),
        (lambda r: r["victim"].update(note="derived"), "victim.note is not a field"),
        (lambda r: r.update(extra=1), "extra is not a field"),
    ],
)
def test_a_record_not_of_its_types_is_refused_by_the_field_s_path(
    made: dict[int, dict[str, Any]], edit: Any, message: str
) -> None:
    value = json.loads(json.dumps(made[4]))
    assert findings_type_problem(value) is None
    edit(value)
    with pytest.raises(RecordTypeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        FindingsRecord.from_json(value)
    assert message in (findings_type_problem(value) or "")


def test_each_format_holds_its_own_fields(made: dict[int, dict[str, Any]]) -> None:
    """Formats share the classes: format 2 holds none of format 3's neuron-matching fields, and
    format 3 on holds the test."""
    v2 = json.loads(json.dumps(made[2]))
    v2["units_test"] = made[3]["units_test"]
    assert "units_test is not a field of findings format 2" in (findings_type_problem(v2) or "")
    v2 = json.loads(json.dumps(made[2]))
    v2["controls"]["negative"][0]["units"] = {"log10_p_value": -300.0, "blocks_compared": 3}
    assert "controls.negative[0].units is not a field" in (findings_type_problem(v2) or "")
    v4 = json.loads(json.dumps(made[4]))
    del v4["log10_p_value"]
    assert "log10_p_value is missing (findings format 4" in (findings_type_problem(v4) or "")


def test_a_record_is_frozen(made: dict[int, dict[str, Any]]) -> None:
    record = FindingsRecord.from_json(made[4])
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.verdict = "unrelated"  # type: ignore[misc]
    assert isinstance(record.references, tuple) and isinstance(record.reasons, tuple)


def test_absent_and_present() -> None:
    assert present(ABSENT) is None and present(0.0) == 0.0 and not ABSENT
    assert Absent() is ABSENT and repr(ABSENT) == "ABSENT"
    skipped = decode(UnitsTest, {"ran": False, "skipped": "no units"})
    assert skipped.blocks is ABSENT and skipped.skipped == "no units"
    assert dataclasses.asdict(skipped)["ran"] is False
