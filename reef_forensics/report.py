"""The signed PDF report: findings to HTML (Jinja2 templates) to PDF/A (WeasyPrint) to a PAdES
certification signature (pyHanko).

- `load_evidence` reads a findings directory and refuses one whose signature or consistency
  fails (a report never vouches for what does not verify), with the victim's fingerprint
  manifest when it is given.
- `render_html` fills the templates from the findings record only: every number printed comes
  from the record, formatted by the filters below (`verify` re-applies them).
- `render_pdf` is deterministic: the same evidence and signer give the same bytes (fixed PDF
  identifier, dates from the findings, fixed attachment dates, deterministic SVG charts).
- `sign_pdf` adds a certification signature that allows no later change (DocMDP level 1).
- `write_report` does it all and writes the file atomically.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata, resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__, charts
from .analysis import FINDINGS_FILE, format_p
from .errors import BadInputError, KeyMaterialError, SignatureError
from .evidence import verify_evidence
from .files import parse_json, write_atomic
from .fingerprint import MANIFEST
from .signing import SIGNATURE_NAME, TrustPolicy

if TYPE_CHECKING:
    from cryptography import x509

    from .keys import Signer

#: The report's attachments, by name: what `verify` extracts and checks.
ATTACHED_FINDINGS = "findings.json"
ATTACHED_FINDINGS_SIGNATURE = "findings.model.sig"
ATTACHED_VICTIM_MANIFEST = "victim-fingerprint.json"
ATTACHED_VICTIM_SIGNATURE = "victim-fingerprint.model.sig"
SIGNATURE_FIELD = "REEF-Certification"
PDF_VARIANT = "pdf/a-4f"
SOFTWARE = ("reef-forensics", "weasyprint", "pyhanko", "matplotlib", "jinja2", "cryptography")


class ReportError(BadInputError):
    """A report cannot be made from this input (exit code 2, as for any bad input)."""


@dataclass(frozen=True)
class Evidence:
    """What a report shows and carries: the findings (verified), and optionally the victim
    fingerprint's manifest and its signature."""

    record: dict[str, Any]
    findings: bytes
    findings_signature: bytes
    victim_manifest: bytes | None = None
    victim_signature: bytes | None = None

    def attachments(self) -> dict[str, bytes]:
        files = {
            ATTACHED_FINDINGS: self.findings,
            ATTACHED_FINDINGS_SIGNATURE: self.findings_signature,
        }
        if self.victim_manifest is not None:
            files[ATTACHED_VICTIM_MANIFEST] = self.victim_manifest
        if self.victim_signature is not None:
            files[ATTACHED_VICTIM_SIGNATURE] = self.victim_signature
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
    """A p-value as 'about 1 in N', for readers who do not read p-values."""
    if value is None or float(value) <= 0:
        return "not computable" if value is None else "less than 1 in 10^16"
    p = float(value)
    if p >= 0.5:
        return "better than even"
    n = 1 / p
    rounded = float(f"{n:.2g}")
    return f"about 1 in {int(rounded):,}"


def short_digest(value: Any) -> str:
    return "n/a" if not value else str(value)[:23] + "..."


def svg_uri(svg: str) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


FILTERS = {
    "score": fmt_score,
    "p": fmt_p,
    "odds": fmt_odds,
    "short": short_digest,
    "svg_uri": svg_uri,
}


# --- rendering ----------------------------------------------------------------------------------


def _templates() -> Path:
    """templates/ in a source checkout, reef_forensics/templates in a wheel."""
    packaged = resources.files("reef_forensics") / "templates"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "templates"


def _environment() -> Any:
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_templates())),
        undefined=jinja2.StrictUndefined,
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(FILTERS)
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
    """Everything the templates see: the record, the charts drawn from it (empty pictures when
    ``charts`` is false: the text alone is wanted), and identities."""
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
        "case_id": case_id or case_identifier(evidence),
        "signer": signer,
        "victim_manifest": victim_manifest,
        "victim_signed": evidence.victim_signature is not None,
        "findings_sha256": hashlib.sha256(evidence.findings).hexdigest(),
        "attachments": attachments,
        "layer_rows": rows,
        "positive": positive,
        "positive_skipped_rows": skipped,
        "software": software_versions(),
        "variant": PDF_VARIANT,
        "report_tool": __version__,
        "charts": _charts(record, path, positive) if charts else dict.fromkeys(CHARTS, ""),
    }


