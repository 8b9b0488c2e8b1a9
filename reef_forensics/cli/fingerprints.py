"""`fingerprint`, `compare` and `probes`: making, comparing and describing fingerprints."""

from __future__ import annotations

import argparse
from typing import Any

from reef_forensics.analysis.comparison import Comparison, compare_fingerprints
from reef_forensics.cli.options import (
    add_output_options,
    add_probe_options,
    add_signing_options,
    show_progress,
    signer_from_args,
    warn_unverifiable,
)
from reef_forensics.cli.output import emit, fmt
from reef_forensics.crypto.bundle import SIGNATURE_NAME
from reef_forensics.errors import BadInputError
from reef_forensics.formats.fingerprint import DEFAULT_UNIT_SAMPLES, Fingerprint, read_fingerprint
from reef_forensics.formats.probes import DEFAULT_SPEC, MIN_PROBES, ProbeSet, load_probes
from reef_forensics.similarity.cka import CkaMethod


def add_commands(commands: Any) -> None:
    """The fingerprint, compare and probes commands."""
    _add_fingerprint_command(commands)
    _add_compare_command(commands)
    _add_probes_command(commands)


def _add_fingerprint_command(commands: Any) -> None:
    fp = commands.add_parser(
        "fingerprint",
        help="extract a model's per-layer representations of a probe set",
        description="Extract per-layer pooled hidden states of MODEL (a Hugging Face folder or a "
        "GGUF file) on a probe set and write them as a fingerprint directory.",
    )
    fp.add_argument("model", metavar="MODEL", help="Hugging Face model folder or .gguf file")
    fp.add_argument("--out", required=True, metavar="DIR", help="fingerprint directory to create")
    fp.add_argument(
        "--name",
        metavar="NAME",
        help="the model's name in the fingerprint, findings and reports (default: the folder's "
        "or file's name)",
    )
    add_probe_options(fp)
    fp.add_argument(
        "--pooling", choices=("last", "mean"), help="default: last for decoders, mean for encoders"
    )
    fp.add_argument(
        "--batch-size",
        type=int,
        default=16,
        metavar="N",
        help="texts per forward pass (default 16)",
    )
    fp.add_argument(
        "--max-length",
        type=int,
        default=512,
        metavar="N",
        help="tokens kept per text (default 512)",
    )
    _add_device_options(fp)
    fp.add_argument(
        "--layers",
        metavar="SPEC",
        help="keep only these hidden states, e.g. 0,4,8 or 0-12 (0 = embeddings, i = block i; "
        "default all)",
    )
    fp.add_argument(
        "--unit-samples",
        type=int,
        default=DEFAULT_UNIT_SAMPLES,
        metavar="N",
        help="store every block's MLP units for the first N probe texts, for the neuron-matching "
        f"test (default {DEFAULT_UNIT_SAMPLES}; 0: none, and the test is skipped)",
    )
    fp.add_argument(
        "--padding-side", choices=("right", "left"), default="right", help="default right"
    )
    fp.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow pickle weights (.bin/.pt), which can run code",
    )
    fp.add_argument(
        "--trust-remote-code", action="store_true", help="allow code shipped with the model to run"
    )
    fp.add_argument(
        "--overwrite", action="store_true", help="replace an existing fingerprint at --out"
    )
    add_signing_options(fp, required=False)
    add_output_options(fp)
    fp.set_defaults(handler=_cmd_fingerprint)


