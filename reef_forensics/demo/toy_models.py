"""Tiny models and tokenizers built on the spot, for tests, examples and the quick start.

No model hub is reachable here, so every model the test suite and the quick start use is made
by these functions: a tokenizer trained in a second on the probe texts, and a small random-init
decoder (Llama-style or GPT-2-style) or encoder (BERT-style or RoBERTa-style), saved as a normal Hugging Face
folder with safetensors weights. `derive` makes weight-space derivatives of a saved model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

Family = Literal["llama", "gpt2", "bert", "roberta"]
FAMILIES: tuple[Family, ...] = ("llama", "gpt2", "bert", "roberta")


def train_tokenizer(
    texts: Sequence[str], *, family: Family = "llama", vocab_size: int = 512
) -> Any:
    """A fast tokenizer trained on ``texts``: WordPiece for BERT, byte-level BPE for the others."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    if family == "bert":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        tok.train_from_iterator(
            texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials)
        )
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            unk_token="[UNK]",
            pad_token="[PAD]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
        )
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    bos_id, eos_id = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    if family == "roberta":
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>",
            pair="<s> $A </s> </s> $B </s>",
            special_tokens=[("<s>", bos_id), ("</s>", eos_id)],
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token="<s>",
            eos_token="</s>",
            unk_token="<unk>",
            pad_token="<pad>",
            cls_token="<s>",
            sep_token="</s>",
        )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )


def build_model(
    family: Family,
    vocab_size: int,
    *,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 4,
    num_heads: int = 4,
    max_positions: int = 256,
) -> Any:
    """A random-init model of ``family``, deterministic for a given seed."""
    from transformers import (
        BertConfig,
        BertModel,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        RobertaConfig,
        RobertaModel,
    )

    torch.manual_seed(seed)
    if family == "llama":
        config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            intermediate_size=hidden_size * 2,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=max(1, num_heads // 2),
            max_position_embeddings=max_positions,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
            tie_word_embeddings=False,
        )
        return LlamaForCausalLM(config).eval()
    if family == "gpt2":
        gpt2 = GPT2Config(
            vocab_size=vocab_size,
            n_embd=hidden_size,
            n_layer=num_layers,
            n_head=num_heads,
            n_positions=max_positions,
            bos_token_id=1,
            eos_token_id=2,
        )
        return GPT2LMHeadModel(gpt2).eval()
    if family == "bert":
        bert = BertConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            intermediate_size=hidden_size * 2,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            max_position_embeddings=max_positions,
            pad_token_id=0,
        )
        return BertModel(bert).eval()
    if family == "roberta":
        roberta = RobertaConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            intermediate_size=hidden_size * 2,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            max_position_embeddings=max_positions + 2,  # positions start after the pad index
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
        return RobertaModel(roberta).eval()
    raise ValueError(f"unknown family {family!r}: expected one of {FAMILIES}")


def make_model(
    out: str | os.PathLike[str],
    texts: Sequence[str],
    *,
    family: Family = "llama",
    seed: int = 0,
    vocab_size: int = 512,
    **shape: Any,
) -> Path:
    """Train a tokenizer on ``texts``, build a random-init model, save both to ``out``."""
    folder = Path(out)
    tokenizer = train_tokenizer(texts, family=family, vocab_size=vocab_size)
    model = build_model(family, len(tokenizer), seed=seed, **shape)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def derive(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    noise: float = 0.0,
    prune: float = 0.0,
    seed: int = 1,
) -> Path:
    """A weight-space derivative of a saved model: relative Gaussian noise, then magnitude pruning.

    ``noise`` is the noise standard deviation relative to each tensor's own; ``prune`` the
    fraction of each matrix's smallest-magnitude weights set to zero.
    """
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    src = Path(source)
    try:
        model = AutoModelForCausalLM.from_pretrained(src)
    except ValueError:
        model = AutoModel.from_pretrained(src)
    from reef_forensics.models.derivatives import noise_tensor, prune_tensor

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if noise > 0:
                noise_tensor(parameter, generator, noise)
            if prune > 0 and parameter.ndim == 2:
                prune_tensor(parameter, prune)
    folder = Path(out)
    model.save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(src).save_pretrained(folder)
    return folder


def train_causal_lm(
    model: Any,
    tokenizer: Any,
    corpus: list[str],
    parameters: list[torch.nn.Parameter],
    *,
    steps: int,
    batch: int,
    max_length: int,
    lr: float,
    seed: int,
    log: Any = None,
    every: int = 0,
) -> float:
    """Next-token training with AdamW on ``corpus``, ``batch`` texts a step; the last loss."""
    optimizer = torch.optim.AdamW(parameters, lr=lr)
    torch.manual_seed(seed)
    model.train()
    loss = torch.tensor(float("nan"))
    for step in range(steps):
        texts = [corpus[(step * batch + i) % len(corpus)] for i in range(batch)]
        encoded = tokenizer(
            texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length
        )
        labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
        loss = model(**encoded, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if log is not None and every and (step % every == 0 or step == steps - 1):
            log(f"  step {step}: loss {loss.item():.3f}")
    model.eval()
    return float(loss.item())
