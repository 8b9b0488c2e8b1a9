"""docs/verify.md's auditor steps (openssl, coreutils, python3's json) run as written."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from reef_forensics.digests import canonical_json
from reef_forensics.keys import generate_keys, load_signer
from reef_forensics.signing import sign_directory

DOC = Path(__file__).parent.parent / "docs" / "verify.md"
PASSPHRASE = b"auditor test"


def doc_script() -> str:
    blocks = re.findall(r"```sh\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) >= 5, "docs/verify.md lost its commands"
    return "set -euo pipefail\n" + "\n".join(blocks)


def run_doc(fp: Path, pub: Path, work: Path) -> subprocess.CompletedProcess[str]:
    work.mkdir()
    env = {
        "FP": str(fp),
        "PUB": str(pub),
        "WORK": str(work),
        "PATH": "/usr/local/bin:/usr/bin:/bin",
    }
    return subprocess.run(
        ["bash", "-c", doc_script()], env=env, capture_output=True, text=True, check=False
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
