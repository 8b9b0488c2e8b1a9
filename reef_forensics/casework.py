"""A case: one check, its signed findings and its signed report, written together.

`run_case` is the one way from a victim, a suspect and references to evidence on disk; the
command line (`check`), the registry worker (each screening) and the MLflow evaluator all call
it, so that what is checked, what is written and in which order is the same everywhere:

1. the destinations are checked before any work (a check can take hours);
2. `check` (fingerprints given) or `check_paths` (models or fingerprint folders given, models
   fingerprinted on the victim's probe texts into ``workdir``) measures and decides;
3. the findings are written (signed when a signer is given) and, when a report is asked for
   and the verdict is one of ``report_verdicts``, the PDF is rendered from those very findings
   and signed. Both or neither: the findings are staged in a hidden folder beside ``out`` under
   their final name (which their signature names), the report is written (atomically), and
   only then are the findings moved into place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reef_forensics.analysis.check import check
from reef_forensics.analysis.check_paths import check_paths
from reef_forensics.analysis.findings import (
    FINDINGS_FILE,
    Findings,
    check_findings_destination,
)
from reef_forensics.analysis.verdict import VERDICTS
from reef_forensics.errors import BadInputError, KeyMaterialError
from reef_forensics.formats.fingerprint import Fingerprint, is_fingerprint
from reef_forensics.formats.fingerprint_writer import replace_directory

if TYPE_CHECKING:
    from reef_forensics.crypto.keys import Signer
    from reef_forensics.report.timestamps import Timestamping

Source = str | os.PathLike[str] | Fingerprint


@dataclass(frozen=True)
class Case:
    """What a case produced: the findings, and where they and the report were written."""

    findings: Findings
    findings_file: Path | None = None
    report: Path | None = None


def check_report_target(path: str | os.PathLike[str], *, overwrite: bool) -> None:
    """Refuse a report path that cannot be written, before the work."""
    target = Path(path)
    if target.is_dir():
        raise BadInputError(f"{target} is a directory: give the report's file name")
    if target.exists() and not overwrite:
        raise BadInputError(f"{target} already exists (pass --overwrite to replace it)")
    if not target.parent.is_dir():
        raise BadInputError(f"the folder {target.parent} does not exist")


def run_case(
    victim: Source,
    suspect: Source,
    references: Sequence[Source] = (),
    *,
    workdir: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    signer: Signer | None = None,
    report: str | os.PathLike[str] | None = None,
    report_verdicts: Collection[str] = VERDICTS,
    tsa: Timestamping | None = None,
    overwrite: bool = False,
    **check_options: Any,
) -> Case:
    """Check ``suspect`` against ``victim`` calibrated on ``references`` and write the evidence:
    the findings into ``out`` (when given) and the signed report into ``report`` (when given,
    and the verdict is one of ``report_verdicts``). ``check_options`` go to `check` when every
    source is a `Fingerprint`, else to `check_paths`."""
    if report is not None:
        if out is None:
            raise BadInputError("a report carries the signed findings: give where to write them")
        if signer is None or signer.certificate is None:
            raise KeyMaterialError("a report is signed with a certificate: pass --cert")
        check_report_target(report, overwrite=overwrite)
    if out is not None:
        check_findings_destination(Path(out), overwrite=overwrite)
    sources = [victim, suspect, *references]
    if all(isinstance(s, Fingerprint) for s in sources):
        fingerprints: list[Fingerprint] = [s for s in sources if isinstance(s, Fingerprint)]
        findings = check(fingerprints[0], fingerprints[1], fingerprints[2:], **check_options)
    else:
        paths = [s.path if isinstance(s, Fingerprint) else s for s in sources]
        findings = check_paths(paths[0], paths[1], paths[2:], workdir=workdir, **check_options)
    if out is None:
        return Case(findings)
    if report is None or findings.verdict not in report_verdicts:
        written = findings.write(out, signer=signer, overwrite=overwrite)
        return Case(findings, written)
    assert signer is not None
    victim_fingerprint = _victim_fingerprint(victim, Path(workdir))
    written, made = _write_both(findings, Path(out), Path(report), signer, victim_fingerprint, tsa)
    return Case(findings, written, made)


def _victim_fingerprint(victim: Source, workdir: Path) -> Path:
    """The victim's fingerprint folder, whose signed manifest the report attaches: the one given,
    or the one `check_paths` made of the victim model."""
    if isinstance(victim, Fingerprint):
        return victim.path
    return Path(victim) if is_fingerprint(victim) else workdir / "victim"


def _write_both(
    findings: Findings,
    out: Path,
    report: Path,
    signer: Signer,
    victim: Path,
    tsa: Timestamping | None,
) -> tuple[Path, Path]:
    """The signed findings and their report, both or neither (see the module's text)."""
    from reef_forensics.report.render import write_report

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
