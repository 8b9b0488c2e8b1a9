"""What a report is made of and records about itself: the evidence it renders (`Evidence`, its attachments by name) and the report record (`report.json`, attached to every report: the case identifier, the software versions, the PDF variant and the templates it was made with), with what `verify` accepts in one."""

from __future__ import annotations

import hashlib
import platform
import re
from dataclasses import dataclass, replace
from importlib import metadata, resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reef_forensics.digests import canonical_json
from reef_forensics.errors import BadInputError
from reef_forensics.files import parse_json
from reef_forensics.formats.findings_record import FindingsRecord

if TYPE_CHECKING:
    pass


#: The report's attachments, by name: what `verify` extracts and checks.
ATTACHED_FINDINGS = "findings.json"

ATTACHED_FINDINGS_SIGNATURE = "findings.model.sig"

ATTACHED_VICTIM_MANIFEST = "victim-fingerprint.json"

ATTACHED_VICTIM_SIGNATURE = "victim-fingerprint.model.sig"

ATTACHED_REPORT_RECORD = "report.json"

PDF_VARIANT = "pdf/a-4f"

SOFTWARE = ("reef-forensics", "weasyprint", "pyhanko", "matplotlib", "jinja2", "cryptography")

#: The software that draws the pages: a re-render with other versions may place things apart.
RENDERERS = ("weasyprint", "matplotlib")

REPORT_FORMAT = "reef-forensics report"

#: Format 2 attaches the report record; format 1 (before it) is re-rendered from a record that
#: `verify` reads off the report's own pages (`verification.legacy_report_record`).
#: Format 3 prints the probe set by its file name (not the server's path) and the commands that
#: reproduce the case (`naming.reproduction`) where format 2 printed placeholders, and its record
#: adds `time`: where the report's time comes from, which its pages state.
REPORT_FORMAT_VERSION = 3

READABLE_REPORT_VERSIONS = (1, 2, 3)

#: A report record's `time`: the signer's clock (PAdES B-B), or an RFC 3161 timestamp (B-T and up).
SIGNERS_CLOCK_TIME = "signer's clock"

TSA_TIME = "RFC 3161 timestamp authority"

_RECORD_FIELDS = {"format", "format_version", "case_id", "software", "pdf_variant", "templates"}

_TEMPLATES_DIGEST = re.compile(r"sha256:[0-9a-f]{64}|")

#: What may be written in a report record: a case identifier is a label, not a sentence.
CASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/#-]{0,63}")

_SOFTWARE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,39}")

_SOFTWARE_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+_-]{0,39}|not installed")

_PDF_VARIANT = re.compile(r"pdf/[a-z0-9.-]{1,16}")


class ReportError(BadInputError):
    """A report cannot be made from this input (exit code 2, as for any bad input)."""


@dataclass(frozen=True)
class Evidence:
    """What a report shows and carries: the findings (verified), optionally the victim
    fingerprint's manifest and its signature, and the report record (`report_record`) once the
    report is rendered."""

    record: FindingsRecord
    findings: bytes
    findings_signature: bytes
    victim_manifest: bytes | None = None
    victim_signature: bytes | None = None
    report: bytes | None = None
    #: False for a report of format 1, whose record is not attached but read off its pages.
    report_attached: bool = True

    def attachments(self) -> dict[str, bytes]:
        files = {
            ATTACHED_FINDINGS: self.findings,
            ATTACHED_FINDINGS_SIGNATURE: self.findings_signature,
        }
        if self.victim_manifest is not None:
            files[ATTACHED_VICTIM_MANIFEST] = self.victim_manifest
        if self.victim_signature is not None:
            files[ATTACHED_VICTIM_SIGNATURE] = self.victim_signature
        if self.report is not None and self.report_attached:
            files[ATTACHED_REPORT_RECORD] = self.report
        return files


def _templates() -> Path:
    """templates/ in a source checkout, reef_forensics/templates in a wheel."""
    packaged = resources.files("reef_forensics") / "templates"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "templates"


def software_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in SOFTWARE:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def case_identifier(evidence: Evidence) -> str:
    return "REEF-" + hashlib.sha256(evidence.findings).hexdigest()[:12].upper()


