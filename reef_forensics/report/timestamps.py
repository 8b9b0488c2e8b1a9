"""Trusted time for reports: RFC 3161 timestamps from a timestamp authority (TSA).

Without a TSA a report is PAdES B-B: the time it carries is the signer's clock. With one
(``--tsa URL``, ``[signing] tsa_url``, ``$REEF_TSA_URL``):

- PAdES B-T: the TSA countersigns the hash of the signature value (a signature timestamp,
  RFC 3161, in the CMS signature's unsigned attributes), so the signature existed by then;
- with the CA's revocation data (``--crl FILE``, ``[signing] crls``): PAdES B-LTA. The
  certificates and CRLs that validate the signer and the TSA are embedded (the DSS, B-LT), and a
  document timestamp over the whole file, DSS included, is added on top, so the report can be
  validated after the certificates expire, offline.

`signing_settings` gives pyHanko's signature settings and timestamper; `check_timestamps` is
what `verify` runs on a report (the time, the authority, whether that authority is trusted).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reef_forensics.errors import BadInputError, first_line

if TYPE_CHECKING:
    from reef_forensics.crypto.keys import Signer
    from reef_forensics.crypto.results import TrustPolicy, VerificationResult

TSA_ENV = "REEF_TSA_URL"
TIMESTAMP_FIELD = "REEF-Timestamp"
TSA_TIMEOUT = 15.0
_URL = re.compile(r"https?://[^\s/?#@]+(?:[/?#]\S*)?")
SIGNERS_CLOCK = (
    "the report's signing time is the signer's own clock: it carries no RFC 3161 timestamp, "
    "so nothing independent of the signer says when it was signed"
)


class TimestampError(BadInputError):
    """The TSA given could not be reached or its answer cannot be used, or the validation data
    given is incomplete (exit code 2, as for any unusable input)."""


@dataclass(frozen=True)
class Timestamping:
    """Where to get timestamps, and the revocation data (CRLs) that make a report B-LTA."""

    url: str
    crls: tuple[Path, ...] = ()
    timeout: float = TSA_TIMEOUT

    def __post_init__(self) -> None:
        check_tsa_url(self.url)


def check_tsa_url(url: str) -> str:
    if _URL.fullmatch(url) is None:
        raise BadInputError(
            f"the timestamp authority URL {url!r} (--tsa, {TSA_ENV}, [signing] tsa_url) is not "
            "one (http:// or https://, a host, "
            "no credentials in it)"
        )
    return url


def timestamping(
    url: str | None, crls: Sequence[str | os.PathLike[str]] = ()
) -> Timestamping | None:
    """The settings from the command line or configuration; CRLs need a TSA."""
    if not url:
        if crls:
            raise BadInputError(
                "--crl makes a report B-LTA, which needs a timestamp authority: pass --tsa URL"
            )
        return None
    for crl in crls:
        if not Path(crl).is_file():
            raise BadInputError(f"the CRL file {crl} does not exist")
    return Timestamping(check_tsa_url(url), tuple(Path(c) for c in crls))


def load_crls(paths: Sequence[Path]) -> list[Any]:
    """CRLs (DER or PEM) as pyHanko takes them (asn1crypto)."""
    from asn1crypto import crl, pem

    loaded = []
    for path in paths:
        try:
            data = path.read_bytes()
            if pem.detect(data):
                data = pem.unarmor(data)[2]
            parsed = crl.CertificateList.load(data)
            if not parsed.native:  # parsed in full now: a damaged file is bad input
                raise ValueError("empty")
            loaded.append(parsed)
        except (OSError, ValueError, TypeError) as exc:
            raise BadInputError(f"{path} is not a readable CRL: {first_line(exc)}") from None
    return loaded


def signing_settings(stamping: Timestamping | None, signer: Signer) -> tuple[dict[str, Any], Any]:
    """The extra `PdfSignatureMetadata` arguments, and the timestamper (or None)."""
    if stamping is None:
        return {}, None
    from pyhanko.sign.timestamps import HTTPTimeStamper

    timestamper = HTTPTimeStamper(stamping.url, timeout=stamping.timeout)
    if not stamping.crls:
        return {}, timestamper
    from pyhanko.sign.signers.pdf_signer import DSSContentSettings, TimestampDSSContentSettings
    from pyhanko_certvalidator import ValidationContext

    from reef_forensics.report.pdf_signing import asn1_certificate

    roots = [
        c for c in (signer.certificate, *signer.chain) if c is not None and c.subject == c.issuer
    ]
    if not roots:
        raise BadInputError(
            "--crl embeds the validation data of the signer's chain: pass its CA with --chain"
        )
    others = [asn1_certificate(c) for c in signer.chain if c.subject != c.issuer]
    context = ValidationContext(
        trust_roots=[asn1_certificate(c) for c in roots],
        other_certs=others,
        crls=load_crls(stamping.crls),
        allow_fetching=False,
        revocation_mode="hard-fail",
    )
    # the validation data of the document timestamp goes in before it, so that the timestamp is
    # the file's last revision and covers all of it (VRI dictionaries are optional: none)
    dss = DSSContentSettings(
        include_vri=False,
        next_ts_settings=TimestampDSSContentSettings(include_vri=False, update_before_ts=True),
    )
    extra = {
        "dss_settings": dss,
        "embed_validation_info": True,
        "use_pades_lta": True,
        "validation_context": context,
        "timestamp_field_name": TIMESTAMP_FIELD,
    }
    return extra, timestamper


@contextlib.contextmanager
def quiet_signing() -> Iterator[None]:
    """pyHanko warns, in a log line, that validation data is embedded with fetching off: that is
    the design here (the CRLs are given), not news for the user."""
    logger = logging.getLogger("pyhanko.sign.signers.pdf_signer")
    before = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(before)


def level_text(stamping: Timestamping | None) -> str:
    """What the signature is, for the commands' summary line."""
    if stamping is None:
        return ", PAdES B-B: its time is the signer's clock"
    if stamping.crls:
        return ", RFC 3161 timestamps and validation data (PAdES B-LTA)"
    return ", RFC 3161 timestamp (PAdES B-T)"


