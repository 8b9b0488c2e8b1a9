"""`verify report.pdf`: the PDF signature, the attached evidence, the printed numbers, and (given
the fingerprints) every number recomputed.

Checks, by name, each a pass or a fail (a report is valid only when all pass):

- ``pdf``: the file is a PDF with exactly one signature;
- ``signature``: pyHanko finds the signed bytes intact and the CMS signature valid;
- ``signature bytes``: the one part of the file the signature cannot cover, its own hex string,
  holds nothing but the CMS signature in one letter case and zero padding (a PDF reader would
  accept other spellings of the same bytes, so each byte of the file has exactly one meaning);
- ``certificate chain``: the signer's certificate chains to a trusted root (``--trust``), or its
  key is the trusted key (``--key``);
- ``coverage``: the signature covers the whole file (nothing appended after signing);
- ``certification``: a certification signature that permits no change, and none was made;
- ``attached findings: ...``: the attached findings and their signature, verified as a findings
  directory (signature, trust, digests, consistency of the verdict with the numbers);
- ``attached victim fingerprint: ...``: the manifest is the findings' victim, its signature holds;
- ``printed numbers``: every number the templates print from the findings appears, in order, in
  the PDF's text;
- ``recomputation``: with ``--evidence``, every number in the findings recomputed from the signed
  fingerprints, to 1e-9. Without it, a note says that recomputation was skipped.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .analysis import FINDINGS_FILE
from .errors import BadInputError, FingerprintError, ReefError, first_line
from .evidence import verify_evidence
from .files import parse_json
from .fingerprint import MANIFEST, read_fingerprint
from .report import (
    ATTACHED_FINDINGS,
    ATTACHED_FINDINGS_SIGNATURE,
    ATTACHED_VICTIM_MANIFEST,
    ATTACHED_VICTIM_SIGNATURE,
    Evidence,
    asn1_certificate,
    render_html,
    signer_identity,
)
from .signing import SIGNATURE_NAME, TrustPolicy, VerificationResult, verify_bundle_over

#: The numbers a report prints from measurements: decimals and exponents (digests and counts
#: are checked through the attachments).
_NUMBER = re.compile(r"\d+\.\d+(?:e[-+]?\d+)?|\d+e[-+]?\d+")


def verify_report(
    path: str | os.PathLike[str],
    trust: TrustPolicy,
    evidence: Sequence[str | os.PathLike[str]] = (),
) -> VerificationResult:
    pdf_path = Path(path)
    try:
        data = pdf_path.read_bytes()
    except OSError as exc:
        raise BadInputError(f"cannot read {pdf_path}: {exc.strerror or exc}") from None
    result = VerificationResult(path=pdf_path)
    if not data.startswith(b"%PDF-"):
        result.add("pdf", False, f"{pdf_path} is not a PDF file")
        return result
    try:
        from pyhanko.pdf_utils.reader import PdfFileReader

        reader = PdfFileReader(io.BytesIO(data))
        signatures = reader.embedded_signatures
    except Exception as exc:  # a damaged or hostile file is a failed check, never a crash
        result.add("pdf", False, f"the PDF cannot be read: {first_line(exc)}")
        return result
    if len(signatures) != 1:
        result.add(
            "pdf",
            False,
            "the PDF carries no signature: it is not a signed reef-forensics report"
            if not signatures
            else f"the PDF carries {len(signatures)} signatures; a report carries exactly one",
        )
        return result
    result.add("pdf", True, "a PDF with exactly one signature")
    _check_signature_bytes(data, signatures[0], result)
    signer_cert = _check_pdf_signature(signatures[0], trust, result)
    attachments = _attachments(reader, result)
    if attachments is None:
        return result
    record = _check_attachments(attachments, trust, result)
    if record is None:
        return result
    if signer_cert is not None:
        _check_printed_numbers(data, attachments, record, signer_cert, result)
    if evidence:
        _check_recomputation(record, evidence, trust, result)
    else:
        result.notes.append(
            "recomputation skipped: no --evidence given, so the numbers in the findings were "
            "checked for consistency with the verdict but not recomputed from the fingerprints"
        )
    return result


#: The signature's /Contents as a report is written: hex digits of one letter case, no spaces.
_CONTENTS = re.compile(rb"<([0-9A-F]*|[0-9a-f]*)>")


def _check_signature_bytes(data: bytes, embedded: Any, result: VerificationResult) -> None:
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
        result.add(
            "signature bytes",
            False,
            f"the signature's /Contents is not as written: {first_line(exc)}",
        )
        return
    result.add(
        "signature bytes",
        True,
        f"the signature's /Contents is its CMS blob ({len(cms_blob)} bytes) in hex, then zeros",
    )


def _check_pdf_signature(embedded: Any, trust: TrustPolicy, result: VerificationResult) -> Any:
    """pyHanko's validation; returns the signer's certificate (cryptography) when it is intact."""
    from cryptography import x509
    from pyhanko.sign.fields import MDPPerm
    from pyhanko.sign.validation import validate_pdf_signature
    from pyhanko.sign.validation.status import SignatureCoverageLevel
    from pyhanko_certvalidator import ValidationContext

    try:
        leaf = x509.load_der_x509_certificate(embedded.signer_cert.dump())
        if trust.public_key is not None:
            roots = [embedded.signer_cert]
        else:
            roots = [asn1_certificate(root) for root in trust.roots]
        status = validate_pdf_signature(
            embedded, ValidationContext(trust_roots=roots, allow_fetching=False)
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
        from .keys import key_fingerprint

        same = key_fingerprint(leaf.public_key()) == key_fingerprint(trust.public_key)  # type: ignore[arg-type]
        result.add(
            "certificate chain",
            same,
            "the signer's certificate holds the trusted key"
            if same
            else "the PDF was signed with another key than the trusted one",
        )
    else:
        result.add(
            "certificate chain",
            bool(status.trusted),
            f"the signer's certificate chains to a trusted root ({leaf.issuer.rfc4514_string()})"
            if status.trusted
            else "the signer's certificate does not chain to a trusted root",
        )
    whole = status.coverage == SignatureCoverageLevel.ENTIRE_FILE
    result.add(
        "coverage",
        whole,
        "the signature covers the whole file"
        if whole
        else f"the signature does not cover the whole file ({status.coverage}): "
        "bytes were added after signing",
    )
    certified = embedded.docmdp_level == MDPPerm.NO_CHANGES and bool(status.docmdp_ok)
    result.add(
        "certification",
        certified,
        "a certification signature that permits no change; none was made"
        if certified
        else "not a no-changes certification signature, or the document changed after it",
    )
    return leaf if intact else None


def _attachments(reader: Any, result: VerificationResult) -> dict[str, bytes] | None:
    try:
        names = reader.root["/Names"]["/EmbeddedFiles"]["/Names"]
        files: dict[str, bytes] = {}
        for i in range(0, len(names), 2):
            spec = names[i + 1].get_object()
            files[str(names[i])] = bytes(spec["/EF"]["/F"].get_object().data)
    except Exception as exc:  # no attachments, or a malformed name tree
        result.add(
            "attachments", False, f"the PDF carries no readable attachments ({first_line(exc)})"
        )
        return None
    wanted = {ATTACHED_FINDINGS, ATTACHED_FINDINGS_SIGNATURE}
    ok = wanted <= set(files)
    result.add(
        "attachments",
        ok,
        "attached: " + ", ".join(sorted(files))
        if ok
        else "the findings or their signature are not attached (attached: "
        + (", ".join(sorted(files)) or "nothing")
        + ")",
    )
    return files if ok else None


def _check_attachments(
    files: dict[str, bytes], trust: TrustPolicy, result: VerificationResult
) -> dict[str, Any] | None:
    with tempfile.TemporaryDirectory(prefix="reef-verify-") as scratch:
        folder = Path(scratch) / "findings"
        folder.mkdir()
        (folder / FINDINGS_FILE).write_bytes(files[ATTACHED_FINDINGS])
        (folder / SIGNATURE_NAME).write_bytes(files[ATTACHED_FINDINGS_SIGNATURE])
        checked = verify_evidence(folder, trust)
    result.merge(checked, "attached findings")
    if not checked.valid:
        return None
    record: dict[str, Any] = parse_json(files[ATTACHED_FINDINGS])
    manifest = files.get(ATTACHED_VICTIM_MANIFEST)
    if manifest is None:
        result.notes.append("no victim fingerprint manifest is attached")
        return record
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    result.add(
        "attached victim fingerprint: identity",
        digest == record["victim"]["digest"],
        "the attached manifest is the findings' victim fingerprint"
        if digest == record["victim"]["digest"]
        else "the attached manifest is not the findings' victim fingerprint",
    )
    bundle = files.get(ATTACHED_VICTIM_SIGNATURE)
    if bundle is None:
        result.notes.append("the attached victim fingerprint manifest is not signed")
    else:
        result.merge(
            verify_bundle_over(bundle, {MANIFEST: manifest}, trust, path=result.path),
            "attached victim fingerprint",
        )
    return record


def _text_of(pdf: bytes) -> str:
    from pypdf import PdfReader

    return "".join(page.extract_text() or "" for page in PdfReader(io.BytesIO(pdf)).pages)


def _html_text(html: str) -> str:
    import html as html_module

    body = re.sub(r"<(script|style|head)\b.*?</\1>", " ", html, flags=re.S | re.I)
    return html_module.unescape(re.sub(r"<[^>]+>", " ", body))


def printed_numbers(html: str) -> list[str]:
    """The numbers the report's HTML prints from the findings, in order."""
    return list(_NUMBER.findall(_html_text(html)))


