"""Keys, signing and verification: the API, tampering of every kind, and bad keys."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reef_forensics.crypto.bundle import SIGNATURE_NAME, sign_directory
from reef_forensics.crypto.keys import (
    describe_key_file,
    generate_keys,
    key_fingerprint,
    load_certificates,
    load_public_key,
    load_signer,
)
from reef_forensics.crypto.results import TrustPolicy
from reef_forensics.digests import canonical_json
from reef_forensics.errors import KeyMaterialError, SignatureError
from reef_forensics.evidence.verify import verify_evidence
from reef_forensics.formats.fingerprint import MANIFEST, PROBES, REPRESENTATIONS, UNITS

PASSPHRASE = b"correct horse battery staple"


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return generate_keys(tmp_path_factory.mktemp("keys"), PASSPHRASE)


@pytest.fixture(scope="session")
def other_keys(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return generate_keys(tmp_path_factory.mktemp("other-keys"), PASSPHRASE)


@pytest.fixture(scope="session")
def signed(tmp_path_factory: pytest.TempPathFactory, fingerprints: dict[str, Path], keys) -> Path:  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("signed") / "victim"
    shutil.copytree(fingerprints["victim"], folder)
    sign_directory(folder, load_signer(keys.private_key, passphrase=PASSPHRASE))
    return folder


def trust_key(keys) -> TrustPolicy:  # type: ignore[no-untyped-def]
    return TrustPolicy(public_key=load_public_key(keys.public_key))


def copy(signed: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(signed, target)
    return target


# --- keys --------------------------------------------------------------------------------


def test_generated_keys_are_p256_encrypted_and_private(keys) -> None:  # type: ignore[no-untyped-def]
    assert oct(keys.private_key.stat().st_mode & 0o777) == "0o600"
    assert b"ENCRYPTED PRIVATE KEY" in keys.private_key.read_bytes()
    signer = load_signer(
        keys.private_key, passphrase=PASSPHRASE, certificate=keys.signer_certificate
    )
    assert isinstance(signer.private_key.curve, ec.SECP256R1)
    assert key_fingerprint(signer.public_key) == keys.fingerprint
    cert = load_certificates(keys.signer_certificate)[0]
    usage = cert.extensions.get_extension_for_class(__import__("cryptography").x509.KeyUsage).value
    assert usage.digital_signature and usage.content_commitment
    ekus = {
        o.dotted_string
        for o in cert.extensions.get_extension_for_class(
            __import__("cryptography").x509.ExtendedKeyUsage
        ).value
    }
    assert {"1.3.6.1.5.5.7.3.4", "1.3.6.1.5.5.7.3.36"} <= ekus
    cert.verify_directly_issued_by(load_certificates(keys.ca_certificate)[0])


def test_key_fingerprint_is_sha256_of_the_der_spki(keys) -> None:  # type: ignore[no-untyped-def]
    import hashlib

    der = load_public_key(keys.public_key).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert keys.fingerprint == hashlib.sha256(der).hexdigest()
    for path in (keys.public_key, keys.signer_certificate):
        assert describe_key_file(path)["fingerprint"] == "sha256:" + keys.fingerprint
    assert (
        describe_key_file(keys.private_key, passphrase=PASSPHRASE)["fingerprint"]
        == "sha256:" + keys.fingerprint
    )


def test_generate_refuses_to_overwrite_keys(keys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(KeyMaterialError, match="refusing to overwrite"):
        generate_keys(keys.private_key.parent, PASSPHRASE)


def test_pkcs12_key_and_certificate_are_accepted(keys, tmp_path: Path, signed: Path) -> None:  # type: ignore[no-untyped-def]
    signer = load_signer(
        keys.private_key, passphrase=PASSPHRASE, certificate=keys.signer_certificate
    )
    p12 = tmp_path / "org.p12"
    p12.write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"org",
            signer.private_key,
            signer.certificate,
            None,
            serialization.BestAvailableEncryption(b"p12pass"),
        )
    )
    from_p12 = load_signer(p12, passphrase=b"p12pass")
    assert from_p12.certificate is not None
    target = copy(signed, tmp_path)
    sign_directory(target, from_p12)
    roots = TrustPolicy(roots=tuple(load_certificates(keys.ca_certificate)))
    assert verify_evidence(target, roots).valid


@pytest.mark.parametrize(
    ("make", "message"),
    [
        ("wrong-passphrase", "wrong passphrase for"),
        ("no-passphrase", "is encrypted: set REEF_KEY_PASSPHRASE"),
        ("rsa", r"unsupported type \(RSA\); supported: ECDSA P-256"),
        ("p384", "ECDSA secp384r1 key; supported: ECDSA P-256"),
        ("garbage", "neither a PEM private key nor a PKCS#12"),
        ("cert-mismatch", "the certificate does not match the key"),
    ],
)
def test_unusable_keys_give_one_clear_error(
    keys, other_keys, tmp_path: Path, make: str, message: str
) -> None:  # type: ignore[no-untyped-def]
    key_path, passphrase, cert = keys.private_key, PASSPHRASE, None
    if make == "wrong-passphrase":
        passphrase = b"wrong-passphrase-Zq7"
    elif make == "no-passphrase":
        passphrase = None
    elif make in ("rsa", "p384"):
        key = (
            rsa.generate_private_key(65537, 2048)
            if make == "rsa"
            else ec.generate_private_key(ec.SECP384R1())
        )
        key_path = tmp_path / "k.pem"
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    elif make == "garbage":
        key_path = tmp_path / "k.bin"
        key_path.write_bytes(b"\x00\x01garbage")
    else:
        cert = other_keys.signer_certificate
    with pytest.raises(KeyMaterialError, match=message) as info:
        load_signer(key_path, passphrase=passphrase, certificate=cert)
    assert PASSPHRASE.decode() not in str(info.value)
    assert "wrong-passphrase-Zq7" not in str(info.value)


# --- signing and verification ------------------------------------------------------------


def test_signed_fingerprint_verifies_with_every_check_named(signed: Path, keys) -> None:  # type: ignore[no-untyped-def]
    result = verify_evidence(signed, trust_key(keys))
    assert result.valid, result.as_json()
    names = [c.name for c in result.checks]
    assert names[:3] == ["signature bundle", "signature", "file set"]
    assert {f"file {n}" for n in (MANIFEST, PROBES, REPRESENTATIONS)} <= set(names)
    assert names[-3:] == ["subject digest", "fingerprint consistency", "directory contents"]
    record = result.as_json()
    assert record["valid"] is True and record["signer"] == "sha256:" + keys.fingerprint
    assert all(set(c) == {"name", "ok", "detail"} for c in record["checks"])


def test_bundle_lists_every_file_but_itself(signed: Path) -> None:
    import base64

    bundle = json.loads((signed / SIGNATURE_NAME).read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    assert [r["name"] for r in statement["predicate"]["resources"]] == [
        MANIFEST,
        PROBES,
        REPRESENTATIONS,
        UNITS,
    ]
    assert SIGNATURE_NAME in statement["predicate"]["serialization"]["ignore_paths"]


def test_certificate_mode_chains_to_the_trusted_ca(
    signed: Path, keys, other_keys, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    target = copy(signed, tmp_path)
    sign_directory(
        target,
        load_signer(keys.private_key, passphrase=PASSPHRASE, certificate=keys.signer_certificate),
    )
    assert verify_evidence(
        target, TrustPolicy(roots=tuple(load_certificates(keys.ca_certificate)))
    ).valid
    foreign = verify_evidence(
        target, TrustPolicy(roots=tuple(load_certificates(other_keys.ca_certificate)))
    )
    assert not foreign.valid
    assert [c.name for c in foreign.checks if not c.ok] == ["certificate chain", "signature"]
    bare = verify_evidence(signed, TrustPolicy(roots=tuple(load_certificates(keys.ca_certificate))))
    assert "verify with --key" in next(c.detail for c in bare.checks if not c.ok)


def test_a_certificate_verified_with_a_key_must_hold_that_key(
    signed: Path, keys, other_keys, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    import base64

    target = copy(signed, tmp_path)
    sign_directory(
        target,
        load_signer(keys.private_key, passphrase=PASSPHRASE, certificate=keys.signer_certificate),
    )
    result = verify_evidence(target, trust_key(keys))
    assert result.valid and any("chain was not checked" in n for n in result.notes)
    bundle = json.loads((target / SIGNATURE_NAME).read_bytes())
    other = load_certificates(other_keys.signer_certificate)[0]
    bundle["verificationMaterial"]["x509CertificateChain"]["certificates"][0]["rawBytes"] = (
        base64.b64encode(other.public_bytes(serialization.Encoding.DER)).decode()
    )
    (target / SIGNATURE_NAME).write_bytes(json.dumps(bundle, separators=(",", ":")).encode())
    swapped = verify_evidence(target, trust_key(keys))
    assert not swapped.valid
    assert failed(swapped) == {"embedded certificate": "holds another key than the one trusted"}


def failed(result) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {c.name: c.detail for c in result.checks if not c.ok}


@pytest.mark.parametrize("name", [MANIFEST, PROBES, REPRESENTATIONS])
@pytest.mark.parametrize("how", ["flip", "append"])
def test_changing_any_file_is_caught_and_named(
    signed: Path, keys, tmp_path: Path, name: str, how: str
) -> None:  # type: ignore[no-untyped-def]
    target = copy(signed, tmp_path)
    data = bytearray((target / name).read_bytes())
    if how == "flip":
        data[len(data) // 3] ^= 0x20
    else:
        data += b"\n"
    (target / name).write_bytes(bytes(data))
    problems = failed(verify_evidence(target, trust_key(keys)))
    assert f"file {name}" in problems and name in problems[f"file {name}"]


def test_added_and_removed_files_are_caught(signed: Path, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    target = copy(signed, tmp_path)
    (target / "notes.txt").write_text("added later")
    assert "not signed: notes.txt" in failed(verify_evidence(target, trust_key(keys)))["file set"]
    target2 = tmp_path / "removed"
    shutil.copytree(signed, target2)
    (target2 / PROBES).unlink()
    assert "missing: probes.jsonl" in failed(verify_evidence(target2, trust_key(keys)))["file set"]


def test_another_models_representations_are_caught(
    signed: Path, keys, fingerprints: dict[str, Path], tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    target = copy(signed, tmp_path)
    shutil.copy(fingerprints["unrelated"] / REPRESENTATIONS, target / REPRESENTATIONS)
    problems = failed(verify_evidence(target, trust_key(keys)))
    assert set(problems) == {f"file {REPRESENTATIONS}"}


def test_resigning_with_another_key_is_caught(
    signed: Path, keys, other_keys, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    target = copy(signed, tmp_path)
    sign_directory(target, load_signer(other_keys.private_key, passphrase=PASSPHRASE))
    problems = failed(verify_evidence(target, trust_key(keys)))
    assert "another key" in problems["signature"] and "key hint" in problems
    assert verify_evidence(target, trust_key(other_keys)).valid  # it is a valid signature by *them*


def test_claiming_another_model_digest_is_caught(signed: Path, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    target = copy(signed, tmp_path)
    manifest = json.loads((target / MANIFEST).read_text())
    manifest["model"]["digest"] = "sha256:" + "0" * 64
    (target / MANIFEST).write_bytes(canonical_json(manifest))
    problems = failed(verify_evidence(target, trust_key(keys)))
    assert f"file {MANIFEST}" in problems
    # re-signing the edited manifest with the same key makes it the signer's claim again
    sign_directory(target, load_signer(keys.private_key, passphrase=PASSPHRASE))
    assert verify_evidence(target, trust_key(keys)).valid


def test_a_signed_but_inconsistent_fingerprint_is_not_valid(
    signed: Path, keys, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    target = copy(signed, tmp_path)
    (target / PROBES).write_text((target / PROBES).read_text().replace("Q:", "Q;", 1))
    sign_directory(
        target, load_signer(keys.private_key, passphrase=PASSPHRASE)
    )  # signed after the edit
    problems = failed(verify_evidence(target, trust_key(keys)))
    assert set(problems) == {"fingerprint consistency"}
    assert "probes.jsonl does not match" in problems["fingerprint consistency"]


def test_missing_signature_or_not_a_directory_are_errors(
    fingerprints: dict[str, Path], keys, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SignatureError, match=r"is not signed: model\.sig is missing"):
        verify_evidence(fingerprints["victim"], trust_key(keys))
    with pytest.raises(Exception, match="not a directory"):
        verify_evidence(tmp_path / "nothing", trust_key(keys))


@pytest.mark.parametrize(
    "damage",
    [b"", b"{}", b"not json", b'{"mediaType":"x","verificationMaterial":{},"dsseEnvelope":{}}'],
)
def test_malformed_bundles_are_reported_not_valid(
    signed: Path, keys, tmp_path: Path, damage: bytes
) -> None:  # type: ignore[no-untyped-def]
    target = copy(signed, tmp_path)
    (target / SIGNATURE_NAME).write_bytes(damage)
    result = verify_evidence(target, trust_key(keys))
    assert not result.valid and list(failed(result)) == ["signature bundle"]


def test_a_payload_digest_that_is_not_hex_is_not_valid_rather_than_a_crash(
    signed: Path, keys, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Found by the property test below: a changed payload that still parses."""
    import base64

    target = copy(signed, tmp_path)
    bundle = json.loads((target / SIGNATURE_NAME).read_bytes())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    statement["predicate"]["resources"][0]["digest"] = (
        "zz" + statement["predicate"]["resources"][0]["digest"][2:]
    )
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    (target / SIGNATURE_NAME).write_bytes(json.dumps(bundle, separators=(",", ":")).encode())
    result = verify_evidence(target, trust_key(keys))
    assert not result.valid and "64-digit hex" in failed(result)["signature bundle"]


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,  # the same 300 cases every run: CI stays reproducible
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_any_single_byte_change_anywhere_is_detected(
    signed: Path, keys, tmp_path: Path, data
) -> None:  # type: ignore[no-untyped-def]
    files = sorted(p.name for p in signed.iterdir())
    name = data.draw(st.sampled_from(files))
    original = (signed / name).read_bytes()
    position = data.draw(st.integers(0, len(original) - 1))
    flip = data.draw(st.integers(1, 255))
    target = Path(tempfile.mkdtemp(dir=tmp_path)) / "fp"
    shutil.copytree(signed, target)
    changed = bytearray(original)
    changed[position] ^= flip
    (target / name).write_bytes(bytes(changed))
    result = verify_evidence(target, trust_key(keys))
    assert not result.valid, (name, position, flip)
    shutil.rmtree(target.parent)