def explain_failure(exc: BaseException, stamping: Timestamping) -> TimestampError:
    """One line for what went wrong while timestamping or embedding validation data."""
    from pyhanko.sign.timestamps import TimestampRequestError

    if isinstance(exc, TimestampRequestError):
        cause = exc.__cause__
        why = first_line(cause) if cause is not None else first_line(exc)
        return TimestampError(
            f"the timestamp authority {stamping.url} gave no timestamp: {first_line(exc)}"
            + (f" ({why})" if why != first_line(exc) else "")
        )
    if not stamping.crls:
        return TimestampError(f"timestamping at {stamping.url} failed: {first_line(exc)}")
    return TimestampError(
        "cannot make the report B-LTA: the validation data of the signer's or the timestamp "
        f"authority's certificates is incomplete ({first_line(exc)}); give the CA with --chain "
        "and its current CRL with --crl"
    )


# --- verify: what a report's timestamps prove ---------------------------------------------------


def timestamp_context(trust: TrustPolicy, token_certs: Sequence[Any] = ()) -> Any:
    """What a timestamp's authority must chain to: the ``--trust`` roots. Under ``--key`` no CA
    is given, so the token is checked against its own certificate (intact and sound; whose it
    is, a note says)."""
    from pyhanko_certvalidator import ValidationContext

    from reef_forensics.report.pdf_signing import asn1_certificate

    roots = [asn1_certificate(c) for c in trust.roots] if trust.roots else list(token_certs)
    return ValidationContext(trust_roots=roots, allow_fetching=False)


def token_certificates(signed_data: Any) -> list[Any]:
    """The certificates a timestamp token carries (asn1crypto)."""
    return [c.chosen for c in signed_data["certificates"] or () if c.name == "certificate"]


def signature_token_certificates(embedded: Any) -> list[Any]:
    """The certificates of the signature timestamp token in ``embedded``'s unsigned attributes."""
    attributes = embedded.signer_info["unsigned_attrs"]
    for attribute in attributes if attributes.native is not None else ():
        if attribute["type"].native == "signature_time_stamp_token":
            return token_certificates(attribute["values"][0]["content"])
    return []


def _when(value: Any) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _authority(status: Any) -> str:
    from cryptography import x509

    return x509.load_der_x509_certificate(status.signing_cert.dump()).subject.rfc4514_string()


def _describe(kind: str, status: Any, trust: TrustPolicy) -> dict[str, Any]:
    return {
        "kind": kind,
        "time": _when(status.timestamp),
        "authority": _authority(status),
        "intact": bool(status.intact and status.valid),
        "trusted": bool(status.trusted) if trust.roots else None,
    }


def _timestamp_check(kind: str, item: dict[str, Any], result: VerificationResult) -> None:
    where = f"{item['time']} by {item['authority']}"
    if not item["intact"]:
        result.add(
            f"{kind} timestamp",
            False,
            f"the RFC 3161 {kind} timestamp token is not intact (its signature or its "
            f"message imprint does not hold): the time it claims ({where}) is not proven",
        )
    elif item["trusted"] is False:
        result.add(
            f"{kind} timestamp",
            False,
            f"the {kind} timestamp ({where}) is intact, but its authority is not trusted: it "
            "does not chain to --trust with the timeStamping key usage (give the TSA's CA with "
            "--trust to accept it)",
        )
    else:
        result.add(f"{kind} timestamp", True, f"RFC 3161 {kind} timestamp: {where}")


