"""The signed PDF report: findings to HTML (Jinja2 templates) to PDF/A (WeasyPrint) to a PAdES
certification signature (pyHanko).

- `load_evidence` reads a findings directory and refuses one whose signature or consistency
  fails (a report never vouches for what does not verify), with the victim's fingerprint
  manifest when it is given.
- `render_html` fills the templates from signed data only: the findings record (every number
  printed comes from it, formatted by the filters below), the victim's manifest, the signer's
  certificate, and the report record (`report.json`: the case identifier, the software versions
  and the PDF variant the report was made with). The report record is attached to the PDF, so
  that `verify` re-renders every page from what the file carries and compares it with what the
  file shows (`report_verification`, `report_content`), whatever software it runs on.
- `render_pdf` is deterministic: the same evidence and signer give the same bytes (fixed PDF
  identifier, dates from the findings, fixed attachment dates and font timestamps,
  deterministic SVG charts).
- `sign_pdf` adds a certification signature that allows no later change (DocMDP level 1).
- `write_report` does it all and writes the file atomically.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import math
import os
import platform
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from importlib import metadata, resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import charts
from .analysis import FINDINGS_FILE, format_p
from .digests import canonical_json
from .errors import BadInputError, KeyMaterialError, SignatureError
from .evidence import verify_evidence
from .files import parse_json, write_atomic
from .fingerprint import MANIFEST
from .naming import label, probe_label, reproduction, short_label
from .signing import SIGNATURE_NAME, TrustPolicy
from .timestamps import Timestamping, explain_failure, quiet_signing, signing_settings
from .unit_matching import format_log10_p

if TYPE_CHECKING:
    from cryptography import x509

    from .keys import Signer

#: The report's attachments, by name: what `verify` extracts and checks.
ATTACHED_FINDINGS = "findings.json"
ATTACHED_FINDINGS_SIGNATURE = "findings.model.sig"
ATTACHED_VICTIM_MANIFEST = "victim-fingerprint.json"
ATTACHED_VICTIM_SIGNATURE = "victim-fingerprint.model.sig"
ATTACHED_REPORT_RECORD = "report.json"
SIGNATURE_FIELD = "REEF-Certification"
PDF_VARIANT = "pdf/a-4f"
SOFTWARE = ("reef-forensics", "weasyprint", "pyhanko", "matplotlib", "jinja2", "cryptography")
#: The software that draws the pages: a re-render with other versions may place things apart.
RENDERERS = ("weasyprint", "matplotlib")
REPORT_FORMAT = "reef-forensics report"
#: Format 2 attaches the report record; format 1 (before it) is re-rendered from a record that
#: `verify` reads off the report's own pages (`report_verification.legacy_report_record`).
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

    record: dict[str, Any]
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


def load_evidence(
    findings_dir: str | os.PathLike[str],
    trust: TrustPolicy,
    *,
    victim: str | os.PathLike[str] | None = None,
) -> Evidence:
    """Signed findings that verify under ``trust``, and the victim fingerprint when given (it
    must be the findings' victim; a signed one must verify too)."""
    folder = Path(findings_dir)
    if not (folder / FINDINGS_FILE).is_file():
        raise ReportError(
            f"{folder} holds no {FINDINGS_FILE}: give the directory `check --out` wrote"
        )
    if not (folder / SIGNATURE_NAME).is_file():
        raise SignatureError(
            f"the findings in {folder} are not signed: sign them (`check --key`, or "
            "`reef-forensics sign`) before reporting on them"
        )
    _must_verify(folder, trust, f"the findings in {folder} do not verify")
    findings = (folder / FINDINGS_FILE).read_bytes()
    record = parse_json(findings)
    evidence = Evidence(record, findings, (folder / SIGNATURE_NAME).read_bytes())
    if victim is None:
        return evidence
    victim_dir = Path(victim)
    manifest_path = victim_dir / MANIFEST
    if not manifest_path.is_file():
        raise ReportError(f"{victim_dir} is not a fingerprint ({MANIFEST} is missing)")
    manifest = manifest_path.read_bytes()
    if "sha256:" + hashlib.sha256(manifest).hexdigest() != record["victim"]["digest"]:
        raise ReportError(
            f"{victim_dir} is not the victim of these findings (its fingerprint digest differs)"
        )
    signature = None
    if (victim_dir / SIGNATURE_NAME).is_file():
        _must_verify(victim_dir, trust, f"the victim fingerprint {victim_dir} does not verify")
        signature = (victim_dir / SIGNATURE_NAME).read_bytes()
    return Evidence(record, findings, evidence.findings_signature, manifest, signature)


def _must_verify(folder: Path, trust: TrustPolicy, what: str) -> None:
    """A report never vouches for evidence that does not verify: say which checks failed."""
    result = verify_evidence(folder, trust)
    if not result.valid:
        failed = "; ".join(f"{c.name}: {c.detail}" for c in result.checks if not c.ok)
        raise SignatureError(f"refusing to render: {what} ({failed})")


# --- formatting: the only way a number reaches the page --------------------------------------


def fmt_score(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"


def fmt_p(value: Any) -> str:
    return "n/a" if value is None else format_p(float(value))


def fmt_odds(value: Any) -> str:
    """A p-value as 'about 1 in N', for readers who do not read p-values; below 1 in 10^16 the
    digits would run off the page (a p-value of 1e-200 has 200 of them), so it says so."""
    if value is not None and 0 < float(value) < 1e-16:
        return "less than 1 in 10^16"
    return fmt_odds_v1(value)


def fmt_odds_v1(value: Any) -> str:
    """`fmt_odds` as reports of format 1 printed it: every digit, however many."""
    if value is None or float(value) <= 0:
        return "not computable" if value is None else "less than 1 in 10^16"
    p = float(value)
    if p >= 0.5:
        return "better than even"
    n = 1 / p
    rounded = float(f"{n:.2g}")
    return f"about 1 in {int(rounded):,}"


def fmt_log10_p(value: Any) -> str:
    """A p-value given as log10 (findings version 3): ``< 1e-300`` below a double's range."""
    return "n/a" if value is None else format_log10_p(float(value))


def fmt_odds_log10(value: Any) -> str:
    """A log10 p-value as odds; below 1 in 10^16 as an order of magnitude."""
    if value is None:
        return "not computable"
    if float(value) < -16:
        return f"less than 1 in 10^{min(300, math.floor(-float(value)))}"
    return fmt_odds(10.0 ** float(value))


def short_digest(value: Any) -> str:
    return "n/a" if not value else str(value)[:23] + "..."


def svg_uri(svg: str) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


FILTERS = {
    "score": fmt_score,
    "p": fmt_p,
    "odds": fmt_odds,
    "log10p": fmt_log10_p,
    "odds10": fmt_odds_log10,
    "short": short_digest,
    "svg_uri": svg_uri,
    "label": label,
    "probe_label": probe_label,
}


# --- rendering ----------------------------------------------------------------------------------


def _templates() -> Path:
    """templates/ in a source checkout, reef_forensics/templates in a wheel."""
    packaged = resources.files("reef_forensics") / "templates"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "templates"


def _environment(version: int = 0) -> Any:
    """The templates' environment, with the filters of report format ``version`` (the current
    one when 0)."""
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_templates())),
        undefined=jinja2.StrictUndefined,
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(FILTERS)
    if version == 1:
        environment.filters["odds"] = fmt_odds_v1
    return environment


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


