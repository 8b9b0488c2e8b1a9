"""Uncertainty and calibration for similarity scores: pure math on arrays.

- `bootstrap_curve`: 95% bands of the sample-size curve, from Gram matrices. Each resample
  draws N samples with replacement; the prefix of a resample is itself a resample of size n,
  so one running-sum pass per resample gives the band at every size.
- `null_calibration`: where a suspect's score sits among scores of independent reference
  models against the same victim: an empirical p-value (rank among the panel) and a parametric
  one (a normal fit to Fisher-z transformed reference scores).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .cka import Estimator, cka_curve


def bootstrap_curve(
    k: ArrayLike,
    l: ArrayLike,  # noqa: E741
    sizes: Sequence[int],
    estimator: Estimator = "debiased",
    *,
    resamples: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Lower and upper percentile bands of CKA on n samples, for each n in ``sizes``."""
    km, lm = np.asarray(k, dtype=np.float64), np.asarray(l, dtype=np.float64)
    total = km.shape[0]
    rng = np.random.default_rng(seed)
    curves = np.empty((resamples, len(sizes)))
    for b in range(resamples):
        idx = rng.integers(0, total, size=total)
        curves[b] = cka_curve(km[np.ix_(idx, idx)], lm[np.ix_(idx, idx)], sizes, estimator)
    tail = (1.0 - level) / 2.0 * 100.0
    with np.errstate(invalid="ignore"):
        low = np.nanpercentile(curves, tail, axis=0)
        high = np.nanpercentile(curves, 100.0 - tail, axis=0)
    return low, high


def fisher_z(r: ArrayLike) -> NDArray[np.float64]:
    """atanh, with scores clipped just inside (-1, 1) so that identical models stay finite."""
    return np.arctanh(np.clip(np.asarray(r, dtype=np.float64), -0.999999, 0.999999))


@dataclass(frozen=True)
class NullCalibration:
    """A score against the null distribution measured on independent references."""

    score: float
    references: tuple[float, ...]
    empirical_p: float | None  # (1 + #refs >= score) / (1 + k)
    parametric_p: float | None  # upper tail of a normal fitted to Fisher-z reference scores
    null_mean: float | None  # of the reference scores (Fisher-z scale, back-transformed)
    null_sd_z: float | None
    reason: str | None  # why a p-value is missing, when it is

    @property
    def panel_size(self) -> int:
        return len(self.references)


def null_calibration(score: float, references: Sequence[float]) -> NullCalibration:
    refs = tuple(float(r) for r in references if not math.isnan(r))
    if math.isnan(score):
        return NullCalibration(
            score, refs, None, None, None, None, "the suspect's score is undefined"
        )
    if not refs:
        return NullCalibration(
            score, refs, None, None, None, None, "no reference models were given"
        )
    empirical = (1 + sum(r >= score for r in refs)) / (1 + len(refs))
    if len(refs) < 2:
        return NullCalibration(
            score,
            refs,
            empirical,
            None,
            None,
            None,
            "a parametric p-value needs at least 2 references",
        )
    z = fisher_z(refs)
    mean, sd = float(z.mean()), float(z.std(ddof=1))
    sd = max(sd, 0.05)  # a floor: a few near-identical references must not make the null a spike
    upper_tail = 0.5 * math.erfc((float(fisher_z(score)) - mean) / (sd * math.sqrt(2.0)))
    return NullCalibration(score, refs, empirical, upper_tail, float(np.tanh(mean)), sd, None)
