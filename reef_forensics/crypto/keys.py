"""Signing keys and certificates: ECDSA P-256 only, the one key type every tool accepts.

`generate_keys` writes a passphrase-protected private key, its public key, and, for development
and tests, a small CA with a signer certificate fit for signing PDFs. `load_signer` reads an
organisation's existing key (PEM, encrypted or not, or PKCS#12 with its certificate).
Passphrases come from the ``REEF_KEY_PASSPHRASE`` environment variable or a file, never from
the command line; they and the keys never appear in messages.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from reef_forensics.errors import KeyMaterialError
from reef_forensics.files import write_atomic

PASSPHRASE_ENV = "REEF_KEY_PASSPHRASE"
PRIVATE_KEY = "signing-key.pem"
PUBLIC_KEY = "signing-key.pub.pem"
CA_KEY = "ca-key.pem"
CA_CERT = "ca-cert.pem"
SIGNER_CERT = "signer-cert.pem"
SUPPORTED = "ECDSA P-256 (secp256r1)"
#: Extended key usages of the signer certificate: S/MIME (what poppler's pdfsig checks for),
#: RFC 9336 document signing, Microsoft document signing, Adobe Authentic Documents Trust.
DOCUMENT_SIGNING_EKUS = (
    ExtendedKeyUsageOID.EMAIL_PROTECTION,
    ObjectIdentifier("1.3.6.1.5.5.7.3.36"),
    ObjectIdentifier("1.3.6.1.4.1.311.10.3.12"),
    ObjectIdentifier("1.2.840.113583.1.1.5"),
)


@dataclass(frozen=True)
class Signer:
    """A private key, and the certificate chain that vouches for it when there is one."""

    private_key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate | None = None
    chain: tuple[x509.Certificate, ...] = field(default_factory=tuple)

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.private_key.public_key()


def _read_file(path: Path, what: str) -> bytes:
    """A key or certificate file's bytes; an unreadable file is one clear error, never a trace."""
    try:
        return path.read_bytes()
    except OSError as exc:
        label = f"{what} {path}" if what else str(path)
        raise KeyMaterialError(f"cannot read {label}: {exc.strerror or exc}") from None


