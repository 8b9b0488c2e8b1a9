"""Options that several commands share, and reading them back."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from reef_forensics.cli.output import warn
from reef_forensics.crypto.keys import (
    Signer,
    forget_passphrase,
    load_signer,
    permission_warnings,
    read_passphrase,
)
from reef_forensics.errors import BadInputError
from reef_forensics.formats.probes import DEFAULT_SPEC
from reef_forensics.report.timestamps import Timestamping


def add_signing_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument(
        "--key",
        required=required,
        metavar="KEY",
        help="sign with this private key (PEM or PKCS#12; ECDSA P-256)",
    )
    parser.add_argument(
        "--cert", metavar="CERT", help="the key's certificate, embedded in the signature"
    )
    parser.add_argument("--chain", metavar="CA", help="intermediate/CA certificates to embed")
    parser.add_argument(
        "--passphrase-file", metavar="FILE", help="read the key's passphrase from FILE"
    )


def add_timestamp_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tsa",
        metavar="URL",
        help="timestamp the report's signature at this RFC 3161 timestamp authority (PAdES B-T; "
        "default $REEF_TSA_URL)",
    )
    parser.add_argument(
        "--crl",
        metavar="FILE",
        action="append",
        default=[],
        help="the CA's current CRL (DER or PEM), repeated: with --tsa and --chain, embed the "
        "validation data and add a document timestamp (PAdES B-LTA)",
    )


def timestamping_from_args(args: argparse.Namespace) -> Timestamping | None:
    from reef_forensics.report.timestamps import TSA_ENV, timestamping

    return timestamping(args.tsa or os.environ.get(TSA_ENV) or None, args.crl)


def signer_from_args(args: argparse.Namespace) -> Signer | None:
    if not getattr(args, "key", None):
        if getattr(args, "cert", None) or getattr(args, "chain", None):
            raise BadInputError("--cert and --chain need --key")
        return None
    if getattr(args, "trust_remote_code", False) or getattr(args, "allow_pickle", False):
        raise BadInputError(
            "--key cannot be combined with --trust-remote-code or --allow-pickle: the model's own "
            "code would run next to the decrypted key; fingerprint first, then `reef-forensics sign`"
        )
    key_path = Path(args.key)
    signer = load_signer(
        key_path,
        passphrase=read_passphrase(args.passphrase_file),
        certificate=args.cert,
        chain=args.chain,
    )
    forget_passphrase()  # read once: no child inherits it, /proc/PID/environ no longer shows it
    for warning in permission_warnings(key_path, args.passphrase_file):
        warn(warning)
    return signer


def add_probe_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--probes",
        default=DEFAULT_SPEC,
        metavar="SPEC",
        help=f"builtin:NAME, FILE.txt|.jsonl|.csv, or hf:DATASET (default {DEFAULT_SPEC})",
    )
    parser.add_argument(
        "--probes-column", metavar="NAME", help="field or column holding the text (default text)"
    )
    parser.add_argument(
        "--probes-split", metavar="NAME", help="dataset split for hf: sets (default train)"
    )
    parser.add_argument("--probes-limit", type=int, metavar="N", help="keep only the first N texts")


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="the TOML configuration (default $REEF_CONFIG)"
    )


def add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", metavar="FILE", help="also write the result as JSON to FILE ('-' for stdout)"
    )
    progress = parser.add_mutually_exclusive_group()
    progress.add_argument(
        "--progress", dest="progress", action="store_true", default=None, help="show a progress bar"
    )
    progress.add_argument(
        "--no-progress", dest="progress", action="store_false", help="hide the progress bar"
    )


def show_progress(args: argparse.Namespace) -> bool:
    return sys.stderr.isatty() if args.progress is None else bool(args.progress)


def warn_unverifiable(
    signer: Signer, made: Path, evidence: Sequence[Path] = (), attached: Path | None = None
) -> None:
    """Say, when it is made, what the trust model it was signed for cannot check: evidence
    signed with a bare key (no certificate) verifies only with ``verify --key``, never with
    ``verify --trust CA``; findings signed with a certificate rest on fingerprints that
    ``verify REPORT --trust CA --evidence`` checks only if they carry one too, and a report's
    ``attached`` victim fingerprint signature is checked against the CA with the report."""
    from reef_forensics.evidence.verify import signature_kind

    if signer.certificate is None:
        warn(
            f"{made} is signed with a bare key (no --cert): `verify --key PUBLIC_KEY` can check "
            "it, `verify --trust CA_CERT` cannot (nor a report resting on it); pass --cert to "
            "sign for a CA"
        )
        return
    for folder in evidence:
        kind = signature_kind(folder)
        if kind == "certificate":
            continue
        if kind == "key" and folder == attached:
            warn(attached_warning("victim fingerprint", folder))
            continue
        state = "is not signed" if kind is None else "is signed with a bare key"
        warn(
            f"the fingerprint {folder} {state}: `verify REPORT --trust CA_CERT --evidence "
            f"{folder} ...` will find it NOT VALID; sign it with `reef-forensics sign {folder} "
            "--key KEY --cert CERT`"
        )


def attached_warning(what: str, folder: Path) -> str:
    return (
        f"the {what} {folder} is signed with a bare key and the report attaches that signature: "
        "`verify REPORT --trust CA_CERT` will find the report NOT VALID; sign it with "
        f"`reef-forensics sign {folder} --key KEY --cert CERT` first"
    )
