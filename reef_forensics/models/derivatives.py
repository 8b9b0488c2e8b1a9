"""Weight-space derivatives of a victim model: the positive controls of a check.

Each function changes a loaded model in place the way someone re-badging it might: a
function-preserving permutation of MLP hidden units, 50% unstructured magnitude pruning,
Gaussian weight noise, a short fine-tune on other text, a linear merge with a second model of
the same architecture. A derivative of the victim must score like a derived model; if one does
not, the check's sensitivity is in doubt, and the Findings show it.

Supported layouts: Llama/Qwen/Mistral/Gemma-style MLPs (gate/up/down projections), BERT-style
(intermediate/output dense), GPT-2-style (c_fc/c_proj). Others are skipped with the reason.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from reef_forensics.digests import sha256_json
from reef_forensics.models.loading import LoadedModel, ModelDigest
from reef_forensics.models.native import describe, native_calls, time_trial

NOISE_RELATIVE_STD = 0.02
PRUNE_FRACTION = 0.5
FINETUNE_STEPS = 30


class Unsupported(Exception):
    """This derivation does not apply to this model (the message says why)."""


@dataclass(frozen=True)
class Derivation:
    name: str
    apply: Callable[[LoadedModel, int], None]


def _mlps(model: torch.nn.Module) -> Iterator[tuple[str, Any]]:
    for name, module in model.named_modules():
        if all(hasattr(module, part) for part in ("gate_proj", "up_proj", "down_proj")):
            yield "gated", module
        elif (
            hasattr(module, "intermediate")
            and hasattr(module, "output")
            and hasattr(module.intermediate, "dense")
        ):
            yield "bert", module
        elif hasattr(module, "c_fc") and hasattr(module, "c_proj") and name.endswith("mlp"):
            yield "gpt2", module


def permute_mlp(loaded: LoadedModel, seed: int) -> None:
    """Reorder the hidden units of every MLP: the function is exactly the same."""
    generator = torch.Generator().manual_seed(seed)
    found = False
    with torch.no_grad():
        for kind, module in _mlps(loaded.model):
            found = True
            if kind == "gated":
                perm = torch.randperm(module.up_proj.weight.shape[0], generator=generator)
                for proj in (module.gate_proj, module.up_proj):
                    proj.weight.copy_(proj.weight[perm])
                    if proj.bias is not None:
                        proj.bias.copy_(proj.bias[perm])
                module.down_proj.weight.copy_(module.down_proj.weight[:, perm])
            elif kind == "bert":
                inner, outer = module.intermediate.dense, module.output.dense
                perm = torch.randperm(inner.weight.shape[0], generator=generator)
                inner.weight.copy_(inner.weight[perm])
                inner.bias.copy_(inner.bias[perm])
                outer.weight.copy_(outer.weight[:, perm])
            else:  # GPT-2's Conv1D stores weights as (in, out)
                perm = torch.randperm(module.c_fc.weight.shape[1], generator=generator)
                module.c_fc.weight.copy_(module.c_fc.weight[:, perm])
                module.c_fc.bias.copy_(module.c_fc.bias[perm])
                module.c_proj.weight.copy_(module.c_proj.weight[perm, :])
    if not found:
        raise Unsupported(f"no MLP layout this tool knows in {type(loaded.model).__name__}")


def _block_matrices(model: torch.nn.Module) -> Iterator[torch.nn.Parameter]:
    """The 2-D weights inside the transformer blocks (not embeddings or the output head)."""
    for name, parameter in model.named_parameters():
        if (
            parameter.ndim == 2
            and "embed" not in name
            and "wte" not in name
            and "wpe" not in name
            and "lm_head" not in name
        ):
            yield parameter


def prune_tensor(parameter: torch.Tensor, fraction: float) -> None:
    """Zero the smallest-magnitude ``fraction`` of ``parameter``'s entries, in place."""
    count = int(fraction * parameter.numel())
    if count:
        threshold = parameter.abs().flatten().kthvalue(count).values
        parameter.masked_fill_(parameter.abs() <= threshold, 0.0)


def noise_tensor(parameter: torch.Tensor, generator: torch.Generator, relative_std: float) -> None:
    """Add Gaussian noise to ``parameter`` in place, its spread a fraction of the tensor's own
    (nothing for a single number, which has no spread)."""
    if parameter.numel() > 1 and parameter.is_floating_point():
        noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
        scaled = noise * relative_std * float(parameter.float().std())
        parameter.add_(scaled.to(device=parameter.device, dtype=parameter.dtype))


