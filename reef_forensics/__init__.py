"""reef-forensics: evidence that one language model was (or was not) derived from another.

The public Python API (the CLI and the MLflow plugins are thin adapters over it):

- `load_probes` / `ProbeSet`: the fixed texts every model reads.
- `fingerprint_model`: a model on disk -> a fingerprint directory.
- `read_fingerprint` / `Fingerprint`: open and integrity-check a fingerprint.
- `compare_fingerprints` / `Comparison`: the layer-by-layer CKA between two fingerprints.
- `run_case` / `Case`: a check, its signed findings and its report, written together.
- `FindingsRecord`: the findings, typed (frozen dataclasses; `from_json` checks every field's
  type, `to_json` gives the same canonical bytes back).
- `sign_evidence` / `verify_evidence` / `TrustPolicy`: sign and verify evidence directories.
- `CkaMethod` and the pure functions in `reef_forensics.similarity.cka`.
- `ReefError` and its subclasses: every error raised on purpose.

Names that need torch (`fingerprint_model`) are imported on first use, so that reading and
comparing fingerprints stays light.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from reef_forensics._version import __version__
from reef_forensics.analysis.comparison import Comparison, compare_fingerprints
from reef_forensics.errors import (
    BadInputError,
    ComparisonError,
    ExtractionError,
    FingerprintError,
    ModelLoadError,
    ProbeSetError,
    ReefError,
)
from reef_forensics.formats.findings_record import FindingsRecord
from reef_forensics.formats.fingerprint import Fingerprint, read_fingerprint
from reef_forensics.formats.probes import ProbeSet, load_probes
from reef_forensics.similarity.cka import CkaMethod

if TYPE_CHECKING:
    from reef_forensics.casework import Case, run_case
    from reef_forensics.crypto.results import TrustPolicy
    from reef_forensics.evidence.verify import sign_evidence, verify_evidence
    from reef_forensics.models.fingerprinting import fingerprint_loaded, fingerprint_model
    from reef_forensics.models.loading import load_model, model_digest, resolve_model

_LAZY = {
    "fingerprint_model": "reef_forensics.models.fingerprinting",
    "fingerprint_loaded": "reef_forensics.models.fingerprinting",
    "load_model": "reef_forensics.models.loading",
    "model_digest": "reef_forensics.models.loading",
    "resolve_model": "reef_forensics.models.loading",
    "run_case": "reef_forensics.casework",
    "Case": "reef_forensics.casework",
    "TrustPolicy": "reef_forensics.crypto.results",
    "sign_evidence": "reef_forensics.evidence.verify",
    "verify_evidence": "reef_forensics.evidence.verify",
}

__all__ = [
    "BadInputError",
    "Case",
    "CkaMethod",
    "Comparison",
    "ComparisonError",
    "ExtractionError",
    "FindingsRecord",
    "Fingerprint",
    "FingerprintError",
    "ModelLoadError",
    "ProbeSet",
    "ProbeSetError",
    "ReefError",
    "TrustPolicy",
    "__version__",
    "compare_fingerprints",
    "fingerprint_loaded",
    "fingerprint_model",
    "load_model",
    "load_probes",
    "model_digest",
    "read_fingerprint",
    "resolve_model",
    "run_case",
    "sign_evidence",
    "verify_evidence",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
