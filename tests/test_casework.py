"""`run_case`: the one way from a victim, a suspect and references to evidence on disk, that the
command line, the registry worker and the MLflow evaluator all take."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reef_forensics import FindingsRecord, read_fingerprint
from reef_forensics.casework import run_case
from reef_forensics.crypto.keys import load_signer
from reef_forensics.errors import BadInputError, KeyMaterialError
from tests.conftest import SIGNED_CASE_PASSPHRASE, SignedCase

REFERENCES = ("unrelated", "bert", "gpt2")


def _sources(case: SignedCase) -> tuple[Path, Path, list[Path]]:
    signed = case.fingerprints
    return signed["victim"], signed["derived"], [signed[n] for n in REFERENCES]


def test_findings_and_report_come_from_the_same_check(
    signed_case: SignedCase, tmp_path: Path
) -> None:
    victim, suspect, references = _sources(signed_case)
    case = run_case(
        victim,
        suspect,
        references,
        workdir=tmp_path / "work",
        out=tmp_path / "findings",
        signer=signed_case.signer,
        report=tmp_path / "report.pdf",
    )
    assert case.findings.verdict == "derived"
    assert case.findings_file == tmp_path / "findings" / "findings.json"
    assert json.loads(case.findings_file.read_bytes()) == case.findings.as_json()
    again = FindingsRecord.from_json(json.loads(case.findings_file.read_bytes()))
    assert again == case.findings.record  # the typed record written is the one read back
    assert (tmp_path / "findings" / "model.sig").is_file()
    assert case.report == tmp_path / "report.pdf" and case.report.read_bytes()[:5] == b"%PDF-"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["findings", "report.pdf"]  # no staging


def test_fingerprints_in_memory_are_checked_as_they_are(
    signed_case: SignedCase, tmp_path: Path
) -> None:
    victim, suspect, references = _sources(signed_case)
    case = run_case(
        read_fingerprint(victim),
        read_fingerprint(suspect),
        [read_fingerprint(r) for r in references],
        workdir=tmp_path / "unused",
    )
    assert case.findings.verdict == "derived" and case.findings_file is None
    assert not (tmp_path / "unused").exists()  # nothing fingerprinted, nothing written


def test_a_report_that_cannot_be_made_leaves_no_findings_behind(
    signed_case: SignedCase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import reef_forensics.report.render as render

    def broken(*args: object, **kwargs: object) -> Path:
        raise RuntimeError("the renderer broke")

    monkeypatch.setattr(render, "write_report", broken)
    victim, suspect, references = _sources(signed_case)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(RuntimeError, match="the renderer broke"):
        run_case(
            victim,
            suspect,
            references,
            workdir=tmp_path / "work",
            out=out / "findings",
            signer=signed_case.signer,
            report=out / "report.pdf",
        )
    assert list(out.iterdir()) == []  # neither findings nor a staging folder


def test_a_report_is_written_only_for_the_verdicts_asked_for(
    signed_case: SignedCase, tmp_path: Path
) -> None:
    victim, suspect, references = _sources(signed_case)
    case = run_case(
        victim,
        suspect,
        references,
        workdir=tmp_path / "work",
        out=tmp_path / "findings",
        signer=signed_case.signer,
        report=tmp_path / "report.pdf",
        report_verdicts=("unrelated",),
    )
    assert case.findings.verdict == "derived" and case.report is None
    assert case.findings_file is not None and case.findings_file.is_file()
    assert not (tmp_path / "report.pdf").exists()


def test_destinations_are_refused_before_any_work(
    signed_case: SignedCase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import reef_forensics.casework as casework

    def no_check(*args: object, **kwargs: object) -> None:
        raise AssertionError("the check ran before the destinations were checked")

    monkeypatch.setattr(casework, "check_paths", no_check)
    victim, suspect, references = _sources(signed_case)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(BadInputError, match="already exists"):
        run_case(victim, suspect, references, workdir=tmp_path, out=taken)
    with pytest.raises(BadInputError, match="is not a findings directory"):
        run_case(victim, suspect, references, workdir=tmp_path, out=taken, overwrite=True)
    with pytest.raises(BadInputError, match="give where to write them"):
        run_case(victim, suspect, references, workdir=tmp_path, report=tmp_path / "r.pdf")
    assert (taken / "notes.txt").read_text() == "mine"


def test_a_report_needs_a_certificate(signed_case: SignedCase, tmp_path: Path) -> None:
    bare = load_signer(signed_case.keys.private_key, passphrase=SIGNED_CASE_PASSPHRASE)
    victim, suspect, references = _sources(signed_case)
    with pytest.raises(KeyMaterialError, match="certificate"):
        run_case(
            victim,
            suspect,
            references,
            workdir=tmp_path,
            out=tmp_path / "findings",
            signer=bare,
            report=tmp_path / "report.pdf",
        )
    assert not (tmp_path / "findings").exists()
