"""Report benchmark: how long rendering and signing a typical report takes, stage by stage.

    make quickstart    # once: signed findings, fingerprints and keys in quickstart-output/
    REEF_KEY_PASSPHRASE=demo-only-passphrase python bench/bench_report.py [--repeat 5]

Stages, each timed over ``--repeat`` runs in one process (the first run also pays imports and
font loading, reported apart as "cold"): verifying the findings (`load_evidence`), drawing the
three SVG charts, filling the templates (HTML), WeasyPrint's layout and PDF/A-4f writing, and
pyHanko's certification signature. The target (issue 6) is under 5 seconds for the whole.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from reef_forensics.crypto.keys import load_signer, read_passphrase
from reef_forensics.crypto.results import TrustPolicy
from reef_forensics.report import charts
from reef_forensics.report.pdf_signing import sign_pdf
from reef_forensics.report.render import load_evidence, render_html, render_pdf, signer_identity


def timed(function: Any, *args: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    value = function(*args)
    return time.perf_counter() - started, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--demo", default="quickstart-output", help="the quick start's output folder"
    )
    parser.add_argument("--suspect", default="suspect-derived")
    parser.add_argument(
        "--findings", help="another signed findings directory (default: the demo's)"
    )
    parser.add_argument("--victim", help="its victim fingerprint (default: the demo's)")
    parser.add_argument("--keys", help="the keys folder that signed it (default: the demo's)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", help="write the results as JSON here")
    args = parser.parse_args()
    demo = Path(args.demo)
    keys = Path(args.keys) if args.keys else demo / "keys"
    signer = load_signer(
        keys / "signing-key.pem",
        passphrase=read_passphrase(),
        certificate=keys / "signer-cert.pem",
    )
    assert signer.certificate is not None
    trust = TrustPolicy(public_key=signer.public_key)
    findings = Path(args.findings) if args.findings else demo / f"findings-{args.suspect}"
    victim = Path(args.victim) if args.victim else demo / "fingerprints/victim"

    def whole() -> bytes:
        evidence = load_evidence(findings, trust, victim=victim)
        return sign_pdf(render_pdf(evidence, signer), signer)

    cold, pdf = timed(whole)
    stages: dict[str, list[float]] = {
        k: [] for k in ("verify findings", "charts", "html", "pdf", "sign", "total")
    }
    for _ in range(args.repeat):
        t_verify, evidence = timed(lambda: load_evidence(findings, trust, victim=victim))
        t_charts, _ = timed(
            lambda record: (
                charts.heatmap(
                    record.per_layer.matrix,
                    record.per_layer.layers_victim,
                    record.per_layer.layers_suspect,
                    [0] * len(record.per_layer.layers_victim),
                ),
                charts.stability(record.stability),
            ),
            evidence.record,
        )
        t_html, _ = timed(render_html, evidence, signer_identity(signer.certificate))
        t_pdf, unsigned = timed(render_pdf, evidence, signer)  # charts and HTML included
        t_sign, _ = timed(sign_pdf, unsigned, signer)
        stages["verify findings"].append(t_verify)
        stages["charts"].append(t_charts)
        stages["html"].append(t_html)
        stages["pdf"].append(t_pdf)
        stages["sign"].append(t_sign)
        stages["total"].append(t_verify + t_pdf + t_sign)
    median = {k: statistics.median(v) for k, v in stages.items()}
    print(f"report of {findings} ({len(pdf)} bytes signed), {args.repeat} runs, median seconds:")
    print(f"  cold (first run, imports and fonts included): {cold:.2f}")
    for name, value in median.items():
        print(f"  {name:<16} {value:.3f}")
    print("  (pdf includes charts and html; total = verify findings + pdf + sign)")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
                    "findings": str(findings),
                    "layers": len(evidence.record.per_layer.layers_victim),
                    "repeat": args.repeat,
                    "cold_seconds": cold,
                    "median_seconds": median,
                    "bytes": len(pdf),
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
