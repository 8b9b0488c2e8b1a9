"""keys, sign, verify and fingerprint --key from the command line; secrets never printed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from reef_forensics.cli.main import main

PASSPHRASE = "cli-secret-passphrase-42"
WRONG = "wrong-passphrase-Zq7"


def run_cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    for secret in (PASSPHRASE, WRONG):  # no passphrase, right or wrong, reaches an output
        assert secret not in captured.out + captured.err
    assert "PRIVATE KEY" not in captured.out + captured.err
    return code, captured.out, captured.err


@pytest.fixture
def keydir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Path:
    monkeypatch.setenv("REEF_KEY_PASSPHRASE", PASSPHRASE)
    code, out, _ = run_cli(capsys, "keys", "generate", "--out", tmp_path / "keys")
    assert code == 0 and "new ECDSA P-256 key sha256:" in out
    return tmp_path / "keys"


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reef-forensics: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_keys_generate_show_with_a_passphrase_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REEF_KEY_PASSPHRASE", raising=False)
    secret = tmp_path / "pass.txt"
    secret.write_text(PASSPHRASE + "\n")
    code, out, _ = run_cli(
        capsys,
        "keys",
        "generate",
        "--out",
        tmp_path / "k",
        "--passphrase-file",
        secret,
        "--json",
        "-",
    )
    assert code == 0
    made = json.loads(out)
    code, out, _ = run_cli(capsys, "keys", "show", made["private_key"], "--passphrase-file", secret)
    assert code == 0 and out.startswith(made["fingerprint"] + "  ECDSA P-256  private key")
    code, out, _ = run_cli(capsys, "keys", "show", made["signer_certificate"], "--json", "-")
    assert json.loads(out)["fingerprint"] == made["fingerprint"]


def test_fingerprint_with_key_is_signed_and_verifies(
    capsys: pytest.CaptureFixture[str],
    keydir: Path,
    zoo: dict[str, Path],
    small_probes,
    tmp_path: Path,
) -> None:  # type: ignore[no-untyped-def]
    probes = tmp_path / "p.txt"
    probes.write_text("\n".join(small_probes.texts))
    out_dir = tmp_path / "fp"
    code, out, err = run_cli(
        capsys,
        "fingerprint",
        zoo["victim"],
        "--out",
        out_dir,
        "--probes",
        probes,
        "--key",
        keydir / "signing-key.pem",
        "--cert",
        keydir / "signer-cert.pem",
    )
    assert code == 0, err
    assert "signed" in out and (out_dir / "model.sig").is_file()
    code, out, _ = run_cli(capsys, "verify", out_dir, "--key", keydir / "signing-key.pub.pem")
    assert code == 0 and out.strip().endswith(f"VALID: {out_dir}")
    code, out, _ = run_cli(
        capsys, "verify", out_dir, "--trust", keydir / "ca-cert.pem", "--json", "-"
    )
    record = json.loads(out)
    assert code == 0 and record["valid"] is True
    assert {"certificate chain", "signature", "fingerprint consistency"} <= {
        c["name"] for c in record["checks"]
    }
    # tamper: exit 1, and the output names the file and the check
    data = bytearray((out_dir / "representations.safetensors").read_bytes())
    data[-3] ^= 0x01
    (out_dir / "representations.safetensors").write_bytes(bytes(data))
    code, out, _ = run_cli(capsys, "verify", out_dir, "--key", keydir / "signing-key.pub.pem")
    assert code == 1
    assert (
        "FAIL  file representations.safetensors: representations.safetensors was changed after signing"
        in out
    )
    assert out.strip().endswith(f"NOT VALID: {out_dir}")


def test_sign_an_existing_fingerprint(
    capsys: pytest.CaptureFixture[str], keydir: Path, fingerprints: dict[str, Path], tmp_path: Path
) -> None:
    target = tmp_path / "fp"
    shutil.copytree(fingerprints["victim"], target)
    code, out, _ = run_cli(
        capsys, "sign", target, "--key", keydir / "signing-key.pem", "--json", "-"
    )
    assert code == 0 and json.loads(out)["signature"] == str(target / "model.sig")
    code, _, _ = run_cli(capsys, "verify", target, "--key", keydir / "signing-key.pub.pem")
    assert code == 0


def make_rsa_key(path: Path) -> Path:
    key = rsa.generate_private_key(65537, 2048)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def test_bad_inputs_for_keys_sign_and_verify(
    capsys: pytest.CaptureFixture[str],
    keydir: Path,
    fingerprints: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    target = tmp_path / "fp"
    shutil.copytree(fingerprints["victim"], target)
    key, pub = keydir / "signing-key.pem", keydir / "signing-key.pub.pem"
    cases = [
        (["sign", target, "--key", key], "wrong passphrase for", {"REEF_KEY_PASSPHRASE": WRONG}),
        (
            ["sign", target, "--key", make_rsa_key(tmp_path / "rsa.pem")],
            "unsupported type (RSA); supported: ECDSA P-256",
            {},
        ),
        (["sign", tmp_path, "--key", key], "is not a fingerprint", {}),
        (
            ["sign", target, "--key", key, "--cert", keydir / "ca-cert.pem"],
            "the certificate does not match the key",
            {},
        ),
        (
            ["verify", fingerprints["victim"], "--key", pub],
            "is not signed: model.sig is missing",
            {},
        ),
        (["verify", target, "--key", key], "is a private key: give the public key", {}),
        (["verify", tmp_path / "missing", "--key", pub], "is not a directory", {}),
        (["keys", "generate", "--out", keydir], "refusing to overwrite keys", {}),
        (
            ["keys", "generate", "--out", tmp_path / "new"],
            "a passphrase is needed",
            {"REEF_KEY_PASSPHRASE": ""},
        ),
        (["keys", "show", tmp_path / "missing.pem"], "cannot read", {}),
        (
            ["fingerprint", tmp_path, "--out", tmp_path / "o", "--key", key, "--trust-remote-code"],
            "--key cannot be combined",
            {},
        ),
    ]
    for args, message, env in cases:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        code, _, err = run_cli(capsys, *args)
        assert code == 2, (args, err)
        assert message in one_error_line(err), (args, err)
        monkeypatch.setenv("REEF_KEY_PASSPHRASE", PASSPHRASE)
    assert not (target / "model.sig").exists()  # no failed attempt left a signature behind


def test_a_damaged_signature_file_is_not_valid(
    capsys: pytest.CaptureFixture[str], keydir: Path, fingerprints: dict[str, Path], tmp_path: Path
) -> None:
    target = tmp_path / "fp"
    shutil.copytree(fingerprints["victim"], target)
    assert run_cli(capsys, "sign", target, "--key", keydir / "signing-key.pem")[0] == 0
    (target / "model.sig").write_text("{ not json")
    code, out, _ = run_cli(capsys, "verify", target, "--key", keydir / "signing-key.pub.pem")
    assert code == 1 and "FAIL  signature bundle: model.sig is damaged or not a bundle" in out


def test_verify_needs_a_key_or_a_trust_anchor(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["verify", str(tmp_path)])
    assert exit_info.value.code == 2


def test_loose_key_permissions_are_warned_about(
    capsys: pytest.CaptureFixture[str], keydir: Path, fingerprints: dict[str, Path], tmp_path: Path
) -> None:
    target = tmp_path / "fp"
    shutil.copytree(fingerprints["victim"], target)
    (keydir / "signing-key.pem").chmod(0o644)
    code, _, err = run_cli(capsys, "sign", target, "--key", keydir / "signing-key.pem")
    assert code == 0 and "can be read by other users; chmod 600 it" in err