CHARTS = ("heatmap", "stability", "controls")


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
            [(r["name"], r["score"]) for r in controls["negative"]],
        ),
    }


def render_html(
    evidence: Evidence, signer: dict[str, str], case_id: str | None = None, *, charts: bool = True
) -> str:
    """The report's HTML; ``signer`` is `signer_identity` of the signing certificate."""
    template = _environment().get_template("report.html.j2")
    return str(template.render(**context(evidence, signer, case_id, charts=charts)))


def _created(record: dict[str, Any]) -> datetime:
    try:
        return datetime.strptime(str(record["created"]), "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=timezone.utc
        )
    except ValueError:
        return datetime(1970, 1, 1, tzinfo=timezone.utc)


def render_pdf(evidence: Evidence, signer: Signer, case_id: str | None = None) -> bytes:
    """The unsigned PDF/A-4f, with the evidence attached; the same inputs give the same bytes."""
    from weasyprint import CSS, HTML, Attachment

    if signer.certificate is None:
        raise KeyMaterialError("a report is signed with a certificate: pass --cert")
    html = render_html(evidence, signer_identity(signer.certificate), case_id)
    when = _created(evidence.record)
    descriptions = {
        ATTACHED_FINDINGS: "the findings record (canonical JSON)",
        ATTACHED_FINDINGS_SIGNATURE: "the findings' signature bundle (model-signing v1.0)",
        ATTACHED_VICTIM_MANIFEST: "the victim fingerprint's manifest (canonical JSON)",
        ATTACHED_VICTIM_SIGNATURE: "the victim fingerprint's signature bundle",
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
    return bytes(
        document.write_pdf(
            stylesheets=[CSS(filename=str(_templates() / "report.css"))],
            pdf_variant=PDF_VARIANT,
            pdf_identifier=identifier,
            attachments=attachments,
        )
    )


def asn1_certificate(cert: x509.Certificate) -> Any:
    """A certificate as pyHanko takes it (asn1crypto)."""
    from asn1crypto import x509 as asn1_x509
    from cryptography.hazmat.primitives import serialization

    return asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))


def sign_pdf(pdf: bytes, signer: Signer) -> bytes:
    """A PAdES certification signature over the whole file that permits no later change."""
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
    settings = signers.PdfSignatureMetadata(
        field_name=SIGNATURE_FIELD,
        certify=True,
        docmdp_permissions=fields.MDPPerm.NO_CHANGES,
        subfilter=fields.SigSeedSubFilter.PADES,
        md_algorithm="sha256",
        reason="reef-forensics findings report",
    )
    writer = IncrementalPdfFileWriter(io.BytesIO(pdf))
    signed = signers.PdfSigner(settings, signer=pdf_signer).sign_pdf(writer)
    return bytes(signed.getvalue())


def write_report(
    findings_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    signer: Signer,
    *,
    trust: TrustPolicy | None = None,
    victim: str | os.PathLike[str] | None = None,
    case_id: str | None = None,
) -> Path:
    """Verify the findings, render, sign, and write ``out`` atomically. The findings must verify
    under ``trust`` (default: the report signer's own key)."""
    if signer.certificate is None:
        raise KeyMaterialError("a report is signed with a certificate: pass --cert")
    policy = trust or TrustPolicy(public_key=signer.public_key)
    evidence = load_evidence(findings_dir, policy, victim=victim)
    signed = sign_pdf(render_pdf(evidence, signer, case_id), signer)
    target = Path(out)
    if target.is_dir():
        raise ReportError(f"{target} is a directory: give the report's file name")
    write_atomic(target, signed)
    return target
