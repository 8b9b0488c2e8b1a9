"""Timestamped reports (issue 17): `--tsa` makes a report PAdES B-T, `--tsa` with `--crl` B-LTA.

A real RFC 3161 TSA answers on loopback (tests/tsa.py); the reports are signed by pyHanko as the
product signs them, and checked by poppler's pdfsig, pyHanko's validator (offline), openssl ts
and our verify, which names the timestamp's time and authority."""

from __future__ import annotations

import io
import json
import re
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from reef_forensics.cli.main import main
from reef_forensics.mlops.config import load_config
from tests.conftest import SIGNED_CASE_PASSPHRASE, SignedCase
from tests.report.test_report import nss_database, pdfsig, pyhanko_validate
from tests.tsa import Authority, issue_tsa, load_ca, new_ca, serve_tsa, write_crl


@pytest.fixture(scope="module")
def ca(signed_case: SignedCase) -> Authority:
    keys = signed_case.keys
    return load_ca(
        keys.ca_certificate, keys.private_key.parent / "ca-key.pem", SIGNED_CASE_PASSPHRASE
    )


@pytest.fixture(scope="module")
def tsa_url(ca: Authority):  # type: ignore[no-untyped-def]
    with serve_tsa(issue_tsa(ca)) as url:
        yield url


def make_report(
    case: SignedCase, out: Path, *extra: object, capsys: pytest.CaptureFixture[str] | None = None
) -> tuple[int, str]:
    mp = pytest.MonkeyPatch()
    mp.setenv("REEF_KEY_PASSPHRASE", SIGNED_CASE_PASSPHRASE.decode())
    try:
        code = main(
            [
                "report", str(case.findings), "--out", str(out), "--victim",
                str(case.fingerprints["victim"]), "--key", str(case.keys.private_key),
                "--cert", str(case.keys.signer_certificate), *map(str, extra),
            ]
        )  # fmt: skip
    finally:
        mp.undo()
    return code, capsys.readouterr().err if capsys else ""


def verify_json(report: Path, trust: Path, capsys: pytest.CaptureFixture[str]) -> dict:  # type: ignore[type-arg]
    capsys.readouterr()
    code = main(["verify", str(report), "--trust", str(trust), "--json", "-"])
    found = json.loads(capsys.readouterr().out)
    assert code == (0 if found["valid"] else 1)
    return found  # type: ignore[no-any-return]


def checks(found: dict) -> dict[str, tuple[bool, str]]:  # type: ignore[type-arg]
    return {c["name"]: (c["ok"], c["detail"]) for c in found["checks"]}


