"""`verify report.pdf`: the PDF signature, the attached evidence, every page against a re-render
of the report from that evidence, and (given the fingerprints) every number recomputed.

Checks, by name, each a pass or a fail (a report is valid only when all pass):

- ``pdf``: the file is a PDF with exactly one signature, followed only by document timestamps
  (PAdES B-LTA, `timestamps`);
- ``signature``: pyHanko finds the signed bytes intact and the CMS signature valid;
- ``signature bytes``: the one part of the file the signature cannot cover, its own hex string,
  holds nothing but the CMS signature in one letter case and zero padding (a PDF reader would
  accept other spellings of the same bytes, so each byte of the file has exactly one meaning);
- ``certificate chain``: the signer's certificate is fit to sign evidence and chains to a trusted
  root (``--trust``; the one policy evidence bundles are held to, `signing.chain_to_roots`), or
  its key is the trusted key (``--key``);
- ``signature timestamp``, ``document timestamp``: each RFC 3161 token holds and its authority
  chains to ``--trust`` with the timeStamping key usage; its time and authority are named (and
  in ``result.time``); without any, a note says the time is the signer's clock;
- ``coverage``: the signature covers the whole file (nothing appended after signing), or only
  validation data and document timestamps follow it and the last timestamp covers the file;
- ``certification``: a certification signature that permits no change, and none was made;
- ``attached findings: ...``: the attached findings and their signature, verified as a findings
  directory (signature, trust, digests, consistency of the verdict with the numbers);
- ``attached victim fingerprint: ...``: the manifest is the findings' victim, its signature holds;
- ``report record``: the attached case identifier, software versions and PDF variant the report
  was made with (a report of format 1, made before they were attached, has them read off its
  pages);
- ``page text``, ``text placement``, ``text visibility``, ``drawings``, ``document``: the report
  is rendered again from the attached findings, victim manifest and report record and the
  signer's certificate, and each page of the file must show what the re-render shows: the same
  text, each glyph at the same place in the same font, size and shape, drawn as visibly (render
  mode, colour, opacity, clipping, nothing opaque over it), the same drawings, and nothing a
  viewer shows besides (annotations, bookmarks, metadata, attachments). `report_content` reads
  the pages; each failure names the page and the text;
- ``recomputation``: with ``--evidence``, every number in the findings recomputed from the signed
  fingerprints, to 1e-9. Without it, a note says that recomputation was skipped.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from .analysis import FINDINGS_FILE
from .errors import BadInputError, ReefError, first_line
from .evidence import verify_evidence, verify_fingerprint_snapshot
from .files import parse_json
from .fingerprint import MANIFEST
from .report import (
    ATTACHED_FINDINGS,
    ATTACHED_FINDINGS_SIGNATURE,
    ATTACHED_REPORT_RECORD,
    ATTACHED_VICTIM_MANIFEST,
    ATTACHED_VICTIM_SIGNATURE,
    CASE_ID,
    PDF_VARIANT,
    RENDERERS,
    REPORT_FORMAT,
    TSA_TIME,
    Evidence,
    ReportError,
    case_identifier,
    parse_report_record,
    render_report,
    signer_identity,
    software_versions,
    templates_digest,
)
from .report_content import compare_documents, compare_pages, page_lines, read_pages
from .signing import (
    MAX_CHAIN,
    SIGNATURE_NAME,
    TrustPolicy,
    VerificationResult,
    chain_to_roots,
    verify_bundle_over,
)
from .timestamps import (
    check_coverage,
    check_timestamps,
    signature_token_certificates,
    signed_end,
    split_signatures,
    timestamp_context,
)

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
    found = split_signatures(signatures, result)
    if found is None:
        return result
    certification, stamps = found
    _check_signature_bytes(data, certification, result)
    for stamp in stamps:
        _check_signature_bytes(data, stamp, result, "document timestamp bytes")
    signer_cert = _check_pdf_signature(certification, trust, result, stamps, len(data))
    if stamps:
        # what the certification signature signed: its revision, read on its own (pyHanko's
        # difference analysis has said whether anything but validation data and timestamps
        # came after it)
        try:
            data = data[: signed_end(certification)]
            reader = PdfFileReader(io.BytesIO(data))
        except Exception as exc:  # a damaged revision: a failed check, never a crash
            result.add("pdf", False, f"the signed revision cannot be read: {first_line(exc)}")
            return result
    attachments = _attachments(reader, result)
    if attachments is None:
        return result
    record = _check_attachments(attachments, trust, result)
    if record is None:
        return result
    if signer_cert is not None and result.valid:
        with _quiet("pypdf", "weasyprint", "fontTools"):
            _check_visible_content(data, attachments, record, signer_cert, result)
    else:
        result.notes.append(
            "the pages were not compared with a re-render of the attached evidence: the checks "
            "above failed already"
        )
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
    bundles are held to (`signing.chain_to_roots`). Returns the signer's certificate
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
        from .keys import key_fingerprint

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
    under the one signer policy (`signing.chain_to_roots`)."""
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


