"""Centered kernel alignment (CKA) between representation matrices: pure math, float64.

A representation matrix holds one row per probe text and one column per feature (n x d).
CKA compares two such matrices over the same n inputs through their n x n Gram matrices:

    CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) * HSIC(L, L))

Two HSIC estimators are provided:

- ``biased`` (REEF's, Gretton et al. 2005): ``tr(K H L H) / (n-1)^2`` with the centering
  matrix ``H = I - 11^T/n``. Inflated when n is small next to the feature count.
- ``debiased`` (Song et al. 2012, used for CKA by Kornblith et al. 2019): the U-statistic on
  Gram matrices with a zeroed diagonal. Near zero for independent representations at any n.

Both reduce to a Frobenius inner product of *centered* Gram matrices (double centering for the
biased estimator, U-centering for the debiased one); the constant factors cancel in CKA. The
layer-by-layer matrix therefore centers each layer's Gram matrix once and takes one matrix
product of the flattened results. The sample-size curve (CKA on the first n samples for many n)
comes from prefix sums over the uncentered Gram matrices: every n in O(N^2) in all.

Nothing here reads files or knows about models.

The linear Gram matrices, their centering and the layer-by-layer matrix can run on a torch
device (``device="cuda"``, still in float64): the same functions, written with operations numpy
arrays and torch tensors share, with only the results copied back. ``device=None`` (the default)
stays in numpy. The RBF kernel's median bandwidth is always computed with numpy.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

Kernel = Literal["linear", "rbf"]
Estimator = Literal["biased", "debiased"]
KERNELS: tuple[Kernel, ...] = ("linear", "rbf")
ESTIMATORS: tuple[Estimator, ...] = ("biased", "debiased")

#: The smallest sample count for which the debiased estimator is defined (it divides by n-3).
MIN_SAMPLES = 4

Float64Array = NDArray[np.float64]


@dataclass(frozen=True)
class CkaMethod:
    """How to turn two representation matrices into one CKA number.

    ``standardize`` z-scores every feature over the samples before the kernel (what REEF's
    reference code does); it makes CKA invariant to per-feature scaling but no longer to
    rotations. ``rbf_scale`` sets the RBF bandwidth to ``rbf_scale`` times the median pairwise
    distance of the samples.
    """

    kernel: Kernel = "linear"
    estimator: Estimator = "debiased"
    standardize: bool = False
    rbf_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.kernel not in KERNELS:
            raise ValueError(f"unknown kernel {self.kernel!r}: expected one of {KERNELS}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {self.estimator!r}: expected one of {ESTIMATORS}")
        if not self.rbf_scale > 0:
            raise ValueError(f"rbf_scale must be positive, got {self.rbf_scale}")

    @property
    def name(self) -> str:
        """The estimator's name as written in JSON, e.g. ``"linear-debiased"``."""
        return f"{self.kernel}-{self.estimator}"

    @classmethod
    def from_name(
        cls, name: str, *, standardize: bool = False, rbf_scale: float = 1.0
    ) -> CkaMethod:
        """Parse ``"linear-debiased"``, ``"rbf-biased"`` and so on."""
        kernel, sep, estimator = name.partition("-")
        if not sep or kernel not in KERNELS or estimator not in ESTIMATORS:
            choices = ", ".join(f"{k}-{e}" for k in KERNELS for e in ESTIMATORS)
            raise ValueError(f"unknown estimator {name!r}: expected one of {choices}")
        return cls(kernel=kernel, estimator=estimator, standardize=standardize, rbf_scale=rbf_scale)


