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
  file shows (`verification`, `pdf_content`), whatever software it runs on.
- `render_pdf` is deterministic: the same evidence and signer give the same bytes (fixed PDF
  identifier, dates from the findings, fixed attachment dates and font timestamps,
  deterministic SVG charts).
- `write_report` does it all (signing with `pdf_signing.sign_pdf`) and writes the file
  atomically.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import math
import os
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reef_forensics.analysis.findings import FINDINGS_FILE
from reef_forensics.analysis.verdict import format_p
from reef_forensics.crypto.bundle import SIGNATURE_NAME
from reef_forensics.crypto.results import TrustPolicy
from reef_forensics.errors import KeyMaterialError, SignatureError
from reef_forensics.evidence.verify import verify_evidence
from reef_forensics.files import parse_json, write_atomic
from reef_forensics.formats.findings_record import FindingsRecord, PositiveControl
from reef_forensics.formats.fingerprint import MANIFEST, is_fingerprint
from reef_forensics.formats.json_records import Absent, encode, present
from reef_forensics.formats.naming import label, probe_label, reproduction, short_label
from reef_forensics.report import charts
from reef_forensics.report.pdf_signing import sign_pdf
from reef_forensics.report.timestamps import (
    Timestamping,
)
from reef_forensics.similarity.unit_matching import format_log10_p

if TYPE_CHECKING:
    from cryptography import x509

    from reef_forensics.crypto.keys import Signer
from reef_forensics.report.record import (
    ATTACHED_FINDINGS,
    ATTACHED_FINDINGS_SIGNATURE,
    ATTACHED_REPORT_RECORD,
    ATTACHED_VICTIM_MANIFEST,
    ATTACHED_VICTIM_SIGNATURE,
    PDF_VARIANT,
    Evidence,
    ReportError,
    _templates,
    check_case_id,
    parse_report_record,
    with_report_record,
)


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
    try:  # verified just now: of its types, unless the file changed since
        record = FindingsRecord.from_json(parse_json(findings))
    except ValueError as exc:
        raise ReportError(f"the findings in {folder} changed while being read: {exc}") from None
    evidence = Evidence(record, findings, (folder / SIGNATURE_NAME).read_bytes())
    if victim is None:
        return evidence
    victim_dir = Path(victim)
    manifest_path = victim_dir / MANIFEST
    if not is_fingerprint(victim_dir):
        raise ReportError(f"{victim_dir} is not a fingerprint ({MANIFEST} is missing)")
    manifest = manifest_path.read_bytes()
    if "sha256:" + hashlib.sha256(manifest).hexdigest() != record.victim.digest:
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
    per_layer = record.per_layer
    layers_b = list(per_layer.layers_suspect)
    path = [layers_b.index(a.layer_b) for a in per_layer.alignment]
    rows = [
        {
            "victim": aligned.layer_a,
            "aligned": aligned.layer_b,
            "score": aligned.score,
            "biased": per_layer.matrix_biased[i][path[i]],
            "best": best.layer_b,
            "best_score": best.score,
        }
        for i, (aligned, best) in enumerate(
            zip(per_layer.alignment, per_layer.best_match, strict=True)
        )
    ]
    positive = [c for c in record.controls.positive if not isinstance(c.score, Absent)]
    skipped = [c for c in record.controls.positive if not isinstance(c.skipped, Absent)]
    attachments = [
        {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        for name, data in evidence.attachments().items()
    ]
    victim_manifest = (
        parse_json(evidence.victim_manifest) if evidence.victim_manifest is not None else None
    )
    return {
        "r": record.to_json(),  # the templates read the record as the JSON document it is
        "report_format": made["format_version"],
        "reproduction": reproduction(record) if made["format_version"] >= 3 else [],
        "case_id": made["case_id"],
        "signer": signer,
        "victim_manifest": victim_manifest,
        "victim_signed": evidence.victim_signature is not None,
        "findings_sha256": hashlib.sha256(evidence.findings).hexdigest(),
        "attachments": attachments,
        "layer_rows": rows,
        "positive": [encode(c) for c in positive],
        "positive_skipped_rows": [encode(c) for c in skipped],
        "software": made["software"],
        "variant": made["pdf_variant"],
        "report_tool": made["software"].get("reef-forensics", "unknown"),
        "time_source": made.get("time"),
        "charts": _charts(record, path, positive) if charts else dict.fromkeys(CHARTS, ""),
    }


CHARTS = ("heatmap", "stability", "controls", "units")


def _charts(
    record: FindingsRecord, path: list[int], positive: list[PositiveControl]
) -> dict[str, str]:
    per_layer, controls = record.per_layer, record.controls
    return {
        "heatmap": charts.heatmap(
            per_layer.matrix, per_layer.layers_victim, per_layer.layers_suspect, path
        ),
        "stability": charts.stability(record.stability),
        "controls": charts.controls(
            record.score,
            [(c.name, c.score) for c in controls.invariance],
            [(c.name, present(c.score)) for c in positive],
            [(short_label(encode(r)), r.score) for r in controls.negative],
        ),
        "units": _units_chart(record),
    }


def _units_chart(record: FindingsRecord) -> str:
    """The neuron-matching test per block (findings version 3, when the test ran)."""
    units = present(record.units_test)
    if units is None or not units.ran or isinstance(units.blocks, Absent):
        return ""
    references = [
        (short_label(encode(r)), present(r.units.log10_p_value))
        for r in record.references
        if not isinstance(r.units, Absent)
    ]
    return charts.units(units.blocks, references)


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


def _created(record: FindingsRecord) -> datetime:
    try:
        return datetime.strptime(record.created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
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
