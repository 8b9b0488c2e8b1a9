"""Signing and verifying evidence directories (fingerprints now, findings later).

The signature is a file inside the directory, `SIGNATURE_NAME`, in the OpenSSF model-signing
bundle format (v1.0 predicate, private-key mode), so that ``model_signing verify key`` and
plain openssl can check it too:

- a Sigstore bundle (v0.3 JSON) whose ``dsseEnvelope`` holds
- a DSSE envelope (payload type ``application/vnd.in-toto+json``) over
- an in-toto Statement v1 whose ``predicate.resources`` list every file of the directory
  (relative POSIX path, sorted, sha256) except the signature itself, and whose subject digest
  is the sha256 of the concatenated resource digests.

The signature is ECDSA P-256 over SHA-256 of the DSSE pre-authentication encoding
``"DSSEv1" SP len(type) SP type SP len(body) SP body``, DER-encoded. With a certificate, the
bundle carries the signer's certificate chain instead of a key hint.

`verify_directory` answers with every check by name (`VerificationResult`), never just a bool.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from reef_forensics.crypto.keys import Signer, key_fingerprint
from reef_forensics.crypto.results import TrustPolicy, VerificationResult
from reef_forensics.digests import sha256_file
from reef_forensics.errors import BadInputError, ReefError, SignatureError, first_line
from reef_forensics.files import parse_json, write_atomic

SIGNATURE_NAME = "model.sig"
#: Limits on what a verifier reads: a bundle is a few kB; a chain a handful of certificates.
MAX_BUNDLE_BYTES = 4 * 1024 * 1024
MAX_CHAIN = 8
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
#: The files model_signing leaves out by default; listed so that its verifier agrees with ours.
IGNORED_BY_DEFAULT = (".git", ".gitattributes", ".github", ".gitignore")


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: the exact bytes that are signed."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def list_resources(directory: Path) -> list[dict[str, str]]:
    """Every regular file below ``directory`` but the signature: name (POSIX), sha256, sorted.

    Symbolic links are refused: a signed directory must not point outside itself.
    """
    resources = []
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory).as_posix()
        if path.is_symlink():
            raise SignatureError(
                f"{path} is a symbolic link: a signed directory may hold only files"
            )
        if relative == SIGNATURE_NAME or relative.split("/")[0] in IGNORED_BY_DEFAULT:
            continue
        if not path.is_file() and not path.is_dir():
            raise SignatureError(
                f"{path} is not a regular file: a signed directory may hold only files"
            )
        if path.is_file():
            resources.append(
                {
                    "name": relative,
                    "algorithm": "sha256",
                    "digest": sha256_file(path).removeprefix("sha256:"),
                }
            )
    resources.sort(key=_resource_order)
    return resources


def _resource_order(resource: dict[str, str]) -> tuple[str, ...]:
    """model_signing's order: path components compared by code point (``a/b`` < ``a-b``)."""
    return PurePosixPath(resource["name"]).parts


def subject_digest(resources: list[dict[str, str]]) -> str:
    """model_signing's digest of a whole directory: sha256 over the resource digests in order."""
    combined = hashlib.sha256()
    for resource in resources:
        combined.update(bytes.fromhex(resource["digest"]))
    return combined.hexdigest()


def statement(name: str, resources: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": subject_digest(resources)}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "resources": resources,
            "serialization": {
                "method": "files",
                "hash_type": "sha256",
                "allow_symlinks": False,
                "ignore_paths": [*IGNORED_BY_DEFAULT, SIGNATURE_NAME],
            },
        },
    }


