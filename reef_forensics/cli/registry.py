"""The registry commands: `reconcile`, `evidence`, and `verify models:/NAME/VERSION`."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from reef_forensics.cli.output import emit
from reef_forensics.errors import BadInputError


def add_commands(commands: Any) -> None:
    rec = commands.add_parser(
        "reconcile",
        help="queue every model version never queued or not screened against every victim",
        description="Walk the registry once: queue each version with no reef.status, and each "
        "done version lacking the screening tag of a victim (one added, or tagged, later). The "
        "worker does the same when it starts and every [worker] reconcile_seconds.",
    )
    rec.add_argument("--config", metavar="FILE", help="the TOML configuration ($REEF_CONFIG)")
    rec.add_argument("--json", metavar="FILE", help="write what was queued as JSON ('-': stdout)")
    rec.set_defaults(handler=cmd_reconcile)
    ev = commands.add_parser(
        "evidence",
        help="download a registered version's signed evidence",
        description="Download the signed fingerprint and screenings of models:/NAME/VERSION as "
        "DIR/fingerprint and DIR/screening/VICTIM.vN/ (findings, and report.pdf where made).",
    )
    ev.add_argument("uri", metavar="models:/NAME/VERSION")
    ev.add_argument("--out", required=True, metavar="DIR")
    add_registry_options(ev)
    ev.set_defaults(handler=cmd_evidence)


def add_registry_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="for models:/ arguments: the MLflow server (default: the configuration's, else "
        "MLFLOW_TRACKING_URI)",
    )
    parser.add_argument(
        "--config", metavar="FILE", help="the TOML configuration (default $REEF_CONFIG)"
    )


def _tracking_uri(args: argparse.Namespace) -> str:
    from reef_forensics.mlops.config import load_config

    uri = args.tracking_uri or load_config(args.config).tracking_uri
    if not uri:
        raise BadInputError("no tracking URI: give --tracking-uri or set MLFLOW_TRACKING_URI")
    return str(uri)


def cmd_reconcile(args: argparse.Namespace) -> int:
    from reef_forensics.mlops.config import load_config
    from reef_forensics.mlops.reconcile import reconcile

    config = load_config(args.config)
    if config.tracking_uri is None:
        raise BadInputError(
            "no tracking URI: set tracking_uri, REEF_TRACKING_URI or MLFLOW_TRACKING_URI"
        )
    found = reconcile(config, config.open_queue())
    if emit(args.json, found.as_json()):
        for uri in found.unqueued:
            print(f"queued {uri}: never queued")
        for uri, victims in found.unscreened.items():
            print(f"queued {uri}: not screened against {', '.join(victims)}")
        print(
            f"reconcile: {found.versions} version(s), "
            f"{len(found.unqueued) + len(found.unscreened)} queued"
        )
    return 0


def cmd_evidence(args: argparse.Namespace) -> int:
    from reef_forensics.mlops.registry import client
    from reef_forensics.mlops.registry_evidence import download_evidence

    out = download_evidence(client(_tracking_uri(args)), args.uri, Path(args.out))
    for path in sorted(p for p in out.rglob("*") if p.is_dir() and (p / "model.sig").is_file()):
        print(path)
    return 0


def verify_registered(args: argparse.Namespace, trust: Any) -> Any:
    """`verify models:/NAME/VERSION`: the signed evidence, and every ``reef.*`` tag against it."""
    from reef_forensics.mlops.registry import client
    from reef_forensics.mlops.registry_evidence import verify_version

    if args.evidence:
        raise BadInputError("--evidence applies to a report PDF, not to a model version")
    with tempfile.TemporaryDirectory(prefix="reef-verify-") as scratch:
        return verify_version(client(_tracking_uri(args)), args.path, trust, Path(scratch))