@pytest.fixture(scope="module")
def bt_report(
    signed_case: SignedCase, tsa_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("bt") / "report.pdf"
    assert make_report(signed_case, out, "--tsa", tsa_url)[0] == 0
    return out


@pytest.fixture(scope="module")
def lta_report(
    signed_case: SignedCase, ca: Authority, tsa_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    root = tmp_path_factory.mktemp("lta")
    crl = write_crl(ca, root / "ca.crl")
    out = root / "report.pdf"
    code, _ = make_report(
        signed_case, out, "--tsa", tsa_url, "--crl", crl, "--chain", signed_case.keys.ca_certificate
    )
    assert code == 0
    return out


def test_a_b_t_report_carries_a_trusted_signature_timestamp(
    bt_report: Path, signed_case: SignedCase, capsys: pytest.CaptureFixture[str]
) -> None:
    before = datetime.now(timezone.utc) - timedelta(minutes=10)
    found = verify_json(bt_report, signed_case.keys.ca_certificate, capsys)
    assert found["valid"], found
    (stamp,) = found["time"]["timestamps"]
    assert stamp["kind"] == "signature" and stamp["trusted"] and stamp["intact"]
    assert stamp["authority"] == "CN=reef test timestamp authority"
    when = datetime.strptime(stamp["time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert before < when <= datetime.now(timezone.utc)
    assert found["time"]["source"] == "RFC 3161 timestamp authority"
    assert not any("signer's own clock" in n for n in found["notes"])
    # the text output names the time and the authority too
    assert main(["verify", str(bt_report), "--trust", str(signed_case.keys.ca_certificate)]) == 0
    out = capsys.readouterr().out
    assert (
        f"ok    signature timestamp: RFC 3161 signature timestamp: {stamp['time']} by CN=reef test timestamp authority"
        in out
    )
    assert "VALID" in out


def test_pdfsig_and_pyhankos_validator_accept_the_b_t_report(
    bt_report: Path, signed_case: SignedCase, tmp_path: Path
) -> None:
    out = pdfsig(bt_report, nss_database(tmp_path / "nss", signed_case.keys.ca_certificate))
    assert "Signature is Valid." in out and "Certificate is Trusted." in out, out
    assert "Total document signed" in out, out
    done = pyhanko_validate(bt_report, signed_case.keys.ca_certificate)
    assert done.returncode == 0, done.stdout + done.stderr
    for line in (
        "This timestamp is backed by a time stamping authority.",
        "The timestamp token is cryptographically sound.",
        "The TSA certificate is trusted.",
        "The signature is judged VALID.",
    ):
        assert line in done.stdout, done.stdout


def test_a_b_lta_report_embeds_validation_data_and_a_document_timestamp(
    lta_report: Path, signed_case: SignedCase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pyhanko.pdf_utils.reader import PdfFileReader

    reader = PdfFileReader(io.BytesIO(lta_report.read_bytes()))
    kinds = [s.sig_object_type for s in reader.embedded_signatures]
    assert kinds == ["/Sig", "/DocTimeStamp"]
    dss = reader.root["/DSS"]
    assert len(dss["/CRLs"]) == 1 and len(dss["/Certs"]) >= 3  # signer, CA, TSA
    found = verify_json(lta_report, signed_case.keys.ca_certificate, capsys)
    assert found["valid"], found
    assert [t["kind"] for t in found["time"]["timestamps"]] == ["signature", "document"]
    assert all(t["trusted"] for t in found["time"]["timestamps"])
    assert "the last of which covers the whole file" in checks(found)["coverage"][1]
    out = pdfsig(lta_report, nss_database(tmp_path / "nss", signed_case.keys.ca_certificate))
    first, second = out.split("Signature #2:")
    assert "Signature is Valid." in first and "Certificate is Trusted." in first, out
    assert "Total document signed" in second and "REEF-Timestamp" in second, out
    done = pyhanko_validate(lta_report, signed_case.keys.ca_certificate)
    assert done.returncode == 0 and "The signature is judged VALID." in done.stdout, done.stdout
    assert "All modifications relate to signature maintenance" in done.stdout


def test_openssl_ts_verifies_the_document_timestamp(
    lta_report: Path, signed_case: SignedCase, tmp_path: Path
) -> None:
    """docs/verify.md section 10, as written: pdfsig -dump, the signed ranges, openssl ts."""
    text = (Path(__file__).parents[2] / "docs" / "verify.md").read_text()
    (steps,) = re.findall(r"```sh-timestamp\n(.*?)```", text, re.S)
    env = {
        "REPORT": str(lta_report),
        "TSA_CA": str(signed_case.keys.ca_certificate),
        "WORK": str(tmp_path),
        "PATH": "/usr/local/bin:/usr/bin:/bin",
    }
    script = "set -euo pipefail\n" + steps
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and "Verification: OK" in done.stdout, done.stdout + done.stderr
    assert "TSA: DirName:/CN=reef test timestamp authority" in done.stdout
    # one byte of the file changed, inside the timestamped ranges: openssl refuses
    data = bytearray(lta_report.read_bytes())
    data[200] ^= 0x01
    (broken := tmp_path / "broken.pdf").write_bytes(bytes(data))
    (work := tmp_path / "again").mkdir()
    refused = subprocess.run(
        ["bash", "-c", script], env={**env, "REPORT": str(broken), "WORK": str(work)},
        capture_output=True, text=True,
    )  # fmt: skip
    assert refused.returncode != 0 and "Verification: OK" not in refused.stdout


def _tamper_token_time(report: Path, out: Path) -> None:
    """Move the signature timestamp's genTime by a year, in place (same length, valid DER)."""
    from asn1crypto import cms

    data = bytearray(report.read_bytes())
    contents = re.search(rb"/Contents\s*<([0-9A-Fa-f]+)>", bytes(data))
    assert contents
    blob = bytes.fromhex(contents[1].decode())
    signed = cms.ContentInfo.load(blob)["content"]
    (token,) = [
        a["values"][0]
        for a in signed["signer_infos"][0]["unsigned_attrs"]
        if a["type"].native == "signature_time_stamp_token"
    ]
    gen_time = token["content"]["encap_content_info"]["content"].parsed["gen_time"].contents
    assert blob.count(gen_time) == 1
    year = gen_time[:4]
    forged = blob.replace(gen_time, str(int(year) - 1).encode() + gen_time[4:])
    hexed = forged.hex().upper() if contents[1].isupper() else forged.hex()
    data[contents.start(1) : contents.end(1)] = hexed.encode()
    out.write_bytes(bytes(data))


def test_a_tampered_timestamp_token_is_not_valid(
    bt_report: Path, signed_case: SignedCase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    forged = tmp_path / "forged.pdf"
    _tamper_token_time(bt_report, forged)
    found = verify_json(forged, signed_case.keys.ca_certificate, capsys)
    assert not found["valid"]
    ok, detail = checks(found)["signature timestamp"]
    assert not ok and "not intact" in detail, detail
    # the report's own signature still holds: only the token was changed
    assert checks(found)["signature"][0]


def test_a_timestamp_from_an_untrusted_authority_is_reported_as_such(
    signed_case: SignedCase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stranger = new_ca("some other CA")
    with serve_tsa(issue_tsa(stranger, "untrusted TSA")) as url:
        assert make_report(signed_case, tmp_path / "r.pdf", "--tsa", url)[0] == 0
    found = verify_json(tmp_path / "r.pdf", signed_case.keys.ca_certificate, capsys)
    assert not found["valid"]
    ok, detail = checks(found)["signature timestamp"]
    assert not ok and "CN=untrusted TSA" in detail and "not trusted" in detail, detail
    assert found["time"]["timestamps"][0]["trusted"] is False
    # trusting the TSA's CA as well makes it valid
    both = tmp_path / "both.pem"
    both.write_bytes(
        signed_case.keys.ca_certificate.read_bytes()
        + stranger.write_cert(tmp_path / "s.pem").read_bytes()
    )
    assert verify_json(tmp_path / "r.pdf", both, capsys)["valid"]


def test_without_a_tsa_verify_says_the_time_is_the_signers_clock(
    signed_case: SignedCase, capsys: pytest.CaptureFixture[str]
) -> None:
    found = verify_json(signed_case.report, signed_case.keys.ca_certificate, capsys)
    assert found["valid"]
    assert found["time"]["source"] == "signer's clock" and found["time"]["timestamps"] == []
    assert any("signer's own clock" in n for n in found["notes"]), found["notes"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", found["time"]["signer_claimed"])


def test_bytes_appended_after_the_document_timestamp_are_caught(
    lta_report: Path, signed_case: SignedCase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grown = tmp_path / "grown.pdf"
    grown.write_bytes(lta_report.read_bytes() + b"\n% appended\n")
    found = verify_json(grown, signed_case.keys.ca_certificate, capsys)
    assert not found["valid"] and not checks(found)["coverage"][0]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--tsa", "http://127.0.0.1:9/tsa"], "gave no timestamp"),
        (["--tsa", "ftp://tsa.invalid/"], "is not one (http:// or https://"),
        (["--crl", "missing.crl"], "needs a timestamp authority"),
    ],
)
def test_an_unusable_tsa_is_one_line_and_exit_2(
    signed_case: SignedCase,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    options: list[str],
    message: str,
) -> None:
    out = tmp_path / "r.pdf"
    code, err = make_report(signed_case, out, *options, capsys=capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and not out.exists()


def test_check_takes_tsa_only_with_report(
    capsys: pytest.CaptureFixture[str], signed_case: SignedCase
) -> None:
    code = main(
        ["check", "--victim", str(signed_case.fingerprints["victim"]), "--suspect",
         str(signed_case.fingerprints["derived"]), "--tsa", "http://127.0.0.1:9/"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "--tsa and --crl timestamp a report: they need --report" in err


def test_the_configuration_and_its_environment_variable_name_the_tsa(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ca.crl").write_bytes(b"")
    config = tmp_path / "reef.toml"
    config.write_text('[signing]\ntsa_url = "http://tsa.example/tsr"\ncrls = ["ca.crl"]\n')
    monkeypatch.delenv("REEF_TSA_URL", raising=False)
    loaded = load_config(config)
    assert loaded.timestamping is not None
    assert loaded.timestamping.url == "http://tsa.example/tsr"
    assert loaded.timestamping.crls == (tmp_path / "ca.crl",)
    monkeypatch.setenv("REEF_TSA_URL", "https://other.example/")
    assert load_config(config).timestamping.url == "https://other.example/"  # type: ignore[union-attr]
    config.write_text('[signing]\ntsa_url = "not a url"\n')
    with pytest.raises(Exception, match="is not one"):
        monkeypatch.delenv("REEF_TSA_URL")
        load_config(config)


def test_check_report_with_tsa_writes_a_timestamped_report(
    signed_case: SignedCase, tsa_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fps = signed_case.fingerprints
    mp = pytest.MonkeyPatch()
    mp.setenv("REEF_KEY_PASSPHRASE", SIGNED_CASE_PASSPHRASE.decode())
    mp.setenv("REEF_TSA_URL", tsa_url)  # the environment variable, as a deployment sets it
    try:
        code = main(
            [
                "check", "--victim", str(fps["victim"]), "--suspect", str(fps["derived"]),
                "--reference", str(fps["unrelated"]), "--reference", str(fps["bert"]),
                "--reference", str(fps["gpt2"]), "--out", str(tmp_path / "findings"),
                "--key", str(signed_case.keys.private_key),
                "--cert", str(signed_case.keys.signer_certificate),
                "--report", str(tmp_path / "report.pdf"), "--no-progress",
            ]
        )  # fmt: skip
    finally:
        mp.undo()
    out = capsys.readouterr().out
    assert code == 0 and "RFC 3161 timestamp (PAdES B-T)" in out, out
    found = verify_json(tmp_path / "report.pdf", signed_case.keys.ca_certificate, capsys)
    assert found["valid"] and found["time"]["timestamps"][0]["kind"] == "signature"


def test_single_byte_changes_to_a_b_lta_report_are_all_detected(
    lta_report: Path, signed_case: SignedCase, tmp_path: Path
) -> None:
    """60 seeded single-byte changes, spread over the certified revision, the validation data
    and the document timestamp that follow it: verify rejects every one."""
    import random

    from pyhanko.pdf_utils.reader import PdfFileReader

    from reef_forensics.crypto.keys import load_certificates
    from reef_forensics.crypto.results import TrustPolicy
    from reef_forensics.errors import ReefError
    from reef_forensics.report.timestamps import signed_end
    from reef_forensics.report.verification import verify_report

    original = lta_report.read_bytes()
    certified, stamp = PdfFileReader(io.BytesIO(original)).embedded_signatures
    bounds = [0, signed_end(certified), len(original)]  # before and after the signature's end
    trust = TrustPolicy(roots=tuple(load_certificates(signed_case.keys.ca_certificate)))
    rng = random.Random(17)
    target, missed = tmp_path / "changed.pdf", []
    for i in range(60):
        low, high = (bounds[0], bounds[1]) if i % 2 else (bounds[1], bounds[2])
        position, mask = rng.randrange(low, high), rng.randrange(1, 256)
        changed = bytearray(original)
        changed[position] ^= mask
        target.write_bytes(bytes(changed))
        try:
            valid = verify_report(target, trust).valid
        except ReefError:
            valid = False
        if valid:
            missed.append((position, mask))
    assert missed == []
    assert signed_end(stamp) == len(original)
