"""Invariance controls: the victim's layer against transformed copies of itself (orthogonal rotation, scaling, permutation), each of which CKA must score 1."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from reef_forensics.similarity.cka import (
    CkaMethod,
    cka,
)

if TYPE_CHECKING:
    pass
from reef_forensics.analysis.calibration import _clean


def invariance_controls(
    features: np.ndarray, method: CkaMethod, seed: int = 0
) -> list[dict[str, Any]]:
    """The victim's layer against transformed copies of itself: each must score 1."""
    rng = np.random.default_rng(seed)
    x = np.asarray(features, dtype=np.float64)
    q, _ = np.linalg.qr(rng.normal(size=(x.shape[1], x.shape[1])))
    transforms = {
        "orthogonal transform": x @ q,
        "feature permutation": x[:, rng.permutation(x.shape[1])],
        "isotropic scaling x7.5": 7.5 * x,
    }
    if method.standardize:  # z-scoring is not rotation invariant: test what it is invariant to
        transforms["orthogonal transform"] = x * rng.uniform(0.1, 10.0, size=x.shape[1])
        transforms = {
            ("per-feature scaling" if k == "orthogonal transform" else k): v
            for k, v in transforms.items()
        }
    return [{"name": name, "score": _clean(cka(x, y, method))} for name, y in transforms.items()]