def _add_compare_command(commands: Any) -> None:
    cmp = commands.add_parser(
        "compare",
        help="CKA between two fingerprints, layer by layer",
        description="Compare two fingerprints made on the same probe set: the layer-by-layer CKA "
        "matrix, per-layer diagonal and best match, the score at REEF's relative depth, and the "
        "sample-size curve of that score.",
    )
    cmp.add_argument(
        "fingerprint_a", metavar="FP_A", help="fingerprint directory (e.g. the victim)"
    )
    cmp.add_argument(
        "fingerprint_b", metavar="FP_B", help="fingerprint directory (e.g. the suspect)"
    )
    cmp.add_argument(
        "--estimator",
        default="linear-debiased",
        help="KERNEL-ESTIMATOR: linear or rbf, biased (REEF's) or debiased (default linear-debiased)",
    )
    cmp.add_argument(
        "--standardize",
        action="store_true",
        help="z-score every feature first (as REEF's code does)",
    )
    cmp.add_argument(
        "--rbf-scale", type=float, default=1.0, help="RBF bandwidth / median distance (default 1)"
    )
    cmp.add_argument(
        "--force", action="store_true", help="compare fingerprints of different probe sets"
    )
    add_output_options(cmp)
    cmp.set_defaults(handler=_cmd_compare)


def _add_probes_command(commands: Any) -> None:
    probes = commands.add_parser(
        "probes",
        help="show a probe set's size and digest",
        description="Load a probe set and print its name, size and digest.",
    )
    probes.add_argument(
        "spec", nargs="?", default=DEFAULT_SPEC, metavar="SPEC", help=f"default {DEFAULT_SPEC}"
    )
    probes.add_argument("--column", help="field (.jsonl, hf:) or column (.csv) holding the text")
    probes.add_argument("--split", help="dataset split for hf: sets (default train)")
    probes.add_argument("--limit", type=int, metavar="N", help="keep only the first N texts")
    probes.add_argument(
        "--json", metavar="FILE", help="write the summary as JSON to FILE ('-' for stdout)"
    )
    probes.set_defaults(handler=_cmd_probes)


def _add_device_options(parser: argparse.ArgumentParser) -> None:
    """Where the model runs: dtype, device, and accelerate's offloading."""
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16", "auto"),
        default="float32",
        help="compute dtype (default float32; representations are always stored as float32)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu, cuda, cuda:N, or auto: accelerate's device map over the GPUs, the CPU and "
        "the disk (default cpu)",
    )
    parser.add_argument(
        "--max-memory",
        metavar="SPEC",
        help="with --device auto: what each device may hold, e.g. cpu:300MB or 0:2GiB,cpu:8GiB; "
        "the rest stays on disk",
    )
    parser.add_argument(
        "--offload-dir",
        metavar="DIR",
        help="with --device auto: folder for offloaded weights (default a scratch folder)",
    )


def _cmd_fingerprint(args: argparse.Namespace) -> int:
    from reef_forensics.models.fingerprinting import fingerprint_model

    signer = signer_from_args(args)  # a wrong passphrase fails now, not after extraction
    if args.unit_samples < 0:
        raise BadInputError(f"--unit-samples must be 0 or more, got {args.unit_samples}")
    probe_set = load_probes(
        args.probes, column=args.probes_column, split=args.probes_split, limit=args.probes_limit
    )
    fingerprint = fingerprint_model(
        args.model,
        args.out,
        probes=probe_set,
        pooling=args.pooling,
        batch_size=args.batch_size,
        max_length=args.max_length,
        dtype=args.dtype,
        device=args.device,
        padding_side=args.padding_side,
        allow_pickle=args.allow_pickle,
        trust_remote_code=args.trust_remote_code,
        overwrite=args.overwrite,
        progress=show_progress(args),
        signer=signer,
        layers=args.layers,
        max_memory=args.max_memory,
        offload_dir=args.offload_dir,
        unit_samples=args.unit_samples,
        name=args.name,
    )
    if signer is not None:
        warn_unverifiable(signer, fingerprint.path)
    summary = _fingerprint_summary(fingerprint)
    if emit(args.json, summary):
        print(
            f"fingerprint {fingerprint.path}: {fingerprint.model_name}, {fingerprint.num_samples} "
            f"probe texts x {len(fingerprint.layers)} layers, pooling {fingerprint.pooling}\n"
            f"  model digest        {fingerprint.model_digest}\n"
            f"  probes digest       {fingerprint.probes_digest}\n"
            f"  fingerprint digest  {fingerprint.digest}\n"
            f"  MLP units           {_units_line(fingerprint)}"
            + (f"\n  signed              {fingerprint.path / SIGNATURE_NAME}" if signer else "")
        )
    return 0


