"""A monotone alignment of two models' layers through their CKA matrix: pure math.

Models of different depth (a layer-pruned copy, say) are compared layer to corresponding
layer: each layer of A is paired with one layer of B, the pairing never goes backwards
(layer i+1 of A never pairs with an earlier layer of B than layer i did), and among all such
pairings the one with the largest total similarity is chosen, by dynamic programming in
O(layers_a x layers_b).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def monotone_alignment(matrix: ArrayLike) -> list[int]:
    """For each row i, the column j(i) of a non-decreasing path maximizing sum M[i, j(i)].

    Undefined entries (NaN) count as the worst possible similarity, -1.
    """
    scores = np.nan_to_num(np.asarray(matrix, dtype=np.float64), nan=-1.0)
    if scores.ndim != 2 or 0 in scores.shape:
        raise ValueError(f"expected a non-empty 2-D matrix, got shape {scores.shape}")
    rows, cols = scores.shape
    best = np.empty_like(scores)  # best[i, j]: best total of rows 0..i with row i on column j
    came_from = np.zeros((rows, cols), dtype=np.int64)
    best[0] = scores[0]
    for i in range(1, rows):
        # the best predecessor column j' <= j, as a running maximum over the previous row
        running_index = np.zeros(cols, dtype=np.int64)
        for j in range(1, cols):
            previous = running_index[j - 1]
            running_index[j] = j if best[i - 1, j] > best[i - 1, previous] else previous
        came_from[i] = running_index
        best[i] = scores[i] + best[i - 1, running_index]
    path = [int(np.argmax(best[-1]))]
    for i in range(rows - 1, 0, -1):
        path.append(int(came_from[i, path[-1]]))
    return path[::-1]
