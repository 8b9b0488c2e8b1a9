"""Extraction: batching, padding, pooling and truncation do not change the representations."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from reef_forensics import ExtractionError, ProbeSet, load_model, resolve_model
from reef_forensics.models.extraction import iter_pooled, length_sorted_batches, tokenize_probes


def extract(loaded, texts, **options) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    """All layers, rows in probe order, assembled in memory (test helper)."""
    max_length = options.pop("max_length", 512)
    tokens = tokenize_probes(loaded.tokenizer, texts, max_length)
    layers: list[np.ndarray] = []
    for batch in iter_pooled(loaded, tokens, **options):
        if not layers:
            layers = [np.zeros((len(texts), a.shape[1]), dtype=np.float32) for a in batch.layers]
        for layer, values in zip(layers, batch.layers, strict=True):
            layer[batch.indices] = values
    return layers


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("family", ["victim", "gpt2", "bert", "roberta"])
@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_batched_extraction_equals_one_text_at_a_time(
    zoo: dict[str, Path], small_probes: ProbeSet, family: str, padding_side: str, pooling: str
) -> None:
    loaded = load_model(resolve_model(zoo[family]))
    single = extract(loaded, small_probes.texts, pooling=pooling, batch_size=1)
    batched = extract(
        loaded, small_probes.texts, pooling=pooling, batch_size=16, padding_side=padding_side
    )
    assert len(batched) == loaded.model.config.num_hidden_layers + 1
    for one, many in zip(single, batched, strict=True):
        assert relative_error(many, one) < 1e-4


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_pooling_reads_the_real_tokens_of_padded_rows(
    zoo: dict[str, Path], small_probes: ProbeSet, padding_side: str
) -> None:
    loaded = load_model(resolve_model(zoo["victim"]))
    texts = sorted(
        small_probes.texts[:4], key=len
    )  # different lengths: every row but one is padded
    last = extract(loaded, texts, pooling="last", batch_size=4, padding_side=padding_side)
    mean = extract(loaded, texts, pooling="mean", batch_size=4, padding_side=padding_side)
    for row, text in enumerate(texts):
        ids = torch.tensor([loaded.tokenizer(text).input_ids])
        with torch.inference_mode():
            hidden = loaded.model(input_ids=ids, output_hidden_states=True).hidden_states
        for layer in range(len(hidden)):
            np.testing.assert_allclose(
                last[layer][row], hidden[layer][0, -1].numpy(), rtol=1e-4, atol=1e-5
            )
            np.testing.assert_allclose(
                mean[layer][row], hidden[layer][0].mean(0).numpy(), rtol=1e-4, atol=1e-5
            )


def test_batches_are_sorted_by_length_longest_first() -> None:
    batches = length_sorted_batches([3, 9, 1, 9, 5], batch_size=2)
    assert [b.tolist() for b in batches] == [[1, 3], [4, 0], [2]]


def test_truncation_keeps_the_closing_special_token(
    zoo: dict[str, Path], small_probes: ProbeSet
) -> None:
    loaded = load_model(resolve_model(zoo["bert"]))
    tokens = tokenize_probes(loaded.tokenizer, small_probes.texts, max_length=6)
    sep = loaded.tokenizer.sep_token_id
    assert tokens.truncated > 0
    assert all(len(ids) <= 6 and ids[-1] == sep for ids in tokens.input_ids)


def test_max_length_that_leaves_no_real_token_is_refused(
    zoo: dict[str, Path], small_probes: ProbeSet
) -> None:
    loaded = load_model(resolve_model(zoo["bert"]))
    with pytest.raises(ExtractionError, match="--max-length 2 leaves probe text 1 no real token"):
        tokenize_probes(loaded.tokenizer, small_probes.texts, max_length=2)


def test_text_that_tokenizes_to_nothing_is_refused(zoo: dict[str, Path]) -> None:
    loaded = load_model(resolve_model(zoo["bert"]))
    with pytest.raises(ExtractionError, match="probe text 2 tokenizes to nothing"):
        tokenize_probes(loaded.tokenizer, ["fine text", "\x07\x07"], max_length=32)


def test_nan_activations_are_refused(zoo: dict[str, Path], small_probes: ProbeSet) -> None:
    loaded = load_model(resolve_model(zoo["victim"]))
    with torch.no_grad():
        loaded.model.layers[1].input_layernorm.weight.fill_(float("nan"))
    with pytest.raises(ExtractionError, match="NaN or infinite activations"):
        extract(loaded, small_probes.texts, pooling="last")


def test_model_without_hidden_states_is_refused(
    zoo: dict[str, Path], small_probes: ProbeSet
) -> None:
    loaded = load_model(resolve_model(zoo["victim"]))

    class NoHiddenStates(torch.nn.Module):
        def forward(
            self, input_ids, attention_mask=None, output_hidden_states=None, return_dict=None
        ):  # type: ignore[no-untyped-def]
            return SimpleNamespace(last_hidden_state=torch.zeros(*input_ids.shape, 4))

    loaded.model = NoHiddenStates()
    with pytest.raises(ExtractionError, match="returns no hidden states"):
        extract(loaded, small_probes.texts, pooling="last")


def test_invalid_options_are_refused(zoo: dict[str, Path], small_probes: ProbeSet) -> None:
    loaded = load_model(resolve_model(zoo["victim"]))
    with pytest.raises(ExtractionError, match="--batch-size must be at least 1"):
        extract(loaded, small_probes.texts, pooling="last", batch_size=0)
    with pytest.raises(ExtractionError, match="--max-length must be at least 2"):
        extract(loaded, small_probes.texts, pooling="last", max_length=1)
    with pytest.raises(ExtractionError, match="unknown pooling"):
        extract(loaded, small_probes.texts, pooling="max")
