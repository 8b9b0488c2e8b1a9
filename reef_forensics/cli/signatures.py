"""`keys`, `sign` and `verify`: signing keys, signing evidence, and checking it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from reef_forensics.cli.options import (
    add_signing_options,
    signer_from_args,
    warn_unverifiable,
)
from reef_forensics.cli.output import emit
from reef_forensics.cli.registry import add_registry_options, verify_registered
from reef_forensics.crypto.bundle import SIGNATURE_NAME
from reef_forensics.crypto.keys import (
    PASSPHRASE_ENV,
    describe_key_file,
    generate_keys,
    key_fingerprint,
    load_certificates,
    load_public_key,
    read_passphrase,
)
from reef_forensics.crypto.results import TrustPolicy
from reef_forensics.errors import BadInputError
from reef_forensics.evidence.verify import sign_evidence, verify_evidence


def add_commands(commands: Any) -> None:
    """The keys, sign and verify commands."""
    _add_keys_command(commands)
    _add_sign_command(commands)
    _add_verify_command(commands)


def _add_keys_command(commands: Any) -> None:
    keys = commands.add_parser(
        "keys",
        help="generate or inspect signing keys",
        description="Signing keys are ECDSA P-256. Passphrases come from the REEF_KEY_PASSPHRASE "
        "environment variable or --passphrase-file, never from the command line.",
    )
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    generate = key_commands.add_parser(
        "generate",
        help="write a new key pair, a development CA and a signer certificate",
        description="Write signing-key.pem (encrypted PKCS#8, mode 0600), signing-key.pub.pem, "
        "and for development and tests a CA (ca-key.pem, ca-cert.pem) and signer-cert.pem.",
    )
    generate.add_argument("--out", required=True, metavar="DIR", help="directory for the key files")
    generate.add_argument("--passphrase-file", metavar="FILE", help="read the passphrase from FILE")
    generate.add_argument(
        "--name", default="reef-forensics signer", help="the certificate's common name"
    )
    generate.add_argument(
        "--email", default="signer@reef-forensics.invalid", help="the certificate's e-mail"
    )
    generate.add_argument(
        "--json", metavar="FILE", help="write the result as JSON to FILE ('-' for stdout)"
    )
    generate.set_defaults(handler=_cmd_keys_generate)
    show = key_commands.add_parser(
        "show",
        help="print a key's fingerprint (sha256 of its SubjectPublicKeyInfo)",
        description="Print the fingerprint of a public key, certificate, private key or PKCS#12 file.",
    )
    show.add_argument("path", metavar="PATH", help="key, certificate or PKCS#12 file")
    show.add_argument("--passphrase-file", metavar="FILE", help="passphrase of an encrypted key")
    show.add_argument(
        "--json", metavar="FILE", help="write the result as JSON to FILE ('-' for stdout)"
    )
    show.set_defaults(handler=_cmd_keys_show)


def _add_sign_command(commands: Any) -> None:
    sign = commands.add_parser(
        "sign",
        help="sign an evidence directory (a fingerprint)",
        description=f"Sign every file of DIR into DIR/{SIGNATURE_NAME} (OpenSSF model-signing "
        "bundle: DSSE over an in-toto statement listing each file's sha256).",
    )
    sign.add_argument("directory", metavar="DIR", help="the directory to sign")
    add_signing_options(sign, required=True)
    sign.add_argument(
        "--json", metavar="FILE", help="write the result as JSON to FILE ('-' for stdout)"
    )
    sign.set_defaults(handler=_cmd_sign)


def _add_verify_command(commands: Any) -> None:
    verify = commands.add_parser(
        "verify",
        help="check a signed evidence directory",
        description="Check the signature, every file's digest, that no file is missing or added, "
        "and the fingerprint's internal consistency; for a report PDF, its signature, its "
        "attached evidence, that every page shows exactly what the attached signed findings "
        "render to, its timestamps, and (with --evidence) every number recomputed. "
        "Exit 0 when valid, 1 when not, 2 for bad input.",
    )
    verify.add_argument(
        "path",
        metavar="PATH",
        help="signed directory, a report PDF, or models:/NAME/VERSION (its evidence and tags)",
    )
    trust = verify.add_mutually_exclusive_group(required=True)
    trust.add_argument("--key", metavar="PUB", help="the signer's public key (or certificate)")
    trust.add_argument(
        "--trust", metavar="CA_CERT", help="CA certificate(s) the signer's chain must reach"
    )
    verify.add_argument(
        "--evidence",
        nargs="+",
        default=[],
        metavar="DIR",
        help="for a report: the signed fingerprints it rests on; every number is recomputed",
    )
    verify.add_argument(
        "--json", metavar="FILE", help="write the result as JSON to FILE ('-' for stdout)"
    )
    add_registry_options(verify)
    verify.set_defaults(handler=_cmd_verify)


def _cmd_keys_generate(args: argparse.Namespace) -> int:
    passphrase = read_passphrase(args.passphrase_file)
    if passphrase is None:
        raise BadInputError(
            f"a passphrase is needed to protect the key: set {PASSPHRASE_ENV} or pass --passphrase-file"
        )
    made = generate_keys(args.out, passphrase, common_name=args.name, email=args.email)
    summary = {
        "private_key": str(made.private_key),
        "public_key": str(made.public_key),
        "ca_certificate": str(made.ca_certificate),
        "signer_certificate": str(made.signer_certificate),
        "fingerprint": "sha256:" + made.fingerprint,
    }
    if emit(args.json, summary):
        print(
            f"new ECDSA P-256 key sha256:{made.fingerprint}\n"
            f"  private key         {made.private_key} (encrypted, mode 0600)\n"
            f"  public key          {made.public_key}\n"
            f"  signer certificate  {made.signer_certificate}\n"
            f"  development CA      {made.ca_certificate} (for tests and trials, not production)"
        )
    return 0


def _cmd_keys_show(args: argparse.Namespace) -> int:
    path = Path(args.path)
    described = describe_key_file(path, passphrase=read_passphrase(args.passphrase_file))
    if emit(args.json, described):
        extra = f"  {described['subject']}" if described.get("subject") else ""
        print(f"{described['fingerprint']}  {described['type']}  {described['kind']} {path}{extra}")
    return 0


def _cmd_sign(args: argparse.Namespace) -> int:
    signer = signer_from_args(args)
    assert signer is not None
    bundle = sign_evidence(args.directory, signer)
    warn_unverifiable(signer, Path(args.directory))
    summary = {"signature": str(bundle), "signer": "sha256:" + key_fingerprint(signer.public_key)}
    if emit(args.json, summary):
        print(f"signed {args.directory}: {bundle} (key {summary['signer']})")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    if args.key:
        trust = TrustPolicy(public_key=load_public_key(args.key))
    else:
        trust = TrustPolicy(roots=tuple(load_certificates(args.trust)))
    if args.path.startswith("models:/"):
        result = verify_registered(args, trust)
    elif Path(args.path).is_file():
        from reef_forensics.report.verification import verify_report

        result = verify_report(args.path, trust, args.evidence)
    elif args.evidence:
        raise BadInputError("--evidence applies to a report PDF, not to a directory")
    else:
        result = verify_evidence(args.path, trust)
    if emit(args.json, result.as_json()):
        for check in result.checks:
            print(f"{'ok  ' if check.ok else 'FAIL'}  {check.name}: {check.detail}")
        for note in result.notes:
            print(f"note  {note}")
        print(f"{'VALID' if result.valid else 'NOT VALID'}: {args.path}")
    return 0 if result.valid else 1
