"""reef-forensics: evidence that one language model was (or was not) derived from another.

The public Python API (the CLI and the MLflow plugins are thin adapters over it):

- `load_probes` / `ProbeSet`: the fixed texts every model reads.
- `fingerprint_model`: a model on disk -> a fingerprint directory.
- `read_fingerprint` / `Fingerprint`: open and integrity-check a fingerprint.
- `compare_fingerprints` / `Comparison`: the layer-by-layer CKA between two fingerprints.
- `CkaMethod` and the pure functions in `reef_forensics.cka`.
- `ReefError` and its subclasses: every error raised on purpose.

Names that need torch (`fingerprint_model`) are imported on first use, so that reading and
comparing fingerprints stays light.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("reef-forensics")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from .cka import CkaMethod
from .comparison import Comparison, compare_fingerprints
from .errors import (
    BadInputError,
    ComparisonError,
    ExtractionError,
    FingerprintError,
    ModelLoadError,
    ProbeSetError,
    ReefError,
)
from .fingerprint import Fingerprint, read_fingerprint
from .probes import ProbeSet, load_probes

if TYPE_CHECKING:
    from .fingerprinting import fingerprint_loaded, fingerprint_model
    from .models import load_model, model_digest, resolve_model

_LAZY = {
    "fingerprint_model": "fingerprinting",
    "fingerprint_loaded": "fingerprinting",
    "load_model": "models",
    "model_digest": "models",
    "resolve_model": "models",
}

__all__ = [
    "BadInputError",
    "CkaMethod",
    "Comparison",
    "ComparisonError",
    "ExtractionError",
    "Fingerprint",
    "FingerprintError",
    "ModelLoadError",
    "ProbeSet",
    "ProbeSetError",
    "ReefError",
    "__version__",
    "compare_fingerprints",
    "fingerprint_loaded",
    "fingerprint_model",
    "load_model",
    "load_probes",
    "model_digest",
    "read_fingerprint",
    "resolve_model",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
