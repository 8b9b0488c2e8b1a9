"""CKA engine benchmark: the layer-by-layer matrix and the sample-size curve against naive loops.

    python bench/bench_cka.py [--layers 24] [--samples 500] [--width 512] [--curve-samples 1000]

Matrix: CKA for every pair of 24 x 24 layers on n = 500 texts. The naive loop recomputes both
Gram matrices for every pair (what a per-pair `cka(x, y)` call does); the engine builds and
centers each layer's Gram matrix once and takes one matrix product.

Curve: CKA on the first n texts for n = 10, 20, ..., 1000 (100 points). The naive loop
recomputes the Gram matrices from the features at every n; "re-center" slices the precomputed
Gram matrices and centers each slice (O(n^2) per point); the engine uses prefix sums (O(N^2)
for all points together).

The representations are synthetic: correlated layers of width 512 with a shared component, so
the scores are in a realistic range; speed does not depend on the values. Every variant's
results are checked against the engine's before timing is reported.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from reef_forensics.similarity.cka import (
    CkaMethod,
    center_gram,
    centered_grams,
    cka,
    cka_curve,
    cka_from_centered,
    cka_matrix,
    curve_sizes,
    gram,
)


def synthetic_layers(count: int, n: int, width: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=(n, width))
    layers, state = [], shared
    for _ in range(count):
        state = np.tanh(
            state @ rng.normal(size=(width, width)) / np.sqrt(width)
        ) + 0.3 * rng.normal(size=(n, width))
        layers.append(state.astype(np.float32))
    return layers


def best_of(repeats: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def bench_matrix(args: argparse.Namespace, method: CkaMethod) -> dict[str, Any]:
    a = synthetic_layers(args.layers, args.samples, args.width, seed=1)
    b = synthetic_layers(args.layers, args.samples, args.width, seed=2)

    def engine() -> np.ndarray:
        return cka_matrix(centered_grams(a, method), centered_grams(b, method))

    def naive() -> np.ndarray:
        return np.array([[cka(x, y, method) for y in b] for x in a])

    engine_s, fast = best_of(args.repeats, engine)
    naive_s, slow = best_of(1, naive)
    np.testing.assert_allclose(fast, slow, atol=1e-9)
    return {"engine_s": engine_s, "naive_s": naive_s, "speedup": naive_s / engine_s}


def bench_curve(args: argparse.Namespace, method: CkaMethod) -> dict[str, Any]:
    x, y = synthetic_layers(2, args.curve_samples, args.width, seed=3)
    sizes = curve_sizes(args.curve_samples)
    kx, ky = gram(x, method), gram(y, method)

    def engine() -> np.ndarray:
        return cka_curve(kx, ky, sizes, method.estimator)

    def recenter() -> np.ndarray:
        e = method.estimator
        return np.array(
            [
                cka_from_centered(center_gram(kx[:n, :n], e), center_gram(ky[:n, :n], e))
                for n in sizes
            ]
        )

    def naive() -> np.ndarray:
        return np.array([cka(x[:n], y[:n], method) for n in sizes])

    engine_s, fast = best_of(args.repeats, engine)
    recenter_s, middle = best_of(args.repeats, recenter)
    naive_s, slow = best_of(1, naive)
    np.testing.assert_allclose(fast, middle, atol=1e-9)
    np.testing.assert_allclose(fast, slow, atol=1e-9)  # linear kernel: exactly the same numbers
    return {
        "points": len(sizes),
        "engine_s": engine_s,
        "recenter_s": recenter_s,
        "naive_s": naive_s,
        "speedup_vs_naive": naive_s / engine_s,
        "speedup_vs_recenter": recenter_s / engine_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--curve-samples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the results as JSON to this file")
    args = parser.parse_args()
    results: dict[str, Any] = {
        "machine": {
            "cpus": __import__("os").cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
        "settings": vars(args),
    }
    for estimator in ("debiased", "biased"):
        method = CkaMethod(estimator=estimator)
        matrix = bench_matrix(args, method)
        curve = bench_curve(args, method)
        results[f"linear-{estimator}"] = {"matrix": matrix, "curve": curve}
        print(
            f"linear-{estimator}: {args.layers}x{args.layers} matrix, n={args.samples}, d={args.width}: "
            f"engine {matrix['engine_s']:.3f} s, naive per-pair loop {matrix['naive_s']:.2f} s "
            f"-> {matrix['speedup']:.0f}x"
        )
        print(
            f"linear-{estimator}: {curve['points']}-point curve, N={args.curve_samples}: "
            f"engine {curve['engine_s'] * 1000:.0f} ms, re-center slices {curve['recenter_s']:.2f} s "
            f"({curve['speedup_vs_recenter']:.0f}x), recompute from features {curve['naive_s']:.2f} s "
            f"-> {curve['speedup_vs_naive']:.0f}x"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
