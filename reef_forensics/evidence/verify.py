"""Signing and verifying evidence directories, by what they hold.

`sign_evidence` signs a directory only after checking it is a sound fingerprint (never sign
what would not verify). `verify_evidence` checks a signed directory (see `bundle.verify_directory`) and, for a
fingerprint, its internal consistency: the manifest is canonical and complete, the probe texts
hash to the probe digest, the tensors have the declared shapes. The result lists every check
by name; it is valid only when all of them passed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from reef_forensics.analysis.calibration import calibrate, calibration_record
from reef_forensics.analysis.findings import FINDINGS_FILE
from reef_forensics.analysis.neuron_test import UnitsOutcome, units_record_problem
from reef_forensics.analysis.verdict import (
    FINDINGS_FORMAT,
    READABLE_FINDINGS,
    VERDICTS,
    DecisionRule,
    decide,
)
from reef_forensics.crypto.bundle import (
    MAX_BUNDLE_BYTES,
    SIGNATURE_NAME,
    read_bundle_bytes,
    sign_directory,
    verify_bundle_over,
    verify_directory,
)
from reef_forensics.crypto.keys import Signer
from reef_forensics.crypto.results import TrustPolicy, VerificationResult
from reef_forensics.digests import canonical_json
from reef_forensics.errors import FingerprintError, SignatureError, first_line
from reef_forensics.evidence.recompute import Differences
from reef_forensics.files import parse_json
from reef_forensics.formats.findings_record import FindingsRecord
from reef_forensics.formats.fingerprint import (
    EMBEDDINGS_LAYER,
    FILES,
    MANIFEST,
    Fingerprint,
    is_fingerprint,
    read_fingerprint,
)
from reef_forensics.formats.json_records import Absent, RecordTypeError


def _fingerprint_consistency(
    folder: Path, result: VerificationResult, fingerprint: Fingerprint | None = None
) -> None:
    try:
        fingerprint = fingerprint or read_fingerprint(folder)
        for _ in fingerprint.iter_layers():  # every value finite
            pass
    except FingerprintError as exc:
        result.add("fingerprint consistency", False, str(exc))
        return
    result.add(
        "fingerprint consistency",
        True,
        f"{fingerprint.num_samples} probe texts match the probe digest; {len(fingerprint.layers)} "
        "layers of the declared shapes, all finite; manifest canonical",
    )


def verify_evidence(path: str | os.PathLike[str], trust: TrustPolicy) -> VerificationResult:
    """Verify a signed evidence directory (today: a fingerprint) against ``trust``."""
    folder = Path(path)
    if is_fingerprint(folder):
        result = verify_directory(folder, trust, content_checks=_fingerprint_consistency)
        _only_these_files(folder, {*FILES, SIGNATURE_NAME}, result)
    elif (folder / FINDINGS_FILE).is_file():
        result = verify_directory(folder, trust, content_checks=_findings_consistency)
        _only_these_files(folder, {FINDINGS_FILE, SIGNATURE_NAME}, result)
    else:
        result = verify_directory(folder, trust)
        result.add("content", False, f"{folder} is neither a fingerprint nor findings")
    return result


def verify_fingerprint_snapshot(
    path: str | os.PathLike[str], trust: TrustPolicy
) -> tuple[VerificationResult, Fingerprint | None]:
    """Verify a signed fingerprint on one reading of its files, and return the fingerprint made
    of those very bytes (None unless it verifies): what is then computed on is what was verified.

    `verify_evidence` then `read_fingerprint` read every file twice, and a file swapped between
    the two readings would be computed on unverified. Here each file is read once, into memory
    (`read_fingerprint` with ``snapshot``: digests against the manifest, texts, headers and every
    tensor from those bytes), and the signature is checked against the digests of the same bytes
    (`verify_bundle_over`, every signed file required). The checks are those of
    `verify_evidence`. No signature at all is an error (`SignatureError`), as there."""
    folder = Path(path)
    bundle_path = folder / SIGNATURE_NAME
    if not folder.is_dir():
        raise FingerprintError(f"fingerprint not found: {folder} is not a directory")
    if not bundle_path.is_file() and not bundle_path.is_symlink():
        raise SignatureError(f"{folder} is not signed: {SIGNATURE_NAME} is missing")
    result = VerificationResult(path=folder)
    raw = read_bundle_bytes(bundle_path, result)
    if raw is None:
        return result, None
    try:
        fingerprint = read_fingerprint(folder, snapshot=True)
    except (FingerprintError, OSError) as exc:
        result.add("fingerprint consistency", False, first_line(exc))
        return result, None
    assert fingerprint.snapshot is not None
    result = verify_bundle_over(raw, fingerprint.snapshot, trust, path=folder, complete=True)
    _only_these_files(folder, {*FILES, SIGNATURE_NAME}, result)
    if all(check.ok for check in result.checks):
        _fingerprint_consistency(folder, result, fingerprint)
    return result, fingerprint if result.valid else None


def _findings_consistency(folder: Path, result: VerificationResult) -> None:
    raw = (folder / FINDINGS_FILE).read_bytes()
    try:
        parsed = parse_json(raw)
        problem = None
        if not isinstance(parsed, dict) or parsed.get("format") != FINDINGS_FORMAT:
            problem = f"{FINDINGS_FILE} is not a reef-forensics findings record"
        elif parsed.get("format_version") not in READABLE_FINDINGS:
            problem = f"{FINDINGS_FILE} has format version {parsed.get('format_version')!r}"
        elif canonical_json(parsed) != raw:
            problem = f"{FINDINGS_FILE} is not in canonical form"
        else:
            record = FindingsRecord.from_json(parsed)  # "0.5" is no number
            if canonical_json(record.to_json()) != raw:  # what is computed on is what is signed
                problem = f"{FINDINGS_FILE} does not read back as the record it is"
            elif record.verdict not in VERDICTS:
                problem = f"{FINDINGS_FILE} has no known verdict"
            elif not all(_is_digest(m.digest) for m in (record.victim, record.suspect)):
                problem = (
                    f"{FINDINGS_FILE} does not name its victim and suspect fingerprints by digest"
                )
            else:
                problem = _verdict_problem(record)
    except RecordTypeError as exc:
        problem = f"{FINDINGS_FILE}: {exc}"
    except ValueError:
        problem = f"{FINDINGS_FILE} is not valid JSON"
    result.add(
        "findings consistency",
        problem is None,
        problem
        or f"a canonical findings record, version {parsed['format_version']}, whose verdict and "
        "p-values follow from its recorded scores, reference scores, rank correlations and "
        "decision rule",
    )


def _is_digest(value: Any) -> bool:
    """A fingerprint's ``sha256:`` digest (what reports and recomputation look it up by)."""
    return isinstance(value, str) and re.fullmatch(r"sha256:[0-9a-f]{64}", value) is not None