def as_features(x: ArrayLike) -> Float64Array:
    """A 2-D float64 copy of a representation matrix (n samples x d features)."""
    array = np.array(x, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(
            f"representations must be 2-D (samples x features), got shape {array.shape}"
        )
    return array


def standardize_features(x: ArrayLike) -> Float64Array:
    """Z-score every feature over the samples; constant features become zero."""
    features = as_features(x)
    centered = features - features.mean(axis=0)
    std = centered.std(axis=0)
    std[std == 0] = 1.0
    return centered / std


def gram(
    x: ArrayLike,
    method: CkaMethod = CkaMethod(),
    *,
    out: Float64Array | None = None,
    device: str | None = None,
) -> Float64Array:
    """The uncentered n x n Gram matrix of a representation matrix under ``method``'s kernel.

    For the linear kernel the features are first centered over the samples. Both estimators
    are exactly invariant to that shift, and it keeps the running sums of the sample-size
    curve free of cancellation. ``out`` receives the result when given (no extra copy).
    ``device`` computes a linear Gram matrix there with torch (see the module's docstring).
    """
    result = _gram_on(x, method, device, out=out)
    if out is None:
        return _to_numpy(result)
    if result is not out:
        out[...] = _to_numpy(result)
    return out


def _gram_on(
    x: ArrayLike, method: CkaMethod, device: str | None, *, out: Float64Array | None = None
) -> Any:
    """The Gram matrix as a numpy array (into ``out`` when given), or a torch tensor on
    ``device`` (linear kernel)."""
    features = standardize_features(x) if method.standardize else as_features(x)
    if method.kernel == "linear":
        values = _on_device(features, device)
        values -= values.mean(axis=0)
        if device is None:
            return np.matmul(values, values.T, out=out)
        return values @ values.T
    return _on_device(_rbf_gram(features, method.rbf_scale), device)


def _on_device(array: Float64Array, device: str | None) -> Any:
    """``array`` itself (numpy) when ``device`` is None, else a float64 torch tensor there."""
    if device is None:
        return array
    import torch

    return torch.as_tensor(array, dtype=torch.float64, device=device)


def _to_numpy(values: Any) -> Float64Array:
    if isinstance(values, np.ndarray):
        return values
    return np.asarray(values.cpu().numpy(), dtype=np.float64)


def _zero_diagonal(matrix: Any) -> None:
    if isinstance(matrix, np.ndarray):
        np.fill_diagonal(matrix, 0.0)
    else:
        matrix.fill_diagonal_(0.0)


def _rbf_gram(features: Float64Array, scale: float) -> Float64Array:
    sq_norms = np.einsum("ij,ij->i", features, features)
    sq_dist = sq_norms[:, None] + sq_norms[None, :] - 2.0 * (features @ features.T)
    np.maximum(sq_dist, 0.0, out=sq_dist)
    np.fill_diagonal(sq_dist, 0.0)
    n = sq_dist.shape[0]
    off_diagonal = np.sqrt(sq_dist[~np.eye(n, dtype=bool)])
    median = float(np.median(off_diagonal)) if off_diagonal.size else 0.0
    sigma = scale * median if median > 0 else 1.0
    return np.exp(-sq_dist / (2.0 * sigma * sigma))


def center_gram(k: ArrayLike, estimator: Estimator = "debiased") -> Float64Array:
    """Center a Gram matrix so that HSIC becomes a Frobenius inner product.

    ``biased``: ``H K H``. ``debiased``: U-centering, i.e. with the diagonal of K set to zero,
    ``K_ij - r_i/(n-2) - r_j/(n-2) + s/((n-1)(n-2))`` off the diagonal (r the row sums, s the
    total) and zero on it; then ``<U(K), U(L)> / (n(n-3))`` is Song et al.'s unbiased HSIC.
    """
    return _center_in_place(np.array(k, dtype=np.float64), estimator)


def _center_in_place(matrix: Any, estimator: Estimator) -> Any:
    """Center a numpy array or a torch tensor in place (the same arithmetic for both)."""
    n = _check_square(matrix)
    if estimator == "biased":
        row_means = matrix.mean(axis=1)
        matrix -= row_means[:, None]
        matrix -= row_means[None, :]
        matrix += row_means.mean()
        return matrix
    if n < MIN_SAMPLES:
        raise ValueError(f"the debiased estimator needs at least {MIN_SAMPLES} samples, got {n}")
    _zero_diagonal(matrix)
    row_sums = matrix.sum(axis=1)
    total = row_sums.sum()
    shift = row_sums / (n - 2) - total / (2.0 * (n - 1) * (n - 2))
    matrix -= shift[:, None]
    matrix -= shift[None, :]
    _zero_diagonal(matrix)
    return matrix


def hsic(k: ArrayLike, l: ArrayLike, estimator: Estimator = "debiased") -> float:  # noqa: E741
    """HSIC of two uncentered Gram matrices over the same samples."""
    kc, lc = center_gram(k, estimator), center_gram(l, estimator)
    n = kc.shape[0]
    scale = (n - 1) ** 2 if estimator == "biased" else n * (n - 3)
    return float(np.vdot(kc, lc) / scale)


def cka_from_centered(kc: Float64Array, lc: Float64Array) -> float:
    """CKA of two Gram matrices already centered by `center_gram` with the same estimator."""
    denominator = np.vdot(kc, kc) * np.vdot(lc, lc)
    if not denominator > 0:
        return float("nan")
    return float(np.vdot(kc, lc) / np.sqrt(denominator))


def cka(x: ArrayLike, y: ArrayLike, method: CkaMethod = CkaMethod()) -> float:
    """CKA between two representation matrices with the same rows (samples)."""
    gx, gy = gram(x, method), gram(y, method)
    if gx.shape != gy.shape:
        raise ValueError(f"sample counts differ: {gx.shape[0]} vs {gy.shape[0]}")
    return cka_from_centered(center_gram(gx, method.estimator), center_gram(gy, method.estimator))


def centered_grams(
    layers: Iterable[ArrayLike],
    method: CkaMethod = CkaMethod(),
    *,
    count: int | None = None,
    device: str | None = None,
) -> Float64Array:
    """One centered Gram matrix per layer, stacked: shape (layers, n, n).

    Each Gram matrix is built straight into its slot and centered there, so a layer's
    features are needed only while its own matrix is made: ``layers`` may be a generator that
    reads them one at a time, with ``count`` saying how many it yields. With ``device``, each
    matrix is built and centered there and copied into the (host) stack.
    """
    if count is None:
        layers = list(layers)
        count = len(layers)
    stack: Float64Array | None = None
    for i, x in enumerate(layers):
        features = np.asarray(x)
        if stack is None:
            stack = np.empty((count, features.shape[0], features.shape[0]))
        if device is None:
            _center_in_place(gram(features, method, out=stack[i]), method.estimator)
        else:
            centered = _center_in_place(_gram_on(features, method, device), method.estimator)
            stack[i] = _to_numpy(centered)
    if stack is None:
        raise ValueError("no layers given")
    return stack


def cka_matrix(
    centered_a: Float64Array, centered_b: Float64Array, *, device: str | None = None
) -> Float64Array:
    """The layer-by-layer CKA matrix from two stacks of centered Gram matrices.

    Row i, column j is CKA(layer i of A, layer j of B). Each Gram matrix was built and
    centered once; the matrix is one product of the flattened stacks (on ``device`` when
    given). Layers whose representation is constant give NaN.
    """
    if centered_a.ndim != 3 or centered_b.ndim != 3 or centered_a.shape[1:] != centered_b.shape[1:]:
        raise ValueError(
            f"expected two stacks of n x n matrices, got {centered_a.shape} and {centered_b.shape}"
        )
    flat_a = _on_device(centered_a.reshape(centered_a.shape[0], -1), device)
    flat_b = _on_device(centered_b.reshape(centered_b.shape[0], -1), device)
    norms_a, norms_b = _row_norms(flat_a), _row_norms(flat_b)
    with np.errstate(divide="ignore", invalid="ignore"):
        matrix = _to_numpy((flat_a @ flat_b.T) / (norms_a[:, None] * norms_b[None, :]))
    matrix[~np.isfinite(matrix)] = np.nan
    return matrix


def _row_norms(flat: Any) -> Any:
    """The Euclidean norm of every row, without materializing the squares."""
    if isinstance(flat, np.ndarray):
        return np.sqrt(np.einsum("ij,ij->i", flat, flat))
    import torch

    return torch.sqrt(torch.einsum("ij,ij->i", flat, flat))


def _leading_row_sums(m: Float64Array, sizes: NDArray[np.int64]) -> Float64Array:
    """Row t holds the column sums of the first ``sizes[t]`` rows of ``m``: shape (T, N).

    One pass over ``m``: the rows between consecutive sizes are summed as a block, then the
    block sums are accumulated.
    """
    starts = np.concatenate(([0], sizes[:-1]))
    return np.cumsum(np.add.reduceat(m[: sizes[-1]], starts, axis=0), axis=0)


def _leading_product_sums(
    k: Float64Array,
    l: Float64Array,  # noqa: E741
    sizes: NDArray[np.int64],
) -> Float64Array:
    """Like `_leading_row_sums` for the elementwise product ``k * l``, without materializing it."""
    starts = np.concatenate(([0], sizes[:-1]))
    blocks = [np.einsum("ij,ij->j", k[a:b], l[a:b]) for a, b in zip(starts, sizes, strict=True)]
    return np.cumsum(np.stack(blocks), axis=0)


def _hsic_at_sizes(
    k: Float64Array,
    l: Float64Array,  # noqa: E741
    col_k: Float64Array,
    col_l: Float64Array,
    sizes: NDArray[np.int64],
    estimator: Estimator,
) -> Float64Array:
    """HSIC of every leading block K[:n, :n], L[:n, :n] for n in ``sizes`` (ascending).

    With r_K(n) the column sums of the first n rows, the estimators need four sums per block:
    sum K*L, sum K, sum L, and 1^T K L 1 = r_K(n) . r_L(n), each restricted to columns j < n.
    """
    within = np.arange(k.shape[1])[None, :] < sizes[:, None]  # (T, N): column j < n
    kl = (_leading_product_sums(k, l, sizes) * within).sum(axis=1)
    sk = (col_k * within).sum(axis=1)
    sl = (col_l * within).sum(axis=1)
    cross = (col_k * col_l * within).sum(axis=1)
    n = sizes.astype(np.float64)
    if estimator == "biased":
        return np.asarray((kl - 2.0 * cross / n + sk * sl / (n * n)) / ((n - 1) ** 2))
    return np.asarray((kl + sk * sl / ((n - 1) * (n - 2)) - 2.0 * cross / (n - 2)) / (n * (n - 3)))


def cka_curve(
    k: ArrayLike,
    l: ArrayLike,  # noqa: E741
    sizes: Sequence[int],
    estimator: Estimator = "debiased",
) -> Float64Array:
    """CKA on the first n samples, for each n in ``sizes``, from two uncentered Gram matrices.

    Equal to ``cka_from_centered(center_gram(K[:n,:n]), center_gram(L[:n,:n]))`` for every n,
    but computed from running sums: a few passes over the N x N matrices for all sizes together,
    instead of centering an n x n block per size. (Kernel parameters that depend on the
    samples, such as the RBF bandwidth or standardization, stay those of the full set: the
    curve isolates the effect of the sample count.)
    """
    km = np.array(k, dtype=np.float64)
    lm = np.array(l, dtype=np.float64)
    total = _check_square(km)
    if lm.shape != km.shape:
        raise ValueError(f"Gram matrices differ in shape: {km.shape} vs {lm.shape}")
    requested = np.asarray(sizes, dtype=np.int64)
    smallest = 2 if estimator == "biased" else MIN_SAMPLES
    if requested.size == 0:
        return np.empty(0)
    if requested.min() < smallest or requested.max() > total:
        raise ValueError(f"sizes must lie in [{smallest}, {total}], got {list(sizes)}")
    # Both estimators ignore a constant added to every entry; removing the typical entry first
    # keeps the running sums from cancelling (an RBF Gram matrix with a wide bandwidth is all
    # near 1).
    for matrix in (km, lm):
        matrix -= _mean_off_diagonal(matrix)
        if estimator == "debiased":
            np.fill_diagonal(matrix, 0.0)
    ordered, inverse = np.unique(requested, return_inverse=True)
    col_k, col_l = _leading_row_sums(km, ordered), _leading_row_sums(lm, ordered)
    h_kl = _hsic_at_sizes(km, lm, col_k, col_l, ordered, estimator)
    h_kk = _hsic_at_sizes(km, km, col_k, col_k, ordered, estimator)
    h_ll = _hsic_at_sizes(lm, lm, col_l, col_l, ordered, estimator)
    denominator = h_kk * h_ll
    with np.errstate(divide="ignore", invalid="ignore"):
        curve = np.where(denominator > 0, h_kl / np.sqrt(np.abs(denominator)), np.nan)
    return np.asarray(curve[inverse])


def _mean_off_diagonal(matrix: Float64Array) -> float:
    n = matrix.shape[0]
    if n < 2:
        return 0.0
    return float((matrix.sum() - np.trace(matrix)) / (n * (n - 1)))


def curve_sizes(total: int, step: int = 10) -> list[int]:
    """The sample sizes of REEF's ablation: step, 2*step, ... and always ``total`` itself."""
    sizes = list(range(step, total + 1, step))
    if not sizes or sizes[-1] != total:
        sizes.append(total)
    return sizes


def _check_square(matrix: Float64Array) -> int:
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"expected a square Gram matrix, got shape {matrix.shape}")
    return int(matrix.shape[0])
