"""Signer certificates: what a signer's certificate must allow (key usage, extended key usage), and its chain to the roots a verifier trusts."""

from __future__ import annotations

from datetime import datetime, timezone

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from reef_forensics.crypto.bundle import MAX_CHAIN, _base64, _Bundle
from reef_forensics.crypto.keys import DOCUMENT_SIGNING_EKUS, SUPPORTED
from reef_forensics.crypto.results import VerificationResult
from reef_forensics.errors import first_line


def _check_embedded_certificate(
    bundle: _Bundle, key: ec.EllipticCurvePublicKey, result: VerificationResult
) -> None:
    """Verified with a key, a bundle that also carries a certificate: the certificate must parse
    and hold that key. Its chain is not checked (no CA was given), which a note says."""
    try:
        raw = bundle.material["x509CertificateChain"]["certificates"][0]["rawBytes"]
        leaf = x509.load_der_x509_certificate(_base64(raw, "a certificate"))
        same = leaf.public_key() == key
    except Exception as exc:  # malformed or hostile: a failed check, never a crash
        result.add("embedded certificate", False, f"cannot be read: {first_line(exc)}")
        return
    if not same:
        result.add("embedded certificate", False, "holds another key than the one trusted")
        return
    result.add("embedded certificate", True, "holds the trusted key")
    result.notes.append(
        "the embedded certificate's chain was not checked (verified with a key); "
        "verify with --trust CA to check it"
    )


#: What the signer certificate must allow: S/MIME, RFC 9336 document signing, Microsoft and
#: Adobe document signing, or code signing (what model_signing's certificate mode asks for).
SIGNER_EKUS = frozenset(
    {*(oid.dotted_string for oid in DOCUMENT_SIGNING_EKUS), "1.3.6.1.5.5.7.3.3"}
)

#: The key usages a signer certificate must allow: evidence is signed to be relied on later.
SIGNER_KEY_USAGES = ("digital_signature", "content_commitment")

_KEY_USAGE_NAMES = {"digital_signature": "digitalSignature", "content_commitment": "nonRepudiation"}


def check_signer_certificate(leaf: x509.Certificate) -> None:
    """The one policy for every signer certificate, of evidence bundles and of report PDFs alike:
    an end entity (not a CA), whose key usage allows digitalSignature and nonRepudiation, whose
    extended key usage names document signing, S/MIME or code signing (`SIGNER_EKUS`), with a
    P-256 key. Raises ValueError with the first reason it is unfit."""
    extensions = leaf.extensions
    try:
        constraints = extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is not None and constraints.ca:
        raise ValueError(
            "the signer certificate is a CA certificate (basicConstraints CA:TRUE); evidence "
            "is signed with an end-entity certificate"
        )
    try:
        usage = extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        raise ValueError("the signer certificate has no key usage extension") from None
    lacking = [_KEY_USAGE_NAMES[name] for name in SIGNER_KEY_USAGES if not getattr(usage, name)]
    if lacking:
        raise ValueError(
            "the signer certificate's key usage does not allow " + " and ".join(lacking)
        )
    try:
        purposes = extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise ValueError(
            "the signer certificate has no extended key usage: it must name document signing, "
            "S/MIME or code signing"
        ) from None
    if not {oid.dotted_string for oid in purposes} & SIGNER_EKUS:
        named = ", ".join(getattr(oid, "_name", oid.dotted_string) for oid in purposes)
        raise ValueError(
            f"the signer certificate's extended key usage ({named or 'none'}) is not for "
            "document or code signing"
        )
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError(f"the signer certificate's key is not {SUPPORTED}")


def chain_to_roots(
    chain: list[x509.Certificate], roots: tuple[x509.Certificate, ...]
) -> tuple[ec.EllipticCurvePublicKey, str]:
    """The leaf's fitness for signing evidence (`check_signer_certificate`), then the chain up to
    a trusted root (RFC 5280 path validation by cryptography's verifier: issuers must be CAs
    allowed to sign certificates, path lengths and validity dates hold for every certificate,
    the root's included). Returns the leaf's key; raises with the reason otherwise. Evidence
    bundles and report PDFs are both checked here."""
    from cryptography.x509 import verification

    if not 1 <= len(chain) <= MAX_CHAIN:
        raise ValueError(f"a chain of 1 to {MAX_CHAIN} certificates is expected")
    leaf, intermediates = chain[0], chain[1:]
    check_signer_certificate(leaf)
    signer_policy = (
        verification.ExtensionPolicy.permit_all()
        .require_present(x509.KeyUsage, verification.Criticality.AGNOSTIC, None)
        .require_present(x509.ExtendedKeyUsage, verification.Criticality.AGNOSTIC, None)
    )
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store(list(roots)))
        .time(datetime.now(timezone.utc))
        .max_chain_depth(MAX_CHAIN)
        .extension_policies(
            ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(), ee_policy=signer_policy
        )
        .build_client_verifier()
    )
    verified = verifier.verify(leaf, intermediates)
    key = leaf.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)  # check_signer_certificate saw to it
    root = verified.chain[-1]
    return (
        key,
        f"signed by {leaf.subject.rfc4514_string()}, issued under {root.subject.rfc4514_string()}",
    )