def printed_numbers_missing(pdf: bytes, html: str) -> list[str]:
    """The numbers of ``html``'s text not found, in order, in the PDF's text (spaces and line
    breaks ignored on both sides)."""
    return _missing(pdf, printed_numbers(html))


def _missing(pdf: bytes, tokens: list[str]) -> list[str]:
    page_text = re.sub(r"\s+", "", _text_of(pdf))
    missing, position = [], 0
    for token in tokens:
        found = page_text.find(token, position)
        if found < 0:
            missing.append(token)
        else:
            position = found + len(token)
    return missing


def _check_printed_numbers(
    pdf: bytes,
    files: dict[str, bytes],
    record: dict[str, Any],
    signer_cert: Any,
    result: VerificationResult,
) -> None:
    evidence = Evidence(
        record,
        files[ATTACHED_FINDINGS],
        files[ATTACHED_FINDINGS_SIGNATURE],
        files.get(ATTACHED_VICTIM_MANIFEST),
        files.get(ATTACHED_VICTIM_SIGNATURE),
    )
    try:
        # the text only: the charts are pictures, their labels are not the findings' numbers
        expected = printed_numbers(
            render_html(evidence, signer_identity(signer_cert), charts=False)
        )
        missing = _missing(pdf, expected)
        total = len(expected)
    except Exception as exc:
        result.add("printed numbers", False, f"the report's text cannot be read: {first_line(exc)}")
        return
    result.add(
        "printed numbers",
        not missing,
        f"all {total} numbers the report prints from the findings appear in its text, in order"
        if not missing
        else f"{len(missing)} of {total} numbers from the findings are not printed as expected "
        f"(first: {', '.join(missing[:5])})",
    )


