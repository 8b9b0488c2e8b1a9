"""Where the PDF is signed: a PAdES certification signature (pyHanko) that permits no later
change (DocMDP level 1), over the whole file. With a timestamp authority the signature is
timestamped (B-T), and `timestamps` adds the validation data and a document timestamp (B-LTA).

The findings and fingerprints are signed elsewhere, in a DSSE bundle (`crypto.bundle`).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from reef_forensics.errors import KeyMaterialError
from reef_forensics.report.timestamps import (
    Timestamping,
    explain_failure,
    quiet_signing,
    signing_settings,
)

if TYPE_CHECKING:
    from cryptography import x509

    from reef_forensics.crypto.keys import Signer

#: The signature field of every report: what `verify` looks for.
SIGNATURE_FIELD = "REEF-Certification"


def asn1_certificate(cert: x509.Certificate) -> Any:
    """A certificate as pyHanko takes it (asn1crypto)."""
    from asn1crypto import x509 as asn1_x509
    from cryptography.hazmat.primitives import serialization

    return asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))


def sign_pdf(pdf: bytes, signer: Signer, tsa: Timestamping | None = None) -> bytes:
    """A PAdES certification signature that permits no later change: over the whole file (B-B),
    with a signature timestamp from ``tsa`` (B-T), and with its CRLs the validation data and a
    document timestamp on top (B-LTA; `timestamps`)."""
    from asn1crypto import keys as asn1_keys
    from cryptography.hazmat.primitives import serialization
    from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
    from pyhanko.sign import fields, signers
    from pyhanko_certvalidator.registry import SimpleCertificateStore

    if signer.certificate is None:
        raise KeyMaterialError("a report is signed with a certificate: pass --cert")
    key = asn1_keys.PrivateKeyInfo.load(
        signer.private_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    certificate = asn1_certificate(signer.certificate)
    chain = [asn1_certificate(c) for c in signer.chain]
    pdf_signer = signers.SimpleSigner(
        signing_cert=certificate,
        signing_key=key,
        cert_registry=SimpleCertificateStore.from_certs(chain),
    )
    extra, timestamper = signing_settings(tsa, signer)
    settings = signers.PdfSignatureMetadata(
        field_name=SIGNATURE_FIELD,
        certify=True,
        docmdp_permissions=fields.MDPPerm.NO_CHANGES,
        subfilter=fields.SigSeedSubFilter.PADES,
        md_algorithm="sha256",
        reason="reef-forensics findings report",
        **extra,
    )
    writer = IncrementalPdfFileWriter(io.BytesIO(pdf))
    pdf_signing = signers.PdfSigner(settings, signer=pdf_signer, timestamper=timestamper)
    try:
        with quiet_signing():
            signed = pdf_signing.sign_pdf(writer)
    except Exception as exc:  # the TSA, or the validation data: one line, no traceback
        if tsa is None:
            raise
        raise explain_failure(exc, tsa) from None
    return bytes(signed.getvalue())
