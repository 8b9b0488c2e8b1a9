"""The CKA engine against a literal textbook implementation and its defining properties."""

from __future__ import annotations

import numpy as np
import pytest

from reef_forensics.similarity import cka as C

METHODS = [
    C.CkaMethod(kernel=k, estimator=e, standardize=s)
    for k in C.KERNELS
    for e in C.ESTIMATORS
    for s in (False, True)
]


# --- a textbook implementation, written out as the papers state it -------------------------


def textbook_gram(x: np.ndarray, method: C.CkaMethod) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if method.standardize:
        std = x.std(axis=0)
        std[std == 0] = 1.0
        x = (x - x.mean(axis=0)) / std
    if method.kernel == "linear":
        return x @ x.T
    n = x.shape[0]
    dist = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=-1))
    sigma = method.rbf_scale * np.median(dist[~np.eye(n, dtype=bool)])
    return np.exp(-(dist**2) / (2 * sigma**2))


def textbook_hsic(k: np.ndarray, l: np.ndarray, estimator: str) -> float:  # noqa: E741
    n = k.shape[0]
    if estimator == "biased":  # Gretton et al. 2005: tr(KHLH) / (n-1)^2
        h = np.eye(n) - np.ones((n, n)) / n
        return float(np.trace(k @ h @ l @ h) / (n - 1) ** 2)
    # Song et al. 2012, eq. (5), with the diagonals of K and L set to zero
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    one = np.ones(n)
    value = (
        np.trace(kt @ lt)
        + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
        - 2 / (n - 2) * (one @ kt @ lt @ one)
    )
    return float(value / (n * (n - 3)))


def textbook_cka(x: np.ndarray, y: np.ndarray, method: C.CkaMethod) -> float:
    k, l = textbook_gram(x, method), textbook_gram(y, method)  # noqa: E741
    e = method.estimator
    return textbook_hsic(k, l, e) / np.sqrt(textbook_hsic(k, k, e) * textbook_hsic(l, l, e))


def related_pair(
    seed: int = 0, n: int = 40, d1: int = 12, d2: int = 9
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d1)) + 3.0  # an offset, as real activations have
    y = np.tanh(x @ rng.normal(size=(d1, d2))) + 0.5 * rng.normal(size=(n, d2))
    return x, y


# --- agreement with the textbook ---------------------------------------------------------


@pytest.mark.parametrize(
    "method", METHODS, ids=lambda m: m.name + ("-std" if m.standardize else "")
)
def test_cka_agrees_with_textbook_formula_for_every_kernel_and_estimator(
    method: C.CkaMethod,
) -> None:
    for seed in range(3):
        x, y = related_pair(seed)
        assert C.cka(x, y, method) == pytest.approx(textbook_cka(x, y, method), abs=1e-10)


@pytest.mark.parametrize("estimator", C.ESTIMATORS)
def test_hsic_agrees_with_textbook_formula(estimator: str) -> None:
    x, y = related_pair(4)
    method = C.CkaMethod(estimator=estimator)  # type: ignore[arg-type]
    k, l = textbook_gram(x, method), textbook_gram(y, method)  # noqa: E741
    expected = textbook_hsic(k, l, estimator)
    assert C.hsic(k, l, estimator) == pytest.approx(expected, rel=1e-10)  # type: ignore[arg-type]


# --- defining properties -----------------------------------------------------------------


@pytest.mark.parametrize(
    "method", METHODS, ids=lambda m: m.name + ("-std" if m.standardize else "")
)
def test_self_cka_is_one(method: C.CkaMethod) -> None:
    x, _ = related_pair(1)
    assert C.cka(x, x, method) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(
    "method", METHODS, ids=lambda m: m.name + ("-std" if m.standardize else "")
)
def test_cka_is_symmetric(method: C.CkaMethod) -> None:
    x, y = related_pair(2)
    assert C.cka(x, y, method) == pytest.approx(C.cka(y, x, method), abs=1e-12)


