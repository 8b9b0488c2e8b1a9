"""Released formats keep reading, checking and verifying.

`tests/golden/cab7916/` holds evidence made by release cab7916: fingerprints of format 1,
findings of format 2 and a signed report, byte for byte as that release wrote them (its README
says how); `tests/golden/1cfaafb/` the same for fingerprints of format 2 (MLP units) and
findings of format 3. Every later version must verify them, recompute their numbers, and check the old
fingerprints (with the tests they cannot support skipped and said).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from reef_forensics.cli.main import main

GOLDEN = Path(__file__).parent / "golden" / "cab7916"
# release 1cfaafb: fingerprint format 2 (MLP units), findings format 3 (three tests), report v3
GOLDEN_V3 = Path(__file__).parent / "golden" / "1cfaafb"
RELEASES = [GOLDEN, GOLDEN_V3]
FINGERPRINTS = ["victim", "suspect", "reference-11", "reference-12", "reference-13"]


def run_cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("release", RELEASES, ids=lambda path: path.name)
def test_golden_fixtures_are_the_released_bytes(release: Path) -> None:
    """SHA256SUMS.json pins every file: a fixture edited by accident fails here first, not as a
    puzzling verification failure."""
    recorded = json.loads((release / "SHA256SUMS.json").read_text())
    assert len(recorded) > 20
    for relative, digest in recorded.items():
        assert hashlib.sha256((release / relative).read_bytes()).hexdigest() == digest, relative


@pytest.mark.parametrize("release", RELEASES, ids=lambda path: path.name)
@pytest.mark.parametrize("name", FINGERPRINTS)
def test_released_fingerprints_still_verify(
    capsys: pytest.CaptureFixture[str], release: Path, name: str
) -> None:
    """Format 1 (release cab7916) and format 2, with MLP units (release 1cfaafb)."""
    code, out, _ = run_cli(
        capsys,
        "verify",
        release / "fingerprints" / name,
        "--trust",
        release / "keys" / "ca-cert.pem",
    )
    assert code == 0, out
    assert "VALID" in out


def test_format_2_findings_still_verify(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(
        capsys, "verify", GOLDEN / "findings", "--key", GOLDEN / "keys" / "signing-key.pub.pem"
    )
    assert code == 0, out


@pytest.mark.parametrize("release", RELEASES, ids=lambda path: path.name)
def test_released_report_verifies_with_every_number_recomputed(
    capsys: pytest.CaptureFixture[str], release: Path
) -> None:
    """Release 1cfaafb's report: the neuron-matching test recomputed too."""
    code, out, _ = run_cli(
        capsys,
        "verify",
        release / "report.pdf",
        "--trust",
        release / "keys" / "ca-cert.pem",
        "--evidence",
        *[release / "fingerprints" / name for name in FINGERPRINTS],
    )
    assert code == 0, out
    assert "recomputation" in out and "VALID" in out


def test_format_1_fingerprints_still_check_with_the_unit_test_skipped_and_said(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    folder = tmp_path / "fingerprints"
    shutil.copytree(GOLDEN / "fingerprints", folder)
    code, _out, err = run_cli(
        capsys,
        "check",
        "--victim",
        folder / "victim",
        "--suspect",
        folder / "suspect",
        *[arg for ref in FINGERPRINTS[2:] for arg in ("--reference", folder / ref)],
        "--json",
        tmp_path / "findings.json",
        "--no-progress",
    )
    assert code == 0, err
    record = json.loads((tmp_path / "findings.json").read_text())
    assert record["verdict"] == "derived"
    units = record["units_test"]
    assert units["ran"] is False
    assert "format 1" in units["skipped"]
    assert any(
        "neuron-matching test" in reason and "format 1" in reason for reason in record["reasons"]
    )


def test_format_3_findings_still_verify_and_keep_their_verdict(
    capsys: pytest.CaptureFixture[str],
) -> None:
    record = json.loads((GOLDEN_V3 / "findings" / "findings.json").read_text())
    assert record["format_version"] == 3
    code, out, _ = run_cli(
        capsys,
        "verify",
        GOLDEN_V3 / "findings",
        "--key",
        GOLDEN_V3 / "keys" / "signing-key.pub.pem",
    )
    assert code == 0, out
    assert "findings consistency" in out and "version 3" in out


def test_format_2_fingerprints_check_with_the_neuron_test(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _out, err = run_cli(
        capsys,
        "check",
        "--victim",
        GOLDEN_V3 / "fingerprints" / "victim",
        "--suspect",
        GOLDEN_V3 / "fingerprints" / "suspect",
        *[
            arg
            for ref in FINGERPRINTS[2:]
            for arg in ("--reference", GOLDEN_V3 / "fingerprints" / ref)
        ],
        "--json",
        tmp_path / "findings.json",
        "--no-progress",
    )
    assert code == 0, err
    record = json.loads((tmp_path / "findings.json").read_text())
    assert record["verdict"] == "derived"
    assert record["units_test"]["ran"] is True
    assert record["units_test"]["log10_p_value"] < -50