# --- certificate chains: what must not pass ---------------------------------------------


def issue_cert(  # type: ignore[no-untyped-def]
    name: str,
    public_key,
    issuer_key,
    issuer_name,
    *,
    ca: bool = False,
    digital_signature: bool = True,
    eku: bool = True,
    days: int = 30,
    start_days_ago: int = 1,
):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=start_days_ago))
        .not_valid_after(
            now - datetime.timedelta(days=start_days_ago) + datetime.timedelta(days=days)
        )
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature and not ca, not ca, False, False, False, ca, ca, False, False
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if eku and not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def chain_result(signed: Path, tmp_path: Path, keys, leaf_key, leaf, extra=()):  # type: ignore[no-untyped-def]
    from reef_forensics.crypto.keys import Signer

    target = copy(signed, tmp_path)
    if isinstance(leaf_key, ec.EllipticCurvePrivateKey):
        sign_directory(target, Signer(private_key=leaf_key, certificate=leaf, chain=tuple(extra)))
    else:  # a non-EC leaf cannot sign here: put its chain around the P-256 signature of another key
        sign_directory(target, load_signer(keys.private_key, passphrase=PASSPHRASE))
        bundle = json.loads((target / SIGNATURE_NAME).read_bytes())
        import base64

        bundle["verificationMaterial"] = {
            "x509CertificateChain": {
                "certificates": [
                    {
                        "rawBytes": base64.b64encode(
                            c.public_bytes(serialization.Encoding.DER)
                        ).decode()
                    }
                    for c in (leaf, *extra)
                ]
            },
            "tlogEntries": [],
        }
        (target / SIGNATURE_NAME).write_bytes(json.dumps(bundle, separators=(",", ":")).encode())
    return verify_evidence(target, TrustPolicy(roots=tuple(load_certificates(keys.ca_certificate))))