def signer_identity(cert: x509.Certificate) -> dict[str, str]:
    """Who signed, as the cover prints it: from the signer's certificate."""
    from cryptography.x509.oid import NameOID

    def attribute(name: Any, oid: Any) -> str:
        values = name.get_attributes_for_oid(oid)
        return str(values[0].value) if values else ""

    return {
        "name": attribute(cert.subject, NameOID.COMMON_NAME) or cert.subject.rfc4514_string(),
        "email": attribute(cert.subject, NameOID.EMAIL_ADDRESS),
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
    }


def context(
    evidence: Evidence, signer: dict[str, str], case_id: str | None = None, *, charts: bool = True
) -> dict[str, Any]:
    """Everything the templates see, all of it from signed data: the findings record, the charts
    drawn from it (empty pictures when ``charts`` is false: the text alone is wanted), the
    victim's manifest, the attachments, the signer's identity (from the certificate that signs
    the report) and the report record (case identifier, software versions, PDF variant)."""
    evidence = with_report_record(evidence, case_id)
    assert evidence.report is not None
    made = parse_report_record(evidence.report)
    record = evidence.record
    per_layer = record["per_layer"]
    layers_b = per_layer["layers_suspect"]
    path = [layers_b.index(a["layer_b"]) for a in per_layer["alignment"]]
    biased = per_layer["matrix_biased"]
    rows = []
    for i, (aligned, best) in enumerate(
        zip(per_layer["alignment"], per_layer["best_match"], strict=True)
    ):
        rows.append(
            {
                "victim": aligned["layer_a"],
                "aligned": aligned["layer_b"],
                "score": aligned["score"],
                "biased": biased[i][path[i]],
                "best": best["layer_b"],
                "best_score": best["score"],
            }
        )
    controls = record["controls"]
    positive = [c for c in controls["positive"] if "score" in c]
    skipped = [c for c in controls["positive"] if "skipped" in c]
    attachments = [
        {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        for name, data in evidence.attachments().items()
    ]
    victim_manifest = (
        parse_json(evidence.victim_manifest) if evidence.victim_manifest is not None else None
    )
    return {
        "r": record,
        "report_format": made["format_version"],
        "reproduction": _reproduction(record) if made["format_version"] >= 3 else [],
        "case_id": made["case_id"],
        "signer": signer,
        "victim_manifest": victim_manifest,
        "victim_signed": evidence.victim_signature is not None,
        "findings_sha256": hashlib.sha256(evidence.findings).hexdigest(),
        "attachments": attachments,
        "layer_rows": rows,
        "positive": positive,
        "positive_skipped_rows": skipped,
        "software": made["software"],
        "variant": made["pdf_variant"],
        "report_tool": made["software"].get("reef-forensics", "unknown"),
        "time_source": made.get("time"),
        "charts": _charts(record, path, positive) if charts else dict.fromkeys(CHARTS, ""),
    }


def _reproduction(record: dict[str, Any]) -> list[str]:
    """The commands of a format-3 report; none for a record lacking what they name (the
    templates then fail on the missing field, by name)."""
    try:
        return reproduction(record)
    except (KeyError, TypeError):
        return []


CHARTS = ("heatmap", "stability", "controls", "units")


def _charts(
    record: dict[str, Any], path: list[int], positive: list[dict[str, Any]]
) -> dict[str, str]:
    per_layer, controls = record["per_layer"], record["controls"]
    return {
        "heatmap": charts.heatmap(
            per_layer["matrix"], per_layer["layers_victim"], per_layer["layers_suspect"], path
        ),
        "stability": charts.stability(record["stability"]),
        "controls": charts.controls(
            record["score"],
            [(c["name"], c["score"]) for c in controls["invariance"]],
            [(c["name"], c["score"]) for c in positive],
            [(short_label(r), r["score"]) for r in controls["negative"]],
        ),
        "units": _units_chart(record),
    }


def _units_chart(record: dict[str, Any]) -> str:
    """The neuron-matching test per block (findings version 3, when the test ran)."""
    units = record.get("units_test")
    if not units or not units["ran"]:
        return ""
    references = [
        (short_label(r), r["units"].get("log10_p_value"))
        for r in record["references"]
        if "units" in r
    ]
    return charts.units(units["blocks"], references)


def render_html(
    evidence: Evidence, signer: dict[str, str], case_id: str | None = None, *, charts: bool = True
) -> str:
    """The report's HTML; ``signer`` is `signer_identity` of the signing certificate. The
    report record says which format's rules apply (a new one, the current format)."""
    evidence = with_report_record(evidence, case_id)
    assert evidence.report is not None
    version = parse_report_record(evidence.report)["format_version"]
    template = _environment(version).get_template("report.html.j2")
    return str(template.render(**context(evidence, signer, charts=charts)))


def _created(record: dict[str, Any]) -> datetime:
    try:
        return datetime.strptime(str(record["created"]), "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=timezone.utc
        )
    except ValueError:
        return datetime(1970, 1, 1, tzinfo=timezone.utc)


def render_pdf(
    evidence: Evidence, signer: Signer, case_id: str | None = None, *, timestamped: bool = False
) -> bytes:
    """The unsigned PDF/A-4f, with the evidence and the report record attached; the same inputs
    give the same bytes. ``timestamped``: the pages say a timestamp authority gives its time."""
    if signer.certificate is None:
        raise KeyMaterialError("a report is signed with a certificate: pass --cert")
    evidence = with_report_record(evidence, case_id, timestamped=timestamped)
    return render_report(evidence, signer_identity(signer.certificate))


def render_report(evidence: Evidence, signer: dict[str, str]) -> bytes:
    """The unsigned PDF of evidence that carries its report record, for the signer identity
    ``signer``: what `render_pdf` writes, and what `verify` re-renders a report into."""
    if evidence.report is None:
        raise ReportError("a report is rendered with its report record")
    return pdf_from_html(render_html(evidence, signer), evidence)


@contextlib.contextmanager
def _font_timestamps(when: datetime) -> Iterator[None]:
    """fontTools stamps the fonts it writes with the time, unless ``SOURCE_DATE_EPOCH`` says
    which: the findings' creation time, so that the same evidence gives the same bytes."""
    name, before = "SOURCE_DATE_EPOCH", os.environ.get("SOURCE_DATE_EPOCH")
    os.environ[name] = str(int(when.timestamp()))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def pdf_from_html(html: str, evidence: Evidence) -> bytes:
    """WeasyPrint's PDF of ``html`` with the evidence attached (the variant the report record
    names, PDF/A-4f for a new report)."""
    from weasyprint import CSS, HTML, Attachment

    variant = (
        parse_report_record(evidence.report)["pdf_variant"] if evidence.report else PDF_VARIANT
    )
    when = _created(evidence.record)
    descriptions = {
        ATTACHED_FINDINGS: "the findings record (canonical JSON)",
        ATTACHED_FINDINGS_SIGNATURE: "the findings' signature bundle (model-signing v1.0)",
        ATTACHED_VICTIM_MANIFEST: "the victim fingerprint's manifest (canonical JSON)",
        ATTACHED_VICTIM_SIGNATURE: "the victim fingerprint's signature bundle",
        ATTACHED_REPORT_RECORD: "the report record: case identifier, software versions",
    }
    attachments = [
        Attachment(
            string=data,
            name=name,
            description=descriptions[name],
            created=when,
            modified=when,
            relationship="Source" if name.endswith(".json") else "Supplement",
        )
        for name, data in evidence.attachments().items()
    ]
    identifier = hashlib.md5(evidence.findings, usedforsecurity=False).digest()
    document = HTML(string=html, base_url=str(_templates()))
    with _font_timestamps(when):
        return bytes(
            document.write_pdf(
                stylesheets=[CSS(filename=str(_templates() / "report.css"))],
                pdf_variant=variant,
                pdf_identifier=identifier,
                attachments=attachments,
            )
        )


def asn1_certificate(cert: x509.Certificate) -> Any:
    """A certificate as pyHanko takes it (asn1crypto)."""
    from asn1crypto import x509 as asn1_x509
    from cryptography.hazmat.primitives import serialization

    return asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))