def _check_recomputation(
    record: dict[str, Any],
    evidence: Sequence[str | os.PathLike[str]],
    trust: TrustPolicy,
    result: VerificationResult,
) -> None:
    from .recompute import TOLERANCE, recompute

    fingerprints = []
    for folder in evidence:
        try:
            fingerprint = read_fingerprint(folder)
        except FingerprintError as exc:
            result.add("evidence", False, first_line(exc))
            return
        try:
            checked = verify_evidence(folder, trust)
        except ReefError as exc:  # not signed at all
            result.add("evidence", False, first_line(exc))
            return
        if not checked.valid:
            result.add("evidence", False, f"the fingerprint {folder} does not verify")
            result.merge(checked, f"evidence {Path(folder).name}")
            return
        fingerprints.append(fingerprint)
    result.add("evidence", True, f"{len(fingerprints)} signed fingerprints verify")
    outcome = recompute(record, fingerprints)
    if outcome.missing:
        result.add(
            "recomputation",
            False,
            "cannot recompute without the fingerprints of " + "; ".join(outcome.missing),
        )
        return
    result.add(
        "recomputation",
        outcome.agrees,
        f"every number in the findings ({outcome.compared}) recomputed from the fingerprints "
        f"agrees to {TOLERANCE:g}, and every verdict, reason and digest is the same"
        if outcome.agrees
        else "recomputed numbers differ: " + "; ".join(outcome.differences[:5]),
    )
    if outcome.not_recomputed:
        result.notes.append(
            "positive controls not recomputed (their fingerprints were not given): "
            + ", ".join(outcome.not_recomputed)
        )
