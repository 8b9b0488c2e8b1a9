"""Memory benchmark: peak resident memory while fingerprinting a model with disk offload.

    python bench/bench_memory.py [--hidden 1024] [--blocks 16] [--texts 32] [--batch-size 4]
                                 [--max-length 64] [--cpu-budget 16MB] [--json FILE]

Builds a random-init Llama-style model (default hidden size 1024, 16 blocks: about 600 MB of
float32 weights, saved as safetensors shards of at most 100 MB), then fingerprints it in fresh
subprocesses, each measuring its own memory:

- normal: ``--device cpu``, the whole model in memory;
- offload: ``--device auto --max-memory cpu:BUDGET``: accelerate keeps at most BUDGET of weights
  in memory and leaves the rest in the safetensors files, read one block at a time;
- offload-half: the same with ``--layers 0-L/2``: the forward pass stops halfway, so the blocks
  after it are never read.

Each child records its resident memory after the imports, the probe texts and the tokenizer
(the baseline: what any Python process with torch and transformers holds) and its peak (VmHWM,
/proc/self/status) at the end. The bound on an offloaded run's peak is

    baseline + BUDGET + largest block + activations + output pages + margin

with the largest block read from the safetensors headers, activations one batch's worth
(batch x max_length tokens x 4 bytes x (hidden x (layers kept + 4) + 3 x intermediate +
heads x max_length): the hidden states transformers keeps, the MLP's intermediates and one
attention score matrix), output pages the memory-mapped representations file (texts x hidden
x layers kept x 4 bytes), and a fixed margin for the allocator and accelerate's bookkeeping.
The script checks every offloaded run against it, checks that the bound is below baseline
plus the whole model (the bound is not trivially met), and checks that the offloaded
fingerprint's representations are byte-identical to the normal one's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).parent / "output" / "memory"
MARGIN = 64 * 2**20
_BLOCK = re.compile(r"(.*\.layers\.[0-9]+)\.")


def build(
    folder: Path, *, hidden: int, blocks: int, texts: list[str], shard_size: str = "100MB"
) -> Path:
    """A random-init Llama-style model saved as safetensors shards of at most ``shard_size``
    (made once, then reused)."""
    from reef_forensics.demo.toy_models import build_model, train_tokenizer

    if (folder / "config.json").is_file():
        return folder
    tokenizer = train_tokenizer(texts, family="llama")
    model = build_model(
        "llama", len(tokenizer), hidden_size=hidden, num_layers=blocks, num_heads=8, seed=0
    )
    model.save_pretrained(folder, safe_serialization=True, max_shard_size=shard_size)
    tokenizer.save_pretrained(folder)
    return folder


def weight_sizes(folder: Path) -> tuple[int, int]:
    """The model's total weight bytes and its largest block's (a decoder block, or any tensor
    outside the blocks, such as the embeddings), from the safetensors headers."""
    from reef_forensics.formats.safetensors_file import read_header

    groups: dict[str, int] = defaultdict(int)
    for shard in sorted(folder.glob("*.safetensors")):
        for name, entry in read_header(shard).tensors.items():
            match = _BLOCK.match(name)
            groups[match.group(1) if match else name] += entry.end - entry.begin
    return sum(groups.values()), max(groups.values())


def bound(
    config: dict[str, Any], largest: int, budget: int, args: argparse.Namespace, kept: int
) -> dict[str, int]:
    """The terms of the bound on an offloaded run's growth over its baseline, in bytes."""
    hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    tokens = args.batch_size * args.max_length
    activations = (
        tokens
        * 4
        * (hidden * (kept + 4) + 3 * int(config["intermediate_size"]) + heads * args.max_length)
    )
    terms = {
        "cpu_budget": budget,
        "largest_block": largest,
        "activations": activations,
        "output_pages": args.texts * hidden * kept * 4,
        "margin": MARGIN,
    }
    return {**terms, "total": sum(terms.values())}


def child(spec: dict[str, Any]) -> None:
    """Run in a fresh process: fingerprint one model as told, print what memory it took."""
    import accelerate  # noqa: F401  (imported before the baseline: every offloaded run needs it)
    import transformers.models.llama.modeling_llama  # noqa: F401
    from transformers import AutoTokenizer

    from reef_forensics import ProbeSet, load_probes
    from reef_forensics.digests import sha256_file
    from reef_forensics.models.fingerprinting import fingerprint_model

    probes = ProbeSet("bench", load_probes().texts[: spec["texts"]])
    AutoTokenizer.from_pretrained(spec["model"], local_files_only=True)
    baseline = _status("VmRSS")
    started = time.perf_counter()
    fingerprint = fingerprint_model(
        spec["model"],
        spec["out"],
        probes=probes,
        batch_size=spec["batch_size"],
        max_length=spec["max_length"],
        overwrite=True,
        **spec["options"],
    )
    seconds = time.perf_counter() - started
    result = {
        "baseline_bytes": baseline,
        "peak_bytes": _status("VmHWM"),
        "seconds": seconds,
        "layers": len(fingerprint.layers),
        "placement": fingerprint.manifest["extraction"]["device"],
        "representations": sha256_file(fingerprint.path / "representations.safetensors"),
    }
    print(json.dumps(result))