@pytest.mark.parametrize("method", [m for m in METHODS if not m.standardize], ids=lambda m: m.name)
def test_cka_is_invariant_to_orthogonal_transform(method: C.CkaMethod) -> None:
    x, y = related_pair(3)
    q, _ = np.linalg.qr(np.random.default_rng(9).normal(size=(y.shape[1], y.shape[1])))
    assert C.cka(x, y @ q, method) == pytest.approx(C.cka(x, y, method), abs=1e-10)


@pytest.mark.parametrize(
    "method", METHODS, ids=lambda m: m.name + ("-std" if m.standardize else "")
)
def test_cka_is_invariant_to_isotropic_scaling(method: C.CkaMethod) -> None:
    x, y = related_pair(5)
    assert C.cka(x, 7.5 * y, method) == pytest.approx(C.cka(x, y, method), abs=1e-10)


@pytest.mark.parametrize(
    "method", METHODS, ids=lambda m: m.name + ("-std" if m.standardize else "")
)
def test_cka_is_invariant_to_feature_permutation(method: C.CkaMethod) -> None:
    x, y = related_pair(6)
    perm = np.random.default_rng(1).permutation(y.shape[1])
    assert C.cka(x, y[:, perm], method) == pytest.approx(C.cka(x, y, method), abs=1e-10)


def test_standardized_cka_is_invariant_to_per_feature_scaling() -> None:
    x, y = related_pair(7)
    method = C.CkaMethod(standardize=True)
    scales = np.random.default_rng(2).uniform(0.1, 10, size=y.shape[1])
    assert C.cka(x, y * scales, method) == pytest.approx(C.cka(x, y, method), abs=1e-10)


def test_debiased_estimate_is_near_zero_on_independent_data_where_biased_is_not() -> None:
    rng = np.random.default_rng(0)
    debiased, biased = [], []
    for _ in range(5):
        x, y = rng.normal(size=(50, 2000)), rng.normal(size=(50, 2000))
        debiased.append(C.cka(x, y, C.CkaMethod(estimator="debiased")))
        biased.append(C.cka(x, y, C.CkaMethod(estimator="biased")))
    assert abs(np.mean(debiased)) < 0.02
    assert max(abs(v) for v in debiased) < 0.06
    assert min(biased) > 0.5


def test_constant_representation_gives_nan_not_a_crash() -> None:
    x, _ = related_pair(8)
    assert np.isnan(C.cka(x, np.ones_like(x)))


# --- the layer-by-layer matrix and the sample-size curve ---------------------------------


@pytest.mark.parametrize(
    "method", METHODS, ids=lambda m: m.name + ("-std" if m.standardize else "")
)
def test_cka_matrix_equals_pairwise_cka(method: C.CkaMethod) -> None:
    rng = np.random.default_rng(3)
    layers_a = [rng.normal(size=(30, d)) for d in (5, 8, 13)]
    layers_b = [np.tanh(layers_a[i % 3][:, :4] @ rng.normal(size=(4, 6))) for i in range(4)]
    matrix = C.cka_matrix(C.centered_grams(layers_a, method), C.centered_grams(layers_b, method))
    assert matrix.shape == (3, 4)
    for i, x in enumerate(layers_a):
        for j, y in enumerate(layers_b):
            assert matrix[i, j] == pytest.approx(textbook_cka(x, y, method), abs=1e-10)


@pytest.mark.parametrize(
    "method", METHODS, ids=lambda m: m.name + ("-std" if m.standardize else "")
)
def test_sample_size_curve_equals_cka_of_each_prefix(method: C.CkaMethod) -> None:
    x, y = related_pair(11, n=95)
    k, l = C.gram(x, method), C.gram(y, method)  # noqa: E741
    sizes = C.curve_sizes(95)
    assert sizes == [10, 20, 30, 40, 50, 60, 70, 80, 90, 95]
    curve = C.cka_curve(k, l, sizes, method.estimator)
    for n, value in zip(sizes, curve, strict=True):
        direct = C.cka_from_centered(
            C.center_gram(k[:n, :n], method.estimator), C.center_gram(l[:n, :n], method.estimator)
        )
        assert value == pytest.approx(direct, abs=1e-10)


