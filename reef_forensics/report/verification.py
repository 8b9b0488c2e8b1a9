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
  root (``--trust``; the one policy evidence bundles are held to, `certificates.chain_to_roots`), or
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
  viewer shows besides (annotations, bookmarks, metadata, attachments). `pdf_interpreter` reads
  the pages; each failure names the page and the text;
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
from dataclasses import replace
from pathlib import Path
from typing import Any

from reef_forensics.analysis.findings import FINDINGS_FILE
from reef_forensics.crypto.bundle import SIGNATURE_NAME, verify_bundle_over
from reef_forensics.crypto.results import TrustPolicy, VerificationResult
from reef_forensics.errors import BadInputError, ReefError, first_line
from reef_forensics.evidence.verify import verify_evidence, verify_fingerprint_snapshot
from reef_forensics.files import parse_json
from reef_forensics.formats.findings_record import FindingsRecord
from reef_forensics.formats.fingerprint import MANIFEST
from reef_forensics.report.pdf_comparison import compare_documents, compare_pages, page_lines
from reef_forensics.report.pdf_interpreter import read_pages
from reef_forensics.report.record import (
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
    software_versions,
    templates_digest,
)
from reef_forensics.report.render import render_report, signer_identity
from reef_forensics.report.signature_checks import (
    _check_pdf_signature,
    _check_signature_bytes,
    _quiet,
)
from reef_forensics.report.timestamps import (
    signed_end,
    split_signatures,
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
) -> FindingsRecord | None:
    with tempfile.TemporaryDirectory(prefix="reef-verify-") as scratch:
        folder = Path(scratch) / "findings"
        folder.mkdir()
        (folder / FINDINGS_FILE).write_bytes(files[ATTACHED_FINDINGS])
        (folder / SIGNATURE_NAME).write_bytes(files[ATTACHED_FINDINGS_SIGNATURE])
        checked = verify_evidence(folder, trust)
    result.merge(checked, "attached findings")
    if not checked.valid:
        return None
    record = FindingsRecord.from_json(parse_json(files[ATTACHED_FINDINGS]))  # verified above
    manifest = files.get(ATTACHED_VICTIM_MANIFEST)
    if manifest is None:
        result.notes.append("no victim fingerprint manifest is attached")
        return record
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    result.add(
        "attached victim fingerprint: identity",
        digest == record.victim.digest,
        "the attached manifest is the findings' victim fingerprint"
        if digest == record.victim.digest
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
    record: FindingsRecord,
    signer_cert: Any,
    result: VerificationResult,
) -> None:
    """Render the report again from what the file carries and compare every page (and what a
    viewer shows besides) with it; see `pdf_content`."""
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
    read = _read_report_record(evidence, files.get(ATTACHED_REPORT_RECORD), shown_pages, result)
    if read is None:
        return
    made, evidence = read
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
    _add_page_checks(found, len(expected_pages), same, _hint(made, here), result)
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


def _read_report_record(
    evidence: Evidence,
    attached: bytes | None,
    shown_pages: list[Any],
    result: VerificationResult,
) -> tuple[dict[str, Any], Evidence] | None:
    """The report record the report was made with (attached, or for format 1 read off its
    pages), and the evidence to re-render with; None (a failed check) when it is not one."""
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
        return None
    return made, evidence


def _add_page_checks(
    found: Any, pages: int, same: bool, hint: str, result: VerificationResult
) -> None:
    """A check for each way the pages may differ from the re-render's."""
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
    from reef_forensics.digests import canonical_json

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
    record: FindingsRecord,
    evidence: Sequence[str | os.PathLike[str]],
    trust: TrustPolicy,
    result: VerificationResult,
) -> None:
    from reef_forensics.evidence.recompute import TOLERANCE, recompute

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