def key_fingerprint(public_key: ec.EllipticCurvePublicKey) -> str:
    """sha256 of the DER SubjectPublicKeyInfo: the key's identity, as hex."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def read_passphrase(passphrase_file: str | os.PathLike[str] | None = None) -> bytes | None:
    """The passphrase from a file (first line) or ``REEF_KEY_PASSPHRASE``; None when neither."""
    if passphrase_file is not None:
        try:
            text = Path(passphrase_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyMaterialError(
                f"cannot read the passphrase file {passphrase_file}: {type(exc).__name__}"
            ) from None
        lines = text.splitlines()
        if not lines or not lines[0]:
            raise KeyMaterialError(f"the passphrase file {passphrase_file} is empty")
        return lines[0].encode("utf-8")
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode("utf-8") if value else None


def forget_passphrase() -> None:
    """Drop ``REEF_KEY_PASSPHRASE`` once it has been read: from ``os.environ`` (no child process
    inherits it) and, on Linux, from the environment block the process started with, which is
    what ``/proc/PID/environ`` shows to the user's other processes and root for the life of the
    process (``os.environ.pop`` leaves that block as it was). Its entry there is overwritten with
    zero bytes. Elsewhere (no ``/proc``) only the first step applies."""
    os.environ.pop(PASSPHRASE_ENV, None)
    wipe_initial_environment(PASSPHRASE_ENV)


def wipe_initial_environment(name: str) -> bool:
    """Overwrite every ``name=...`` entry of this process's initial environment block (Linux:
    the addresses ``/proc/self/stat`` gives, the bytes ``/proc/self/environ`` reads) with zero
    bytes. Touches memory only where it holds exactly the bytes ``/proc`` says it does. True
    when no such entry is left there; False where there is no ``/proc`` to say."""
    import ctypes

    prefix = name.encode() + b"="
    try:
        stat_line = Path("/proc/self/stat").read_bytes()
        fields = stat_line[stat_line.rindex(b")") + 2 :].split()
        start, end = int(fields[47]), int(fields[48])  # env_start, env_end (proc(5))
        block = Path("/proc/self/environ").read_bytes()
    except (OSError, ValueError, IndexError):
        return False
    if len(block) != end - start:
        return False
    offset = 0
    for entry in block.split(b"\0"):
        if entry.startswith(prefix) and ctypes.string_at(start + offset, len(entry)) == entry:
            ctypes.memset(start + offset, 0, len(entry))
        offset += len(entry) + 1
    try:
        left = Path("/proc/self/environ").read_bytes()
    except OSError:
        return False
    return not any(entry.startswith(prefix) for entry in left.split(b"\0"))


def _check_ec_p256(key: object, where: str) -> None:
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1):
            return
        raise KeyMaterialError(f"{where} is an ECDSA {key.curve.name} key; supported: {SUPPORTED}")
    kind = type(key).__name__.removeprefix("_").replace("PrivateKey", "").replace("PublicKey", "")
    raise KeyMaterialError(
        f"{where} is a key of an unsupported type ({kind}); supported: {SUPPORTED}"
    )


def load_signer(
    key_path: str | os.PathLike[str],
    *,
    passphrase: bytes | None = None,
    certificate: str | os.PathLike[str] | None = None,
    chain: str | os.PathLike[str] | None = None,
) -> Signer:
    """Load a P-256 private key from PEM (encrypted or not) or PKCS#12, with its certificates."""
    path = Path(key_path)
    data = _read_file(path, "the key")
    cert: x509.Certificate | None = None
    extra: list[x509.Certificate] = []
    if b"-----BEGIN" in data:
        key = _load_pem_private_key(path, data, passphrase)
    else:
        try:
            key, cert, additional = pkcs12.load_key_and_certificates(data, passphrase)
        except Exception:  # wrong passphrase, not PKCS#12, oversized input: all unusable
            raise KeyMaterialError(
                f"{path} is neither a PEM private key nor a PKCS#12 file it could open "
                "(wrong passphrase?)"
            ) from None
        extra = list(additional or [])
        if key is None:
            raise KeyMaterialError(f"{path} holds no private key")
    _check_ec_p256(key, str(path))
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    if certificate is not None:
        certs = load_certificates(certificate)
        cert, extra = certs[0], certs[1:] + extra
    if chain is not None:
        extra += load_certificates(chain)
    if cert is not None and key_fingerprint(cert.public_key()) != key_fingerprint(key.public_key()):  # type: ignore[arg-type]
        raise KeyMaterialError(f"the certificate does not match the key {path}")
    return Signer(private_key=key, certificate=cert, chain=tuple(extra))


def _load_pem_private_key(path: Path, data: bytes, passphrase: bytes | None) -> object:
    encrypted = b"ENCRYPTED" in data
    if encrypted and passphrase is None:
        raise KeyMaterialError(
            f"{path} is encrypted: set {PASSPHRASE_ENV} or pass --passphrase-file"
        )
    try:
        return serialization.load_pem_private_key(data, passphrase if encrypted else None)
    except (TypeError, UnsupportedAlgorithm):
        raise KeyMaterialError(f"{path} is not a readable PEM private key") from None
    except Exception:  # ValueError and anything else a bad passphrase or file can raise
        if encrypted:
            raise KeyMaterialError(f"wrong passphrase for {path}") from None
        raise KeyMaterialError(f"{path} is not a readable PEM private key") from None


def load_certificates(path: str | os.PathLike[str]) -> list[x509.Certificate]:
    """Every certificate in a PEM file (first the leaf, then the chain), or one DER certificate."""
    cert_path = Path(path)
    data = _read_file(cert_path, "the certificate")
    try:
        certs = (
            x509.load_pem_x509_certificates(data)
            if b"-----BEGIN" in data
            else [x509.load_der_x509_certificate(data)]
        )
    except ValueError:
        raise KeyMaterialError(f"{cert_path} is not a readable X.509 certificate") from None
    return certs


def load_public_key(path: str | os.PathLike[str]) -> ec.EllipticCurvePublicKey:
    """A P-256 public key from a PEM public key or a certificate."""
    key_path = Path(path)
    data = _read_file(key_path, "the public key")
    key: object
    if b"CERTIFICATE" in data or _looks_like_der_certificate(data):
        key = load_certificates(key_path)[0].public_key()
    elif b"PRIVATE KEY" in data:
        raise KeyMaterialError(
            f"{key_path} is a private key: give the public key (or a certificate)"
        )
    else:
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm):
            raise KeyMaterialError(f"{key_path} is not a readable PEM public key") from None
    _check_ec_p256(key, str(key_path))
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


@dataclass(frozen=True)
class GeneratedKeys:
    private_key: Path
    public_key: Path
    ca_certificate: Path
    signer_certificate: Path
    fingerprint: str