def sign_directory(
    directory: str | os.PathLike[str], signer: Signer, *, name: str | None = None
) -> Path:
    """Sign every file of ``directory``; write the bundle to ``directory/SIGNATURE_NAME``.

    ``name`` is the statement's subject name (default: the directory's name), for a directory
    signed in a staging place before it is renamed.
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise BadInputError(f"nothing to sign: {folder} is not a directory")
    resources = list_resources(folder)
    if not resources:
        raise BadInputError(f"nothing to sign: {folder} holds no files")
    payload = json.dumps(
        statement(name or folder.name, resources), indent=2, ensure_ascii=True
    ).encode("utf-8")
    signature = signer.private_key.sign(pae(PAYLOAD_TYPE, payload), ec.ECDSA(hashes.SHA256()))
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": _verification_material(signer),
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode("ascii"),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(signature).decode("ascii"), "keyid": ""}],
        },
    }
    target = folder / SIGNATURE_NAME
    write_atomic(target, _serialize(bundle))
    return target


def public_key_hint(key: ec.EllipticCurvePublicKey) -> str:
    """model_signing's key hint: sha256 (hex) of the key's SubjectPublicKeyInfo *PEM* text,
    which is what ``sha256sum pub.pem`` prints for a PEM file written by openssl."""
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(pem).hexdigest()


def _verification_material(signer: Signer) -> dict[str, Any]:
    if signer.certificate is None:
        return {"publicKey": {"hint": public_key_hint(signer.public_key)}, "tlogEntries": []}
    chain = [signer.certificate, *signer.chain]
    return {
        "x509CertificateChain": {
            "certificates": [
                {
                    "rawBytes": base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode(
                        "ascii"
                    )
                }
                for c in chain
            ]
        },
        "tlogEntries": [],
    }


# --- verification -----------------------------------------------------------------------------


def read_bundle_bytes(bundle_path: Path, result: VerificationResult) -> bytes | None:
    """A signature bundle's bytes (empty when over the size cap, which the parser refuses), or
    None with a failed check when it cannot be read or is a symbolic link."""
    try:
        if bundle_path.is_symlink():
            raise ValueError("it is a symbolic link")
        return bundle_path.read_bytes() if bundle_path.stat().st_size <= MAX_BUNDLE_BYTES else b""
    except (OSError, ValueError) as exc:
        result.add("signature bundle", False, f"{SIGNATURE_NAME} cannot be read: {exc}")
        return None


def verify_directory(
    directory: str | os.PathLike[str],
    trust: TrustPolicy,
    *,
    content_checks: Callable[[Path, VerificationResult], None] | None = None,
) -> VerificationResult:
    """Check a signed directory: bundle, signature, trust, every file's digest, the file set.

    ``content_checks`` adds checks of what the files mean (for a fingerprint: its internal
    consistency); it runs only when every file is the one that was signed. A damaged bundle is
    a failed check (not valid), not an error; a directory with no bundle at all is an error.
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise BadInputError(f"nothing to verify: {folder} is not a directory")
    bundle_path = folder / SIGNATURE_NAME
    if not bundle_path.is_file() and not bundle_path.is_symlink():
        raise SignatureError(f"{folder} is not signed: {SIGNATURE_NAME} is missing")
    result = VerificationResult(path=folder)
    raw = read_bundle_bytes(bundle_path, result)
    if raw is None:
        return result
    bundle = _check_bundle(raw, trust, result)
    if bundle is None:
        return result
    _check_files(folder, bundle.resources, result)
    _check_subject(bundle, result)
    if content_checks is not None and all(c.ok for c in result.checks):
        content_checks(folder, result)
    return result


def verify_bundle_over(
    raw: bytes, files: dict[str, bytes], trust: TrustPolicy, *, path: Path, complete: bool = False
) -> VerificationResult:
    """A bundle and some of the files it signs, held in memory (a report's attachments): the
    signature, the trust, the subject digest, and each given file's digest. The signed files that
    were not given are named in a note: their digests are vouched for, their bytes not checked.
    With ``complete`` (``files`` is a whole directory, read once), a signed file not given fails
    the ``file set`` check instead."""
    result = VerificationResult(path=path)
    bundle = _check_bundle(raw, trust, result)
    if bundle is None:
        return result
    listed = {r["name"]: r["digest"] for r in bundle.resources}
    for name, data in sorted(files.items()):
        digest = hashlib.sha256(data).hexdigest()
        ok = listed.get(name) == digest
        result.add(
            f"file {name}",
            ok,
            "sha256 matches the signed digest"
            if ok
            else f"{name} is not among the signed files"
            if name not in listed
            else f"{name} was changed after signing (sha256 differs)",
        )
    _check_subject(bundle, result)
    absent = sorted(set(listed) - set(files))
    if complete:
        result.add(
            "file set",
            not absent,
            "missing: " + ", ".join(absent)
            if absent
            else f"the {len(listed)} signed files, no more, no fewer",
        )
    elif absent:
        result.notes.append(
            "signed but not at hand, so only their signed digests were checked: "
            + ", ".join(absent)
        )
    return result