def sign_pdf(pdf: bytes, signer: Signer, tsa: Timestamping | None = None) -> bytes:
    """A PAdES certification signature that permits no later change: over the whole file (B-B),
    with a signature timestamp from ``tsa`` (B-T), and with its CRLs the validation data and a
    document timestamp on top (B-LTA; `timestamps`)."""
    from asn1crypto import keys as asn1_keys
    from cryptography.hazmat.primitives import serialization
    from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
    from pyhanko.sign import fields, signers
    from pyhanko_certvalidator.registry import SimpleCertificateStore

    if signer.certificate is None:
        raise KeyMaterialError("a report is signed with a certificate: pass --cert")
    key = asn1_keys.PrivateKeyInfo.load(
        signer.private_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    certificate = asn1_certificate(signer.certificate)
    chain = [asn1_certificate(c) for c in signer.chain]
    pdf_signer = signers.SimpleSigner(
        signing_cert=certificate,
        signing_key=key,
        cert_registry=SimpleCertificateStore.from_certs(chain),
    )
    extra, timestamper = signing_settings(tsa, signer)
    settings = signers.PdfSignatureMetadata(
        field_name=SIGNATURE_FIELD,
        certify=True,
        docmdp_permissions=fields.MDPPerm.NO_CHANGES,
        subfilter=fields.SigSeedSubFilter.PADES,
        md_algorithm="sha256",
        reason="reef-forensics findings report",
        **extra,
    )
    writer = IncrementalPdfFileWriter(io.BytesIO(pdf))
    pdf_signing = signers.PdfSigner(settings, signer=pdf_signer, timestamper=timestamper)
    try:
        with quiet_signing():
            signed = pdf_signing.sign_pdf(writer)
    except Exception as exc:  # the TSA, or the validation data: one line, no traceback
        if tsa is None:
            raise
        raise explain_failure(exc, tsa) from None
    return bytes(signed.getvalue())


def write_report(
    findings_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    signer: Signer,
    *,
    trust: TrustPolicy | None = None,
    victim: str | os.PathLike[str] | None = None,
    case_id: str | None = None,
    tsa: Timestamping | None = None,
) -> Path:
    """Verify the findings, render, sign (timestamped by ``tsa`` when given), and write ``out``
    atomically. The findings must verify under ``trust`` (default: the report signer's own
    key)."""
    if signer.certificate is None:
        raise KeyMaterialError("a report is signed with a certificate: pass --cert")
    policy = trust or TrustPolicy(public_key=signer.public_key)
    if case_id is not None:
        check_case_id(case_id)  # before any work
    evidence = load_evidence(findings_dir, policy, victim=victim)
    pdf = render_pdf(evidence, signer, case_id, timestamped=tsa is not None)
    signed = sign_pdf(pdf, signer, tsa)
    target = Path(out)
    if target.is_dir():
        raise ReportError(f"{target} is a directory: give the report's file name")
    write_atomic(target, signed)
    return target
