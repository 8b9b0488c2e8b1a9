"""Fingerprint two local models and check one against the other, from Python.

    python examples/python_api.py DIR

Everything the command line does is one call of the Python API: build (here: tiny models made on
the spot, as there is no model hub), fingerprint, check against a reference panel, sign the
findings, render and verify the signed report. Prints the verdict and where the files are.
"""

from __future__ import annotations

import sys
from pathlib import Path

from reef_forensics import fingerprint_model, load_probes
from reef_forensics.analysis.check import check
from reef_forensics.crypto.keys import generate_keys, load_signer
from reef_forensics.crypto.results import TrustPolicy
from reef_forensics.demo.toy_models import derive, make_model
from reef_forensics.formats.probes import ProbeSet
from reef_forensics.report.render import write_report
from reef_forensics.report.verification import verify_report


def main(out: Path) -> int:
    texts = load_probes().texts
    probes = ProbeSet(name="builtin:default[:200]", texts=texts[:200])  # faster, still enough

    # 0. signing keys (a P-256 key with a development CA; bring your own in production)
    passphrase = b"example-only"
    key_dir = out / "keys"
    if not (key_dir / "signing-key.pem").exists():
        generate_keys(key_dir, passphrase)
    signer = load_signer(
        key_dir / "signing-key.pem", passphrase=passphrase, certificate=key_dir / "signer-cert.pem"
    )

    # 1. the models: a victim, a suspect derived from it, three independent references
    victim_dir = make_model(out / "models/victim", texts, seed=0)
    suspect_dir = derive(victim_dir, out / "models/suspect", noise=0.1, prune=0.3)
    reference_dirs = [make_model(out / f"models/ref{s}", texts, seed=s) for s in (21, 22, 23)]

    # 2. signed fingerprints: per-layer representations of the same probe texts
    def fingerprint(model: Path, name: str):  # type: ignore[no-untyped-def]
        return fingerprint_model(
            model, out / "fp" / name, probes=probes, signer=signer, overwrite=True
        )

    victim = fingerprint(victim_dir, "victim")
    suspect = fingerprint(suspect_dir, "suspect")
    references = [fingerprint(d, d.name) for d in reference_dirs]

    # 3. the calibrated check, signed findings, the signed report
    findings = check(victim, suspect, references)
    findings.write(out / "findings", signer=signer, overwrite=True)
    report = write_report(out / "findings", out / "report.pdf", signer, victim=victim.path)

    # 4. what an auditor runs: every check, every number recomputed from the fingerprints
    from reef_forensics.crypto.keys import load_certificates

    trust = TrustPolicy(roots=tuple(load_certificates(key_dir / "ca-cert.pem")))
    result = verify_report(
        report, trust, [victim.path, suspect.path, *[r.path for r in references]]
    )
    record = findings.as_json()
    print(
        f"verdict: {record['verdict']} (score {record['score']:.3f}, p-value {record['p_value']:.2g})"
    )
    print(f"report: {report} ({'VALID' if result.valid else 'NOT VALID'})")
    for failed in (c for c in result.checks if not c.ok):
        print(f"  FAIL {failed.name}: {failed.detail}")
    return 0 if result.valid else 1


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python examples/python_api.py DIR")
    sys.exit(main(Path(sys.argv[1])))
