"""The neuron-matching test's null, measured: independently trained models must not look derived.

    python bench/null_simulation.py [--same N] [--steps S] [--texts T] [--json FILE]

Tiny causal language models are trained here, each from its own random initialisation and data
order, all on the same texts (the built-in probe set: the hardest null, since models that learn
the same data converge in function) and with one shared tokenizer (the same token ids on both
sides). Every pair of distinct models is an independent pair:

- *same architecture*: N Llama-style models (hidden 32, 2 blocks, gated MLP of 64 units);
- *different architectures*: two more seeds each of a wider, deeper Llama-style model (hidden
  48, 3 blocks, 96 units) and of GPT-2-style models (split-input MLPs, 128 and 192 units), each
  paired with every model of another architecture (different widths and depths exercise the
  alignment path and rectangular matchings; gated against split-input, mixed views).

Each pair is checked by `reef_forensics.analysis.check.check` (no references, so only the
neuron-matching test can decide), and the false-derived rate of the test's combined p-value is
counted at alpha = 0.01 and 0.05. As a check of power the first model's derivatives are checked
too: trained further on other text, 40% magnitude pruning plus 5% weight noise, and an MLP unit
permutation.

The verdicts with a reference panel, under the decision rules of findings versions 3 and 4
(version 4 lets the neuron-matching test settle `unrelated` where a CKA test is unusual but
short of alpha), are counted too: each of the first four same-architecture models as the victim,
every other same-architecture model as the suspect (independent: `unrelated` is right,
`inconclusive` a miss, `derived` a false positive), and the first model's derivatives (`derived`
is right), each against two panels: *representative* (three other same-architecture models) and
*unrepresentative* (the six models of other architectures, as a panel of dissimilar models is).

Pairs that share a model are not independent of each other, so the counts are a check of the
null, not a precise rate; `--same` raises the number of models. The test suite runs this with
defaults (tests/analysis/test_unit_matching.py); bench/README.md has the figures of a larger run.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from scipy import stats

from reef_forensics import load_probes
from reef_forensics.analysis.check import check
from reef_forensics.demo.toy_models import build_model, train_causal_lm, train_tokenizer
from reef_forensics.formats.fingerprint import Fingerprint
from reef_forensics.formats.probes import ProbeSet
from reef_forensics.models.derivatives import (
    add_noise,
    derivative_digest,
    other_text,
    permute_mlp,
    prune_magnitude,
)
from reef_forensics.models.fingerprinting import fingerprint_loaded
from reef_forensics.models.loading import LoadedModel, ModelSource
from reef_forensics.similarity.unit_matching import bonferroni_log10

ARCHITECTURES: dict[str, dict[str, Any]] = {
    "llama-32x2": {"family": "llama", "hidden_size": 32, "num_layers": 2},
    "llama-48x3": {"family": "llama", "hidden_size": 48, "num_layers": 3},
    "gpt2-32x2": {"family": "gpt2", "hidden_size": 32, "num_layers": 2},
    "gpt2-48x3": {"family": "gpt2", "hidden_size": 48, "num_layers": 3},
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def trained(arch: str, seed: int, tokenizer: Any, texts: list[str], steps: int) -> Any:
    shape = dict(ARCHITECTURES[arch])
    family = shape.pop("family")
    model = build_model(family, len(tokenizer), seed=seed, num_heads=4, **shape)
    corpus = texts[seed % len(texts) :] + texts[: seed % len(texts)]  # its own data order
    train_causal_lm(
        model,
        tokenizer,
        corpus,
        list(model.parameters()),
        steps=steps,
        batch=8,
        max_length=32,
        lr=3e-3,
        seed=seed,
    )
    return model


def as_loaded(model: Any, tokenizer: Any, name: str, out: Path) -> LoadedModel:
    source = ModelSource(path=out / name, kind="hf-directory", weight_files=())
    return LoadedModel(
        source=source,
        model=model.eval(),
        tokenizer=tokenizer,
        model_type=str(model.config.model_type),
        is_encoder=False,
    )


def fingerprint(model: Any, tokenizer: Any, name: str, probes: ProbeSet, out: Path) -> Fingerprint:
    loaded = as_loaded(model, tokenizer, name, out)
    digest = derivative_digest("sha256:" + "0" * 64, name, 0)  # in memory: named by how made
    return fingerprint_loaded(loaded, digest, out / name, probes=probes, unit_samples=len(probes))


def spearman_log10_p(rho: float | None, k: int) -> float:
    """Zhu et al.'s per-block statistic, for comparison: one-sided Spearman p (Student t)."""
    if rho is None or k < 3:
        return 0.0
    floor = -math.lgamma(k + 1) / math.log(10)  # two orderings of k units coinciding
    if rho >= 1.0:
        return floor
    t = rho * math.sqrt((k - 2) / (1.0 - rho * rho))
    return max(floor, min(0.0, float(stats.t.logsf(t, k - 2)) / math.log(10)))


