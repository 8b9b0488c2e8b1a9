"""The signed PDF report: rendered by WeasyPrint, signed by pyHanko, and checked by tools we did
not write (poppler's pdfsig and pdftotext, pyHanko's validator) as well as by our verify."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import jinja2
import pytest

from reef_forensics.cli.main import main
from reef_forensics.crypto.bundle import sign_directory
from reef_forensics.crypto.keys import GeneratedKeys, Signer, generate_keys, load_signer
from reef_forensics.crypto.results import TrustPolicy
from reef_forensics.digests import canonical_json
from reef_forensics.formats.findings_record import FindingsRecord
from reef_forensics.report.pdf_signing import sign_pdf
from reef_forensics.report.render import load_evidence, render_html, render_pdf, signer_identity

PASS = "report-test"


def run_cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def tool(name: str) -> str:
    found = shutil.which(name)
    assert found, f"{name} is needed (Debian poppler-utils / libnss3-tools; .ci/run installs it)"
    return found


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> GeneratedKeys:
    return generate_keys(tmp_path_factory.mktemp("keys"), PASS.encode())


@pytest.fixture(scope="module")
def signer(keys: GeneratedKeys) -> Signer:
    return load_signer(
        keys.private_key, passphrase=PASS.encode(), certificate=keys.signer_certificate
    )


@pytest.fixture(scope="module")
def signed(
    tmp_path_factory: pytest.TempPathFactory, fingerprints: dict[str, Path], signer: Signer
) -> dict[str, Path]:
    """Signed copies of the session's fingerprints (the evidence a report rests on)."""
    root = tmp_path_factory.mktemp("signed")
    out = {}
    for name in ("victim", "derived", "unrelated", "bert", "gpt2"):
        shutil.copytree(fingerprints[name], root / name)
        sign_directory(root / name, signer)
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def case(
    tmp_path_factory: pytest.TempPathFactory, signed: dict[str, Path], keys: GeneratedKeys
) -> dict[str, Path]:
    """check --report in one go: signed findings and the signed report."""
    root = tmp_path_factory.mktemp("case")
    mp = pytest.MonkeyPatch()
    mp.setenv("REEF_KEY_PASSPHRASE", PASS)
    code = main(
        [
            "check", "--victim", str(signed["victim"]), "--suspect", str(signed["derived"]),
            "--reference", str(signed["unrelated"]), "--reference", str(signed["bert"]),
            "--reference", str(signed["gpt2"]), "--out", str(root / "findings"),
            "--key", str(keys.private_key), "--cert", str(keys.signer_certificate),
            "--report", str(root / "report.pdf"), "--no-progress",
        ]
    )  # fmt: skip
    mp.undo()
    assert code == 0
    return {"findings": root / "findings", "report": root / "report.pdf", "root": root}


def nss_database(folder: Path, ca: Path) -> str:
    folder.mkdir()
    subprocess.run([tool("certutil"), "-N", "-d", f"sql:{folder}", "--empty-password"], check=True)
    subprocess.run(
        [tool("certutil"), "-A", "-d", f"sql:{folder}", "-n", "reef-test-ca", "-t", "CT,C,C",
         "-i", str(ca)],
        check=True,
    )  # fmt: skip
    return f"sql:{folder}"


def pdfsig(pdf: Path, nss: str) -> str:
    done = subprocess.run(
        [tool("pdfsig"), "-nssdir", nss, str(pdf)], capture_output=True, text=True, check=False
    )
    return done.stdout + done.stderr  # its exit code is 0 even on a digest mismatch


