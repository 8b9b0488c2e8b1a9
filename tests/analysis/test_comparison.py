"""Comparing fingerprints: the matrix, the headline at REEF's depth, the curve, and refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from reef_forensics import (
    ComparisonError,
    ProbeSet,
    compare_fingerprints,
    fingerprint_model,
    read_fingerprint,
)
from reef_forensics.analysis.comparison import headline_layer
from reef_forensics.digests import canonical_json
from reef_forensics.similarity.cka import CkaMethod, cka


def test_derived_model_scores_far_above_an_unrelated_one(fingerprints: dict[str, Path]) -> None:
    victim = read_fingerprint(fingerprints["victim"])
    derived = compare_fingerprints(victim, read_fingerprint(fingerprints["derived"]))
    unrelated = compare_fingerprints(victim, read_fingerprint(fingerprints["unrelated"]))
    assert derived.headline.layer_a == derived.headline.layer_b == "block_2"
    assert derived.headline.score > 0.9
    assert unrelated.headline.score < 0.5
    assert all(
        d.score > u.score for d, u in zip(derived.diagonal[1:], unrelated.diagonal[1:], strict=True)
    )


def test_a_fingerprint_compared_with_itself_has_a_unit_diagonal(
    fingerprints: dict[str, Path],
) -> None:
    victim = read_fingerprint(fingerprints["victim"])
    result = compare_fingerprints(victim, victim)
    np.testing.assert_allclose(np.diag(result.matrix), 1.0, atol=1e-9)
    assert [p.layer_b for p in result.best_match] == victim.layers
    np.testing.assert_allclose(result.curve_scores, 1.0, atol=1e-9)


@pytest.mark.parametrize("estimator", ["linear-debiased", "linear-biased", "rbf-debiased"])
def test_matrix_entries_equal_cka_of_the_stored_layers(
    fingerprints: dict[str, Path], estimator: str
) -> None:
    a, b = read_fingerprint(fingerprints["victim"]), read_fingerprint(fingerprints["bert"])
    method = CkaMethod.from_name(estimator, standardize=True)
    result = compare_fingerprints(a, b, method=method)
    assert result.matrix.shape == (len(a.layers), len(b.layers))
    for i, j in [(0, 0), (2, 3), (4, 1)]:
        expected = cka(a.layer(a.layers[i]), b.layer(b.layers[j]), method)
        assert result.matrix[i, j] == pytest.approx(expected, abs=1e-10)
    assert result.curve_sizes[-1] == a.num_samples
    assert result.curve_scores[-1] == pytest.approx(result.headline.score, abs=1e-10)


def test_json_record_has_the_documented_fields(
    fingerprints: dict[str, Path], probes: ProbeSet
) -> None:
    a, b = read_fingerprint(fingerprints["victim"]), read_fingerprint(fingerprints["derived"])
    record = json.loads(json.dumps(compare_fingerprints(a, b).as_json()))
    assert record["estimator"] == "linear-debiased"
    assert record["layers_a"] == a.layers and record["layers_b"] == b.layers
    assert len(record["matrix"]) == len(a.layers) and all(
        len(r) == len(b.layers) for r in record["matrix"]
    )
    assert set(record["headline"]) >= {"layer_a", "layer_b", "score"}
    assert record["probes_digest"] == probes.digest
    assert record["fingerprints"]["a"]["digest"] == a.digest
    canonical_json(record)  # no NaN or other non-JSON values


def test_different_probe_sets_are_refused_unless_forced(
    zoo: dict[str, Path], probes: ProbeSet, tmp_path: Path
) -> None:
    first = fingerprint_model(
        zoo["victim"], tmp_path / "a", probes=ProbeSet("a", probes.texts[:30])
    )
    second = fingerprint_model(
        zoo["victim"], tmp_path / "b", probes=ProbeSet("b", probes.texts[30:60])
    )
    with pytest.raises(ComparisonError, match=r"different probe sets.*--force"):
        compare_fingerprints(first, second)
    forced = compare_fingerprints(first, second, force=True)
    assert forced.forced and forced.as_json()["forced"] is True
    shorter = fingerprint_model(
        zoo["victim"], tmp_path / "c", probes=ProbeSet("c", probes.texts[:20])
    )
    with pytest.raises(ComparisonError, match="different numbers of probe texts"):
        compare_fingerprints(first, shorter, force=True)


@pytest.mark.parametrize(
    ("blocks", "expected"), [(32, "block_19"), (24, "block_14"), (4, "block_2"), (1, "block_1")]
)
def test_headline_layer_sits_at_reefs_relative_depth(blocks: int, expected: str) -> None:
    assert headline_layer(["embeddings"] + [f"block_{i}" for i in range(1, blocks + 1)]) == expected


def test_models_of_different_depths_are_aligned_by_relative_depth(
    zoo: dict[str, Path], probes: ProbeSet, tmp_path: Path
) -> None:
    from reef_forensics.demo.toy_models import make_model

    subset = ProbeSet("s", probes.texts[:40])
    deep = make_model(tmp_path / "deep", probes.texts, family="llama", num_layers=8, seed=3)
    a = fingerprint_model(zoo["victim"], tmp_path / "a", probes=subset)
    b = fingerprint_model(deep, tmp_path / "b", probes=subset)
    result = compare_fingerprints(a, b)
    assert [(p.layer_a, p.layer_b) for p in result.diagonal] == [
        ("embeddings", "embeddings"),
        ("block_1", "block_2"),
        ("block_2", "block_4"),
        ("block_3", "block_6"),
        ("block_4", "block_8"),
    ]
    assert (result.headline.layer_a, result.headline.layer_b) == ("block_2", "block_5")


def test_comparison_reads_a_copy_the_same_as_the_original(
    fingerprints: dict[str, Path], tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(fingerprints["derived"], copy)
    victim = read_fingerprint(fingerprints["victim"])
    original = compare_fingerprints(victim, read_fingerprint(fingerprints["derived"]))
    copied = compare_fingerprints(victim, read_fingerprint(copy))
    np.testing.assert_array_equal(original.matrix, copied.matrix)


def test_comparisons_too_big_for_memory_are_refused_up_front() -> None:
    from reef_forensics.analysis.comparison import _check_memory

    _check_memory(66, 620)  # a 33-layer model pair on the built-in set: about 200 MB
    with pytest.raises(ComparisonError, match="GiB for 160 Gram matrices of 200000 x 200000"):
        _check_memory(160, 200_000)