def _check_visible_content(
    pdf: bytes,
    files: dict[str, bytes],
    record: dict[str, Any],
    signer_cert: Any,
    result: VerificationResult,
) -> None:
    """Render the report again from what the file carries and compare every page (and what a
    viewer shows besides) with it; see `report_content`."""
    from pypdf import PdfReader

    evidence = Evidence(
        record,
        files[ATTACHED_FINDINGS],
        files[ATTACHED_FINDINGS_SIGNATURE],
        files.get(ATTACHED_VICTIM_MANIFEST),
        files.get(ATTACHED_VICTIM_SIGNATURE),
    )
    try:
        shown = PdfReader(io.BytesIO(pdf))
        shown_pages = read_pages(shown)
    except Exception as exc:  # ContentError, or pypdf refusing the file: a failed check
        result.add("page text", False, f"the report's pages cannot be read: {first_line(exc)}")
        return
    attached = files.get(ATTACHED_REPORT_RECORD)
    try:
        if attached is not None:
            made = parse_report_record(attached)
            evidence = replace(evidence, report=attached)
            result.add(
                "report record",
                True,
                f"case {made['case_id']}, made with " + _renderers(made["software"]),
            )
        else:
            legacy = legacy_report_record(evidence, shown_pages)
            made = parse_report_record(legacy)
            evidence = replace(evidence, report=legacy, report_attached=False)
            result.add(
                "report record",
                True,
                f"a report of format 1 (no {ATTACHED_REPORT_RECORD} attached): case "
                f"{made['case_id']} and software versions read off its pages, made with "
                + _renderers(made["software"]),
            )
    except ReportError as exc:
        result.add("report record", False, str(exc))
        return
    _check_stated_time(made, result)
    try:
        expected = PdfReader(io.BytesIO(render_report(evidence, signer_identity(signer_cert))))
        expected_pages = read_pages(expected)
    except Exception as exc:  # the attached evidence cannot be rendered: a failed check
        result.add("page text", False, f"the report cannot be rendered again: {first_line(exc)}")
        return
    here = software_versions()
    same = all(made["software"].get(name) == here.get(name) for name in RENDERERS)
    found = compare_pages(shown_pages, expected_pages, drawings=same)
    hint = _hint(made, here)
    pages = len(expected_pages)
    for name, problems, fine in (
        (
            "page text",
            found.text,
            f"each of the {pages} pages shows the text the templates make of the attached "
            "findings, and no other",
        ),
        (
            "text placement",
            found.placement,
            "every glyph is where the templates put it, in their font, size and shape",
        ),
        (
            "text visibility",
            found.look,
            "every glyph is drawn as visibly as the templates draw it (render mode, colour, "
            "opacity, clipping, nothing drawn over it)",
        ),
        (
            "drawings",
            found.drawings,
            "every line, fill and picture is the one the templates draw"
            if same
            else "every picture is the one the templates draw",
        ),
    ):
        result.add(name, not problems, fine if not problems else "; ".join(problems[:3]) + hint)
    try:
        document = compare_documents(shown, expected)
    except Exception as exc:  # ContentError, or a malformed catalog: a failed check
        document = [f"the document cannot be read: {first_line(exc)}"]
    result.add(
        "document",
        not document,
        "no annotation, action, bookmark, metadata or attachment but the templates'"
        if not document
        else "; ".join(document[:3]),
    )
    if not same:
        result.notes.append(
            "lines and fills were not compared one by one: the report was drawn with "
            + _renderers(made["software"])
            + ", this machine has "
            + _renderers(here)
            + " (text, its visibility and the pictures were compared)"
        )


