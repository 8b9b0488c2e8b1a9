"""Uncertainty and calibration for similarity scores: pure math on arrays.

- `bootstrap_curve`: 95% bands of the sample-size curve, from Gram matrices, by subsampling:
  each resample is a random order of the N texts, and its first n texts are a random subset of
  size n, so one running-sum pass per resample gives the band at every size. (Resampling with
  replacement would put copies of a text at two positions, and the debiased estimator would
  count a text's similarity with itself as agreement.) At n = N every subset is the whole set
  and the band has no width: it shows how much the score depends on which n texts are used.
- `null_calibration`: where a suspect's score sits among scores of independent reference
  models against the same victim: an empirical p-value (rank among the panel) and a parametric
  one: Fisher-z transformed reference scores, and the Student t predictive distribution of a
  new independent model's score (the null's mean and spread are estimated from k references,
  so the tail is t with k - 1 degrees of freedom, scaled by sd * sqrt(1 + 1/k)). The tail is
  scipy's (`scipy.stats.t.sf`, accurate far into the tail); findings of formats 2 and 3 were
  computed with `legacy_student_t_sf`, which `verify` uses again for them (``legacy_tail``).
- `combined_calibration`: two tests of the same question, Bonferroni-combined. The *mean* test
  calibrates the mean similarity over the victim's blocks; the *layer* test calibrates each
  victim block on its own and takes the most extreme one, its p-value multiplied by the number
  of blocks tested. The combined p-value is twice the smaller of the two (capped at 1), so
  under the null it is valid whichever test fires. The mean test is the more powerful when the
  whole network is preserved; the layer test finds a derivative that kept some blocks and
  destroyed the rest (heavy magnitude pruning keeps the first blocks and wrecks the later ones).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

from reef_forensics.similarity.cka import Estimator, cka_curve


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
        order = rng.permutation(total)
        curves[b] = cka_curve(km[np.ix_(order, order)], lm[np.ix_(order, order)], sizes, estimator)
    tail = (1.0 - level) / 2.0 * 100.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column stays NaN
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


def null_calibration(
    score: float, references: Sequence[float], *, legacy_tail: bool = False
) -> NullCalibration:
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
    k = len(refs)
    mean, sd = float(z.mean()), float(z.std(ddof=1))
    sd = max(sd, 0.05)  # a floor: a few near-identical references must not make the null a spike
    t = (float(fisher_z(score)) - mean) / (sd * math.sqrt(1.0 + 1.0 / k))
    tail = legacy_student_t_sf(t, k - 1) if legacy_tail else student_t_sf(t, k - 1)
    return NullCalibration(score, refs, empirical, tail, float(np.tanh(mean)), sd, None)


@dataclass(frozen=True)
class Statistic:
    """One test's outcome: its p-value (corrected for what it chose) and the suspect's margin
    over the highest reference on the statistic it tested."""

    name: str  # "mean" or "layer"
    calibration: NullCalibration
    p_value: float | None  # corrected: the layer test's is Bonferroni over the blocks tested
    layer: int | None = None  # for the layer test: the index into the blocks tested
    layers_tested: int = 1

    @property
    def margin(self) -> float | None:
        refs = self.calibration.references
        score = self.calibration.score
        return None if not refs or math.isnan(score) else score - max(refs)


@dataclass(frozen=True)
class CombinedCalibration:
    """The mean test and the layer test, and their Bonferroni combination."""

    mean: Statistic
    layer: Statistic | None  # None when no block had a p-value

    @property
    def tests(self) -> list[Statistic]:
        return [self.mean] + ([self.layer] if self.layer is not None else [])

    @property
    def p_value(self) -> float | None:
        values = [t.p_value for t in self.tests if t.p_value is not None]
        return min(1.0, 2.0 * min(values)) if values else None

    def corrected(self, test: Statistic) -> float | None:
        """A test's p-value as it counts toward the combination (times 2)."""
        return None if test.p_value is None else min(1.0, 2.0 * test.p_value)


def combined_calibration(
    score: float,
    references: Sequence[float],
    layer_scores: Sequence[float],
    reference_layer_scores: Sequence[Sequence[float]],
    *,
    legacy_tail: bool = False,
) -> CombinedCalibration:
    """``layer_scores[i]`` is the suspect's score at the victim's i-th tested block and
    ``reference_layer_scores[r][i]`` reference r's score there (``references[r]`` is its mean)."""
    if any(len(row) != len(layer_scores) for row in reference_layer_scores):
        raise ValueError("every reference needs a score at each tested layer")
    if len(reference_layer_scores) != len(references):
        raise ValueError("one row of layer scores per reference")
    mean = null_calibration(score, references, legacy_tail=legacy_tail)
    mean_test = Statistic("mean", mean, mean.parametric_p)
    per_layer = [
        null_calibration(value, [row[i] for row in reference_layer_scores], legacy_tail=legacy_tail)
        for i, value in enumerate(layer_scores)
    ]
    with_p = [i for i, c in enumerate(per_layer) if c.parametric_p is not None]
    if not with_p or math.isnan(score):
        return CombinedCalibration(mean_test, None)
    strongest = min(with_p, key=lambda i: per_layer[i].parametric_p or 0.0)
    tested = len(layer_scores)
    p = per_layer[strongest].parametric_p or 0.0
    layer_test = Statistic("layer", per_layer[strongest], min(1.0, tested * p), strongest, tested)
    return CombinedCalibration(mean_test, layer_test)


def student_t_sf(t: float, df: int) -> float:
    """P(T > t) for Student's t with a positive integer number of degrees of freedom (scipy:
    accurate to the end of a double's range, where 1 - P(|T| <= t) is not)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {df}")
    if math.isnan(t):
        return float("nan")
    return float(stats.t.sf(t, df))


def legacy_student_t_sf(t: float, df: int) -> float:
    """The tail of findings formats 2 and 3, kept so that their recorded p-values re-derive.

    Closed forms for integer df (Abramowitz and Stegun 26.7.3 and 26.7.4): with
    theta = atan(t / sqrt(df)), P(|T| <= t) is a finite series in sin and cos of theta. The
    upper tail is 1 minus that series, so its relative error grows as the tail shrinks: about
    1e-9 near p = 1e-7, and 100% below about 1e-15 (df 39, t = 15 gives 0.0).
    """
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {df}")
    if math.isnan(t):
        return float("nan")
    theta = math.atan(abs(t) / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 1:
        series, term = 0.0, 1.0
        for j in range(1, (df - 1) // 2 + 1):  # 1 + (2/3)c^2 + (2*4)/(3*5)c^4 + ...
            series += term
            term *= c2 * (2 * j) / (2 * j + 1)
        inside = (2.0 / math.pi) * (theta + (s * math.cos(theta) * series if df > 1 else 0.0))
    else:
        series, term = 0.0, 1.0
        for j in range(1, df // 2 + 1):  # 1 + (1/2)c^2 + (1*3)/(2*4)c^4 + ...
            series += term
            term *= c2 * (2 * j - 1) / (2 * j)
        inside = s * series
    upper = max(0.0, 1.0 - inside) / 2.0
    return upper if t >= 0 else 1.0 - upper
