"""Batched extraction of per-layer pooled hidden states.

For every probe text and every hidden state the model returns (the embeddings, then the
output of each block), one vector: the ``last`` real token (REEF's choice, the default for
decoders) or the ``mean`` over real tokens (the default for encoders). Texts are tokenized once,
sorted by length into batches (longest first, so running out of memory happens at once, not at
the end), padded on the right by default, and run under ``torch.inference_mode``. Pooling reads
the attention mask, so it is right under left and right padding alike; with left padding,
position ids are passed explicitly for models with absolute positions.

`iter_pooled` yields each batch's rows with their original probe indices; the caller decides
where they go (a fingerprint writes them straight to disk).

A layer selection (`parse_layers`: hidden-state indices, 0 the embeddings, i the output of block
i) keeps only those hidden states. When the last block is not among them, hooks on the blocks
pool each selected state as soon as it is computed and stop the forward pass after the last
one: the later blocks are never run (nor, with disk offload, read).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray

from reef_forensics.errors import ExtractionError, first_line
from reef_forensics.models.loading import LoadedModel
from reef_forensics.models.mlp_units import UnitCapture
from reef_forensics.models.native import tokenize

Pooling = Literal["last", "mean"]
PaddingSide = Literal["right", "left"]
POOLINGS: tuple[Pooling, ...] = ("last", "mean")
PADDING_SIDES: tuple[PaddingSide, ...] = ("right", "left")
_LAYER_ITEM = re.compile(r"([0-9]+)(?:-([0-9]+))?")


class _StopForward(Exception):
    """Raised by a hook once the last selected hidden state is pooled: the rest of the forward
    pass is not needed."""


def default_pooling(loaded: LoadedModel) -> Pooling:
    return "mean" if loaded.is_encoder else "last"


@dataclass(frozen=True)
class TokenizedProbes:
    input_ids: list[list[int]]
    truncated: int  # how many texts were cut at max_length

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]


@dataclass(frozen=True)
class PooledBatch:
    indices: NDArray[np.int64]  # original probe positions of the rows
    layers: list[NDArray[np.float32]]  # one (batch, hidden) float32 array per hidden state kept
    #: with a `UnitCapture`: block -> its MLP units' two pooled views, each (batch, units)
    units: dict[int, tuple[NDArray[np.float32], NDArray[np.float32]]] | None = None


def num_blocks(loaded: LoadedModel) -> int:
    """The model's number of blocks, from its config (hidden states are one more)."""
    count = getattr(loaded.model.config, "num_hidden_layers", None)
    if not isinstance(count, int) or count < 1:
        raise ExtractionError(
            f"{loaded.source.path}: the config does not say how many blocks the model has"
        )
    return count


def parse_layers(spec: str | Sequence[int] | None, blocks: int) -> tuple[int, ...] | None:
    """A layer selection as sorted, distinct hidden-state indices, or None for every layer.

    ``spec`` is ``0,4,8``, ranges ``0-4`` (inclusive) or both (``0,4-6,12``), or a sequence of
    indices: 0 is the embeddings, i the output of block i, up to ``blocks``. A selection of
    every layer is None too, so that it makes the same fingerprint as no selection.
    """
    if spec is None:
        return None
    chosen = _layer_indices(spec) if isinstance(spec, str) else [int(i) for i in spec]
    if not chosen:
        raise ExtractionError("--layers selects no layer: give indices such as 0,4,8 or 0-8")
    outside = [i for i in chosen if not 0 <= i <= blocks]
    if outside:
        raise ExtractionError(
            f"--layers {outside[0]}: the model has {blocks} blocks, so layers run from 0 "
            f"(the embeddings) to {blocks}"
        )
    selection = tuple(sorted(set(chosen)))
    return None if len(selection) == blocks + 1 else selection


def _layer_indices(spec: str) -> list[int]:
    chosen: list[int] = []
    for item in spec.split(","):
        match = _LAYER_ITEM.fullmatch(item.strip())
        if match is None:
            raise ExtractionError(
                f"--layers: {item.strip()!r} is not a layer index or range (such as 4 or 0-8)"
            )
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise ExtractionError(f"--layers: the range {item.strip()!r} runs backwards")
        chosen.extend(range(first, last + 1))
    return chosen


def tokenize_probes(tokenizer: Any, texts: Sequence[str], max_length: int) -> TokenizedProbes:
    """Tokenize every text once (special tokens included); refuse texts with no real token."""
    if max_length < 2:
        raise ExtractionError(f"--max-length must be at least 2, got {max_length}")
    encoded = tokenize(  # a crash or a stall of a hostile tokenizer is refused
        tokenizer,
        texts,
        add_special_tokens=True,
        truncation=False,
        padding=False,
        return_special_tokens_mask=True,
        return_attention_mask=False,
    )
    input_ids: list[list[int]] = []
    truncated = 0
    for number, (ids, special) in enumerate(
        zip(encoded["input_ids"], encoded["special_tokens_mask"], strict=True), start=1
    ):
        if len(ids) - sum(special) == 0:
            raise ExtractionError(
                f"probe text {number} tokenizes to nothing: {texts[number - 1][:60]!r}"
            )
        if len(ids) > max_length:
            truncated += 1
            ids, special = _truncate(ids, special, max_length)
            if not any(not flag for flag in special):
                raise ExtractionError(
                    f"--max-length {max_length} leaves probe text {number} no real token"
                )
        input_ids.append(list(ids))
    return TokenizedProbes(input_ids=input_ids, truncated=truncated)


