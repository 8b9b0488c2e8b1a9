"""The neuron-matching independence test: pure math on arrays (numpy and scipy only).

After Zhu, Ahmed, Kuditipudi and Liang, "Independence Tests for Language Models" (ICML 2025),
unconstrained setting. Its null hypothesis is that the two models were trained independently,
and it needs no reference panel.

Every MLP hidden unit is seen through two *views*, two sets of activations over the same probe
texts that depend on different weights of that unit: for a gated MLP (Llama, Qwen, Gemma,
Mistral) the outputs of the gate projection and of the up projection; for an MLP without a
gate (GPT-2, BERT, RoBERTa) the unit's pre-activation computed from the even and from the odd
coordinates of its input (``split-input``, see docs/formats.md). In each pair of blocks the
suspect's units are matched to the victim's twice, once per view (Hungarian assignment on the
correlations of the activations), and the test asks whether the two matchings agree:

- a derivative keeps its units' identities through fine-tuning, pruning, noise, merging and
  permutation, so both views recover the same correspondence;
- in independently trained models the two views depend on independent weights and the labels
  of hidden units are arbitrary, so the second matching is, relative to the first, a random
  assignment: the two agree on a unit by chance only.

The statistic of a block is the number x of its k matched units that both views give the same
partner, among m candidates. Under the null the chance that x given units all agree is
1/(m (m-1) ... (m-x+1)), so P(X >= x) <= C(k, x) / (m (m-1) ... (m-x+1)): an exact bound that
needs no approximation (for k = m it is 1/x!; for x = k it is the chance that two independent
orderings coincide). Zhu et al. correlate the two matchings' partner indices (Spearman); unit
indices are arbitrary labels, so that correlation sees the coincidences only through noise: it
is recorded for comparison, and the count decides. Blocks are combined by Bonferroni: blocks
compared times the smallest block p-value. (Fisher's method assumes independent blocks; the
blocks of one model share a residual stream, so that cannot be assumed. Bonferroni holds
whatever the dependence.) p-values are carried as log10 so that 1e-300 and far smaller survive
JSON.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import optimize, stats

#: Rows matched per block: the first units of the narrower model (all of them when it has
#: fewer). An assignment's cost grows with the rows; 512 keeps a block well under a second for a
#: 7B model, and one block that agrees perfectly then has p below 1e-1166. Fewer rows are not
#: safer: between capable unrelated models a few units do pair alike beyond chance (features
#: both learned), and fewer rows make those few count for more (bench/README.md).
DEFAULT_MAX_ROWS = 512
#: A unit whose activations vary less than this (relative to the median unit of its block) is
#: left out: its correlations are undefined, and an assignment would break the ties the same way
#: in both views, which is agreement that says nothing about derivation.
DEAD_UNIT = 1e-6
MIN_UNITS = 3  # fewer matched units than this: the block is not tested


@dataclass(frozen=True)
class BlockMatch:
    """One pair of blocks: their widths, the matching's size, and the test."""

    units_a: int
    units_b: int
    matched: int  # k: units matched in both views (rows of the assignment)
    candidates: int  # m: live units of the wider block (columns of the assignment)
    agreed: int  # x: matched units that both views give the same partner
    spearman: float  # Zhu et al.'s rank correlation of the two matchings (recorded, not used)
    log10_p: float  # log10 of the bound on P(X >= agreed) under independence

    @property
    def agreement(self) -> float:
        return self.agreed / self.matched if self.matched else math.nan


def correlations(a: ArrayLike, b: ArrayLike) -> NDArray[np.float64]:
    """Pearson correlations of every column of ``a`` (samples x n) with every column of ``b``
    (samples x m), as an n x m matrix. Columns must not be constant (see `live_units`)."""
    x, y = _standardized(a), _standardized(b)
    return x.T @ y


def _standardized(values: ArrayLike) -> NDArray[np.float64]:
    x = np.asarray(values, dtype=np.float64)
    x = x - x.mean(axis=0)
    norms = np.linalg.norm(x, axis=0)
    return x / np.where(norms > 0, norms, 1.0)


def live_units(*views: ArrayLike) -> NDArray[np.bool_]:
    """Units (columns) that vary in every view: spread above `DEAD_UNIT` times the median."""
    keep: NDArray[np.bool_] | None = None
    for view in views:
        spread = np.asarray(view, dtype=np.float64).std(axis=0)
        floor = DEAD_UNIT * max(float(np.median(spread)), np.finfo(np.float64).tiny)
        alive = np.isfinite(spread) & (spread > floor)
        keep = alive if keep is None else keep & alive
    assert keep is not None
    return keep