def _verdict_problem(record: FindingsRecord) -> str | None:
    """Re-apply the recorded decision rule to the recorded numbers: the verdict, p-values and
    tests must be what they give. (Recomputing the numbers themselves needs the fingerprints.)"""
    try:
        rule = DecisionRule.from_record(record.decision_rule)
        aligned = [a for a in record.per_layer.alignment if a.layer_a != EMBEDDINGS_LAYER]
        blocks = [a.layer_a for a in aligned]
        calibration = calibrate(
            record.score,
            [a.score for a in aligned],
            [(r.score, r.block_scores) for r in record.references],
            record.format_version,
        )
        units = None
        if record.format_version >= 3:
            assert not isinstance(record.units_test, Absent)  # from_json: format 3 on holds it
            units = UnitsOutcome.from_record(record.units_test)
            problem = units_record_problem(record.units_test)
            if problem:
                return f"{FINDINGS_FILE}: {problem}"
    except (TypeError, ValueError) as exc:
        return f"{FINDINGS_FILE} lacks the numbers its verdict rests on ({first_line(exc)})"
    verdict, _ = decide(calibration, rule, blocks, units, record.format_version)
    if verdict != record.verdict:
        return f"{FINDINGS_FILE} says {record.verdict!r}, but its own numbers and rule give {verdict!r}"
    recorded = record.to_json()
    for field, value in calibration_record(calibration, blocks, units).items():
        if Differences(rel_tol=1e-9, abs_tol=1e-300).compare(recorded.get(field), value):
            return f"{FINDINGS_FILE}: {field} {recorded.get(field)!r} does not follow from the recorded scores"
    return None


def _only_these_files(folder: Path, expected: set[str], result: VerificationResult) -> None:
    """Evidence holds its own files and its signature, nothing else: no entry can hide behind
    the names a generic signature ignores (.git, .github, ...)."""
    others = sorted(entry.name for entry in folder.iterdir() if entry.name not in expected)
    result.add(
        "directory contents",
        not others,
        "nothing but the evidence files and their signature"
        if not others
        else "unexpected entries: " + ", ".join(others),
    )


def signature_kind(path: str | os.PathLike[str]) -> str | None:
    """How a directory is signed: ``"certificate"`` (its bundle carries a certificate chain, so
    ``verify --trust CA`` can check it), ``"key"`` (a bare key: only ``verify --key`` can), or
    None (no bundle, or one that cannot be read). Reads the bundle only; verifies nothing."""
    bundle_path = Path(path) / SIGNATURE_NAME
    try:
        if bundle_path.is_symlink() or bundle_path.stat().st_size > MAX_BUNDLE_BYTES:
            return None
        material = parse_json(bundle_path.read_bytes())["verificationMaterial"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if isinstance(material, dict) and "x509CertificateChain" in material:
        return "certificate"
    if isinstance(material, dict) and "publicKey" in material:
        return "key"
    return None


def sign_evidence(path: str | os.PathLike[str], signer: Signer) -> Path:
    """Sign a fingerprint directory after checking its consistency; returns the bundle's path."""
    folder = Path(path)
    if not is_fingerprint(folder):
        raise FingerprintError(
            f"{folder} is not a fingerprint ({MANIFEST} is missing): nothing to sign"
        )
    read_fingerprint(folder)
    return sign_directory(folder, signer)
