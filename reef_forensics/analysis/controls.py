"""Positive controls: fingerprints of derivatives of the victim (fine-tuned, pruned, noised),
made on the spot so that a check shows what a derived model scores.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reef_forensics.errors import ComparisonError, first_line
from reef_forensics.formats.fingerprint import Fingerprint
from reef_forensics.formats.probes import ProbeSet

if TYPE_CHECKING:
    pass


def make_positive_controls(
    victim_model: str | os.PathLike[str],
    victim_fp: Fingerprint,
    workdir: Path,
    *,
    merge_with_model: str | os.PathLike[str] | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    device: str = "cpu",
    **_: Any,
) -> tuple[list[tuple[str, Fingerprint]], list[dict[str, str]]]:
    """Fingerprints of weight-space derivatives of the victim, on the victim's probe texts."""
    from reef_forensics.models.derivatives import (
        Unsupported,
        derivative_digest,
        standard_derivations,
    )
    from reef_forensics.models.fingerprinting import fingerprint_loaded
    from reef_forensics.models.loading import load_model, model_digest, resolve_model
    from reef_forensics.models.placement import resolve_device

    device = resolve_device(device)
    source = resolve_model(
        victim_model, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code
    )
    if model_digest(source).digest != victim_fp.model_digest:
        raise ComparisonError(
            f"{victim_model} is not the model the victim fingerprint was made from (model digests "
            "differ): positive controls must be derived from the victim itself"
        )
    partner = None
    if merge_with_model is not None:
        partner_source = resolve_model(
            merge_with_model, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code
        )
        partner = load_model(
            partner_source, device=device, trust_remote_code=trust_remote_code
        ).model
    probes = ProbeSet(name=str(victim_fp.manifest["probes"]["name"]), texts=victim_fp.texts)
    made: list[tuple[str, Fingerprint]] = []
    skipped: list[dict[str, str]] = []
    for index, derivation in enumerate(standard_derivations(list(victim_fp.texts), partner)):
        try:
            loaded = load_model(source, device=device, trust_remote_code=trust_remote_code)
            derivation.apply(loaded, index + 1)
            fingerprint = fingerprint_loaded(
                loaded,
                derivative_digest(victim_fp.model_digest, derivation.name, index + 1),
                workdir / f"positive-control-{index + 1}",
                probes=probes,
                pooling=victim_fp.pooling,  # type: ignore[arg-type]
                max_length=int(victim_fp.manifest["extraction"].get("max_length", 512)),
                padding_side=victim_fp.manifest["extraction"].get("padding_side", "right"),
                device=device,
                overwrite=True,
                layers=victim_fp.layer_selection,
            )
        except Unsupported as exc:
            skipped.append({"name": derivation.name, "skipped": str(exc)})
            continue
        except Exception as exc:  # a control that fails is reported, never fatal to the check
            skipped.append({"name": derivation.name, "skipped": f"failed: {first_line(exc)}"})
            continue
        made.append((derivation.name, fingerprint))
    return made, skipped
