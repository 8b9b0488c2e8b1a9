"""Signing and verifying evidence directories, by what they hold.

`sign_evidence` signs a directory only after checking it is a sound fingerprint (never sign
what would not verify). `verify_evidence` checks a signed directory (see `signing.verify_directory`) and, for a
fingerprint, its internal consistency: the manifest is canonical and complete, the probe texts
hash to the probe digest, the tensors have the declared shapes. The result lists every check
by name; it is valid only when all of them passed.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import FingerprintError
from .fingerprint import FILES, MANIFEST, read_fingerprint
from .keys import Signer
from .signing import (
    SIGNATURE_NAME,
    TrustPolicy,
    VerificationResult,
    sign_directory,
    verify_directory,
)


def _fingerprint_consistency(folder: Path, result: VerificationResult) -> None:
    try:
        fingerprint = read_fingerprint(folder)
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
    content = _fingerprint_consistency if (folder / MANIFEST).is_file() else None
    result = verify_directory(folder, trust, content_checks=content)
    if content is None:
        result.add("content", False, f"{folder} is not a fingerprint ({MANIFEST} is missing)")
    else:
        _only_fingerprint_files(folder, result)
    return result


def _only_fingerprint_files(folder: Path, result: VerificationResult) -> None:
    """A fingerprint holds its three files and its signature, nothing else: no entry can hide
    behind the names a generic signature ignores (.git, .github, ...)."""
    expected = {*FILES, SIGNATURE_NAME}
    others = sorted(entry.name for entry in folder.iterdir() if entry.name not in expected)
    result.add(
        "directory contents",
        not others,
        "nothing but the fingerprint's files and its signature"
        if not others
        else "unexpected entries: " + ", ".join(others),
    )


def sign_evidence(path: str | os.PathLike[str], signer: Signer) -> Path:
    """Sign a fingerprint directory after checking its consistency; returns the bundle's path."""
    folder = Path(path)
    if not (folder / MANIFEST).is_file():
        raise FingerprintError(
            f"{folder} is not a fingerprint ({MANIFEST} is missing): nothing to sign"
        )
    read_fingerprint(folder)
    return sign_directory(folder, signer)