def check_timestamps(
    signature_status: Any,
    doc_timestamps: Sequence[Any],
    trust: TrustPolicy,
    result: VerificationResult,
) -> None:
    """The report's time: the signature timestamp in the certification signature (B-T) and the
    document timestamps after it (B-LTA), each with its time and authority, in the checks and in
    ``result.time``; without any, a note that the time is the signer's clock."""
    from pyhanko.sign.validation import validate_pdf_timestamp

    found = []
    claimed = signature_status.signer_reported_dt
    if signature_status.timestamp_validity is not None:
        found.append(_describe("signature", signature_status.timestamp_validity, trust))
        _timestamp_check("signature", found[-1], result)
    for embedded in doc_timestamps:
        try:
            context = timestamp_context(trust, token_certificates(embedded.signed_data))
            status = validate_pdf_timestamp(embedded, context)
        except Exception as exc:  # a malformed token: a failed check, never a crash
            result.add("document timestamp", False, f"cannot be validated: {first_line(exc)}")
            continue
        found.append(_describe("document", status, trust))
        _timestamp_check("document", found[-1], result)
    result.time = {
        "source": "RFC 3161 timestamp authority" if found else "signer's clock",
        "signer_claimed": _when(claimed) if claimed is not None else None,
        "timestamps": found,
    }
    if not found:
        result.notes.append(SIGNERS_CLOCK)
    elif not trust.roots:
        result.notes.append(
            "the timestamp authority was not checked against a CA (verified with --key); "
            "verify with --trust CA (the TSA's CA among them) to check it"
        )


# --- verify: the report's signatures and what follows them ---------------------------------------


def split_signatures(
    signatures: Sequence[Any], result: VerificationResult
) -> tuple[Any, list[Any]] | None:
    """The certification signature, and the document timestamps that may follow it (B-LTA)."""
    ordered = sorted(signatures, key=signed_end)
    kinds = [str(s.sig_object_type) for s in ordered]
    approvals = kinds.count("/Sig")
    if approvals != 1 or kinds[0] != "/Sig":
        result.add(
            "pdf",
            False,
            "the PDF carries no signature: it is not a signed reef-forensics report"
            if not approvals
            else f"the PDF carries {approvals} signatures; a report carries exactly one"
            if approvals > 1
            else "a document timestamp precedes the report's signature",
        )
        return None
    stamps = ordered[1:]
    result.add(
        "pdf",
        True,
        "a PDF with exactly one signature"
        + (f", and {len(stamps)} document timestamp(s) after it" if stamps else ""),
    )
    return ordered[0], stamps


def signed_end(embedded: Any) -> int:
    """Where the bytes a signature covers end: the end of its revision (0 when its byte range
    is malformed, which the signature checks then report)."""
    try:
        _, _, start, length = (int(n) for n in embedded.byte_range)
    except Exception:  # a hostile byte range: no crash here
        return 0
    return start + length


def check_coverage(
    status: Any, stamps: Sequence[Any], size: int, result: VerificationResult
) -> None:
    """The signature covers the whole file (B-B, B-T), or (B-LTA) what follows it is validation
    data and document timestamps only, as pyHanko's difference analysis finds, and the last
    document timestamp covers the whole file."""
    from pyhanko.sign.diff_analysis import ModificationLevel
    from pyhanko.sign.validation.status import SignatureCoverageLevel

    if status.coverage == SignatureCoverageLevel.ENTIRE_FILE:
        result.add("coverage", True, "the signature covers the whole file")
        return
    maintenance = (
        bool(stamps)
        and status.coverage == SignatureCoverageLevel.ENTIRE_REVISION
        and status.modification_level == ModificationLevel.LTA_UPDATES
    )
    last = bool(stamps) and signed_end(stamps[-1]) == size and starts_at_zero(stamps[-1])
    result.add(
        "coverage",
        maintenance and last,
        "the signature covers its revision; after it come only validation data and document "
        "timestamps, the last of which covers the whole file"
        if maintenance and last
        else f"the signature does not cover the whole file ({status.coverage}): "
        + (
            "bytes were added after the last document timestamp"
            if maintenance
            else "bytes were added after signing"
        ),
    )


def starts_at_zero(embedded: Any) -> bool:
    try:
        return int(embedded.byte_range[0]) == 0
    except Exception:  # a hostile byte range
        return False
