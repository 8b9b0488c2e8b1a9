"""Weight-space derivatives used as positive controls."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reef_forensics import load_model, resolve_model
from reef_forensics.models.derivatives import (
    Unsupported,
    add_noise,
    fine_tune,
    merge_with,
    permute_mlp,
    prune_magnitude,
)


def hidden_states(loaded, text: str = "Q: Is water wet? A: Yes.") -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
    ids = torch.tensor([loaded.tokenizer(text).input_ids])
    with torch.inference_mode():
        return list(loaded.model(input_ids=ids, output_hidden_states=True).hidden_states)


@pytest.mark.parametrize("family", ["victim", "gpt2", "bert"])
def test_mlp_permutation_preserves_the_function_but_changes_the_weights(
    zoo: dict[str, Path], family: str
) -> None:
    original = load_model(resolve_model(zoo[family]))
    permuted = load_model(resolve_model(zoo[family]))
    permute_mlp(permuted, seed=3)
    before = {n: p.clone() for n, p in original.model.named_parameters()}
    changed = [n for n, p in permuted.model.named_parameters() if not torch.equal(p, before[n])]
    assert changed  # the weights really moved
    for a, b in zip(hidden_states(original), hidden_states(permuted), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_pruning_zeroes_half_of_each_block_matrix(zoo: dict[str, Path]) -> None:
    loaded = load_model(resolve_model(zoo["victim"]))
    prune_magnitude(loaded, seed=0)
    proj = loaded.model.layers[0].mlp.up_proj.weight
    assert (proj == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
    untouched = load_model(resolve_model(zoo["victim"])).model.embed_tokens.weight
    assert torch.equal(loaded.model.embed_tokens.weight, untouched)  # embeddings are not pruned


def test_noise_and_fine_tune_and_merge_move_the_weights_a_little(
    zoo: dict[str, Path], probes
) -> None:  # type: ignore[no-untyped-def]
    reference = (
        load_model(resolve_model(zoo["victim"])).model.layers[1].mlp.down_proj.weight.clone()
    )
    noisy = load_model(resolve_model(zoo["victim"]))
    add_noise(noisy, seed=1)
    moved = (noisy.model.layers[1].mlp.down_proj.weight - reference).std() / reference.std()
    assert 0.01 < moved.item() < 0.03
    tuned = load_model(resolve_model(zoo["victim"]))
    fine_tune(tuned, seed=1, texts=list(probes.texts[:40]), steps=5)
    assert not torch.equal(tuned.model.layers[1].mlp.down_proj.weight, reference)
    partner = load_model(resolve_model(zoo["unrelated"])).model
    merged = load_model(resolve_model(zoo["victim"]))
    merge_with(partner)(merged, 0)
    expected = 0.5 * reference + 0.5 * partner.layers[1].mlp.down_proj.weight
    torch.testing.assert_close(merged.model.layers[1].mlp.down_proj.weight, expected)


def test_unsupported_derivations_say_why(zoo: dict[str, Path]) -> None:
    bert = load_model(resolve_model(zoo["bert"]))
    with pytest.raises(Unsupported, match="decoders only"):
        fine_tune(bert, seed=0)
    victim = load_model(resolve_model(zoo["victim"]))
    with pytest.raises(Unsupported, match="no matching parameter"):
        merge_with(bert.model)(victim, 0)