def _truncate(
    ids: Sequence[int], special: Sequence[int], max_length: int
) -> tuple[list[int], list[int]]:
    """Cut real tokens from the end, keeping trailing special tokens (such as BERT's [SEP])."""
    tail = 0
    while tail < len(special) and special[len(special) - 1 - tail]:
        tail += 1
    tail = min(tail, max_length - 1)
    keep = max_length - tail
    return (
        list(ids[:keep]) + list(ids[len(ids) - tail :]),
        list(special[:keep]) + list(special[len(special) - tail :]),
    )


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[NDArray[np.int64]]:
    """Probe indices grouped into batches of similar length, longest first (stable)."""
    if batch_size < 1:
        raise ExtractionError(f"--batch-size must be at least 1, got {batch_size}")
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def iter_pooled(
    loaded: LoadedModel,
    tokens: TokenizedProbes,
    *,
    pooling: Pooling,
    batch_size: int = 16,
    padding_side: PaddingSide = "right",
    device: str | None = None,
    layers: str | Sequence[int] | None = None,
    on_batch: Callable[[int], None] | None = None,
    units: UnitCapture | None = None,
) -> Iterator[PooledBatch]:
    """Run the model over length-sorted batches and yield each batch's pooled hidden states.

    ``device`` is where the inputs go (default: the model's own input device). ``layers`` keeps
    only those hidden states, in ascending order (`parse_layers`); None keeps all. With
    ``units``, each batch also carries the captured blocks' MLP units, pooled the same way.
    """
    if pooling not in POOLINGS:
        raise ExtractionError(f"unknown pooling {pooling!r}: expected one of {', '.join(POOLINGS)}")
    if padding_side not in PADDING_SIDES:
        raise ExtractionError(f"unknown padding side {padding_side!r}: expected right or left")
    model: Any = loaded.model
    device = device or loaded.device
    selection = parse_layers(layers, num_blocks(loaded)) if layers is not None else None
    blocks = _hidden_state_blocks(model) if selection is not None else None
    if selection is not None and selection[-1] == num_blocks(loaded):
        blocks = None  # the last hidden state is the model's output (after any final norm)
    accepted = set(inspect.signature(model.forward).parameters)
    pad_id = _pad_token_id(loaded.tokenizer)
    positions_from_ids = _derives_positions_from_padding(model)
    if positions_from_ids:
        # RoBERTa-style models number positions from the pad token; they need that exact id.
        pad_id = int(model.config.pad_token_id)
    if units is not None:
        units.attach(lambda hidden, mask: _pool(hidden, mask, pooling))
    try:
        for batch in length_sorted_batches(tokens.lengths, batch_size):
            input_ids, mask = _pad([tokens.input_ids[i] for i in batch], pad_id, padding_side)
            inputs: dict[str, Any] = {
                "input_ids": input_ids.to(device),
                "attention_mask": mask.to(device),
                "return_dict": True,
            }
            if padding_side == "left" and "position_ids" in accepted and not positions_from_ids:
                inputs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).to(device)
            if "use_cache" in accepted:
                inputs["use_cache"] = False
            if units is not None:
                units.begin(mask)
            with torch.inference_mode():
                if blocks is not None and selection is not None:
                    pooled = _pool_selected(model, inputs, mask, pooling, selection, blocks)
                else:
                    pooled = _pool_all(loaded, inputs, mask, pooling, selection)
            for array in pooled:
                if not np.isfinite(array).all():
                    raise ExtractionError(
                        f"{loaded.source.path}: the model produced NaN or infinite activations "
                        "(corrupt weights, or try --dtype float32)"
                    )
            yield PooledBatch(
                indices=batch, layers=pooled, units=units.take() if units is not None else None
            )
            if on_batch is not None:
                on_batch(len(batch))
    finally:
        if units is not None:
            units.detach()


def _forward(model: Any, inputs: dict[str, Any]) -> Any:
    try:
        return model(**inputs)
    except _StopForward:
        raise
    except Exception as exc:
        raise ExtractionError(f"the model's forward pass failed: {first_line(exc)}") from None