def _check_bundle(raw: bytes, trust: TrustPolicy, result: VerificationResult) -> _Bundle | None:
    """Parse the bundle and check its signature under ``trust``."""
    try:
        if not raw or len(raw) > MAX_BUNDLE_BYTES:
            raise ValueError(f"it is empty or larger than {MAX_BUNDLE_BYTES} bytes")
        bundle = _parse_bundle(raw)
    except ValueError as exc:
        result.add("signature bundle", False, f"{SIGNATURE_NAME} is damaged or not a bundle: {exc}")
        return None
    result.add(
        "signature bundle", True, f"{SIGNATURE_NAME} is a well-formed model-signing v1.0 bundle"
    )
    verifying_key = _signing_key(bundle, trust, result)
    if verifying_key is None:
        result.add("signature", False, "no trusted P-256 key to check the signature with")
    else:
        result.signer = "sha256:" + key_fingerprint(verifying_key)
        _check_signature(bundle, verifying_key, result)
    return bundle


def _check_subject(bundle: _Bundle, result: VerificationResult) -> None:
    ok = bundle.subject_digest == subject_digest(bundle.resources)
    result.add(
        "subject digest",
        ok,
        "the statement's subject digest matches its resources"
        if ok
        else f"the subject digest {bundle.subject_digest} is not the digest of the listed resources",
    )


@dataclass(frozen=True)
class _Bundle:
    material: dict[str, Any]
    payload: bytes
    signature: bytes
    resources: list[dict[str, str]]
    subject_digest: str


def _serialize(bundle: dict[str, Any]) -> bytes:
    """The one byte form a bundle is written in: compact JSON, as model_signing writes it."""
    return json.dumps(bundle, separators=(",", ":")).encode("utf-8")


def _fields(
    value: Any, where: str, required: set[str], optional: frozenset[str] = frozenset()
) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where} is not an object")
    unexpected = sorted(set(value) - required - optional)
    missing = sorted(required - set(value))
    if unexpected or missing:
        raise ValueError(f"{where}: unexpected {unexpected} / missing {missing} fields")
    return value


def _base64(value: Any, where: str) -> bytes:
    """Strict, canonical standard base64: one encoding per byte string, so no byte of the
    bundle can change without changing what it means."""
    if not isinstance(value, str):
        raise ValueError(f"{where} is not a string")
    decoded = base64.b64decode(value, validate=True)
    if base64.b64encode(decoded).decode("ascii") != value:
        raise ValueError(f"{where} is not canonical base64")
    return decoded


_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


def _is_sha256_hex(value: Any) -> bool:
    return isinstance(value, str) and _SHA256_HEX.fullmatch(value) is not None


def _parse_bundle(raw: bytes) -> _Bundle:
    """Parse and strictly check a bundle; ValueError says what is wrong."""
    bundle = _fields(
        parse_json(raw), "the bundle", {"mediaType", "verificationMaterial", "dsseEnvelope"}
    )
    if raw != _serialize(bundle):
        raise ValueError("it is not in the compact form bundles are written in (edited?)")
    if bundle["mediaType"] != BUNDLE_MEDIA_TYPE:
        raise ValueError(f"media type {bundle['mediaType']!r}")
    material = _fields(
        bundle["verificationMaterial"],
        "verificationMaterial",
        set(),
        frozenset({"publicKey", "x509CertificateChain", "tlogEntries"}),
    )
    if ("publicKey" in material) == ("x509CertificateChain" in material) or material.get(
        "tlogEntries", []
    ) != []:
        raise ValueError(
            "verificationMaterial needs exactly one of publicKey and x509CertificateChain"
        )
    if "publicKey" in material:
        _fields(material["publicKey"], "publicKey", set(), frozenset({"hint"}))
    envelope = _fields(
        bundle["dsseEnvelope"], "dsseEnvelope", {"payload", "payloadType", "signatures"}
    )
    if envelope["payloadType"] != PAYLOAD_TYPE:
        raise ValueError(f"payload type {envelope['payloadType']!r}")
    payload = _base64(envelope["payload"], "the payload")
    signatures = envelope["signatures"]
    if not isinstance(signatures, list) or not signatures:
        raise ValueError("no signatures")
    for entry in signatures:
        _fields(entry, "a signature", {"sig"}, frozenset({"keyid"}))
    signature = _base64(signatures[0]["sig"], "the signature")
    statement_value = parse_json(payload)
    try:
        if (
            statement_value["_type"] != STATEMENT_TYPE
            or statement_value["predicateType"] != PREDICATE_TYPE
        ):
            raise ValueError("the payload is not a model-signing v1.0 in-toto statement")
        subjects = statement_value["subject"]
        if not isinstance(subjects, list) or len(subjects) != 1:
            raise ValueError("the statement must have exactly one subject")
        digest = subjects[0]["digest"]["sha256"]
        resources = [
            {"name": r["name"], "algorithm": r["algorithm"], "digest": r["digest"]}
            for r in statement_value["predicate"]["resources"]
        ]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"the statement lacks {exc}") from None
    names = [r["name"] for r in resources]
    if not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise ValueError("the statement's resource names are not unique strings")
    if not all(r["algorithm"] == "sha256" and _is_sha256_hex(r["digest"]) for r in resources):
        raise ValueError("every resource needs algorithm sha256 and a 64-digit hex digest")
    if not _is_sha256_hex(digest):
        raise ValueError("the subject digest is not a 64-digit hex sha256")
    return _Bundle(material, payload, signature, resources, digest)


