"""What the neuron-matching test costs: fingerprinting with MLP units, matching, checking.

    python bench/bench_units.py --smollm2 SmolLM2-135M-Instruct.Q4_1.gguf [--json FILE]

Every figure is a ratio against a baseline measured in the same run (best of --repeats, the
two variants alternating), never an absolute time to meet:

(a) fingerprinting with MLP units (the default, the first 256 texts) against without
    (``unit_samples=0``), in-process on an already loaded model (`fingerprint_loaded`), for
    SmolLM2-135M (the whole built-in probe set) and for a random-init Llama-style model with a
    7B's MLP width (intermediate size 11008; hidden size and blocks from --llama-hidden and
    --llama-blocks, SmolLM2's tokenizer, the first --llama-texts texts);
(b) `unit_matching.match_block` per block on those fingerprints' units (a block against
    itself: a derivative's case; against another block: an unrelated model's), with its parts:
    the dead-unit filter and conversions, the two correlation matrices, the two assignments;
(c) the whole `check` of the accuracy benchmark's SmolLM2 case (victim, its 30% magnitude
    pruning as the suspect) with the units test (findings version 3) against the CKA-only check
    (``findings_version=2``), with 3 references (gemma-3-270m, Qwen2.5-Coder-0.5B, one model of
    SmolLM2's architecture) and with the benchmark's whole panel (8), and where the units
    test's time goes (assignments, correlations, reading the units, the rest).
    The fingerprints come from bench/accuracy.py's cache (run it first; --accuracy-cache).

The storage of units.safetensors is read from the SmolLM2 fingerprint and computed for a
Llama-style 7B (32 blocks x 11008 units x 2 views x 256 texts x 2 bytes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from bench_extraction import prepare_model

from reef_forensics import (
    load_model,
    load_probes,
    model_digest,
    read_fingerprint,
    resolve_model,
)
from reef_forensics.analysis import check as check_module
from reef_forensics.analysis.check import check
from reef_forensics.formats import fingerprint as fingerprint_module
from reef_forensics.formats.fingerprint import (
    DEFAULT_UNIT_SAMPLES,
    FORMAT_VERSION,
    REPRESENTATIONS,
    UNITS,
    Fingerprint,
)
from reef_forensics.formats.probes import ProbeSet
from reef_forensics.models.fingerprinting import fingerprint_loaded
from reef_forensics.similarity import unit_matching
from reef_forensics.similarity.unit_matching import (
    DEFAULT_MAX_ROWS,
    correlations,
    live_units,
    match_block,
    matching,
)

OUTPUT = Path(__file__).parent / "output" / "units"
ACCURACY_CACHE = Path(__file__).parent / "output" / "accuracy"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
    started = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - started


def llama_11008(tokenizer_dir: Path, hidden: int, blocks: int, intermediate: int) -> Path:
    """A random-init Llama-style model with a 7B's MLP width and SmolLM2's tokenizer."""
    folder = OUTPUT / "models" / f"llama-{blocks}x{hidden}-mlp{intermediate}"
    if (folder / "config.json").exists():
        return folder
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=blocks,
        num_attention_heads=hidden // 128,
        num_key_value_heads=hidden // 128,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def fingerprinting(
    name: str, model_dir: Path, probes: ProbeSet, repeats: int
) -> tuple[dict[str, Any], Fingerprint]:
    """Fingerprinting with and without units, alternating; best of ``repeats`` each."""
    source = resolve_model(model_dir)
    loaded = load_model(source)
    digest = model_digest(source)
    out = OUTPUT / "fingerprints" / name
    warm = ProbeSet(name="warm-up", texts=probes.texts[:16])
    for samples in (0, DEFAULT_UNIT_SAMPLES):  # first-call costs out of the way
        fingerprint_loaded(
            loaded, digest, out / "warm", probes=warm, overwrite=True, unit_samples=samples
        )
    times: dict[str, list[float]] = {"without": [], "with": []}
    for repeat in range(repeats):
        order = ("without", "with") if repeat % 2 == 0 else ("with", "without")
        for variant in order:
            samples = DEFAULT_UNIT_SAMPLES if variant == "with" else 0
            seconds = timed(
                fingerprint_loaded,
                loaded,
                digest,
                out / variant,
                probes=probes,
                overwrite=True,
                unit_samples=samples,
            )
            times[variant].append(seconds)
            log(f"{name}: fingerprint {variant} units, {len(probes)} texts: {seconds:.1f} s")
    loaded.close()
    with_units = read_fingerprint(out / "with")
    config: Any = loaded.model.config
    best = {k: min(v) for k, v in times.items()}
    result = {
        "model": name,
        "blocks": int(config.num_hidden_layers),
        "hidden_size": int(config.hidden_size),
        "intermediate_size": int(config.intermediate_size),
        "texts": len(probes),
        "unit_samples": int(with_units.units["samples"]) if with_units.units else 0,
        "seconds_without": times["without"],
        "seconds_with": times["with"],
        "best_without": round(best["without"], 2),
        "best_with": round(best["with"], 2),
        "ratio": round(best["with"] / best["without"], 3),
        "representations_bytes": (out / "with" / REPRESENTATIONS).stat().st_size,
        "units_bytes": (out / "with" / UNITS).stat().st_size,
    }
    shutil.rmtree(out / "warm", ignore_errors=True)
    return result, with_units


def both_live(x: list[Any]) -> None:
    live_units(x[0], x[1])
    live_units(x[2], x[3])


def matching_cost(name: str, fingerprint: Fingerprint, repeats: int) -> dict[str, Any]:
    """`match_block` per block, whole and in parts, a block against itself and another."""
    blocks = list(fingerprint.unit_blocks)
    a1, a2 = fingerprint.unit_views(blocks[0])
    b1, b2 = fingerprint.unit_views(blocks[-1])
    result: dict[str, Any] = {"model": name, "units": int(a1.shape[1]), "samples": int(a1.shape[0])}
    for case, (y1, y2) in {
        "itself (derived)": (a1, a2),
        "another block (unrelated)": (b1, b2),
    }.items():
        whole = [timed(match_block, a1, a2, y1, y2) for _ in range(repeats)]
        match = match_block(a1, a2, y1, y2)
        x = [np.asarray(v, dtype=np.float64) for v in (a1, a2, y1, y2)]
        prepare = [timed(both_live, x) for _ in range(repeats)]
        rows = min(DEFAULT_MAX_ROWS, x[0].shape[1])
        corr = [timed(correlations, x[0][:, :rows], x[2]) for _ in range(repeats)]
        c = correlations(x[0][:, :rows], x[2])
        assign = [timed(matching, c) for _ in range(repeats)]
        result[case] = {
            "seconds_per_block": round(statistics.median(whole), 4),
            "dead_unit_filter_and_conversion": round(statistics.median(prepare), 4),
            "correlations_two_views": round(2 * statistics.median(corr), 4),
            "assignments_two_views": round(2 * statistics.median(assign), 4),
            "matched": match.matched,
            "spearman": round(match.spearman, 4),
        }
        log(f"{name}: match_block, {case}: {result[case]}")
    return result


#: The few references of the small panel (the accuracy benchmark's names): two pretrained LLMs
#: and one model of SmolLM2's architecture, the fewest a verdict takes.
FEW = ("unrelated-gemma-3-270m", "unrelated-qwen2.5-coder-0.5b", "same-arch-")


class Stopwatch:
    """Seconds spent in chosen functions while it is installed (module attributes replaced by
    timing wrappers, put back on exit)."""

    def __init__(self, targets: dict[str, tuple[Any, str]]) -> None:
        self.targets = targets
        self.seconds = {name: 0.0 for name in targets}
        self.calls = {name: 0 for name in targets}
        self._saved: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> Stopwatch:
        for name, (module, attribute) in self.targets.items():
            original = getattr(module, attribute)
            self._saved.append((module, attribute, original))
            setattr(module, attribute, self._wrap(name, original))
        return self

    def __exit__(self, *_: Any) -> None:
        for module, attribute, original in self._saved:
            setattr(module, attribute, original)

    def _wrap(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def timed_call(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - started
                self.calls[name] += 1

        return timed_call


def check_cost(cache: Path, repeats: int) -> list[dict[str, Any]] | None:
    """The accuracy benchmark's SmolLM2 check, with and without the units test, with a few
    references and with the benchmark's whole panel."""
    folder = cache / f"fingerprints-v{FORMAT_VERSION}"
    victim_dir, suspect_dir = folder / "victim-smollm2", folder / "derived-30--magnitude-pruning"
    if (
        not (victim_dir / "fingerprint.json").exists()
        or not (suspect_dir / "fingerprint.json").exists()
    ):
        log(f"(c) skipped: no SmolLM2 fingerprints in {folder} (run bench/accuracy.py first)")
        return None
    victim, suspect = read_fingerprint(victim_dir), read_fingerprint(suspect_dir)
    panel = [
        p
        for p in sorted(folder.iterdir())
        if p.name.startswith(("unrelated-", "same-arch-")) and (p / "fingerprint.json").exists()
    ]
    few = [next(p for p in panel if p.name.startswith(prefix)) for prefix in FEW]
    results = []
    for label, folders in (("few references", few), ("the accuracy benchmark's panel", panel)):
        references = [read_fingerprint(p) for p in folders]
        times: dict[int, list[float]] = {2: [], 3: []}
        parts: dict[str, float] = {}
        for repeat in range(repeats):
            for version in (2, 3) if repeat % 2 == 0 else (3, 2):
                with Stopwatch(
                    {
                        "compare_units": (check_module, "compare_units"),
                        "assignments": (unit_matching, "matching"),
                        "correlations": (unit_matching, "correlations"),
                        "reading units": (fingerprint_module.Fingerprint, "unit_views"),
                    }
                ) as watch:
                    started = time.perf_counter()
                    check(victim, suspect, references, findings_version=version)
                    times[version].append(time.perf_counter() - started)
                if version == 3:
                    parts = {k: round(v, 2) for k, v in watch.seconds.items()}
                    parts["compare_units calls"] = watch.calls["compare_units"]
                log(f"check ({label}), findings version {version}: {times[version][-1]:.1f} s")
        best2, best3 = min(times[2]), min(times[3])
        results.append(
            {
                "panel": label,
                "victim": victim.path.name,
                "suspect": suspect.path.name,
                "references": [p.name for p in folders],
                "seconds_cka_only": [round(t, 2) for t in times[2]],
                "seconds_with_units": [round(t, 2) for t in times[3]],
                "best_cka_only": round(best2, 2),
                "best_with_units": round(best3, 2),
                "ratio": round(best3 / best2, 3),
                "units_test_parts_last_run": parts,
            }
        )
        log(f"check ({label}): with units / CKA only = {results[-1]['ratio']}; {parts}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smollm2", required=True, help="SmolLM2-135M-Instruct .gguf or folder")
    parser.add_argument("--llama-hidden", type=int, default=1024)
    parser.add_argument("--llama-blocks", type=int, default=4)
    parser.add_argument("--llama-intermediate", type=int, default=11008)
    parser.add_argument("--llama-texts", type=int, default=256)
    parser.add_argument("--smollm2-texts", type=int, help="default: the whole built-in set")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--accuracy-cache", default=str(ACCURACY_CACHE))
    parser.add_argument("--skip", action="append", default=[], choices=["a", "b", "c"])
    parser.add_argument("--json", help="write the results as JSON to this file")
    args = parser.parse_args()
    torch.manual_seed(0)
    probes = load_probes()
    smol_dir = prepare_model(args.smollm2)
    result: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_average_at_start": os.getloadavg(),
        },
        "settings": vars(args),
    }
    fingerprints: dict[str, Fingerprint] = {}
    if "a" not in args.skip or "b" not in args.skip:
        result["fingerprinting"] = []
        cases = [
            ("smollm2-135m", smol_dir, load_probes(limit=args.smollm2_texts)),
            (
                f"llama-{args.llama_blocks}x{args.llama_hidden}-mlp{args.llama_intermediate}",
                llama_11008(
                    smol_dir, args.llama_hidden, args.llama_blocks, args.llama_intermediate
                ),
                ProbeSet(name=probes.name, texts=probes.texts[: args.llama_texts]),
            ),
        ]
        for name, folder, texts in cases:
            figures, fingerprints[name] = fingerprinting(name, folder, texts, args.repeats)
            result["fingerprinting"].append(figures)
            log(f"{name}: with units / without = {figures['ratio']}")
    if "b" not in args.skip:
        result["matching"] = [
            matching_cost(name, fp, max(3, args.repeats)) for name, fp in fingerprints.items()
        ]
    if "c" not in args.skip:
        result["check"] = check_cost(Path(args.accuracy_cache), args.repeats)
    unit_bytes_7b = 32 * 11008 * 2 * DEFAULT_UNIT_SAMPLES * 2
    result["storage"] = {
        "llama_7b_units_bytes": unit_bytes_7b,
        "llama_7b_representations_bytes_620_texts": 33 * 4096 * 620 * 4,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