def generate_keys(
    out: str | os.PathLike[str],
    passphrase: bytes,
    *,
    common_name: str = "reef-forensics signer",
    email: str = "signer@reef-forensics.invalid",
    days: int = 825,
) -> GeneratedKeys:
    """Write a new P-256 key pair, a development CA and a signer certificate into ``out``.

    The private keys are PKCS#8 PEM encrypted with ``passphrase`` and written with mode 0600.
    Existing key files are never overwritten.
    """
    if not passphrase:
        raise KeyMaterialError(
            f"a passphrase is needed: set {PASSPHRASE_ENV} or pass --passphrase-file"
        )
    folder = Path(out)
    names = (PRIVATE_KEY, PUBLIC_KEY, CA_KEY, CA_CERT, SIGNER_CERT)
    taken = [name for name in names if (folder / name).exists()]
    if taken:
        raise KeyMaterialError(
            f"{folder} already holds {', '.join(taken)}: refusing to overwrite keys"
        )
    signer_key = ec.generate_private_key(ec.SECP256R1())
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    ca_cert, signer_cert = _certificates(ca_key, signer_key, now, days, common_name, email)
    folder.mkdir(parents=True, exist_ok=True)
    encryption = serialization.BestAvailableEncryption(passphrase)
    for name, key in ((PRIVATE_KEY, signer_key), (CA_KEY, ca_key)):
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )
        write_atomic(folder / name, pem, mode=0o600)
    public_pem = signer_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_atomic(folder / PUBLIC_KEY, public_pem)
    write_atomic(folder / CA_CERT, ca_cert.public_bytes(serialization.Encoding.PEM))
    write_atomic(folder / SIGNER_CERT, signer_cert.public_bytes(serialization.Encoding.PEM))
    return GeneratedKeys(
        private_key=folder / PRIVATE_KEY,
        public_key=folder / PUBLIC_KEY,
        ca_certificate=folder / CA_CERT,
        signer_certificate=folder / SIGNER_CERT,
        fingerprint=key_fingerprint(signer_key.public_key()),
    )


def _certificates(
    ca_key: ec.EllipticCurvePrivateKey,
    signer_key: ec.EllipticCurvePrivateKey,
    now: datetime.datetime,
    days: int,
    common_name: str,
    email: str,
) -> tuple[x509.Certificate, x509.Certificate]:
    """A self-signed development CA and the signer's certificate it issues (document signing)."""
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "reef-forensics development CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    signer_name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.EMAIL_ADDRESS, email),
        ]
    )
    signer_cert = (
        x509.CertificateBuilder()
        .subject_name(signer_name)
        .issuer_name(ca_name)
        .public_key(signer_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(DOCUMENT_SIGNING_EKUS)), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(signer_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return ca_cert, signer_cert


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=not cert_sign,  # nonRepudiation
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def loose_permissions(path: Path) -> bool:
    """True when a private key file can be read by the group or others."""
    return bool(path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO))


def permission_warnings(*secrets: str | os.PathLike[str] | None) -> list[str]:
    """One warning for each key or passphrase file that other users can read (None skipped)."""
    return [
        f"{path} can be read by other users; chmod 600 it"
        for path in (Path(p) for p in secrets if p is not None)
        if path.is_file() and loose_permissions(path)
    ]


def describe_key_file(path: Path, *, passphrase: bytes | None = None) -> dict[str, str]:
    """What a key file holds and its fingerprint; never the key material itself."""
    data = _read_file(path, "")
    subject = ""
    if b"CERTIFICATE" in data or _looks_like_der_certificate(data):
        certificate = load_certificates(path)[0]
        public_key, kind = load_public_key(path), "certificate"
        subject = certificate.subject.rfc4514_string()
    elif b"PUBLIC KEY" in data:
        public_key, kind = load_public_key(path), "public key"
    else:  # a PEM private key, or PKCS#12
        signer = load_signer(path, passphrase=passphrase)
        public_key, kind = signer.public_key, "private key"
        if signer.certificate is not None:
            subject = signer.certificate.subject.rfc4514_string()
    return {
        "path": str(path),
        "kind": kind,
        "type": "ECDSA P-256",
        "fingerprint": "sha256:" + key_fingerprint(public_key),
        "subject": subject,
    }


def _looks_like_der_certificate(data: bytes) -> bool:
    try:
        x509.load_der_x509_certificate(data)
    except ValueError:
        return False
    return True
