"""An exact sparse assignment against `linear_sum_assignment`: tried for the units test, not adopted.

    python bench/bench_sparse_assignment.py [--accuracy-cache DIR] [--blocks N] [--json FILE]

Each row's 32 best candidates are matched with scipy's sparse solver
(`min_weight_full_bipartite_matching`); dual potentials for that matching (the largest column
potentials at most 0, by Bellman-Ford over the candidate edges) are then checked against every
edge of the full matrix, violated edges added and the sparse problem solved again, and the full
assignment used if that fails. A passing check proves the matching optimal for the full matrix.
On SmolLM2's blocks (bench/accuracy.py's cached fingerprints) against gemma-3-270m, a model of
SmolLM2's architecture and its 50% magnitude pruning, it counts how often the matching equals
`linear_sum_assignment`'s, and times both (best of 5), and the sparse route's parts on one block.
Figures: bench/README.md, "The neuron-matching test's cost".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import optimize, sparse
from scipy.sparse import csgraph

from reef_forensics import read_fingerprint
from reef_forensics.similarity.unit_matching import DEFAULT_MAX_ROWS, prepare

ACCURACY_CACHE = Path(__file__).parent / "output" / "accuracy" / "fingerprints-v2"
OTHERS = [
    "unrelated-gemma-3-270m",
    "same-arch-SmolLM2-135M-Instruct.Q4_1-1-100",
    "derived-50--magnitude-pruning",
]
CANDIDATES = 32


def dense(corr: NDArray[np.float64]) -> NDArray[np.int64]:
    rows, columns = optimize.linear_sum_assignment(corr, maximize=True)
    partner = np.empty(corr.shape[0], dtype=np.int64)
    partner[rows] = columns
    return partner


def _duals(cost: NDArray[np.float64], rows: Any, cols: Any, partner: Any) -> Any:
    """The greatest v <= 0 with v_j <= v_pi(i) + c_ij - c_i,pi(i) on the candidate edges."""
    n, m = cost.shape
    own = cost[np.arange(n), partner]
    source, weight = partner[rows], cost[rows, cols] - own[rows]
    v = np.zeros(m)
    for _ in range(n + 1):
        relaxed = v.copy()
        np.minimum.at(relaxed, cols, v[source] + weight)
        if np.array_equal(relaxed, v):
            return v, own - v[partner]
        v = relaxed
    return None


def certified(corr: NDArray[np.float64], rounds: int = 6, tol: float = 1e-10) -> NDArray[np.int64]:
    """The maximum-weight matching by the sparse route, or by `dense` where it cannot prove it."""
    n, m = corr.shape
    cost = -corr
    mask = np.zeros((n, m), dtype=bool)
    mask[np.arange(n)[:, None], np.argpartition(cost, CANDIDATES, axis=1)[:, :CANDIDATES]] = True
    for _ in range(rounds):
        rows, cols = np.nonzero(mask)
        weights = cost[rows, cols]
        graph = sparse.csr_matrix((weights - weights.min() + 1.0, (rows, cols)), shape=(n, m))
        try:
            _, matched = csgraph.min_weight_full_bipartite_matching(graph)
        except ValueError:  # no full matching among the candidates: widen them
            wider = min(m - 1, 4 * CANDIDATES)
            mask[np.arange(n)[:, None], np.argpartition(cost, wider, axis=1)[:, :wider]] = True
            continue
        partner = matched.astype(np.int64)
        duals = _duals(cost, rows, cols, partner)
        if duals is None:
            break
        v, u = duals
        violated = cost - u[:, None] - v[None, :] < -tol
        if not violated.any():
            return partner
        mask |= violated
    return dense(corr)


def best(fn: Callable[[], Any], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def block_matrices(cache: Path, other: str, blocks: int) -> list[NDArray[np.float64]]:
    """The two correlation matrices (rows: SmolLM2's first 512 live units) of the first blocks."""
    victim, suspect = read_fingerprint(cache / "victim-smollm2"), read_fingerprint(cache / other)
    names_v = [n for n in victim.layers if n in victim.unit_blocks]
    names_s = [n for n in suspect.layers if n in suspect.unit_blocks]
    matrices = []
    for i, name in enumerate(names_v[: min(blocks, len(names_s))]):
        a = prepare(*[x[:256] for x in victim.unit_views(name)])
        b = prepare(*[x[:256] for x in suspect.unit_views(names_s[i])])
        rows, columns = (b, a) if a.live > b.live else (a, b)
        matrices.append(rows.first[:, :DEFAULT_MAX_ROWS].T @ columns.first)
        matrices.append(rows.second[:, :DEFAULT_MAX_ROWS].T @ columns.second)
    return matrices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--accuracy-cache", type=Path, default=ACCURACY_CACHE)
    parser.add_argument("--blocks", type=int, default=24, help="blocks per model (default 24)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not (args.accuracy_cache / "victim-smollm2").is_dir():
        sys.exit(f"no cached fingerprints in {args.accuracy_cache}: run bench/accuracy.py first")
    result: dict[str, Any] = {"models": []}
    for other in OTHERS:
        matrices = block_matrices(args.accuracy_cache, other, args.blocks)
        same = sum(np.array_equal(dense(c), certified(c)) for c in matrices)
        row = {
            "other": other,
            "assignments": len(matrices),
            "identical": int(same),
            "dense_ms": round(
                1000 * sum(best(lambda c=c: dense(c)) for c in matrices) / len(matrices), 1
            ),
            "sparse_ms": round(
                1000 * sum(best(lambda c=c: certified(c)) for c in matrices) / len(matrices), 1
            ),
        }
        print(row, flush=True)
        result["models"].append(row)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