def units_p(victim: Fingerprint, suspect: Fingerprint) -> dict[str, Any]:
    """The test's combined log10 p (and Spearman's, for comparison), from `check`."""
    record = check(victim, suspect, [], resamples=10).as_json()["units_test"]
    if not record["ran"]:
        raise RuntimeError(f"the test did not run: {record['skipped']}")
    blocks = record["blocks"]
    spearman = [spearman_log10_p(b["spearman"], b["matched"]) for b in blocks]
    return {
        "log10_p": float(record["log10_p_value"]),
        "spearman_log10_p": bonferroni_log10(spearman),
        "blocks": int(record["blocks_compared"]),
        "agreement": sum(b["agreed"] / b["matched"] for b in blocks) / len(blocks),
        "chance": sum(1 / b["candidates"] for b in blocks) / len(blocks),
    }


def verdicts(victim: Fingerprint, suspect: Fingerprint, panel: list[Fingerprint]) -> dict[str, str]:
    """The verdict of `check` with ``panel`` as references, by the rules of versions 3 and 4."""
    return {
        f"v{version}": check(victim, suspect, panel, resamples=10, findings_version=version).verdict
        for version in (3, 4)
    }


def panel_verdicts(
    same: list[Fingerprint], others: list[Fingerprint], derived: dict[str, Fingerprint]
) -> list[dict[str, Any]]:
    """Verdicts with a reference panel: independent same-architecture pairs and derivatives."""
    rows = []
    for v, victim in enumerate(same[:4]):
        suspects = [(f"independent {s + 1}", False, f) for s, f in enumerate(same) if s != v]
        if v == 0:
            suspects += [(label, True, f) for label, f in derived.items()]
        for label, is_derived, suspect in suspects:
            free = [f for f in same if f is not victim and f is not suspect]
            for panel_name, panel in (("representative", free[:3]), ("unrepresentative", others)):
                rows.append(
                    {
                        "victim": f"model {v + 1}",
                        "suspect": label,
                        "derived": is_derived,
                        "panel": panel_name,
                        **verdicts(victim, suspect, panel),
                    }
                )
    return rows


def summarize_verdicts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for truth in (False, True):
        for panel in ("representative", "unrepresentative"):
            chosen = [r for r in rows if r["derived"] is truth and r["panel"] == panel]
            label = f"{'derived' if truth else 'independent'}, {panel} panel"
            summary[label] = {
                "checks": len(chosen),
                **{
                    f"v{version}": {
                        verdict: sum(r[f"v{version}"] == verdict for r in chosen)
                        for verdict in ("derived", "unrelated", "inconclusive")
                    }
                    for version in (3, 4)
                },
            }
    return summary


def derivatives(model: Any, tokenizer: Any, texts: list[str], steps: int) -> dict[str, Any]:
    """The first model's derivatives (the test's power on the same tiny models)."""
    made = {}
    tuned = copy.deepcopy(model)
    train_causal_lm(
        tuned,
        tokenizer,
        other_text(texts, 99),
        list(tuned.parameters()),
        steps=steps,
        batch=8,
        max_length=32,
        lr=1e-3,
        seed=99,
    )
    made["trained further on other text"] = tuned
    pruned = as_loaded(copy.deepcopy(model), tokenizer, "pruned", Path("."))
    add_noise(pruned, 5, relative_std=0.05)
    prune_magnitude(pruned, 5, fraction=0.4)
    made["40% pruning + 5% noise"] = pruned.model
    permuted = as_loaded(copy.deepcopy(model), tokenizer, "permuted", Path("."))
    permute_mlp(permuted, 3)
    made["MLP unit permutation"] = permuted.model
    return made


