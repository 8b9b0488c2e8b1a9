"""What a verification found: each check with its outcome and detail (`Check`, `VerificationResult`), and what the verifier trusts (`TrustPolicy`: a public key, or CA roots)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from reef_forensics.errors import BadInputError


def printable(text: str) -> str:
    """Escape control and other non-printable characters, so that a file name cannot forge or
    hide lines of a verification report on a terminal."""
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass
class VerificationResult:
    """Every check `verify_directory` ran, by name; valid only when all passed."""

    path: Path
    checks: list[Check] = field(default_factory=list)
    signer: str | None = None  # the verifying key's fingerprint
    notes: list[str] = field(default_factory=list)  # what was not checked, and why
    #: a report's time: its source (a timestamp authority or the signer's clock) and timestamps
    time: dict[str, Any] | None = None

    @property
    def valid(self) -> bool:
        """Every check passed, and a signature was actually verified (never valid by omission)."""
        passed = {check.name for check in self.checks if check.ok}
        return (
            bool(self.checks) and all(check.ok for check in self.checks) and "signature" in passed
        )

    def add(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Check(printable(name), ok, printable(detail)))
        return ok

    def as_json(self) -> dict[str, Any]:
        found = {
            "path": str(self.path),
            "valid": self.valid,
            "signer": self.signer,
            "checks": [check.as_json() for check in self.checks],
            "notes": list(self.notes),
        }
        if self.time is not None:
            found["time"] = self.time
        return found

    def merge(self, other: VerificationResult, prefix: str) -> None:
        """Another result's checks and notes, each name prefixed (``findings: signature``)."""
        self.checks.extend(Check(f"{prefix}: {c.name}", c.ok, c.detail) for c in other.checks)
        self.notes.extend(f"{prefix}: {n}" for n in other.notes)


@dataclass(frozen=True)
class TrustPolicy:
    """What a signature must chain to: a public key, or CA certificates."""

    public_key: ec.EllipticCurvePublicKey | None = None
    roots: tuple[x509.Certificate, ...] = ()

    def __post_init__(self) -> None:
        if (self.public_key is None) == (not self.roots):
            raise BadInputError("verify needs exactly one of --key PUBLIC_KEY or --trust CA_CERT")