def _units_line(fingerprint: Fingerprint) -> str:
    units = fingerprint.units
    if units is None:
        return f"none: {fingerprint.units_skipped}"
    return (
        f"{units['kind']}, {len(units['blocks'])} blocks x {units['blocks'][0]['units']} units, "
        f"first {units['samples']} texts"
    )


def _fingerprint_summary(fingerprint: Fingerprint) -> dict[str, Any]:
    return {
        **fingerprint.describe(),
        "num_samples": fingerprint.num_samples,
        "pooling": fingerprint.pooling,
        "layers": fingerprint.layers,
        "format_version": fingerprint.format_version,
        "units": fingerprint.units,
        "units_skipped": fingerprint.units_skipped,
    }


def _cmd_compare(args: argparse.Namespace) -> int:
    try:
        method = CkaMethod.from_name(
            args.estimator, standardize=args.standardize, rbf_scale=args.rbf_scale
        )
    except ValueError as exc:
        raise BadInputError(str(exc)) from None
    a = read_fingerprint(args.fingerprint_a)
    b = read_fingerprint(args.fingerprint_b)
    comparison = compare_fingerprints(
        a, b, method=method, force=args.force, progress=show_progress(args)
    )
    if emit(args.json, comparison.as_json()):
        print(render_comparison(comparison))
    return 0


def _cmd_probes(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < MIN_PROBES:  # named as this command spells it
        raise BadInputError(f"--limit must be at least {MIN_PROBES}, got {args.limit}")
    probe_set = load_probes(args.spec, column=args.column, split=args.split, limit=args.limit)
    summary = {"name": probe_set.name, "count": len(probe_set), "digest": probe_set.digest}
    if emit(args.json, summary):
        print(_probes_line(probe_set))
    return 0


def _probes_line(probe_set: ProbeSet) -> str:
    return f"{probe_set.name}: {len(probe_set)} texts, digest {probe_set.digest}"


def render_comparison(comparison: Comparison) -> str:
    """The human-readable summary `compare` prints."""
    a, b = comparison.fingerprints["a"], comparison.fingerprints["b"]
    head = comparison.headline
    lines = [
        f"A: {a['model_name']}  model {a['model_digest'][:23]}...  ({a['path']})",
        f"B: {b['model_name']}  model {b['model_digest'][:23]}...  ({b['path']})",
        f"{comparison.num_samples} probe texts, probes {comparison.probes_digest[:23]}..., "
        f"estimator {comparison.method.name}{', standardized' if comparison.method.standardize else ''}",
    ]
    if comparison.forced:
        lines.append("WARNING: the probe digests differ (--force); rows were paired by position")
    lines += [
        "",
        f"Headline (REEF's relative depth): A {head.layer_a} vs B {head.layer_b}: CKA {fmt(head.score)}",
        "",
        f"{'layer of A':<14}{'same depth in B':<18}{'CKA':>6}   {'best match in B':<18}{'CKA':>6}",
    ]
    for diagonal, best in zip(comparison.diagonal, comparison.best_match, strict=True):
        lines.append(
            f"{diagonal.layer_a:<14}{diagonal.layer_b:<18}{fmt(diagonal.score)}   "
            f"{best.layer_b:<18}{fmt(best.score)}"
        )
    picks = _curve_points(comparison.curve_sizes)
    lines += [
        "",
        "Sample-size stability of the headline score (CKA on the first n texts):",
        "  "
        + "  ".join(
            f"n={comparison.curve_sizes[i]}: {fmt(comparison.curve_scores[i]).strip()}"
            for i in picks
        ),
    ]
    return "\n".join(lines)


def _curve_points(sizes: list[int], count: int = 6) -> list[int]:
    if len(sizes) <= count:
        return list(range(len(sizes)))
    step = (len(sizes) - 1) / (count - 1)
    return sorted({round(i * step) for i in range(count)})
