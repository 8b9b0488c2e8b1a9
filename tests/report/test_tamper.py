"""Tampering: random single-byte changes to signed fingerprints, signed findings and signed PDF
reports, every one of which `verify` must catch.

A change XORs one byte, at a random position of a random file, with a random nonzero value. The
changes come from one seeded generator (`SEED`), so every run makes the same ones. A change is
detected when verify's answer is "not valid", or when verify refuses the input with a
`ReefError` (the CLI's exit 1 or 2); any other exception fails the test. Each kind of evidence
is verified under the trust it was signed for, both kinds where both apply: bundles that carry
a certificate under ``--trust CA``, bare-key bundles under ``--key``, and the report, whose
signature binds its certificate, under either. (A bundle's certificate is not itself signed:
DSSE signs the statement. Under ``--key`` it must parse and hold the trusted key, and a note says
its chain was not checked; a byte changed elsewhere inside it, in its serial number or its CA's
signature, is caught only under ``--trust``, which validates it.)

All 1,000 changes (`COUNTS`) take seconds, so every run makes them all; a one-line summary goes
to stdout (``pytest -s``).
"""

from __future__ import annotations

import copy
import json
import random
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reef_forensics.analysis.findings import FINDINGS_FILE
from reef_forensics.cli.main import main
from reef_forensics.crypto.bundle import sign_directory
from reef_forensics.crypto.keys import Signer, load_certificates, load_public_key, load_signer
from reef_forensics.crypto.results import TrustPolicy, VerificationResult
from reef_forensics.digests import canonical_json
from reef_forensics.errors import ReefError
from reef_forensics.evidence.verify import verify_evidence
from reef_forensics.files import parse_json
from reef_forensics.formats.findings_record import FindingsRecord
from reef_forensics.report.pdf_signing import sign_pdf
from reef_forensics.report.record import (
    ATTACHED_FINDINGS,
    ATTACHED_FINDINGS_SIGNATURE,
    ATTACHED_REPORT_RECORD,
    ATTACHED_VICTIM_MANIFEST,
    ATTACHED_VICTIM_SIGNATURE,
    Evidence,
)
from reef_forensics.report.render import pdf_from_html, render_html, signer_identity
from reef_forensics.report.verification import verify_report
from tests.conftest import SIGNED_CASE_PASSPHRASE as CASE_PASSPHRASE
from tests.conftest import SignedCase

SEED = 2026
#: Changes per kind of evidence.
COUNTS = {"fingerprint": 350, "findings": 350, "report": 300}


@dataclass(frozen=True)
class Target:
    """One piece of signed evidence: its files, and how verify checks it."""

    kind: str
    label: str
    files: tuple[Path, ...]
    verify: Callable[[], VerificationResult]


@dataclass(frozen=True)
class Change:
    target: Target
    file: Path
    position: int
    mask: int

    def describe(self) -> str:
        return f"{self.target.label}/{self.file.name} byte {self.position} ^ {self.mask:#04x}"


def trust_policies(case: SignedCase) -> dict[str, TrustPolicy]:
    return {
        "ca": TrustPolicy(roots=tuple(load_certificates(case.keys.ca_certificate))),
        "key": TrustPolicy(public_key=load_public_key(case.keys.public_key)),
    }


def directory_target(kind: str, label: str, folder: Path, trust: TrustPolicy) -> Target:
    files = tuple(sorted(p for p in folder.iterdir() if p.is_file()))
    return Target(kind, label, files, lambda: verify_evidence(folder, trust))


@pytest.fixture(scope="module")
def targets(tmp_path_factory: pytest.TempPathFactory, signed_case: SignedCase) -> list[Target]:
    """Working copies of the session's signed evidence (changed in place, then restored): each
    fingerprint and the findings as signed with the certificate, the victim fingerprint and the
    findings signed again with the bare key, and the report under each trust."""
    root = tmp_path_factory.mktemp("tamper")
    trust = trust_policies(signed_case)
    bare = Signer(private_key=signed_case.signer.private_key)
    out = []
    sources = {**signed_case.fingerprints, "findings": signed_case.findings}
    for name, source in sources.items():
        kind = "findings" if name == "findings" else "fingerprint"
        shutil.copytree(source, root / f"{name}-cert")
        out.append(directory_target(kind, f"{name}-cert", root / f"{name}-cert", trust["ca"]))
        if name in ("victim", "findings"):
            shutil.copytree(source, root / f"{name}-key")
            sign_directory(root / f"{name}-key", bare)
            out.append(directory_target(kind, f"{name}-key", root / f"{name}-key", trust["key"]))
    report = root / "report.pdf"
    shutil.copyfile(signed_case.report, report)
    for name, policy in trust.items():
        out.append(
            Target("report", f"report-{name}", (report,), lambda p=policy: verify_report(report, p))
        )
    return out