def _check_stated_time(made: dict[str, Any], result: VerificationResult) -> None:
    """A report whose pages say a timestamp authority gives its time must carry a timestamp."""
    if made.get("time") != TSA_TIME:
        return
    stamps = (result.time or {}).get("timestamps") or []
    result.add(
        "stated time",
        bool(stamps),
        "the report says a timestamp authority gives its time, and it carries an RFC 3161 timestamp"
        if stamps
        else "the report says a timestamp authority gives its time, but it carries no RFC 3161 "
        "timestamp",
    )


def _renderers(software: dict[str, str]) -> str:
    return ", ".join(f"{name} {software.get(name, 'unknown')}" for name in RENDERERS)


def _hint(made: dict[str, Any], here: dict[str, str]) -> str:
    """When pages differ: whether this machine renders with other software or templates."""
    reasons = []
    if any(made["software"].get(name) != here.get(name) for name in RENDERERS):
        reasons.append(f"drawn with {_renderers(made['software'])}, here {_renderers(here)}")
    if made["templates"] and made["templates"] != templates_digest():
        reasons.append("made with other templates than this reef-forensics has")
    return f" (the report was {'; '.join(reasons)})" if reasons else ""


#: The rows of a format-1 report that name what made it (its appendix, "7. Reproducibility").
_SOFTWARE_ROW = re.compile(r"([a-z0-9][a-z0-9._-]*) \(report\)\s*(\S.*?)\s*")
_VARIANT_ROW = re.compile(r"document format\s*(pdf/\S+)\s*")


def legacy_report_record(evidence: Evidence, pages: Sequence[Any]) -> bytes:
    """The report record of a report of format 1 (made before the record was attached), read off
    its own pages: the software versions and PDF variant its appendix prints. Its case
    identifier is the default one (format 1 took no other into account). Everything else on its
    pages is then compared as for any report, these rows included."""
    from .digests import canonical_json

    software: dict[str, str] = {}
    variant = ""
    for page in pages:
        for line in page_lines(page):
            text = " ".join(line.split())
            row = _SOFTWARE_ROW.fullmatch(text)
            if row:
                software[row[1]] = row[2]
            elif _VARIANT_ROW.fullmatch(text):
                variant = _VARIANT_ROW.fullmatch(text)[1]  # type: ignore[index]
    if not software or not variant:
        raise ReportError(
            f"the report carries no {ATTACHED_REPORT_RECORD}, and its pages do not say what made "
            "it: it is not a reef-forensics report"
        )
    case = case_identifier(evidence)
    assert CASE_ID.fullmatch(case)
    return canonical_json(
        {
            "format": REPORT_FORMAT,
            "format_version": 1,
            "case_id": case,
            "software": software,
            "pdf_variant": variant or PDF_VARIANT,
            "templates": "",
        }
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
        try:  # each file read once: the bytes verified are the bytes recomputed on (issue 16)
            checked, fingerprint = verify_fingerprint_snapshot(folder, trust)
        except ReefError as exc:  # not a fingerprint, or not signed at all
            result.add("evidence", False, first_line(exc))
            return
        if fingerprint is None:
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
