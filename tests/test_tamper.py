"""Tampering: random single-byte changes to signed fingerprints, signed findings and signed PDF
reports, every one of which `verify` must catch.

A change XORs one byte, at a random position of a random file, with a random nonzero value. The
changes come from one seeded generator (`SEED`), so every run makes the same ones. A change is
detected when verify's answer is "not valid", or when verify refuses the input with a
`ReefError` (the CLI's exit 1 or 2); any other exception fails the test. Each kind of evidence
is verified under the trust it was signed for, both kinds where both apply: bundles that carry
a certificate under ``--trust CA``, bare-key bundles under ``--key``, and the report, whose
signature binds its certificate, under either. (A bundle's certificate is not itself signed:
DSSE signs the statement. Under ``--key`` it must parse and hold the trusted key, and a note says
its chain was not checked; a byte changed elsewhere inside it, in its serial number or its CA's
signature, is caught only under ``--trust``, which validates it.)

All 1,000 changes (`COUNTS`) take seconds, so every run makes them all; a one-line summary goes
to stdout (``pytest -s``).
"""

from __future__ import annotations

import random
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from reef_forensics.errors import ReefError
from reef_forensics.evidence import verify_evidence
from reef_forensics.keys import Signer, load_certificates, load_public_key
from reef_forensics.report_verification import verify_report
from reef_forensics.signing import TrustPolicy, VerificationResult, sign_directory

from .conftest import SignedCase

SEED = 2026
#: Changes per kind of evidence.
COUNTS = {"fingerprint": 350, "findings": 350, "report": 300}


@dataclass(frozen=True)
class Target:
    """One piece of signed evidence: its files, and how verify checks it."""

    kind: str
    label: str
    files: tuple[Path, ...]
    verify: Callable[[], VerificationResult]


@dataclass(frozen=True)
class Change:
    target: Target
    file: Path
    position: int
    mask: int

    def describe(self) -> str:
        return f"{self.target.label}/{self.file.name} byte {self.position} ^ {self.mask:#04x}"


def trust_policies(case: SignedCase) -> dict[str, TrustPolicy]:
    return {
        "ca": TrustPolicy(roots=tuple(load_certificates(case.keys.ca_certificate))),
        "key": TrustPolicy(public_key=load_public_key(case.keys.public_key)),
    }


def directory_target(kind: str, label: str, folder: Path, trust: TrustPolicy) -> Target:
    files = tuple(sorted(p for p in folder.iterdir() if p.is_file()))
    return Target(kind, label, files, lambda: verify_evidence(folder, trust))


@pytest.fixture(scope="module")
def targets(tmp_path_factory: pytest.TempPathFactory, signed_case: SignedCase) -> list[Target]:
    """Working copies of the session's signed evidence (changed in place, then restored): each
    fingerprint and the findings as signed with the certificate, the victim fingerprint and the
    findings signed again with the bare key, and the report under each trust."""
    root = tmp_path_factory.mktemp("tamper")
    trust = trust_policies(signed_case)
    bare = Signer(private_key=signed_case.signer.private_key)
    out = []
    sources = {**signed_case.fingerprints, "findings": signed_case.findings}
    for name, source in sources.items():
        kind = "findings" if name == "findings" else "fingerprint"
        shutil.copytree(source, root / f"{name}-cert")
        out.append(directory_target(kind, f"{name}-cert", root / f"{name}-cert", trust["ca"]))
        if name in ("victim", "findings"):
            shutil.copytree(source, root / f"{name}-key")
            sign_directory(root / f"{name}-key", bare)
            out.append(directory_target(kind, f"{name}-key", root / f"{name}-key", trust["key"]))
    report = root / "report.pdf"
    shutil.copyfile(signed_case.report, report)
    for name, policy in trust.items():
        out.append(
            Target("report", f"report-{name}", (report,), lambda p=policy: verify_report(report, p))
        )
    return out


def plan(targets: list[Target], counts: dict[str, int], seed: int = SEED) -> list[Change]:
    """The changes, drawn from one seeded generator: a target of the kind, one of its files, a
    position in it, a nonzero XOR mask."""
    rng = random.Random(seed)
    changes = []
    for kind, count in counts.items():
        of_kind = [t for t in targets if t.kind == kind]
        for _ in range(count):
            target = rng.choice(of_kind)
            file = rng.choice(target.files)
            size = file.stat().st_size
            changes.append(Change(target, file, rng.randrange(size), rng.randrange(1, 256)))
    return changes


def detected(target: Target) -> bool:
    """Whether verify rejects the target as it now is (an invalid result or a refusal)."""
    try:
        return not target.verify().valid
    except ReefError:
        return True


def apply_and_verify(change: Change) -> bool:
    """Make the change, ask verify, and put the original byte back whatever happens."""
    original = change.file.read_bytes()
    changed = bytearray(original)
    changed[change.position] ^= change.mask
    try:
        change.file.write_bytes(bytes(changed))
        return detected(change.target)
    finally:
        change.file.write_bytes(original)


def test_every_single_byte_change_to_signed_evidence_is_detected(targets: list[Target]) -> None:
    for target in targets:  # untouched, each verifies: a rejection below is the change's doing
        assert not detected(target), f"{target.label} does not verify before any change"
    changes = plan(targets, COUNTS)
    started = time.perf_counter()
    missed = [c.describe() for c in changes if not apply_and_verify(c)]
    seconds = time.perf_counter() - started
    by_kind = ", ".join(f"{n} {kind}" for kind, n in COUNTS.items())
    print(
        f"\ntamper: {len(changes)} single-byte changes ({by_kind}; seed {SEED}): "
        f"{len(changes) - len(missed)} detected, {len(missed)} missed, {seconds:.1f} s"
    )
    assert missed == []
    for target in targets:  # every change was undone
        assert not detected(target), f"{target.label} was not restored"


# --- the one part of a signed PDF its signature cannot cover -----------------------------------


def signature_gap(pdf: bytes) -> tuple[int, int]:
    """Where the signature's hex string starts (after ``<``) and where its CMS blob's hex ends."""
    from asn1crypto import cms

    found = re.search(rb"/ByteRange\s*\[\s*0\s+(\d+)\s+(\d+)", pdf)
    assert found is not None
    start, end = int(found[1]) + 1, int(found[2]) - 1
    blob = bytes.fromhex(pdf[start:end].decode("ascii"))
    return start, start + 2 * len(cms.ContentInfo.load(blob).dump())


@pytest.mark.parametrize(
    "spelling", ["a padding zero made 1", "a padding zero made a space", "a hex letter's case"]
)
def test_the_signature_hex_string_has_exactly_one_spelling(
    spelling: str, signed_case: SignedCase, tmp_path: Path
) -> None:
    """PDF readers take ``A`` and ``a`` for one digit, skip white space, and ignore what follows
    the CMS blob; pyHanko then finds the signature intact. The report must still fail."""
    pdf = bytearray(signed_case.report.read_bytes())
    start, blob_end = signature_gap(bytes(pdf))
    if spelling == "a hex letter's case":
        position = next(i for i in range(start, blob_end) if pdf[i] in b"ABCDEFabcdef")
        pdf[position] ^= 0x20
    else:
        pdf[blob_end + 8] ^= 0x01 if spelling == "a padding zero made 1" else 0x10
    changed = tmp_path / "changed.pdf"
    changed.write_bytes(bytes(pdf))
    trust = trust_policies(signed_case)["ca"]
    assert verify_report(signed_case.report, trust).valid
    result = verify_report(changed, trust)
    failed = {check.name for check in result.checks if not check.ok}
    assert not result.valid and failed == {"signature bytes"}, failed
