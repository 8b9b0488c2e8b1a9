"""Whether two fingerprints measured alike: the same model, probe texts and extraction settings (`same_measurement`), and the same layers (`layer_selection_mismatch`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass
from reef_forensics.formats.fingerprint import Fingerprint


def layer_selection_mismatch(a: Fingerprint, b: Fingerprint) -> str | None:
    """Why two fingerprints' layer selections differ, or None when they took the same layers
    (both every layer, or both the same ``--layers``): comparisons need the same selection."""
    if a.layer_selection == b.layer_selection:
        return None
    return (
        f"{a.path} holds {_selection_words(a)} but {b.path} holds {_selection_words(b)}: "
        "fingerprint both with the same --layers"
    )


def same_measurement(a: Fingerprint, b: Fingerprint) -> bool:
    """Whether two fingerprints measured the same thing: the same model bytes (and registered
    version), the same probe texts, the same extraction settings and format. They may differ in
    when they were made, by which release, and in the last bits of the floats."""

    def what(fingerprint: Fingerprint) -> Any:
        manifest = fingerprint.manifest
        return (
            manifest["format_version"],
            manifest["model"]["digest"],
            manifest["model"].get("registry"),
            manifest["probes"]["digest"],
            manifest["extraction"],
            fingerprint.layers,
        )

    return bool(what(a) == what(b))


def _selection_words(fingerprint: Fingerprint) -> str:
    chosen = fingerprint.layer_selection
    if chosen is None:
        return f"every layer ({len(fingerprint.layers)})"
    return "only layers " + ",".join(str(i) for i in chosen)
