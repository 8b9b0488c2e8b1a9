"""The report's PAdES signature as `verify report.pdf` checks it: the signed byte ranges cover the whole file, the signature validates (pyHanko) and its certificate chains to a trusted root."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from reef_forensics.crypto.bundle import MAX_CHAIN
from reef_forensics.crypto.certificates import chain_to_roots
from reef_forensics.crypto.results import TrustPolicy, VerificationResult
from reef_forensics.errors import first_line
from reef_forensics.report.timestamps import (
    check_coverage,
    check_timestamps,
    signature_token_certificates,
    timestamp_context,
)

#: The signature's /Contents as a report is written: hex digits of one letter case, no spaces.
_CONTENTS = re.compile(rb"<([0-9A-F]*|[0-9a-f]*)>")


def _check_signature_bytes(
    data: bytes, embedded: Any, result: VerificationResult, name: str = "signature bytes"
) -> None:
    """The gap the /ByteRange leaves (the signature's own hex string) in its one written form.

    The signed digest cannot cover these bytes, and a PDF reader takes ``A`` and ``a`` for the
    same digit, skips white space, and ignores what follows the CMS blob: without this check a
    byte changed there would leave the report valid.
    """
    from asn1crypto import cms

    try:
        offset, first, start, _ = (int(n) for n in embedded.byte_range)
        written = data[offset + first : start]
        match = _CONTENTS.fullmatch(written)
        if match is None or len(match[1]) % 2:
            raise ValueError("it is not an even run of hex digits of one letter case in <>")
        blob = bytes.fromhex(match[1].decode("ascii"))
        cms_blob = cms.ContentInfo.load(blob).dump()
        if blob != cms_blob + bytes(len(blob) - len(cms_blob)):
            raise ValueError("what follows the CMS signature is not zero padding")
    except Exception as exc:  # a damaged byte range or blob: a failed check, never a crash
        result.add(name, False, f"the signature's /Contents is not as written: {first_line(exc)}")
        return
    result.add(
        name,
        True,
        f"the signature's /Contents is its CMS blob ({len(cms_blob)} bytes) in hex, then zeros",
    )


@contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """pyHanko logs what it finds wrong with tracebacks; verify says it in one line instead."""
    loggers = [logging.getLogger(name) for name in names]
    before = [logger.level for logger in loggers]
    for logger in loggers:  # their children inherit the level (``disabled`` they would not)
        logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for logger, level in zip(loggers, before, strict=True):
            logger.setLevel(level)


def _check_pdf_signature(
    embedded: Any,
    trust: TrustPolicy,
    result: VerificationResult,
    stamps: Sequence[Any] = (),
    size: int = 0,
) -> Any:
    """pyHanko checks that the signed bytes are intact and the CMS signature sound, with the
    signer's certificate as its own anchor and no key usage of its own: whether that certificate
    may sign evidence, and whether it chains to ``trust``, is decided by the policy evidence
    bundles are held to (`certificates.chain_to_roots`). Returns the signer's certificate
    (cryptography) when the signature is intact."""
    from cryptography import x509
    from pyhanko.sign.fields import MDPPerm
    from pyhanko.sign.validation import validate_pdf_signature
    from pyhanko.sign.validation.settings import KeyUsageConstraints
    from pyhanko_certvalidator import ValidationContext

    try:
        leaf = x509.load_der_x509_certificate(embedded.signer_cert.dump())
        with _quiet("pyhanko", "pyhanko_certvalidator"):
            status = validate_pdf_signature(
                embedded,
                ValidationContext(trust_roots=[embedded.signer_cert], allow_fetching=False),
                ts_validation_context=timestamp_context(
                    trust, signature_token_certificates(embedded)
                ),
                key_usage_settings=KeyUsageConstraints(),
            )
    except Exception as exc:  # a malformed signature or certificate: a failed check
        result.add("signature", False, f"the PDF signature cannot be validated: {first_line(exc)}")
        return None
    intact = bool(status.intact and status.valid)
    result.add(
        "signature",
        intact,
        f"PAdES signature intact and valid ({status.md_algorithm}, signed by "
        f"{leaf.subject.rfc4514_string()})"
        if intact
        else "the signed bytes were changed, or the signature does not match them",
    )
    if trust.public_key is not None:
        from reef_forensics.crypto.keys import key_fingerprint

        same = key_fingerprint(leaf.public_key()) == key_fingerprint(trust.public_key)  # type: ignore[arg-type]
        result.add(
            "certificate chain",
            same,
            "the signer's certificate holds the trusted key"
            if same
            else "the PDF was signed with another key than the trusted one",
        )
        result.notes.append(
            "the signer's certificate was not checked against a CA (verified with a key); "
            "verify with --trust CA to check it"
        )
    else:
        _check_chain(embedded, leaf, trust, result)
    check_timestamps(status, stamps, trust, result)
    check_coverage(status, stamps, size, result)
    certified = embedded.docmdp_level == MDPPerm.NO_CHANGES and bool(status.docmdp_ok)
    result.add(
        "certification",
        certified,
        "a certification signature that permits no change; none was made"
        if certified
        else "not a no-changes certification signature, or the document changed after it",
    )
    return leaf if intact else None


def _check_chain(embedded: Any, leaf: Any, trust: TrustPolicy, result: VerificationResult) -> None:
    """The signer's certificate, with the others the signature carries as its possible chain,
    under the one signer policy (`certificates.chain_to_roots`)."""
    from cryptography import x509

    try:
        carried = [
            x509.load_der_x509_certificate(choice.chosen.dump())
            for choice in embedded.signed_data["certificates"]
            if choice.name == "certificate"
        ]
        others = [c for c in carried if c != leaf]
        if len(others) >= MAX_CHAIN:
            raise ValueError(f"the signature carries more than {MAX_CHAIN} certificates")
        _, detail = chain_to_roots([leaf, *others], trust.roots)
    except Exception as exc:  # an unfit, untrusted or malformed certificate: a failed check
        result.add(
            "certificate chain",
            False,
            f"the signer's certificate is not accepted: {first_line(exc)}",
        )
        return
    result.add("certificate chain", True, detail)