def plan(targets: list[Target], counts: dict[str, int], seed: int = SEED) -> list[Change]:
    """The changes, drawn from one seeded generator: a target of the kind, one of its files, a
    position in it, a nonzero XOR mask."""
    rng = random.Random(seed)
    changes = []
    for kind, count in counts.items():
        of_kind = [t for t in targets if t.kind == kind]
        for _ in range(count):
            target = rng.choice(of_kind)
            file = rng.choice(target.files)
            size = file.stat().st_size
            changes.append(Change(target, file, rng.randrange(size), rng.randrange(1, 256)))
    return changes


def detected(target: Target) -> bool:
    """Whether verify rejects the target as it now is (an invalid result or a refusal)."""
    try:
        return not target.verify().valid
    except ReefError:
        return True


def apply_and_verify(change: Change) -> bool:
    """Make the change, ask verify, and put the original byte back whatever happens."""
    original = change.file.read_bytes()
    changed = bytearray(original)
    changed[change.position] ^= change.mask
    try:
        change.file.write_bytes(bytes(changed))
        return detected(change.target)
    finally:
        change.file.write_bytes(original)


def test_every_single_byte_change_to_signed_evidence_is_detected(targets: list[Target]) -> None:
    for target in targets:  # untouched, each verifies: a rejection below is the change's doing
        assert not detected(target), f"{target.label} does not verify before any change"
    changes = plan(targets, COUNTS)
    started = time.perf_counter()
    missed = [c.describe() for c in changes if not apply_and_verify(c)]
    seconds = time.perf_counter() - started
    by_kind = ", ".join(f"{n} {kind}" for kind, n in COUNTS.items())
    print(
        f"\ntamper: {len(changes)} single-byte changes ({by_kind}; seed {SEED}): "
        f"{len(changes) - len(missed)} detected, {len(missed)} missed, {seconds:.1f} s"
    )
    assert missed == []
    for target in targets:  # every change was undone
        assert not detected(target), f"{target.label} was not restored"


# --- the one part of a signed PDF its signature cannot cover -----------------------------------


def signature_gap(pdf: bytes) -> tuple[int, int]:
    """Where the signature's hex string starts (after ``<``) and where its CMS blob's hex ends."""
    from asn1crypto import cms

    found = re.search(rb"/ByteRange\s*\[\s*0\s+(\d+)\s+(\d+)", pdf)
    assert found is not None
    start, end = int(found[1]) + 1, int(found[2]) - 1
    blob = bytes.fromhex(pdf[start:end].decode("ascii"))
    return start, start + 2 * len(cms.ContentInfo.load(blob).dump())


@pytest.mark.parametrize(
    "spelling", ["a padding zero made 1", "a padding zero made a space", "a hex letter's case"]
)
def test_the_signature_hex_string_has_exactly_one_spelling(
    spelling: str, signed_case: SignedCase, tmp_path: Path
) -> None:
    """PDF readers take ``A`` and ``a`` for one digit, skip white space, and ignore what follows
    the CMS blob; pyHanko then finds the signature intact. The report must still fail."""
    pdf = bytearray(signed_case.report.read_bytes())
    start, blob_end = signature_gap(bytes(pdf))
    if spelling == "a hex letter's case":
        position = next(i for i in range(start, blob_end) if pdf[i] in b"ABCDEFabcdef")
        pdf[position] ^= 0x20
    else:
        pdf[blob_end + 8] ^= 0x01 if spelling == "a padding zero made 1" else 0x10
    changed = tmp_path / "changed.pdf"
    changed.write_bytes(bytes(pdf))
    trust = trust_policies(signed_case)["ca"]
    assert verify_report(signed_case.report, trust).valid
    result = verify_report(changed, trust)
    failed = {check.name for check in result.checks if not check.ok}
    assert not result.valid and failed == {"signature bytes"}, failed


