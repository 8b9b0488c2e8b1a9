"""Signed fingerprints verify with tools we did not write: OpenSSF model_signing, and our
verifier accepts what model_signing signs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from reef_forensics.crypto.bundle import SIGNATURE_NAME, sign_directory
from reef_forensics.crypto.keys import generate_keys, load_public_key, load_signer
from reef_forensics.crypto.results import TrustPolicy
from reef_forensics.evidence.verify import verify_evidence

PASSPHRASE = b"interop passphrase"
MODEL_SIGNING = (
    shutil.which("model_signing", path=os.path.dirname(sys.executable)) or "model_signing"
)


def model_signing(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MODEL_SIGNING, *map(str, args)], capture_output=True, text=True, check=False
    )


def openssf_verify(public_key: Path, folder: Path) -> subprocess.CompletedProcess[str]:
    return model_signing(
        "verify", "key", "--public_key", public_key, "--signature", folder / SIGNATURE_NAME, folder
    )


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return generate_keys(tmp_path_factory.mktemp("interop-keys"), PASSPHRASE)


def test_openssf_model_signing_verifies_our_signature(
    fingerprints: dict[str, Path], keys, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "fp"
    shutil.copytree(fingerprints["victim"], folder)
    sign_directory(folder, load_signer(keys.private_key, passphrase=PASSPHRASE))
    ok = openssf_verify(keys.public_key, folder)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Verification succeeded" in ok.stdout
    data = bytearray((folder / "representations.safetensors").read_bytes())
    data[-1] ^= 0x01
    (folder / "representations.safetensors").write_bytes(bytes(data))
    bad = openssf_verify(keys.public_key, folder)
    assert bad.returncode != 0 and "Hash mismatch" in bad.stderr


def test_we_verify_what_openssf_model_signing_signs(
    fingerprints: dict[str, Path], tmp_path: Path
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    private = tmp_path / "key.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public = tmp_path / "pub.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    folder = tmp_path / "fp"
    shutil.copytree(fingerprints["victim"], folder)
    signed = model_signing(
        "sign", "key", "--private_key", private, "--signature", folder / SIGNATURE_NAME, folder
    )
    assert signed.returncode == 0, signed.stdout + signed.stderr
    result = verify_evidence(folder, TrustPolicy(public_key=load_public_key(public)))
    assert result.valid, result.as_json()
    (folder / "extra.txt").write_text("x")
    assert not verify_evidence(folder, TrustPolicy(public_key=load_public_key(public))).valid


def test_a_fingerprint_signed_as_it_is_made_verifies_with_openssf(
    zoo: dict[str, Path], small_probes, keys, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from reef_forensics import fingerprint_model

    signer = load_signer(keys.private_key, passphrase=PASSPHRASE)
    fp = fingerprint_model(zoo["victim"], tmp_path / "made", probes=small_probes, signer=signer)
    ok = openssf_verify(keys.public_key, fp.path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert verify_evidence(fp.path, TrustPolicy(public_key=load_public_key(keys.public_key))).valid
