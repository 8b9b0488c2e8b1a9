"""docs/verify.md's auditor steps (openssl, coreutils, python3's json) run as written."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from reef_forensics.crypto.bundle import sign_directory
from reef_forensics.crypto.keys import generate_keys, load_signer
from reef_forensics.digests import canonical_json

DOC = Path(__file__).parent.parent / "docs" / "verify.md"
PASSPHRASE = b"auditor test"


def doc_script(certificate: bool = False) -> str:
    text = DOC.read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    assert len(blocks) >= 5, "docs/verify.md lost its commands"
    if not certificate:
        return "set -euo pipefail\n" + "\n".join(blocks)
    field = re.search(r"^field\(\) .*$", text, re.M)
    cert_steps = re.findall(r"```sh-cert\n(.*?)```", text, re.S)
    assert field and cert_steps, "docs/verify.md lost its certificate steps"
    return "set -euo pipefail\n" + field.group(0) + "\n" + "\n".join(cert_steps + blocks)


def run_doc(
    fp: Path, pub: Path | None, work: Path, ca: Path | None = None
) -> subprocess.CompletedProcess[str]:
    work.mkdir()
    env = {"FP": str(fp), "WORK": str(work), "PATH": "/usr/local/bin:/usr/bin:/bin"}
    if pub is not None:
        env["PUB"] = str(pub)
    if ca is not None:
        env["CA"] = str(ca)
    script = doc_script(certificate=ca is not None)
    return subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, check=False
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, fingerprints: dict[str, Path]):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("doc")
    keys = generate_keys(root / "keys", PASSPHRASE)
    other = generate_keys(root / "other", PASSPHRASE)
    fp = root / "fp"
    shutil.copytree(fingerprints["victim"], fp)
    sign_directory(fp, load_signer(keys.private_key, passphrase=PASSPHRASE))
    return fp, keys, other


def test_the_documented_steps_verify_a_signed_fingerprint(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fp, keys, _ = setup
    done = run_doc(fp, keys.public_key, tmp_path / "work")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[0] == keys.fingerprint
    assert "Verified OK" in done.stdout
    assert "representations.safetensors: OK" in done.stdout


@pytest.mark.parametrize(
    "tamper", ["flip-byte", "add-file", "other-signer", "edit-manifest", "swap-probes-keep-digests"]
)
def test_the_documented_steps_catch_tampering(setup, tmp_path: Path, tamper: str) -> None:  # type: ignore[no-untyped-def]
    fp, keys, other = setup
    target = tmp_path / "fp"
    shutil.copytree(fp, target)
    if tamper == "flip-byte":
        data = bytearray((target / "representations.safetensors").read_bytes())
        data[100] ^= 0x40
        (target / "representations.safetensors").write_bytes(bytes(data))
    elif tamper == "add-file":
        (target / "extra.bin").write_bytes(b"x")
    elif tamper == "other-signer":
        sign_directory(target, load_signer(other.private_key, passphrase=PASSPHRASE))
    elif tamper == "edit-manifest":
        manifest = json.loads((target / "fingerprint.json").read_text())
        manifest["model"]["name"] = "someone-else"
        (target / "fingerprint.json").write_bytes(canonical_json(manifest))
    else:  # edited texts, re-signed by the real key: only the probe-digest step can tell
        (target / "probes.jsonl").write_text(
            (target / "probes.jsonl").read_text().replace("Q:", "Q;", 1)
        )
        sign_directory(target, load_signer(keys.private_key, passphrase=PASSPHRASE))
    done = run_doc(target, keys.public_key, tmp_path / "work")
    assert done.returncode != 0, done.stdout
    output = done.stdout + done.stderr
    caught_by = {  # the step that must have stopped the script
        "flip-byte": "representations.safetensors: FAILED",
        "add-file": "> extra.bin",
        "other-signer": "Verification failure",
        "edit-manifest": "fingerprint.json: FAILED",
        "swap-probes-keep-digests": "probes.jsonl: OK",  # steps 3-5 pass: step 6 caught it
    }[tamper]
    assert caught_by in output, output


def test_the_documented_certificate_steps_verify_a_certificate_signed_fingerprint(
    setup, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    fp, keys, other = setup
    target = tmp_path / "fp"
    shutil.copytree(fp, target)
    sign_directory(
        target,
        load_signer(keys.private_key, passphrase=PASSPHRASE, certificate=keys.signer_certificate),
    )
    done = run_doc(target, None, tmp_path / "work", ca=keys.ca_certificate)
    assert done.returncode == 0, done.stdout + done.stderr
    assert ": OK" in done.stdout and "Verified OK" in done.stdout
    refused = run_doc(target, None, tmp_path / "work2", ca=other.ca_certificate)
    assert refused.returncode != 0


def test_the_documented_report_steps_verify_a_signed_report(
    tmp_path: Path, fingerprints: dict[str, Path]
) -> None:
    """Section 9: pdfsig and pdfdetach on a real report, then steps 7 and 2 to 5 on the
    attached findings; and a report whose findings were swapped is caught."""
    from reef_forensics.analysis.check import check
    from reef_forensics.formats.fingerprint import read_fingerprint
    from reef_forensics.report.render import write_report

    keys = generate_keys(tmp_path / "keys", PASSPHRASE)
    signer = load_signer(
        keys.private_key, passphrase=PASSPHRASE, certificate=keys.signer_certificate
    )
    victim, suspect, *refs = (
        read_fingerprint(fingerprints[n]) for n in ("victim", "derived", "unrelated", "bert")
    )
    check(victim, suspect, refs).write(tmp_path / "findings", signer=signer)
    report = write_report(tmp_path / "findings", tmp_path / "report.pdf", signer)
    text = DOC.read_text()
    report_steps = re.findall(r"```sh-report\n(.*?)```", text, re.S)
    field = re.search(r"^field\(\) .*$", text, re.M)
    cert_steps = re.findall(r"```sh-cert\n(.*?)```", text, re.S)
    directory_steps = [b for b in re.findall(r"```sh\n(.*?)```", text, re.S) if "probes" not in b]
    assert len(report_steps) == 2 and field and cert_steps and len(directory_steps) >= 4
    script = "\n".join(
        ["set -euo pipefail", *report_steps, field.group(0), *cert_steps, *directory_steps]
    )
    work = tmp_path / "work"
    work.mkdir()
    env = {
        "REPORT": str(report),
        "CA": str(keys.ca_certificate),
        "WORK": str(work),
        "PATH": "/usr/local/bin:/usr/bin:/bin",
    }
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Total document signed" in done.stdout and "findings.json: OK" in done.stdout
    assert "Verified OK" in done.stdout
    broken = tmp_path / "broken.pdf"
    data = bytearray(report.read_bytes())
    data[len(data) // 3] ^= 0x01
    broken.write_bytes(bytes(data))
    (work2 := tmp_path / "work2").mkdir()
    refused = subprocess.run(
        ["bash", "-c", script],
        env={**env, "REPORT": str(broken), "WORK": str(work2)},
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0