def prune_magnitude(loaded: LoadedModel, seed: int, fraction: float = PRUNE_FRACTION) -> None:
    """Zero the smallest-magnitude ``fraction`` of every block weight matrix (unstructured)."""
    with torch.no_grad():
        for parameter in _block_matrices(loaded.model):
            prune_tensor(parameter, fraction)


def add_noise(loaded: LoadedModel, seed: int, relative_std: float = NOISE_RELATIVE_STD) -> None:
    """Add Gaussian noise to every weight, its spread a fraction of the weight's own."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in loaded.model.parameters():
            noise_tensor(parameter, generator, relative_std)


def other_text(texts: list[str], seed: int) -> list[str]:
    """Text the probes do not contain: each probe's words in a shuffled order."""
    rng = random.Random(seed)
    shuffled = []
    for text in texts:
        words = text.split()
        rng.shuffle(words)
        shuffled.append(" ".join(words))
    return shuffled


def fine_tune(
    loaded: LoadedModel, seed: int, texts: list[str] | None = None, steps: int = FINETUNE_STEPS
) -> None:
    """A short causal-LM fine-tune of the base model on other text (the output layer is the
    input embedding, transposed: enough to train the blocks without the original LM head)."""
    if loaded.is_encoder:
        raise Unsupported("fine-tuning is done for decoders only (no masked-LM head is loaded)")
    model: Any = loaded.model
    tokenizer = loaded.tokenizer
    if tokenizer.pad_token is None:  # Llama-3, GPT-2, Mistral: pad with EOS (masked out anyway)
        if tokenizer.eos_token is None:
            raise Unsupported("the tokenizer has neither a pad nor an end-of-sequence token")
        tokenizer.pad_token = tokenizer.eos_token
    embeddings = model.get_input_embeddings()
    corpus = other_text(texts or ["the quick brown fox jumps over the lazy dog"] * 8, seed)
    time_trial(tokenizer, corpus)  # a tokenizer that stalls or crashes is refused first
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    try:
        for step in range(steps):
            batch = [corpus[(step * 4 + i) % len(corpus)] for i in range(4)]
            with native_calls(f"the tokenizer of {describe(tokenizer)}"):
                encoded = tokenizer(
                    batch, return_tensors="pt", padding=True, truncation=True, max_length=64
                )
            ids = encoded["input_ids"].to(embeddings.weight.device)
            mask = encoded["attention_mask"].to(ids.device)
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
            logits = hidden[:, :-1] @ embeddings.weight.T
            target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        model.eval()


def merge_with(other: torch.nn.Module) -> Callable[[LoadedModel, int], None]:
    """A 50/50 linear merge with a second model of the same architecture."""

    def apply(loaded: LoadedModel, seed: int) -> None:
        theirs = dict(other.named_parameters())
        with torch.no_grad():
            for name, parameter in loaded.model.named_parameters():
                partner = theirs.get(name)
                if partner is None or partner.shape != parameter.shape:
                    raise Unsupported(f"the merge partner has no matching parameter {name}")
                parameter.mul_(0.5).add_(partner.detach().to(parameter.dtype), alpha=0.5)

    return apply


def standard_derivations(
    texts: list[str], merge_partner: torch.nn.Module | None = None
) -> list[Derivation]:
    derivations = [
        Derivation("MLP hidden-unit permutation (function-preserving)", permute_mlp),
        Derivation(f"{int(PRUNE_FRACTION * 100)}% unstructured magnitude pruning", prune_magnitude),
        Derivation(
            f"Gaussian weight noise ({NOISE_RELATIVE_STD:.0%} of each weight's spread)", add_noise
        ),
        Derivation(
            f"fine-tune, {FINETUNE_STEPS} steps on other text", lambda m, s: fine_tune(m, s, texts)
        ),
    ]
    if merge_partner is not None:
        derivations.append(
            Derivation("50/50 linear merge with the given model", merge_with(merge_partner))
        )
    return derivations


def describe_skip(derivation: Derivation, exc: BaseException) -> dict[str, Any]:
    return {"name": derivation.name, "skipped": str(exc)}


def derivative_digest(base_digest: str, name: str, seed: int) -> ModelDigest:
    """The model digest of an in-memory derivative: it has no files, so it is named by what it
    was made from and how (a derivative is never mistaken for the model it came from)."""
    return ModelDigest(
        digest=sha256_json({"derived_from": base_digest, "derivation": name, "seed": seed}),
        files=(),
    )
