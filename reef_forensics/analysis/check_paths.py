"""`check` on paths: each a fingerprint folder, or a model that is fingerprinted first on the victim's probe texts (`as_fingerprint`), with positive controls made from the victim model when asked for."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reef_forensics.analysis.controls import make_positive_controls
from reef_forensics.analysis.findings import Findings
from reef_forensics.analysis.verdict import (
    DecisionRule,
)
from reef_forensics.formats.fingerprint import Fingerprint, is_fingerprint
from reef_forensics.formats.probes import ProbeSet, load_probes

if TYPE_CHECKING:
    pass
from reef_forensics.analysis.check import check


def _positive_controls(
    victim: str | os.PathLike[str] | None,
    victim_fp: Fingerprint,
    work: Path,
    *,
    victim_model: str | os.PathLike[str] | None,
    merge_with_model: str | os.PathLike[str] | None,
    **fingerprint_options: Any,
) -> tuple[list[tuple[str, Fingerprint]], list[dict[str, str]], str | None]:
    """The positive controls made of the victim model (none when ``victim`` is None: not asked
    for), the ones that could not be made, and why none were made, if so."""
    if victim is None:
        return [], [], "positive controls were not asked for"
    if is_fingerprint(victim) and victim_model is None:
        return (
            [],
            [],
            "positive controls need the victim model (weight-space derivatives are made from "
            "it); the victim was given as a fingerprint without --victim-model",
        )
    controls, skips = make_positive_controls(
        victim_model or victim,
        victim_fp,
        work,
        merge_with_model=merge_with_model,
        **fingerprint_options,
    )
    return controls, skips, None


def as_fingerprint(
    source: str | os.PathLike[str],
    *,
    probes_from: Fingerprint | None,
    workdir: Path,
    label: str,
    probes: ProbeSet | None = None,
    progress: bool = False,
    identity: Mapping[str, Any] | None = None,
    **fingerprint_options: Any,
) -> Fingerprint:
    """A fingerprint directory as it is, or a model fingerprinted on the victim's probe texts
    (named by ``identity``, `naming.identity_of`, when given)."""
    from reef_forensics.formats.fingerprint import read_fingerprint

    path = Path(source)
    if is_fingerprint(path):
        return read_fingerprint(path)
    from reef_forensics.models.fingerprinting import fingerprint_model

    if probes_from is not None:  # the victim's texts, pooling and truncation: comparable rows
        probes = ProbeSet(name=str(probes_from.manifest["probes"]["name"]), texts=probes_from.texts)
        extraction = probes_from.manifest["extraction"]
        fingerprint_options.setdefault("pooling", extraction.get("pooling"))
        fingerprint_options.setdefault("max_length", int(extraction.get("max_length", 512)))
        fingerprint_options.setdefault("layers", extraction.get("layers"))
    return fingerprint_model(
        path,
        workdir / label,
        probes=probes or load_probes(),
        progress=progress,
        overwrite=True,
        **(identity or {}),
        **fingerprint_options,
    )


def check_paths(
    victim: str | os.PathLike[str],
    suspect: str | os.PathLike[str],
    references: Sequence[str | os.PathLike[str]] = (),
    *,
    workdir: str | os.PathLike[str],
    probes: ProbeSet | None = None,
    resamples: int = 200,
    rule: DecisionRule | None = None,
    progress: bool = False,
    positive_controls: bool = True,
    victim_model: str | os.PathLike[str] | None = None,
    merge_with_model: str | os.PathLike[str] | None = None,
    identities: Sequence[Mapping[str, Any] | None] = (),
    **fingerprint_options: Any,
) -> Findings:
    """`check` on paths that are fingerprints or models (models are fingerprinted first, on the
    victim's probe texts, into ``workdir``); ``identities``: the victim's, the suspect's and
    each reference's name (`naming.identity_of`), in that order, where known."""
    named = [*identities, *[None] * (2 + len(references))]
    work = Path(workdir)
    victim_fp = as_fingerprint(
        victim,
        probes_from=None,
        workdir=work,
        label="victim",
        probes=probes,
        progress=progress,
        identity=named[0],
        **fingerprint_options,
    )
    suspect_fp = as_fingerprint(
        suspect,
        probes_from=victim_fp,
        workdir=work,
        label="suspect",
        progress=progress,
        identity=named[1],
        **fingerprint_options,
    )
    reference_fps = [
        as_fingerprint(
            r,
            probes_from=victim_fp,
            workdir=work,
            label=f"reference-{i + 1}",
            progress=progress,
            identity=named[2 + i],
            **fingerprint_options,
        )
        for i, r in enumerate(references)
    ]
    controls, skips, skipped = _positive_controls(
        victim if positive_controls else None,
        victim_fp,
        work,
        victim_model=victim_model,
        merge_with_model=merge_with_model,
        **fingerprint_options,
    )
    return check(
        victim_fp,
        suspect_fp,
        reference_fps,
        positive_controls=controls,
        positive_skips=skips,
        skipped_positive_controls=skipped,
        rule=rule,
        resamples=resamples,
        progress=progress,
    )