@pytest.mark.parametrize("estimator", C.ESTIMATORS)
@pytest.mark.parametrize("sizes", [[10, 20], [12], [20, 10, 20], [95, 4, 50]])
def test_curve_is_right_for_any_sizes_unsorted_repeated_or_short_of_the_total(
    estimator: str, sizes: list[int]
) -> None:
    x, y = related_pair(13, n=95)
    method = C.CkaMethod(estimator=estimator)  # type: ignore[arg-type]
    k, l = C.gram(x, method), C.gram(y, method)  # noqa: E741
    curve = C.cka_curve(k, l, sizes, method.estimator)
    expected = [
        C.cka_from_centered(
            C.center_gram(k[:n, :n], estimator), C.center_gram(l[:n, :n], estimator)
        )  # type: ignore[arg-type]
        for n in sizes
    ]
    np.testing.assert_allclose(curve, expected, atol=1e-10)


@pytest.mark.parametrize("scale", [1.0, 100.0, 1000.0])
@pytest.mark.parametrize("estimator", C.ESTIMATORS)
def test_curve_keeps_its_precision_when_the_gram_matrix_is_nearly_constant(
    scale: float, estimator: str
) -> None:
    """A wide RBF bandwidth makes every kernel entry close to 1: running sums must not cancel."""
    x, y = related_pair(14, n=300)
    method = C.CkaMethod(kernel="rbf", estimator=estimator, rbf_scale=scale)  # type: ignore[arg-type]
    k, l = C.gram(x, method), C.gram(y, method)  # noqa: E741
    sizes = [10, 100, 300]
    curve = C.cka_curve(k, l, sizes, method.estimator)
    for n, value in zip(sizes, curve, strict=True):
        direct = C.cka_from_centered(
            C.center_gram(k[:n, :n], method.estimator), C.center_gram(l[:n, :n], method.estimator)
        )
        assert value == pytest.approx(direct, abs=1e-8)


@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_rbf_scale_agrees_with_textbook(scale: float) -> None:
    x, y = related_pair(15)
    for estimator in C.ESTIMATORS:
        method = C.CkaMethod(kernel="rbf", estimator=estimator, rbf_scale=scale)
        assert C.cka(x, y, method) == pytest.approx(textbook_cka(x, y, method), abs=1e-10)


def test_linear_curve_equals_recomputing_from_features_at_each_size() -> None:
    x, y = related_pair(12, n=60)
    method = C.CkaMethod()
    curve = C.cka_curve(C.gram(x, method), C.gram(y, method), [10, 30, 60], method.estimator)
    expected = [textbook_cka(x[:n], y[:n], method) for n in (10, 30, 60)]
    np.testing.assert_allclose(curve, expected, atol=1e-10)


def test_curve_rejects_sizes_outside_the_sample() -> None:
    k = C.gram(np.random.default_rng(0).normal(size=(20, 3)))
    with pytest.raises(ValueError, match="sizes must lie"):
        C.cka_curve(k, k, [3, 10], "debiased")
    with pytest.raises(ValueError, match="sizes must lie"):
        C.cka_curve(k, k, [10, 21], "debiased")


def test_method_names_parse_and_bad_ones_are_refused() -> None:
    assert C.CkaMethod.from_name("rbf-biased") == C.CkaMethod(kernel="rbf", estimator="biased")
    assert C.CkaMethod().name == "linear-debiased"
    for bad in ("linear", "cosine-biased", "linear-unbiased", ""):
        with pytest.raises(ValueError, match="unknown estimator"):
            C.CkaMethod.from_name(bad)
