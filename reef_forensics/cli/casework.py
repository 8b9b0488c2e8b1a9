"""`check` and `report`: a suspect against a victim, the findings and the signed PDF."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from reef_forensics.casework import Case, check_report_target
from reef_forensics.cli.options import (
    add_output_options,
    add_signing_options,
    add_timestamp_options,
    attached_warning,
    show_progress,
    signer_from_args,
    timestamping_from_args,
    warn_unverifiable,
)
from reef_forensics.cli.output import emit, warn
from reef_forensics.crypto.bundle import SIGNATURE_NAME
from reef_forensics.crypto.keys import (
    Signer,
    load_certificates,
)
from reef_forensics.crypto.results import TrustPolicy
from reef_forensics.errors import BadInputError
from reef_forensics.formats.findings_record import FindingsRecord
from reef_forensics.formats.fingerprint import is_fingerprint
from reef_forensics.formats.json_records import present
from reef_forensics.formats.naming import identity_of
from reef_forensics.formats.probes import DEFAULT_SPEC, load_probes
from reef_forensics.report.timestamps import Timestamping, level_text


def add_commands(commands: Any) -> None:
    """The check and report commands."""
    _add_check_command(commands)
    _add_report_command(commands)


def _add_check_command(commands: Any) -> None:
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
    add_signing_options(chk, required=False)
    add_timestamp_options(chk)
    add_output_options(chk)
    chk.set_defaults(handler=_cmd_check)


def _add_report_command(commands: Any) -> None:
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
    add_signing_options(rep, required=True)
    add_timestamp_options(rep)
    rep.add_argument(
        "--json", metavar="FILE", help="write the result as JSON to FILE ('-' for stdout)"
    )
    rep.set_defaults(handler=_cmd_report)


def _cmd_check(args: argparse.Namespace) -> int:
    import tempfile

    from reef_forensics.casework import run_case

    if args.resamples < 200:
        raise BadInputError(f"--resamples must be at least 200, got {args.resamples}")
    signer = signer_from_args(args)
    victim_is_model, tsa = _check_arguments(args, signer)
    probes = load_probes(args.probes) if victim_is_model else None
    with tempfile.TemporaryDirectory(prefix="reef-check-") as scratch:
        named = [identity_of(v) for v in (args.victim, args.suspect, *args.reference)]
        victim, suspect, victim_model, merge_with, *references = _local(args, Path(scratch))
        case = run_case(
            victim,
            suspect,
            references,
            workdir=scratch,
            out=args.out,
            signer=signer,
            report=args.report,
            tsa=tsa,
            overwrite=args.overwrite,
            identities=named,
            probes=probes,
            resamples=args.resamples,
            positive_controls=args.positive_controls,
            victim_model=victim_model,
            merge_with_model=merge_with,
            progress=show_progress(args),
            allow_pickle=args.allow_pickle,
            trust_remote_code=args.trust_remote_code,
            device=args.device,
        )
    if case.findings_file is not None and signer is not None:
        # what a report's `verify --trust CA --evidence` will be given
        given = [Path(p) for p in (victim, suspect, *references)]
        warn_unverifiable(
            signer,
            case.findings_file.parent,
            [p for p in given if is_fingerprint(p)] if args.report else [],
            attached=Path(victim),
        )
    if emit(args.json, case.findings.as_json()):
        print(_check_text(case.findings.record, case, signer is not None, tsa))
    return 0


def _check_arguments(
    args: argparse.Namespace, signer: Signer | None
) -> tuple[bool, Timestamping | None]:
    """Refuse what cannot work before the (long) check; whether the victim is a model, and the
    timestamp authority the report is to be timestamped by."""
    from reef_forensics.analysis.findings import check_findings_destination
    from reef_forensics.casework import check_report_target

    if args.report and (not args.out or signer is None or signer.certificate is None):
        raise BadInputError(
            "--report needs --out, --key and --cert (the report carries the signed findings)"
        )
    tsa = timestamping_from_args(args)
    if (args.tsa or args.crl) and not args.report:
        raise BadInputError("--tsa and --crl timestamp a report: they need --report")
    if args.report:
        check_report_target(args.report, overwrite=args.overwrite)
    if args.out:
        check_findings_destination(Path(args.out), overwrite=args.overwrite)
    victim_is_model = not is_fingerprint(args.victim)  # models:/ included
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
    return victim_is_model, tsa


def _check_text(record: FindingsRecord, case: Case, signed: bool, tsa: Timestamping | None) -> str:
    """What `check` prints: the verdict, its numbers and reasons, and what was written."""
    from reef_forensics.analysis.verdict import p_text, units_p_text

    p = p_text(record.p_value, record.log10_p_value)
    lines = [
        f"VERDICT: {record.verdict}",
        f"score {record.score:.4f} ({record.statistic})"
        if record.score is not None
        else "score: undefined",
        f"p-value {p} (every test, corrected), CKA calibrated on "
        f"{record.panel_size} reference model(s)"
        if record.p_value is not None or present(record.log10_p_value) is not None
        else f"p-value: none ({record.p_value_reason})",
        f"neuron matching: p {units_p_text(record)}",
        *[f"  {reason}" for reason in record.reasons],
    ]
    if case.report is not None:
        lines.append(f"report: {case.report} (signed PDF{level_text(tsa)})")
    if case.findings_file is not None:
        lines.append(
            f"findings: {case.findings_file}"
            + (f" (signed: {case.findings_file.parent / SIGNATURE_NAME})" if signed else "")
        )
    return "\n".join(lines)


def _local(args: argparse.Namespace, scratch: Path) -> list[Any]:
    """The victim, suspect, victim model, merge partner and references, each models:/NAME/VERSION
    among them downloaded into ``scratch`` from the tracking server (--tracking-uri, else
    MLFLOW_TRACKING_URI); the others as given."""
    values = [args.victim, args.suspect, args.victim_model, args.merge_with, *args.reference]
    if not any(v and v.startswith("models:/") for v in values):
        return values
    from reef_forensics.mlops.registry import localize

    return list(localize(values, scratch, args.tracking_uri))


def _cmd_report(args: argparse.Namespace) -> int:
    from reef_forensics.report.render import write_report

    signer = signer_from_args(args)
    assert signer is not None  # --key is required
    if signer.certificate is None:
        raise BadInputError("a report is signed with a certificate: pass --cert (and --chain)")
    check_report_target(args.out, overwrite=args.overwrite)
    tsa = timestamping_from_args(args)
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
    if emit(args.json, summary):
        print(
            f"report: {written} (PDF/A-4f, certification signature{level_text(tsa)}, "
            "evidence attached)"
        )
    return 0


def _warn_unattached_trust(findings: Path, victim: Path | None) -> None:
    """A report is signed with a certificate; the signatures it attaches must carry one too, or
    ``verify REPORT --trust CA_CERT`` finds it NOT VALID."""
    from reef_forensics.evidence.verify import signature_kind

    for what, folder in (("findings", findings), ("victim fingerprint", victim)):
        if folder is not None and signature_kind(folder) == "key":
            warn(attached_warning(what, folder))