def ca_material(keys):  # type: ignore[no-untyped-def]
    ca_key = load_signer(
        keys.ca_certificate.parent / "ca-key.pem", passphrase=PASSPHRASE
    ).private_key
    return ca_key, load_certificates(keys.ca_certificate)[0]


def test_an_end_entity_certificate_cannot_issue_a_signer(
    signed: Path, keys, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    holder = load_signer(
        keys.private_key, passphrase=PASSPHRASE, certificate=keys.signer_certificate
    )
    mine = ec.generate_private_key(ec.SECP256R1())
    fake = issue_cert(
        "Chief Examiner (impersonated)",
        mine.public_key(),
        holder.private_key,
        holder.certificate.subject,
    )
    result = chain_result(signed, tmp_path, keys, mine, fake, [holder.certificate])
    assert not result.valid and "certificate chain" in failed(result)


def test_an_intermediate_ca_under_a_path_length_zero_root_is_refused(
    signed: Path, keys, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    ca_key, ca_cert = ca_material(keys)
    intermediate_key = ec.generate_private_key(ec.SECP256R1())
    intermediate = issue_cert(
        "Team CA", intermediate_key.public_key(), ca_key, ca_cert.subject, ca=True
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = issue_cert("Examiner", leaf_key.public_key(), intermediate_key, intermediate.subject)
    # the development CA has pathLen 0: an intermediate under it must be refused
    result = chain_result(signed, tmp_path, keys, leaf_key, leaf, [intermediate])
    assert not result.valid and "certificate chain" in failed(result)


@pytest.mark.parametrize(
    "flaw", ["rsa-key", "no-digital-signature", "no-eku", "expired", "not-yet-valid"]
)
def test_unfit_signer_certificates_are_refused(
    signed: Path, keys, tmp_path: Path, flaw: str
) -> None:  # type: ignore[no-untyped-def]
    ca_key, ca_cert = ca_material(keys)
    leaf_key = (
        rsa.generate_private_key(65537, 2048)
        if flaw == "rsa-key"
        else ec.generate_private_key(ec.SECP256R1())
    )
    options = {
        "no-digital-signature": {"digital_signature": False},
        "no-eku": {"eku": False},
        "expired": {"start_days_ago": 40, "days": 30},
        "not-yet-valid": {"start_days_ago": -5},
    }.get(flaw, {})
    leaf = issue_cert("Examiner", leaf_key.public_key(), ca_key, ca_cert.subject, **options)
    result = chain_result(signed, tmp_path, keys, leaf_key, leaf)
    problems = failed(result)
    assert not result.valid
    assert "certificate chain" in problems and "signature" in problems  # never valid by omission


def test_a_fit_signer_certificate_from_the_ca_is_accepted(
    signed: Path, keys, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    ca_key, ca_cert = ca_material(keys)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = issue_cert("Examiner", leaf_key.public_key(), ca_key, ca_cert.subject)
    result = chain_result(signed, tmp_path, keys, leaf_key, leaf)
    assert result.valid, result.as_json()


def test_extra_entries_hidden_behind_ignored_names_are_reported(
    signed: Path, keys, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    target = copy(signed, tmp_path)
    (target / ".github").mkdir()
    (target / ".github" / "representations.safetensors").write_bytes(b"x")
    problems = failed(verify_evidence(target, trust_key(keys)))
    assert problems == {"directory contents": "unexpected entries: .github"}


def test_symlinks_are_refused(signed: Path, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    target = copy(signed, tmp_path)
    (target / "link").symlink_to(target / "probes.jsonl")
    assert "symbolic link" in failed(verify_evidence(target, trust_key(keys)))["file set"]
    target2 = tmp_path / "sig-link"
    shutil.copytree(signed, target2)
    outside = tmp_path / "outside.sig"
    shutil.move(target2 / SIGNATURE_NAME, outside)
    (target2 / SIGNATURE_NAME).symlink_to(outside)
    assert "symbolic link" in failed(verify_evidence(target2, trust_key(keys)))["signature bundle"]


def test_names_with_control_characters_cannot_forge_report_lines(
    signed: Path, keys, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    target = copy(signed, tmp_path)
    (target / "x\nok    all good\nVALID: here\x1b[8m").write_text("sneaky")
    result = verify_evidence(target, trust_key(keys))
    assert not result.valid
    assert all("\n" not in c.detail and "\x1b" not in c.detail for c in result.checks)