def pyhanko_validate(pdf: Path, ca: Path) -> subprocess.CompletedProcess[str]:
    cli = Path(sys.executable).parent / "pyhanko"  # installed beside this Python
    assert cli.is_file(), "the pyhanko CLI (pyhanko-cli, a dev dependency) is needed"
    return subprocess.run(
        [str(cli), "sign", "validate", "--trust", str(ca), "--trust-replace",
         "--no-revocation-check", "--pretty-print", str(pdf)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_the_report_is_valid_total_and_trusted_for_pdfsig(
    case: dict[str, Path], keys: GeneratedKeys, tmp_path: Path
) -> None:
    out = pdfsig(case["report"], nss_database(tmp_path / "nss", keys.ca_certificate))
    assert "Signature is Valid." in out, out
    assert "Total document signed" in out, out
    assert "Certificate is Trusted." in out, out


def test_pyhanko_validator_reports_intact_valid_and_trusted(
    case: dict[str, Path], keys: GeneratedKeys
) -> None:
    done = pyhanko_validate(case["report"], keys.ca_certificate)
    assert done.returncode == 0, done.stdout + done.stderr
    for line in (
        "The signer's certificate is trusted.",
        "The signature is cryptographically sound.",
        "The signature covers the entire file.",
        "The signature is judged VALID.",
    ):
        assert line in done.stdout, done.stdout
    from io import BytesIO

    from pyhanko.pdf_utils.reader import PdfFileReader
    from pyhanko.sign.fields import MDPPerm

    reader = PdfFileReader(BytesIO(case["report"].read_bytes()))
    (signature,) = reader.embedded_signatures
    assert signature.docmdp_level == MDPPerm.NO_CHANGES  # a certification signature
    assert reader.input_version >= (2, 0)


def test_pdftotext_shows_the_verdict_and_the_digests(case: dict[str, Path]) -> None:
    record = json.loads((case["findings"] / "findings.json").read_text())
    text = subprocess.run(
        [tool("pdftotext"), "-layout", str(case["report"]), "-"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    flat = "".join(text.split())
    assert f"Verdict:{record['verdict']}." in flat
    for digest in (
        record["victim"]["digest"],
        record["suspect"]["digest"],
        record["probes"]["digest"],
    ):
        assert digest in flat


def test_the_attachments_are_the_signed_evidence(case: dict[str, Path], tmp_path: Path) -> None:
    subprocess.run(
        [tool("pdfdetach"), "-saveall", "-o", str(tmp_path), str(case["report"])], check=True
    )
    assert (tmp_path / "findings.json").read_bytes() == (
        case["findings"] / "findings.json"
    ).read_bytes()
    assert (tmp_path / "findings.model.sig").read_bytes() == (
        case["findings"] / "model.sig"
    ).read_bytes()
    assert (tmp_path / "victim-fingerprint.json").is_file()
    assert (tmp_path / "victim-fingerprint.model.sig").is_file()


def test_our_verify_passes_and_says_recomputation_was_skipped(
    capsys: pytest.CaptureFixture[str], case: dict[str, Path], keys: GeneratedKeys
) -> None:
    code, out, _ = run_cli(capsys, "verify", case["report"], "--trust", keys.ca_certificate)
    assert code == 0, out
    assert out.rstrip().endswith(f"VALID: {case['report']}")
    for name in (
        "signature",
        "certificate chain",
        "coverage",
        "certification",
        "report record",
        "page text",
        "text placement",
        "text visibility",
        "drawings",
        "document",
    ):
        assert f"ok    {name}:" in out
    assert "note  recomputation skipped" in out
    code, out, _ = run_cli(
        capsys, "verify", case["report"], "--trust", keys.ca_certificate, "--json", "-"
    )
    result = json.loads(out)
    assert code == 0 and result["valid"] is True
    assert any("recomputation skipped" in note for note in result["notes"])


def test_verify_with_evidence_recomputes_every_number(
    capsys: pytest.CaptureFixture[str],
    case: dict[str, Path],
    signed: dict[str, Path],
    keys: GeneratedKeys,
) -> None:
    everything = [signed[n] for n in ("victim", "derived", "unrelated", "bert", "gpt2")]
    code, out, _ = run_cli(
        capsys, "verify", case["report"], "--trust", keys.ca_certificate, "--evidence", *everything
    )
    assert code == 0, out
    assert "ok    recomputation: every number in the findings" in out
    code, out, _ = run_cli(
        capsys, "verify", case["report"], "--trust", keys.ca_certificate,
        "--evidence", *everything[:-1],
    )  # fmt: skip
    assert code == 1 and "FAIL  recomputation: cannot recompute without" in out


def test_a_number_that_does_not_follow_from_the_fingerprints_is_caught(
    capsys: pytest.CaptureFixture[str],
    case: dict[str, Path],
    signed: dict[str, Path],
    keys: GeneratedKeys,
    signer: Signer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A signer who edits one matrix cell (not on the alignment path: the verdict still follows)
    and re-signs: only recomputation from the fingerprints sees it."""
    findings = tmp_path / "findings"
    shutil.copytree(case["findings"], findings)
    record = json.loads((findings / "findings.json").read_text())
    matrix = record["per_layer"]["matrix"]
    path = {
        (i, record["per_layer"]["layers_suspect"].index(a["layer_b"]))
        for i, a in enumerate(record["per_layer"]["alignment"])
    }
    i, j = next(
        (i, j) for i in range(len(matrix)) for j in range(len(matrix[i])) if (i, j) not in path
    )
    matrix[i][j] = round(matrix[i][j] + 0.01, 6)
    (findings / "findings.json").write_bytes(canonical_json(record))
    sign_directory(findings, signer)
    monkeypatch.setenv("REEF_KEY_PASSPHRASE", PASS)
    code, _, err = run_cli(
        capsys, "report", findings, "--out", tmp_path / "edited.pdf", "--key", keys.private_key,
        "--cert", keys.signer_certificate, "--victim", signed["victim"],
    )  # fmt: skip
    assert code == 0, err
    everything = [signed[n] for n in ("victim", "derived", "unrelated", "bert", "gpt2")]
    code, out, _ = run_cli(
        capsys, "verify", tmp_path / "edited.pdf", "--trust", keys.ca_certificate,
        "--evidence", *everything,
    )  # fmt: skip
    assert code == 1
    assert f"FAIL  recomputation: recomputed numbers differ: per_layer.matrix[{i}][{j}]" in out


def test_one_changed_byte_fails_pdfsig_pyhanko_and_verify(
    capsys: pytest.CaptureFixture[str], case: dict[str, Path], keys: GeneratedKeys, tmp_path: Path
) -> None:
    data = bytearray(case["report"].read_bytes())
    signature_at = data.rindex(b"/Contents <")  # the signature's own bytes are not signed
    position = data.index(b"stream", len(data) // 3) + 20  # inside a stream of the signed part
    assert position < signature_at
    data[position] ^= 0x01
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(bytes(data))
    out = pdfsig(broken, nss_database(tmp_path / "nss", keys.ca_certificate))
    assert "Signature is Valid." not in out, out
    assert pyhanko_validate(broken, keys.ca_certificate).returncode != 0
    code, out, _ = run_cli(capsys, "verify", broken, "--trust", keys.ca_certificate)
    assert code == 1 and "NOT VALID" in out


def test_bytes_appended_after_signing_are_caught(
    capsys: pytest.CaptureFixture[str], case: dict[str, Path], keys: GeneratedKeys, tmp_path: Path
) -> None:
    longer = tmp_path / "longer.pdf"
    longer.write_bytes(case["report"].read_bytes() + b"\n% appended\n")
    out = pdfsig(longer, nss_database(tmp_path / "nss", keys.ca_certificate))
    assert "Not total document signed" in out, out
    code, out, _ = run_cli(capsys, "verify", longer, "--trust", keys.ca_certificate)
    assert code == 1 and "FAIL  coverage" in out


def test_rendering_the_same_findings_twice_gives_identical_bytes(
    case: dict[str, Path], keys: GeneratedKeys, signer: Signer, signed: dict[str, Path]
) -> None:
    evidence = load_evidence(
        case["findings"], TrustPolicy(public_key=signer.public_key), victim=signed["victim"]
    )
    first, second = render_pdf(evidence, signer), render_pdf(evidence, signer)
    assert first == second and first.startswith(b"%PDF-2.0")
    from io import BytesIO

    from pyhanko.pdf_utils.reader import PdfFileReader

    xmp = PdfFileReader(BytesIO(first)).root["/Metadata"].get_object().data
    text = xmp.decode("utf-8")
    assert re.search(r"pdfaid:part(>|=\")4", text) and re.search(
        r"pdfaid:conformance(>|=\")F", text
    )


def test_every_template_renders_with_strict_undefined(
    case: dict[str, Path], keys: GeneratedKeys, signer: Signer
) -> None:
    evidence = load_evidence(case["findings"], TrustPolicy(public_key=signer.public_key))
    assert signer.certificate is not None
    identity = signer_identity(signer.certificate)
    html = render_html(evidence, identity)
    assert f"Verdict: {evidence.record.verdict}." in html

    class WithoutProbes(FindingsRecord):  # the templates' view of the record lacks a field
        def to_json(self) -> dict[str, Any]:
            return {k: v for k, v in super().to_json().items() if k != "probes"}

    record = evidence.record
    without = WithoutProbes(**{f.name: getattr(record, f.name) for f in fields(record)})
    broken = type(evidence)(without, evidence.findings, evidence.findings_signature)
    with pytest.raises(jinja2.UndefinedError):
        render_html(broken, identity)


# --- bad input ------------------------------------------------------------------------------


def test_findings_that_fail_their_signature_are_refused(
    capsys: pytest.CaptureFixture[str],
    case: dict[str, Path],
    keys: GeneratedKeys,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REEF_KEY_PASSPHRASE", PASS)
    findings = tmp_path / "findings"
    shutil.copytree(case["findings"], findings)
    record = json.loads((findings / "findings.json").read_text())
    (findings / "findings.json").write_bytes(canonical_json({**record, "verdict": "unrelated"}))
    code, _, err = run_cli(
        capsys, "report", findings, "--out", tmp_path / "r.pdf",
        "--key", keys.private_key, "--cert", keys.signer_certificate,
    )  # fmt: skip
    assert code == 2 and err.count("\n") == 1
    assert "refusing to render" in err and "findings.json was changed after signing" in err
    assert not (tmp_path / "r.pdf").exists() and not list(tmp_path.glob(".r.pdf.*"))
    (findings / "model.sig").unlink()
    monkeypatch.setenv("REEF_KEY_PASSPHRASE", PASS)  # the CLI reads it once and drops it
    code, _, err = run_cli(
        capsys, "report", findings, "--out", tmp_path / "r.pdf",
        "--key", keys.private_key, "--cert", keys.signer_certificate,
    )  # fmt: skip
    assert code == 2 and "are not signed" in err


def test_a_certificate_that_does_not_match_the_key_is_refused(
    capsys: pytest.CaptureFixture[str],
    case: dict[str, Path],
    keys: GeneratedKeys,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REEF_KEY_PASSPHRASE", PASS)
    other = generate_keys(tmp_path / "other", PASS.encode())
    code, _, err = run_cli(
        capsys, "report", case["findings"], "--out", tmp_path / "r.pdf",
        "--key", keys.private_key, "--cert", other.signer_certificate,
    )  # fmt: skip
    assert code == 2 and "does not match the key" in err
    monkeypatch.setenv("REEF_KEY_PASSPHRASE", PASS)
    code, _, err = run_cli(
        capsys, "report", case["findings"], "--out", tmp_path / "r.pdf", "--key", keys.private_key
    )
    assert code == 2 and "pass --cert" in err
    assert not (tmp_path / "r.pdf").exists()


def test_a_pdf_that_is_not_ours_or_not_signed_fails_verify(
    capsys: pytest.CaptureFixture[str], keys: GeneratedKeys, tmp_path: Path
) -> None:
    from weasyprint import HTML

    plain = tmp_path / "plain.pdf"
    plain.write_bytes(HTML(string="<p>hello</p>").write_pdf())
    code, out, _ = run_cli(capsys, "verify", plain, "--trust", keys.ca_certificate)
    assert code == 1 and "FAIL  pdf: the PDF carries no signature" in out
    text = tmp_path / "notes.pdf"
    text.write_text("not a pdf at all\n")
    code, out, _ = run_cli(capsys, "verify", text, "--trust", keys.ca_certificate)
    assert code == 1 and "is not a PDF file" in out


def test_a_report_from_another_ca_is_not_trusted(
    capsys: pytest.CaptureFixture[str], case: dict[str, Path], tmp_path: Path
) -> None:
    other = generate_keys(tmp_path / "other", PASS.encode())
    code, out, _ = run_cli(capsys, "verify", case["report"], "--trust", other.ca_certificate)
    assert code == 1 and "FAIL  certificate chain" in out


# --- signer certificates: one policy for evidence bundles and reports (issue 16, items 2, 8) ---


def issue_signer(keys: GeneratedKeys, flaw: str | None) -> Signer:
    """A new P-256 key with a certificate from the case's CA: fit to sign evidence (``None``),
    or with one ``flaw``."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    from reef_forensics.crypto.keys import load_certificates

    ca_key = load_signer(keys.ca_certificate.parent / "ca-key.pem", passphrase=PASS.encode())
    ca_cert = load_certificates(keys.ca_certificate)[0]
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    sub_ca = flaw == "sub-CA (CA:TRUE)"
    purposes = {
        "only serverAuth": [ExtendedKeyUsageOID.SERVER_AUTH],
        "no extended key usage": None,
    }.get(flaw or "", [ExtendedKeyUsageOID.EMAIL_PROTECTION])
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Examiner {flaw}")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=sub_ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=flaw != "no nonRepudiation",
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=sub_ca,
                crl_sign=sub_ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key), critical=False
        )
    )
    if purposes is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(purposes), critical=False)
    return Signer(private_key=key, certificate=builder.sign(ca_key.private_key, hashes.SHA256()))


@pytest.mark.parametrize(
    "flaw",
    [None, "only serverAuth", "no extended key usage", "sub-CA (CA:TRUE)", "no nonRepudiation"],
)
def test_a_report_signer_certificate_is_held_to_the_evidence_bundle_policy(
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    case: dict[str, Path],
    signed: dict[str, Path],
    keys: GeneratedKeys,
    tmp_path: Path,
    flaw: str | None,
) -> None:
    """The attack (issue 16, item 2): a certificate under the trusted CA that evidence bundles
    refuse signs a report; verify said VALID (and, without nonRepudiation, printed pyHanko's
    tracebacks). The same certificate signing findings.json was refused. Now one policy,
    `signing.chain_to_roots`, answers both, in one line, with the same reason. The fit
    certificate (no flaw) shows that the rest of the certificate is acceptable."""
    from reef_forensics.crypto.keys import load_certificates
    from reef_forensics.evidence.verify import verify_evidence

    trust = TrustPolicy(roots=tuple(load_certificates(keys.ca_certificate)))
    holder = issue_signer(keys, flaw)
    findings = tmp_path / "findings"
    shutil.copytree(case["findings"], findings)
    sign_directory(findings, holder)
    bundle = verify_evidence(findings, trust)
    evidence = load_evidence(case["findings"], trust, victim=signed["victim"])
    report = tmp_path / "report.pdf"
    report.write_bytes(sign_pdf(render_pdf(evidence, holder), holder))
    caplog.clear()
    code, out, err = run_cli(capsys, "verify", report, "--trust", keys.ca_certificate)
    assert "Traceback" not in out + err and err == "", err
    assert not [r for r in caplog.records if r.levelno >= 30], caplog.text
    if flaw is None:
        assert bundle.valid and code == 0, out
        return
    refused = {c.name: c.detail for c in bundle.checks if not c.ok}
    assert not bundle.valid and "certificate chain" in refused
    reason = refused["certificate chain"].split(": ", 1)[1]
    assert code == 1 and out.rstrip().endswith(f"NOT VALID: {report}")
    failures = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert failures == [
        f"FAIL  certificate chain: the signer's certificate is not accepted: {reason}"
    ]


# --- another machine, other versions (issue 16, item 6) -----------------------------------------


def test_a_genuine_report_verifies_where_other_renderer_versions_are_installed(
    capsys: pytest.CaptureFixture[str],
    case: dict[str, Path],
    keys: GeneratedKeys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The report prints the versions of the software that made it. verify re-rendered it with
    its own (a machine with another pyHanko found an untouched report NOT VALID); it now
    re-renders with the versions the report records. Here the verifier's pyHanko, WeasyPrint,
    matplotlib and Jinja2 report other versions than the signer's."""
    from reef_forensics.report import record as report_module

    real = report_module.metadata.version
    elsewhere = {
        "weasyprint": "61.2",
        "pyhanko": "0.29.1",
        "matplotlib": "3.8.4",
        "jinja2": "3.1.2",
    }
    made_with = f"weasyprint {real('weasyprint')}, matplotlib {real('matplotlib')}"
    monkeypatch.setattr(
        report_module.metadata, "version", lambda name: elsewhere.get(name) or real(name)
    )
    assert report_module.software_versions()["pyhanko"] == "0.29.1"
    code, out, _ = run_cli(capsys, "verify", case["report"], "--trust", keys.ca_certificate)
    assert code == 0, out
    assert "ok    report record: case REEF-" in out and f"made with {made_with}" in out
    assert "ok    page text: each of the" in out
    assert "note  lines and fills were not compared one by one" in out
    assert "this machine has weasyprint 61.2, matplotlib 3.8.4" in out
