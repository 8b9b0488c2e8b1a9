"""Extraction benchmark: `reef-forensics fingerprint` against a REEF-style loop and a bare floor.

    python bench/bench_extraction.py [--model PATH ...] [--texts 200] [--batch-size 16]

On the same model and the same probe texts (the first 200 of the built-in set, mixed lengths):

- reef-style: what the REEF paper's code does: one text per forward pass, fp32, a forward hook
  on every decoder block, the last token of each block's output kept.
- floor: a bare batched loop, `model(**batch, output_hidden_states=True)` over length-sorted,
  right-padded batches, with no pooling and nothing stored: the cost of the forward passes.
- reef-forensics (in-process): `fingerprint_loaded` on the already loaded model: tokenizing,
  batching, pooling every layer, checking for NaN, writing the fingerprint and hashing it.
- whole processes: `reef-forensics fingerprint MODEL --out DIR` as a new process (import,
  model digest, load, extract, write) against a new process that loads the model and runs the
  floor loop.

Ratios are taken within one run. Without --model, a random-init 8-layer Llama-style model
(hidden size 512, built on the spot) is used. A `.gguf` model is converted once to a
safetensors folder under bench/output/ so that loading it is not what gets measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from reef_forensics import ProbeSet, load_model, load_probes, model_digest, resolve_model
from reef_forensics.demo.toy_models import make_model
from reef_forensics.models.fingerprinting import fingerprint_loaded
from reef_forensics.models.loading import dequantize_gguf

OUTPUT = Path(__file__).parent / "output"


def reef_style(model: Any, tokenizer: Any, texts: tuple[str, ...]) -> list[list[torch.Tensor]]:
    """One text at a time, a hook per block, last token (REEF's published procedure)."""
    captured: list[torch.Tensor] = []

    def keep(_module: Any, _inputs: Any, output: Any) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output)

    hooks = [block.register_forward_hook(keep) for block in model.layers]
    results = []
    try:
        for text in texts:
            captured.clear()
            encoded = tokenizer(text, return_tensors="pt")
            with torch.no_grad():
                model(**encoded)
            results.append([c[0, -1].float().clone() for c in captured])
    finally:
        for hook in hooks:
            hook.remove()
    return results


def floor(model: Any, tokenizer: Any, texts: tuple[str, ...], batch_size: int) -> int:
    """Batched forward passes with hidden states requested, nothing pooled or kept."""
    encoded = tokenizer(list(texts)).input_ids
    order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    count = 0
    for start in range(0, len(order), batch_size):
        rows = [encoded[i] for i in order[start : start + batch_size]]
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        with torch.inference_mode():
            output = model(
                input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False
            )
        count += len(output.hidden_states)
    return count


def best_of(repeats: int, fn: Callable[[], Any]) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def prepare_model(path: str | None) -> Path:
    if path is None:
        folder = OUTPUT / "models" / "llama-8x512"
        if not (folder / "config.json").exists():
            make_model(
                folder,
                load_probes().texts,
                family="llama",
                hidden_size=512,
                num_layers=8,
                num_heads=8,
                seed=0,
            )
        return folder
    source = Path(path)
    if source.suffix != ".gguf":
        return source
    folder = OUTPUT / "models" / source.stem
    if not (folder / "config.json").exists():
        dequantize_gguf(source, folder)
    return folder


def floor_process(model_dir: str, probes_file: str, batch_size: int) -> None:
    """Entry point of the floor's whole-process run: load, then the bare loop."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    floor(model, tokenizer, load_probes(probes_file).texts, batch_size)


def bench_model(model_dir: Path, probes: ProbeSet, args: argparse.Namespace) -> dict[str, Any]:
    source = resolve_model(model_dir)
    loaded = load_model(source)
    digest = model_digest(source)
    model, tokenizer = loaded.model, loaded.tokenizer
    out = OUTPUT / "fingerprints" / model_dir.name
    texts = probes.texts

    floor(model, tokenizer, texts[:16], args.batch_size)  # warm-up
    results = {
        "reef_style_s": best_of(1, lambda: reef_style(model, tokenizer, texts)),
        "floor_s": best_of(args.repeats, lambda: floor(model, tokenizer, texts, args.batch_size)),
        "ours_in_process_s": best_of(
            args.repeats,
            lambda: fingerprint_loaded(
                loaded, digest, out, probes=probes, batch_size=args.batch_size, overwrite=True
            ),
        ),
    }
    probes_file = OUTPUT / "probes.jsonl"
    probes_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    exe = shutil.which("reef-forensics", path=os.path.dirname(sys.executable)) or "reef-forensics"
    ours_cmd = [exe, "fingerprint", str(model_dir), "--out", str(out), "--probes", str(probes_file),
                "--batch-size", str(args.batch_size), "--overwrite", "--no-progress"]  # fmt: skip
    floor_cmd = [
        sys.executable,
        __file__,
        "--floor-process",
        str(model_dir),
        str(probes_file),
        str(args.batch_size),
    ]
    results["ours_process_s"] = best_of(
        args.repeats, lambda: subprocess.run(ours_cmd, check=True, capture_output=True)
    )
    results["floor_process_s"] = best_of(
        args.repeats, lambda: subprocess.run(floor_cmd, check=True, capture_output=True)
    )
    results["floor_speedup_over_reef_style"] = results["reef_style_s"] / results["floor_s"]
    results["ours_over_floor_in_process"] = results["ours_in_process_s"] / results["floor_s"]
    results["ours_over_floor_process"] = results["ours_process_s"] / results["floor_process_s"]
    results["ours_speedup_over_reef_style"] = results["reef_style_s"] / results["ours_in_process_s"]
    results["model"] = {
        "name": model_dir.name,
        "blocks": loaded.model.config.num_hidden_layers,
        "hidden": loaded.model.config.hidden_size,
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
    }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", action="append", help="model folder or .gguf file (repeatable)")
    parser.add_argument("--texts", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the results as JSON to this file")
    parser.add_argument("--floor-process", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor_process:
        floor_process(args.floor_process[0], args.floor_process[1], int(args.floor_process[2]))
        return
    OUTPUT.mkdir(parents=True, exist_ok=True)
    probes = ProbeSet(f"builtin:default[:{args.texts}]", load_probes().texts[: args.texts])
    report: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "settings": {k: v for k, v in vars(args).items() if k != "floor_process"},
        "models": [],
    }
    for model in args.model or [None]:
        model_dir = prepare_model(model)
        r = bench_model(model_dir, probes, args)
        report["models"].append(r)
        m = r["model"]
        print(
            f"{m['name']} ({m['blocks']} blocks, hidden {m['hidden']}, {m['parameters'] / 1e6:.1f} M parameters), "
            f"{args.texts} texts, batch {args.batch_size}:\n"
            f"  reef-style (1 text/pass, hooks)   {r['reef_style_s']:7.2f} s\n"
            f"  floor (bare batched loop)         {r['floor_s']:7.2f} s   {r['floor_speedup_over_reef_style']:.2f}x faster than reef-style\n"
            f"  reef-forensics, in-process        {r['ours_in_process_s']:7.2f} s   {r['ours_over_floor_in_process']:.3f}x the floor\n"
            f"  floor, whole process              {r['floor_process_s']:7.2f} s\n"
            f"  reef-forensics fingerprint, whole {r['ours_process_s']:7.2f} s   {r['ours_over_floor_process']:.3f}x the floor process"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