def simulate(same: int, steps: int, text_count: int, out: Path) -> dict[str, Any]:
    probe_set = load_probes()
    texts = list(probe_set.texts)
    probes = ProbeSet(name=f"builtin:default[:{text_count}]", texts=probe_set.texts[:text_count])
    tokenizer = train_tokenizer(texts, family="llama", vocab_size=512)
    models: dict[str, tuple[str, Fingerprint]] = {}
    first_model = None
    plan = [("llama-32x2", seed) for seed in range(1, same + 1)]
    plan += [(arch, seed) for arch in list(ARCHITECTURES)[1:] for seed in (101, 102)]
    for arch, seed in plan:
        name = f"{arch}-seed{seed}"
        log(f"train {name}")
        model = trained(arch, seed, tokenizer, texts, steps)
        if first_model is None:
            first_model = model
        models[name] = (arch, fingerprint(model, tokenizer, name, probes, out))
    rows = []
    for (name_a, (arch_a, fp_a)), (name_b, (arch_b, fp_b)) in itertools.combinations(
        models.items(), 2
    ):
        rows.append(
            {
                "victim": name_a,
                "suspect": name_b,
                "same_architecture": arch_a == arch_b,
                **units_p(fp_a, fp_b),
            }
        )
    assert first_model is not None
    victim = next(iter(models.values()))[1]
    power: list[dict[str, Any]] = []
    derived_prints = {}
    for label, derived in derivatives(first_model, tokenizer, texts, steps).items():
        log(f"derivative: {label}")
        derived_prints[label] = fingerprint(
            derived, tokenizer, f"derived-{len(power)}", probes, out
        )
        measured = units_p(victim, derived_prints[label])
        power.append({"derivative": label, **measured})
    log("verdicts with reference panels (rules of findings versions 3 and 4)")
    same_prints = [fp for arch, fp in models.values() if arch == "llama-32x2"]
    other_prints = [fp for arch, fp in models.values() if arch != "llama-32x2"]
    panels = panel_verdicts(same_prints, other_prints, derived_prints)
    return {
        "pairs": rows,
        "derived": power,
        "summary": summarize(rows),
        "panel_verdicts": panels,
        "panel_summary": summarize_verdicts(panels),
    }


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    summary = {}
    for label, chosen in (
        ("same architecture", [r for r in rows if r["same_architecture"]]),
        ("different architectures", [r for r in rows if not r["same_architecture"]]),
    ):
        entry: dict[str, Any] = {"pairs": len(chosen)}
        for alpha in (0.01, 0.05):
            hits = sum(r["log10_p"] < math.log10(alpha) for r in chosen)
            entry[f"false_derived_at_{alpha}"] = hits
            entry[f"rate_at_{alpha}"] = hits / len(chosen) if chosen else None
            spearman = sum(r["spearman_log10_p"] < math.log10(alpha) for r in chosen)
            entry[f"spearman_false_derived_at_{alpha}"] = spearman
        entry["smallest_p"] = 10 ** min(r["log10_p"] for r in chosen) if chosen else None
        entry["mean_agreement"] = (
            sum(r["agreement"] for r in chosen) / len(chosen) if chosen else None
        )
        entry["mean_chance_agreement"] = (
            sum(r["chance"] for r in chosen) / len(chosen) if chosen else None
        )
        summary[label] = entry
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--same", type=int, default=8, help="same-architecture models (default 8)")
    parser.add_argument("--steps", type=int, default=60, help="training steps per model")
    parser.add_argument("--texts", type=int, default=160, help="probe texts (default 160)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        result = simulate(args.same, args.steps, args.texts, Path(scratch))
    result["settings"] = {"same": args.same, "steps": args.steps, "texts": args.texts}
    for label, entry in result["summary"].items():
        print(
            f"{label:24s} pairs {entry['pairs']:3d}  false derived at 0.01: "
            f"{entry['false_derived_at_0.01']} ({entry['rate_at_0.01']:.3f})  at 0.05: "
            f"{entry['false_derived_at_0.05']} ({entry['rate_at_0.05']:.3f})  smallest p "
            f"{entry['smallest_p']:.3g}  mean agreement {entry['mean_agreement']:.3f} "
            f"(chance {entry['mean_chance_agreement']:.3f})  Spearman instead: "
            f"{entry['spearman_false_derived_at_0.01']} and {entry['spearman_false_derived_at_0.05']}"
        )
    for row in result["derived"]:
        print(
            f"derived: {row['derivative']:32s} log10 p {row['log10_p']:9.1f}  "
            f"agreement {row['agreement']:.3f}  Spearman's log10 p {row['spearman_log10_p']:9.1f}"
        )
    for label, entry in result["panel_summary"].items():
        counts = "  ".join(
            f"{version}: " + ", ".join(f"{n} {verdict}" for verdict, n in entry[version].items())
            for version in ("v3", "v4")
        )
        print(f"{label:38s} checks {entry['checks']:3d}  {counts}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