def check_case_id(case_id: str) -> str:
    """A case identifier is a label printed on every page, not a place for a sentence."""
    if CASE_ID.fullmatch(case_id) is None:
        raise ReportError(
            f"--case-id {case_id!r} is not a case identifier: up to 64 letters, digits and "
            "the characters . _ : / # -, starting with a letter or digit"
        )
    return case_id


def report_record(
    evidence: Evidence, case_id: str | None = None, *, timestamped: bool = False
) -> bytes:
    """What a report shows besides the signed evidence and the signer, as it is attached to the
    report (canonical JSON): the case identifier, the versions of the software making it, the
    PDF variant, and where its time comes from (``timestamped``: a TSA will stamp it). `verify`
    re-renders the pages from it, not from its own environment."""
    return canonical_json(
        {
            "format": REPORT_FORMAT,
            "format_version": REPORT_FORMAT_VERSION,
            "case_id": case_identifier(evidence) if case_id is None else check_case_id(case_id),
            "software": software_versions(),
            "pdf_variant": PDF_VARIANT,
            "templates": templates_digest(),
            "time": TSA_TIME if timestamped else SIGNERS_CLOCK_TIME,
        }
    )


def templates_digest() -> str:
    """The sha256 of the templates and stylesheet: a report records which it was made with, so
    that `verify` can say when its own differ."""
    digest = hashlib.sha256()
    for name in ("report.html.j2", "report.css"):
        digest.update((_templates() / name).read_bytes())
    return "sha256:" + digest.hexdigest()


def parse_report_record(data: bytes) -> dict[str, Any]:
    """A report record as `report_record` writes it; ReportError says what is wrong."""
    try:
        record = parse_json(data)
    except BadInputError as exc:
        raise ReportError(f"the report record is not JSON ({exc})") from None
    if not isinstance(record, dict) or set(record) - {"time"} != _RECORD_FIELDS:
        raise ReportError("the report record does not have the fields of a report record")
    version = record["format_version"]
    if ("time" in record) != (version == 3) or record.get("time", TSA_TIME) not in (
        TSA_TIME,
        SIGNERS_CLOCK_TIME,
    ):
        raise ReportError("the report record's time source is not one a report of its format has")
    if (
        record["format"] != REPORT_FORMAT
        or type(version) is not int
        or version not in (READABLE_REPORT_VERSIONS)
    ):
        raise ReportError(
            f"the report record has format {record['format']!r} version "
            f"{record['format_version']!r}; this reef-forensics reads versions "
            + ", ".join(map(str, READABLE_REPORT_VERSIONS))
        )
    if not isinstance(record["templates"], str) or not _TEMPLATES_DIGEST.fullmatch(
        record["templates"]
    ):
        raise ReportError("the report record's templates digest is not a sha256 digest")
    case, software, variant = record["case_id"], record["software"], record["pdf_variant"]
    if not isinstance(case, str) or CASE_ID.fullmatch(case) is None:
        raise ReportError("the report record's case identifier is not a case identifier")
    if (
        not isinstance(software, dict)
        or not 1 <= len(software) <= 16
        or not all(
            isinstance(name, str)
            and isinstance(version, str)
            and _SOFTWARE_NAME.fullmatch(name)
            and _SOFTWARE_VERSION.fullmatch(version)
            for name, version in software.items()
        )
    ):
        raise ReportError("the report record's software versions are not names and versions")
    if not isinstance(variant, str) or _PDF_VARIANT.fullmatch(variant) is None:
        raise ReportError("the report record's PDF variant is not a PDF variant")
    if canonical_json(record) != data:
        raise ReportError("the report record is not in canonical form")
    return record


def with_report_record(
    evidence: Evidence, case_id: str | None = None, *, timestamped: bool = False
) -> Evidence:
    """The evidence with its report record: the one it carries (a report being re-rendered), or
    a new one for this case and this software (a report being made)."""
    if evidence.report is not None:
        if case_id is not None:
            raise ReportError("a report being re-rendered keeps the case identifier it records")
        return evidence
    return replace(evidence, report=report_record(evidence, case_id, timestamped=timestamped))