def _signing_key(
    bundle: _Bundle, trust: TrustPolicy, result: VerificationResult
) -> ec.EllipticCurvePublicKey | None:
    """The key the signature must verify under: the trusted key, or the certificate's."""
    from reef_forensics.crypto.certificates import _check_embedded_certificate, chain_to_roots

    if trust.public_key is not None:
        hint = bundle.material.get("publicKey", {}).get("hint")
        if hint is not None and hint != public_key_hint(trust.public_key):
            result.add(
                "key hint",
                False,
                f"the bundle names another signing key (hint {hint}), not sha256:{key_fingerprint(trust.public_key)}",
            )
        if "x509CertificateChain" in bundle.material:
            _check_embedded_certificate(bundle, trust.public_key, result)
        return trust.public_key
    if "x509CertificateChain" not in bundle.material:
        result.add(
            "certificate chain",
            False,
            "the bundle carries no certificate (signed with a bare key: verify with --key)",
        )
        return None
    try:
        raw = bundle.material["x509CertificateChain"]["certificates"]
        if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_CHAIN:
            raise ValueError(f"a chain of 1 to {MAX_CHAIN} certificates is expected")
        chain = [
            x509.load_der_x509_certificate(_base64(c["rawBytes"], "a certificate")) for c in raw
        ]
        key, detail = chain_to_roots(chain, trust.roots)
    except Exception as exc:  # any malformed or hostile certificate: a failed check, never a crash
        result.add(
            "certificate chain", False, f"the certificate chain does not verify: {first_line(exc)}"
        )
        return None
    result.add("certificate chain", True, detail)
    return key


def _check_signature(
    bundle: _Bundle, key: ec.EllipticCurvePublicKey, result: VerificationResult
) -> None:
    # Like model_signing, the first signature is the one that counts.
    identity = f"key sha256:{key_fingerprint(key)}"
    try:
        key.verify(bundle.signature, pae(PAYLOAD_TYPE, bundle.payload), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        result.add(
            "signature",
            False,
            f"{SIGNATURE_NAME}: the signature does not verify with {identity} "
            "(another key signed it, or the signed statement was changed)",
        )
        return
    result.add(
        "signature", True, f"ECDSA P-256 signature over the statement verified with {identity}"
    )


def _check_files(folder: Path, resources: list[dict[str, str]], result: VerificationResult) -> None:
    listed = {r["name"]: r for r in resources}
    try:
        present = {r["name"]: r for r in list_resources(folder)}
    except ReefError as exc:
        result.add("file set", False, str(exc))
        return
    missing = sorted(set(listed) - set(present))
    extra = sorted(set(present) - set(listed))
    detail = []
    if missing:
        detail.append("missing: " + ", ".join(missing))
    if extra:
        detail.append("not signed: " + ", ".join(extra))
    result.add(
        "file set",
        not detail,
        "; ".join(detail) or f"the {len(listed)} signed files, no more, no fewer",
    )
    for name in sorted(set(listed) & set(present)):
        ok = listed[name]["digest"] == present[name]["digest"]
        result.add(
            f"file {name}",
            ok,
            "sha256 matches the signed digest"
            if ok
            else f"{name} was changed after signing (sha256 differs)",
        )