def _pool_all(
    loaded: LoadedModel,
    inputs: dict[str, Any],
    mask: torch.Tensor,
    pooling: Pooling,
    selection: tuple[int, ...] | None,
) -> list[NDArray[np.float32]]:
    """One full forward pass returning every hidden state; pool all, or those selected."""
    output = _forward(loaded.model, {**inputs, "output_hidden_states": True})
    hidden_states = getattr(output, "hidden_states", None)
    if not hidden_states:
        raise ExtractionError(
            f"{loaded.source.path}: the model returns no hidden states "
            f"({type(loaded.model).__name__} is not supported)"
        )
    if selection is not None:
        if len(hidden_states) != num_blocks(loaded) + 1:
            raise ExtractionError(
                f"{loaded.source.path}: the model returns {len(hidden_states)} hidden states for "
                f"{num_blocks(loaded)} blocks, so --layers cannot tell which is which"
            )
        hidden_states = [hidden_states[i] for i in selection]
    return [_pool(h, mask.to(h.device), pooling) for h in hidden_states]


def _pool_selected(
    model: Any,
    inputs: dict[str, Any],
    mask: torch.Tensor,
    pooling: Pooling,
    selection: tuple[int, ...],
    blocks: tuple[list[torch.nn.Module], int],
) -> list[NDArray[np.float32]]:
    """Pool the selected hidden states from hooks on the blocks, as each is computed, and stop
    the forward pass after the last one (which must come before the model's output)."""
    modules, index = blocks
    pooled: dict[int, NDArray[np.float32]] = {}
    last = selection[-1]

    def keep(layer: int, hidden: torch.Tensor) -> None:
        pooled[layer] = _pool(hidden, mask.to(hidden.device), pooling)
        if layer == last:
            raise _StopForward

    def before_first(_: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        keep(0, args[0] if args else kwargs["hidden_states"])

    def after(layer: int) -> Callable[[Any, Any, Any], None]:
        def hook(_: Any, __: Any, output: Any) -> None:
            keep(layer, output[index] if isinstance(output, tuple | list) else output)

        return hook

    handles = [modules[i - 1].register_forward_hook(after(i)) for i in selection if i > 0]
    if selection[0] == 0:
        handles.append(modules[0].register_forward_pre_hook(before_first, with_kwargs=True))
    try:
        _forward(model, {**inputs, "output_hidden_states": False})
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return [pooled[i] for i in selection]


def _hidden_state_blocks(model: Any) -> tuple[list[torch.nn.Module], int] | None:
    """The modules whose outputs transformers records as the hidden states (the model's
    ``_can_record_outputs``), in order, and the index of the output it takes; None when that
    cannot be told for sure (then a selection runs the whole forward pass)."""
    spec = (getattr(model, "_can_record_outputs", None) or {}).get("hidden_states")
    target, index = spec, 0
    if spec is not None and not isinstance(spec, type):
        if getattr(spec, "layer_name", None) or getattr(spec, "class_name", None):
            return None
        if not getattr(spec, "capture_initial_hidden_state", True):
            return None
        target, index = getattr(spec, "target_class", None), int(getattr(spec, "index", 0))
    if not isinstance(target, type):
        return None
    block_type: type[Any] = target
    modules: list[torch.nn.Module] = [m for m in model.modules() if isinstance(m, block_type)]
    count = getattr(model.config, "num_hidden_layers", None)
    return (modules, index) if modules and len(modules) == count else None


def _pad(
    sequences: list[list[int]], pad_id: int, side: PaddingSide
) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        start = 0 if side == "right" else width - len(seq)
        ids[row, start : start + len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, start : start + len(seq)] = 1
    return ids, mask


def _pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: Pooling) -> NDArray[np.float32]:
    """Pool one hidden state (batch, tokens, width) to (batch, width) in float32.

    Half-precision states are upcast before anything is summed: the mean is taken in float32.
    """
    if pooling == "last":
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (mask * positions).argmax(dim=1)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last].float()
    else:
        values = hidden.float()
        real = mask.bool().unsqueeze(-1)
        # where(), not a product: a NaN at a padded position must not leak into the mean
        summed = torch.where(real, values, torch.zeros_like(values)).sum(dim=1)
        pooled = summed / real.sum(dim=1).to(values.dtype)
    return pooled.cpu().numpy().astype(np.float32, copy=False)


def _derives_positions_from_padding(model: Any) -> bool:
    """True for RoBERTa-style models, whose position embedding has a padding index: they count
    positions from the input ids themselves (mask-aware), and explicit position ids numbered from
    0 would be wrong for them."""
    embeddings = getattr(model, "embeddings", None)
    position_embeddings = getattr(embeddings, "position_embeddings", None)
    return (
        isinstance(position_embeddings, torch.nn.Embedding)
        and position_embeddings.padding_idx is not None
        and getattr(model.config, "pad_token_id", None) is not None
    )


def _pad_token_id(tokenizer: Any) -> int:
    """Any valid id will do: padded positions are masked out and never pooled."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id):
        if candidate is not None:
            return int(candidate)
    return 0