def matching(corr: ArrayLike) -> NDArray[np.int64]:
    """For each row, the column it is assigned to (maximum total correlation; rows <= columns)."""
    matrix = np.asarray(corr, dtype=np.float64)
    rows, columns = optimize.linear_sum_assignment(matrix, maximize=True)
    partner = np.empty(matrix.shape[0], dtype=np.int64)
    partner[rows] = columns
    return partner


def coincidence_log10_p(agreed: int, matched: int, candidates: int) -> float:
    """log10 of C(k, x) / (m (m-1) ... (m-x+1)), capped at 0: the chance that x or more of k
    units get the same partner from two independent matchings into m candidates."""
    k, x, m = matched, agreed, candidates
    if not 0 <= x <= k <= m:
        raise ValueError(f"need 0 <= agreed <= matched <= candidates, got {x}, {k}, {m}")
    if x == 0:
        return 0.0
    log_choose = math.lgamma(k + 1) - math.lgamma(x + 1) - math.lgamma(k - x + 1)
    log_falling = math.lgamma(m + 1) - math.lgamma(m - x + 1)
    return min(0.0, (log_choose - log_falling) / math.log(10))


@dataclass(frozen=True)
class BlockViews:
    """One block's two views made ready for matching: only its live units, each column
    centred and scaled to unit length, so that a product of two is a correlation matrix.
    Preparing a block once lets one victim block be matched against many models."""

    width: int  # units of the block, dead ones included
    first: NDArray[np.float64]  # samples x live units
    second: NDArray[np.float64]

    @property
    def samples(self) -> int:
        return int(self.first.shape[0])

    @property
    def live(self) -> int:
        return int(self.first.shape[1])


def prepare(view1: ArrayLike, view2: ArrayLike) -> BlockViews:
    """A block's views (samples x units each, the same shape) prepared for `match_prepared`."""
    v1, v2 = np.asarray(view1, dtype=np.float64), np.asarray(view2, dtype=np.float64)
    if v1.ndim != 2 or v1.shape != v2.shape:
        raise ValueError("a block's two views need the same shape (samples x units)")
    alive = live_units(v1, v2)
    return BlockViews(
        width=int(v1.shape[1]),
        first=_standardized(v1[:, alive]),
        second=_standardized(v2[:, alive]),
    )


def match_block(
    a1: ArrayLike,
    a2: ArrayLike,
    b1: ArrayLike,
    b2: ArrayLike,
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> BlockMatch:
    """Match block A's units to block B's in each view and test whether the matchings agree.

    ``a1, a2`` are A's two views (samples x n units), ``b1, b2`` B's (samples x m units), on the
    same samples. The narrower block's first ``max_rows`` live units are the rows; every live
    unit of the other block is a candidate partner.
    """
    return match_prepared(prepare(a1, a2), prepare(b1, b2), max_rows=max_rows)


def match_prepared(a: BlockViews, b: BlockViews, *, max_rows: int = DEFAULT_MAX_ROWS) -> BlockMatch:
    """`match_block` on blocks already prepared (see `prepare`)."""
    if a.samples != b.samples:
        raise ValueError("the four views need the same samples (rows)")
    rows_side, other = (b, a) if a.live > b.live else (a, b)  # rows: the narrower side
    x1, x2 = rows_side.first[:, :max_rows], rows_side.second[:, :max_rows]
    k, m = x1.shape[1], other.live
    if k < MIN_UNITS or a.samples < MIN_UNITS:
        return BlockMatch(a.width, b.width, k, m, 0, math.nan, 0.0)
    first = matching(x1.T @ other.first)
    second = matching(x2.T @ other.second)
    agreed = int(np.sum(first == second))
    with np.errstate(invalid="ignore"):
        rho = float(stats.spearmanr(first, second).statistic)
    return BlockMatch(
        units_a=a.width,
        units_b=b.width,
        matched=k,
        candidates=m,
        agreed=agreed,
        spearman=rho,
        log10_p=coincidence_log10_p(agreed, k, m),
    )


def bonferroni_log10(log10_ps: Sequence[float]) -> float:
    """log10 of min(1, count x smallest p): the blocks combined, valid under any dependence."""
    if not log10_ps:
        return 0.0
    return min(0.0, math.log10(len(log10_ps)) + min(log10_ps))


#: Below this a p-value is printed as a bound: a double cannot hold it.
PRINT_FLOOR_LOG10 = -300


def format_log10_p(log10_p: float) -> str:
    """A probability given as log10, for people: ``p < 1e-300`` where it underflows."""
    if log10_p < PRINT_FLOOR_LOG10:
        return "< 1e-300"
    return f"{10.0**log10_p:.2g}"


def log10_p_of(p: float) -> float:
    """log10 of an ordinary p-value (0 stays a very large negative number, not -inf)."""
    return math.log10(p) if p > 0 else -math.inf