def _status(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def measure(model: Path, out: Path, args: argparse.Namespace, options: dict[str, Any]) -> Any:
    """Fingerprint ``model`` in a fresh Python process; its memory figures."""
    spec = {
        "model": str(model),
        "out": str(out),
        "texts": args.texts,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "options": options,
    }
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    done = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build the model, measure the three runs, check the bound; the figures as JSON."""
    from reef_forensics import load_probes
    from reef_forensics.models.placement import parse_size

    work = Path(args.work) if args.work else OUTPUT
    model = build(
        work / f"llama-{args.blocks}x{args.hidden}",
        hidden=args.hidden,
        blocks=args.blocks,
        texts=list(load_probes().texts),
    )
    config = json.loads((model / "config.json").read_text())
    total, largest = weight_sizes(model)
    budget = parse_size(args.cpu_budget)
    blocks = int(config["num_hidden_layers"])
    half = blocks // 2
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="reef-bench-memory-") as scratch:
        offload = {"device": "auto", "max_memory": {"cpu": args.cpu_budget}}
        plans = {
            "normal": ({"device": "cpu"}, blocks + 1),
            "offload": ({**offload, "offload_dir": f"{scratch}/offload"}, blocks + 1),
            "offload-half": (
                {**offload, "offload_dir": f"{scratch}/offload", "layers": f"0-{half}"},
                half + 1,
            ),
        }
        for name, (options, kept) in plans.items():
            figures = measure(model, Path(scratch) / name, args, options)
            figures["growth_bytes"] = figures["peak_bytes"] - figures["baseline_bytes"]
            if name != "normal":
                figures["bound"] = bound(config, largest, budget, args, kept)
            runs[name] = figures
        runs["offload-half"]["layers_equal_normal"] = same_layers(
            Path(scratch) / "offload-half", Path(scratch) / "normal"
        )
    return {
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "model": {
            "path": str(model),
            "hidden": args.hidden,
            "blocks": blocks,
            "weight_bytes": total,
            "largest_block_bytes": largest,
        },
        "settings": {
            "texts": args.texts,
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "cpu_budget": args.cpu_budget,
        },
        "runs": runs,
    }


def same_layers(part: Path, whole: Path) -> bool:
    """Whether every layer of fingerprint ``part`` equals that layer of fingerprint ``whole``."""
    import numpy as np

    from reef_forensics import read_fingerprint

    small, full = read_fingerprint(part), read_fingerprint(whole)
    return all(np.array_equal(values, full.layer(name)) for name, values in small.iter_layers())


def check(result: dict[str, Any]) -> list[str]:
    """What the figures fail of the claims above (nothing when all hold)."""
    problems = []
    runs, weights = result["runs"], result["model"]["weight_bytes"]
    for name in ("offload", "offload-half"):
        figures = runs[name]
        if figures["growth_bytes"] > figures["bound"]["total"]:
            problems.append(
                f"{name}: grew {_mb(figures['growth_bytes'])} over its baseline, "
                f"more than the bound {_mb(figures['bound']['total'])}"
            )
        if figures["bound"]["total"] >= weights:
            problems.append(f"{name}: the bound is not below the model's size: it proves nothing")
        if "disk" not in figures["placement"]:
            problems.append(f"{name}: nothing was offloaded to disk ({figures['placement']})")
    if runs["offload"]["representations"] != runs["normal"]["representations"]:
        problems.append("offload: the representations differ from the normal run's")
    if not runs["offload-half"]["layers_equal_normal"]:
        problems.append("offload-half: its layers differ from those of the normal run")
    return problems


def report(result: dict[str, Any]) -> str:
    model, runs = result["model"], result["runs"]
    normal = runs["normal"]
    lines = [
        f"model: {model['blocks']} blocks x hidden {model['hidden']}, "
        f"{_mb(model['weight_bytes'])} of weights, largest block {_mb(model['largest_block_bytes'])}",
        "| run | placement | baseline | peak | growth | bound | growth / normal's | time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, figures in runs.items():
        limit = _mb(figures["bound"]["total"]) if "bound" in figures else "-"
        lines.append(
            f"| {name} | {figures['placement']} | {_mb(figures['baseline_bytes'])} | "
            f"{_mb(figures['peak_bytes'])} | {_mb(figures['growth_bytes'])} | {limit} | "
            f"{figures['growth_bytes'] / normal['growth_bytes']:.2f} | {figures['seconds']:.1f} s |"
        )
    terms = runs["offload"]["bound"]
    lines.append(
        "bound (offload) = baseline + "
        + " + ".join(f"{k} {_mb(v)}" for k, v in terms.items() if k != "total")
    )
    same = runs["offload"]["representations"] == normal["representations"]
    lines.append(f"offloaded representations byte-identical to normal: {same}")
    lines.append(
        "offload-half layers equal to the normal run's: "
        f"{runs['offload-half']['layers_equal_normal']}"
    )
    return "\n".join(lines)


def _mb(count: int) -> str:
    return f"{count / 2**20:.0f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=1024, help="hidden size (default 1024)")
    parser.add_argument("--blocks", type=int, default=16, help="number of blocks (default 16)")
    parser.add_argument("--texts", type=int, default=32, help="probe texts (default 32)")
    parser.add_argument("--batch-size", type=int, default=4, help="default 4")
    parser.add_argument("--max-length", type=int, default=64, help="default 64")
    parser.add_argument(
        "--cpu-budget", default="16MB", help="max_memory for the CPU in offloaded runs"
    )
    parser.add_argument("--work", help="where the model is built (default bench/output/memory)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return 0
    result = run(args)
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    problems = check(result)
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
