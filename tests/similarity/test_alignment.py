"""The monotone layer alignment against brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from reef_forensics.similarity.alignment import monotone_alignment


def brute_force(matrix: np.ndarray) -> float:
    rows, cols = matrix.shape
    return max(
        sum(matrix[i, j] for i, j in enumerate(path))
        for path in itertools.combinations_with_replacement(range(cols), rows)
    )


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (5, 3), (4, 4), (6, 2)])
def test_alignment_is_monotone_and_optimal(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    for _ in range(20):
        matrix = rng.uniform(-0.2, 1.0, size=shape)
        path = monotone_alignment(matrix)
        assert len(path) == shape[0] and path == sorted(path)
        assert sum(matrix[i, j] for i, j in enumerate(path)) == pytest.approx(brute_force(matrix))


def test_a_pruned_copy_is_aligned_to_its_surviving_layers() -> None:
    # B is A with layers 2 and 3 removed: A's layers map onto B's, skipping nothing backwards
    a_to_b = {0: 0, 1: 1, 4: 2, 5: 3}
    matrix = np.full((6, 4), 0.2)
    for i, j in a_to_b.items():
        matrix[i, j] = 0.99
    path = monotone_alignment(matrix)
    assert [path[i] for i in a_to_b] == list(a_to_b.values())


def test_nan_entries_are_avoided() -> None:
    assert monotone_alignment(np.array([[np.nan, 0.5], [0.9, np.nan]])) == [0, 0]
    assert monotone_alignment(np.array([[0.1, np.nan], [np.nan, 0.2]])) == [0, 1]