# --- numbers written as text in re-signed findings (issue 16, item 8c) --------------------------


def numeric_leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path of every number in a JSON value (booleans are not numbers)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from numeric_leaves(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from numeric_leaves(item, (*path, index))
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield path


def pattern(path: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple("[i]" if isinstance(part, int) else part for part in path)


def as_text(record: dict[str, Any], path: tuple[Any, ...]) -> dict[str, Any]:
    """A copy of ``record`` with the number at ``path`` written as a string of itself."""
    changed = copy.deepcopy(record)
    parent = changed
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = str(parent[path[-1]])
    return changed


def resigned(folder: Path, record: dict[str, Any], signer: Signer) -> Path:
    """What a dishonest operator holding the key writes: the record, canonical, signed again."""
    (folder / FINDINGS_FILE).write_bytes(canonical_json(record))
    sign_directory(folder, signer)
    return folder


def test_a_block_score_written_as_text_in_resigned_findings_is_not_valid(
    signed_case: SignedCase, tmp_path: Path
) -> None:
    """The attack: a non-extreme block's score written as the string "0.5" and the findings
    signed again. The verdict check read it with float(), which takes a string, so the record
    verified without --evidence; now a number where the record holds text fails."""
    record = json.loads((signed_case.findings / FINDINGS_FILE).read_text())
    extreme = record["tests"]["layer"]["layer"]
    index, row = next(
        (i, a)
        for i, a in enumerate(record["per_layer"]["alignment"])
        if a["layer_a"] not in ("embeddings", extreme) and a["score"] is not None
    )
    record["per_layer"]["alignment"][index]["score"] = str(row["score"])
    folder = tmp_path / "findings"
    shutil.copytree(signed_case.findings, folder)
    resigned(folder, record, signed_case.signer)
    result = verify_evidence(folder, trust_policies(signed_case)["ca"])
    failed = {check.name: check.detail for check in result.checks if not check.ok}
    assert not result.valid and set(failed) == {"findings consistency"}, failed
    assert f"per_layer.alignment[{index}].score" in failed["findings consistency"]


def test_a_field_the_record_does_not_have_in_resigned_findings_is_not_valid(
    signed_case: SignedCase, tmp_path: Path
) -> None:
    """The attack: a field the findings format does not have (``"verdict_note": "derived"``
    beside the suspect) added and the findings signed again. Nothing recomputes such a field,
    so a VALID would vouch for words the tool never wrote; the typed record refuses it. Control:
    the record re-signed unchanged verifies."""
    record = json.loads((signed_case.findings / FINDINGS_FILE).read_text())
    folder = tmp_path / "findings"
    shutil.copytree(signed_case.findings, folder)
    trust = trust_policies(signed_case)["ca"]
    assert verify_evidence(resigned(folder, record, signed_case.signer), trust).valid
    record["suspect"]["verdict_note"] = "derived from the victim, confirmed"
    result = verify_evidence(resigned(folder, record, signed_case.signer), trust)
    failed = {check.name: check.detail for check in result.checks if not check.ok}
    assert not result.valid and set(failed) == {"findings consistency"}, failed
    assert "suspect.verdict_note is not a field" in failed["findings consistency"]


def test_format_3_numbers_in_resigned_format_2_findings_are_not_valid(
    signed_case: SignedCase, tmp_path: Path
) -> None:
    """The attack: released format-2 findings (which no neuron-matching test made) given a
    format-3 combined p of 1e-250 and a reference's units test, and signed again. Nothing of
    format 2 checks those fields, and the CLI would print the 1e-250; the record refuses
    them. Control: the released record signed again unchanged verifies."""
    golden = Path(__file__).parent.parent / "golden" / "cab7916" / "findings"
    record = json.loads((golden / FINDINGS_FILE).read_text())
    assert record["format_version"] == 2
    folder = tmp_path / "findings"
    shutil.copytree(golden, folder)
    trust = trust_policies(signed_case)["ca"]
    assert verify_evidence(resigned(folder, record, signed_case.signer), trust).valid
    for field, edit in [
        ("log10_p_value", lambda r: r.update(log10_p_value=-250.0)),
        ("references[0].units", lambda r: r["references"][0].update(units={"skipped": None})),
    ]:
        forged = json.loads(json.dumps(record))
        edit(forged)
        result = verify_evidence(resigned(folder, forged, signed_case.signer), trust)
        failed = {check.name: check.detail for check in result.checks if not check.ok}
        assert not result.valid and set(failed) == {"findings consistency"}, failed
        assert f"{field} is not a field of findings format 2" in failed["findings consistency"]


def test_every_number_of_the_findings_written_as_text_is_not_valid(
    signed_case: SignedCase, tmp_path: Path
) -> None:
    """Each kind of number in the record (one per field, list positions alike), written as text
    and signed again: not one verifies. Control: the record re-signed unchanged does."""
    record = json.loads((signed_case.findings / FINDINGS_FILE).read_text())
    folder = tmp_path / "findings"
    shutil.copytree(signed_case.findings, folder)
    trust = trust_policies(signed_case)["key"]
    assert verify_evidence(resigned(folder, record, signed_case.signer), trust).valid
    kinds: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for path in numeric_leaves(record):
        if path[0] != "extraction":  # the victim fingerprint's own settings, copied as they are
            kinds.setdefault(pattern(path), path)
    assert len(kinds) >= 30, sorted(kinds)
    passed = [
        pattern(path)
        for path in kinds.values()
        if verify_evidence(resigned(folder, as_text(record, path), signed_case.signer), trust).valid
    ]
    assert passed == []


# --- forged reports: pages that say what the signed findings do not (issue 16, item 1) ----------
#
# The attacker holds the report's signing key (or any certificate the CA issued) and the genuine
# report. They take its attachments, render the pages with the project's own code, change what
# the pages say, and sign. Every attachment is the genuine signed evidence, so the findings
# verify and, given the fingerprints, recompute; what gives them away is that the pages are not
# what the templates make of that evidence.


def attached_evidence(report: Path) -> Evidence:
    """The evidence a signed report carries, taken out as anyone can (pypdf)."""
    from pypdf import PdfReader

    files = {name: data[0] for name, data in PdfReader(report).attachments.items()}
    return Evidence(
        FindingsRecord.from_json(parse_json(files[ATTACHED_FINDINGS])),
        files[ATTACHED_FINDINGS],
        files[ATTACHED_FINDINGS_SIGNATURE],
        files.get(ATTACHED_VICTIM_MANIFEST),
        files.get(ATTACHED_VICTIM_SIGNATURE),
        report=files[ATTACHED_REPORT_RECORD],
    )


def forged_report(
    case: SignedCase, edit: Callable[[str], str], target: Path, signer: Signer | None = None
) -> Path:
    """The genuine report's pages, rendered from its own attachments with ``edit`` applied to
    the HTML, then signed (by the report's signer unless another is given)."""
    signer = signer or case.signer
    assert signer.certificate is not None
    evidence = attached_evidence(case.report)
    html = render_html(evidence, signer_identity(signer.certificate))
    forged = edit(html)
    assert forged != html, "the edit changed nothing"
    target.write_bytes(sign_pdf(pdf_from_html(forged, evidence), signer))
    return target


def another_certificate(case: SignedCase) -> Signer:
    """A fit signer certificate for a new key, issued by the same CA."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca = load_signer(case.keys.ca_certificate.parent / "ca-key.pem", passphrase=CASE_PASSPHRASE)
    ca_name = load_certificates(case.keys.ca_certificate)[0].subject
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Another examiner")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, True, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False
        )
        .sign(ca.private_key, hashes.SHA256())
    )
    return Signer(private_key=key, certificate=certificate)


def verify_cli(
    capsys: pytest.CaptureFixture[str], report: Path, case: SignedCase, *extra: object
) -> tuple[int, str]:
    code = main(["verify", str(report), "--trust", str(case.keys.ca_certificate), *map(str, extra)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return code, captured.out


def failures(out: str) -> dict[str, str]:
    return dict(
        line.removeprefix("FAIL  ").split(": ", 1)
        for line in out.splitlines()
        if line[:4] == "FAIL"
    )


def the_verdict(html: str) -> str:
    assert html.count("Verdict: derived.") == 1
    return html.replace("Verdict: derived.", "Verdict: unrelated.")


def the_suspect(html: str) -> str:
    found = re.search(r"(<th>Suspect</th><td>)([^<]+)(</td>)", html)
    assert found is not None
    return html.replace(found[0], found[1] + "an independently trained model" + found[3], 1)


def the_score_with_the_numbers_hidden(html: str) -> str:
    """The printed score changed; every number the page printed put back at the end, in white
    2-pixel text, where the old check (numbers in order, anywhere) found them."""
    score = re.search(r'<td class="num">(\d\.\d{3})</td>', html)
    assert score is not None
    numbers = " ".join(re.findall(r"\d+\.\d+", re.sub(r"<[^>]+>", " ", html)))
    changed = html.replace(score[0], '<td class="num">0.123</td>', 1)
    return changed.replace("</body>", f'<p style="color:#fff;font-size:2px">{numbers}</p></body>')


@pytest.mark.parametrize(
    ("edit", "signed_by", "shown"),
    [
        (the_verdict, "the report's key", 'page 1: it shows "Verdict: unrelated.'),
        (the_verdict, "another certificate of the CA", 'page 1: it shows "Verdict: unrelated.'),
        (the_suspect, "the report's key", "an independently trained model"),
        (the_score_with_the_numbers_hidden, "the report's key", "0.123"),
    ],
    ids=["verdict", "verdict-other-certificate", "suspect-name", "score-numbers-in-white"],
)
def test_a_report_whose_pages_contradict_its_signed_findings_is_not_valid(
    capsys: pytest.CaptureFixture[str],
    signed_case: SignedCase,
    tmp_path: Path,
    edit: Callable[[str], str],
    signed_by: str,
    shown: str,
) -> None:
    """The attack of issue 16, item 1: verify said VALID, even with --evidence, because it only
    looked for the findings' numbers somewhere in the text. Now the pages are compared with a
    re-render of the attached findings: the attachments still verify and recompute, the page
    text does not match, and verify names the page and the text."""
    signer = another_certificate(signed_case) if signed_by != "the report's key" else None
    forged = forged_report(signed_case, edit, tmp_path / "forged.pdf", signer)
    everything = list(signed_case.fingerprints.values())
    code, out = verify_cli(capsys, forged, signed_case, "--evidence", *everything)
    assert code == 1 and out.rstrip().endswith(f"NOT VALID: {forged}"), out
    assert "ok    recomputation: every number in the findings" in out  # genuine evidence
    assert "ok    certificate chain:" in out and "ok    attached findings: signature:" in out
    failed = failures(out)
    assert set(failed) == {"page text"}, failed
    assert (
        shown in failed["page text"] and "where the attached findings give" in failed["page text"]
    )


@pytest.mark.parametrize(
    ("style", "caught_by"),
    [
        ("color: #fff", "text visibility"),
        ("font-size: 2px", "text placement"),
        ("position: absolute; left: -400mm", "page text"),  # read elsewhere: out of order
    ],
    ids=["white", "2-pixel", "off-the-page"],
)
def test_the_true_verdict_hidden_under_a_picture_of_another_is_not_valid(
    capsys: pytest.CaptureFixture[str],
    signed_case: SignedCase,
    tmp_path: Path,
    style: str,
    caught_by: str,
) -> None:
    """The text the templates make stays on the page, but unreadable (white, 2 pixels high, or
    outside the page), and a picture of another verdict is put where it was: a text extractor
    finds the true text. Now how each glyph is drawn, and every picture, is compared too."""
    import base64
    import io

    from PIL import Image, ImageDraw

    picture = Image.new("RGB", (600, 40), "white")
    ImageDraw.Draw(picture).text((4, 4), "Verdict: unrelated.", fill="black", font_size=28)
    png = io.BytesIO()
    picture.save(png, "PNG")
    uri = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode("ascii")

    def hide(html: str) -> str:
        found = re.search(r'<div class="verdict derived">Verdict: derived\.', html)
        assert found is not None
        return html.replace(
            found[0],
            f'<img src="{uri}" style="position: absolute; width: 120mm">'
            + found[0].replace('">', f'" style="{style}">', 1),
            1,
        )

    forged = forged_report(signed_case, hide, tmp_path / "forged.pdf")
    code, out = verify_cli(capsys, forged, signed_case)
    assert code == 1, out
    failed = failures(out)
    assert caught_by in failed and failed[caught_by].startswith("page 1: "), failed
    assert "drawings" in failed and failed["drawings"].startswith("page 1: "), failed


def test_a_font_whose_glyphs_were_swapped_is_not_valid(
    capsys: pytest.CaptureFixture[str], signed_case: SignedCase, tmp_path: Path
) -> None:
    """The text stays what the templates make, but the embedded bold font draws "u" where its
    character map says "d" (and the reverse): a text extractor reads the true text, a reader
    sees other words. Each glyph's outline is compared with the re-render's."""
    import io

    from fontTools.ttLib import TTFont
    from pypdf import PdfReader, PdfWriter

    from reef_forensics.report.pdf_fonts import _to_unicode
    from reef_forensics.report.render import render_report

    evidence = attached_evidence(signed_case.report)
    unsigned = render_report(evidence, signer_identity(signer_case_certificate(signed_case)))
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(unsigned)))
    swapped = 0
    resources: Any = writer.pages[0]["/Resources"]
    for reference in resources["/Font"].values():
        font = reference.get_object()
        if not str(font["/BaseFont"]).endswith("+DejaVu-Sans-Bold"):
            continue
        codes = {text: code for code, text in _to_unicode(font["/ToUnicode"].get_data()).items()}
        program = font["/DescendantFonts"][0].get_object()["/FontDescriptor"]["/FontFile2"]
        program = program.get_object()
        outlines = TTFont(io.BytesIO(program.get_data()))
        order, glyf = outlines.getGlyphOrder(), outlines["glyf"]
        d, u = order[codes["d"]], order[codes["u"]]
        glyf[d], glyf[u] = glyf[u], glyf[d]
        rewritten = io.BytesIO()
        outlines.save(rewritten)
        program.set_data(rewritten.getvalue())
        swapped += 1
    assert swapped == 1
    altered = io.BytesIO()
    writer.write(altered)
    forged = tmp_path / "forged.pdf"
    forged.write_bytes(sign_pdf(altered.getvalue(), signed_case.signer))
    code, out = verify_cli(capsys, forged, signed_case)
    failed = failures(out)
    assert code == 1 and "text placement" in failed, out
    assert (
        "is drawn with another shape than the font gives that character" in failed["text placement"]
    )
    assert "page text" not in failed  # the text itself is the templates'


def test_an_annotation_over_the_verdict_is_not_valid(
    capsys: pytest.CaptureFixture[str], signed_case: SignedCase, tmp_path: Path
) -> None:
    """A viewer draws annotations over the page; a text extractor does not read them."""
    import io

    from pypdf import PdfReader, PdfWriter
    from pypdf.annotations import FreeText

    from reef_forensics.report.render import render_report

    evidence = attached_evidence(signed_case.report)
    unsigned = render_report(evidence, signer_identity(signer_case_certificate(signed_case)))
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(unsigned)))
    writer.add_annotation(
        0, FreeText(text="Verdict: unrelated.", rect=(50, 620, 400, 660), font_size="20pt")
    )
    altered = io.BytesIO()
    writer.write(altered)
    forged = tmp_path / "forged.pdf"
    forged.write_bytes(sign_pdf(altered.getvalue(), signed_case.signer))
    code, out = verify_cli(capsys, forged, signed_case)
    failed = failures(out)
    assert code == 1 and "document" in failed, out
    assert "page 1 carries a FreeText annotation the templates do not make" in failed["document"]
    assert {"page text", "text placement", "text visibility", "drawings"}.isdisjoint(failed)


def signer_case_certificate(case: SignedCase) -> Any:
    assert case.signer.certificate is not None
    return case.signer.certificate


# --- evidence swapped between verification and recomputation (issue 16, item 3) ------------------


def forged_case(case: SignedCase, root: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Copies of the signed evidence, and findings forged from a lie: the suspect's
    representations replaced by the victim's own (its manifest, digest and signature untouched),
    checked, signed and reported on as `check --report` would. Returns the evidence folders, the
    forged representations file and the report."""
    import dataclasses

    import reef_forensics.formats.fingerprint as fingerprint_module
    from reef_forensics.analysis.check_paths import check_paths
    from reef_forensics.formats.fingerprint import REPRESENTATIONS
    from reef_forensics.report.render import write_report

    evidence = {
        name: Path(shutil.copytree(path, root / "evidence" / name))
        for name, path in case.fingerprints.items()
    }
    suspect = evidence["derived"]
    forged = Path(shutil.copytree(suspect, root / "forged-view"))
    shutil.copyfile(evidence["victim"] / REPRESENTATIONS, forged / REPRESENTATIONS)
    real_read = fingerprint_module.read_fingerprint

    def the_lie(path: Any, **options: Any) -> Any:
        read = real_read(path, **options)
        return dataclasses.replace(read, path=forged) if Path(path) == suspect else read

    with monkeypatch.context() as patched:
        patched.setattr(fingerprint_module, "read_fingerprint", the_lie)
        findings = check_paths(
            evidence["victim"],
            suspect,
            [evidence[name] for name in ("unrelated", "bert", "gpt2")],
            workdir=root / "work",
        )
    folder = findings.write(root / "findings", signer=case.signer).parent
    report = write_report(folder, root / "report.pdf", case.signer, victim=evidence["victim"])
    return {"evidence": evidence, "forged": forged / REPRESENTATIONS, "report": report}


def test_a_fingerprint_swapped_after_verification_is_not_recomputed_on(
    signed_case: SignedCase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack: findings forged from a suspect whose representations were the victim's, and
    a process that swaps the suspect's representations.safetensors for that forged file after
    `verify --evidence` has verified the folder and before recomputation reads it. Recomputation
    then agreed with the forgery: VALID. Now each file is read once, and the signature and the
    recomputation both rest on those bytes: NOT VALID, however late the swap."""
    import reef_forensics.evidence.recompute as recompute_module
    from reef_forensics.formats.fingerprint import REPRESENTATIONS

    case = forged_case(signed_case, tmp_path, monkeypatch)
    folders = [case["evidence"][n] for n in ("victim", "derived", "unrelated", "bert", "gpt2")]
    trust = trust_policies(signed_case)["ca"]
    untouched = verify_report(case["report"], trust, folders)  # control: the forgery shows
    failed = {c.name for c in untouched.checks if not c.ok}
    assert not untouched.valid and failed == {"recomputation"}, failed

    target = case["evidence"]["derived"] / REPRESENTATIONS
    genuine = target.read_bytes()
    real_recompute = recompute_module.recompute
    swaps = []

    def swap_then_recompute(*args: Any, **kwargs: Any) -> Any:
        """The attacker's process, at the point between verification and recomputation."""
        swapped = target.with_name(".swap")
        shutil.copyfile(case["forged"], swapped)
        swapped.replace(target)
        swaps.append(target)
        return real_recompute(*args, **kwargs)

    monkeypatch.setattr(recompute_module, "recompute", swap_then_recompute)
    try:
        attacked = verify_report(case["report"], trust, folders)
    finally:
        target.write_bytes(genuine)
    assert swaps == [target]  # the swap happened, after every folder was verified
    failed = {c.name for c in attacked.checks if not c.ok}
    assert not attacked.valid and failed == {"recomputation"}, failed
    detail = next(c.detail for c in attacked.checks if c.name == "recomputation")
    assert detail.startswith("recomputed numbers differ")


def test_a_snapshot_fingerprint_computes_on_the_bytes_it_verified(
    signed_case: SignedCase, tmp_path: Path
) -> None:
    """`read_fingerprint(snapshot=True)` holds the bytes it hashed: a file replaced on disk
    afterwards changes nothing it computes (a fingerprint read from disk follows the file)."""
    from reef_forensics.evidence.verify import verify_fingerprint_snapshot
    from reef_forensics.formats.fingerprint import REPRESENTATIONS, read_fingerprint

    folder = Path(shutil.copytree(signed_case.fingerprints["derived"], tmp_path / "fp"))
    checked, held = verify_fingerprint_snapshot(folder, trust_policies(signed_case)["ca"])
    assert checked.valid and held is not None
    assert held.snapshot is not None and set(held.snapshot) >= {"fingerprint.json", REPRESENTATIONS}
    lazy = read_fingerprint(folder)
    before = {name: values.copy() for name, values in held.iter_layers()}
    shutil.copyfile(signed_case.fingerprints["victim"] / REPRESENTATIONS, folder / REPRESENTATIONS)
    name = held.layers[-1]
    assert (held.layer(name) == before[name]).all()
    assert not (lazy.layer(name) == before[name]).all()
    checked, held = verify_fingerprint_snapshot(folder, trust_policies(signed_case)["ca"])
    assert not checked.valid and held is None
