"""The ``reef-forensics`` command line: parses arguments and calls the public Python API.

Exit codes: 0 success, 2 bad input or usage, 1 internal error. Errors are one line on
stderr; set ``REEF_DEBUG=1`` to see the traceback of an internal error.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__
from .cka import CkaMethod
from .comparison import Comparison, compare_fingerprints
from .errors import BadInputError, ReefError
from .files import write_atomic
from .fingerprint import Fingerprint, read_fingerprint
from .probes import DEFAULT_SPEC, ProbeSet, load_probes

PROG = "reef-forensics"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except BadInputError as exc:
        return _fail(str(exc), 2)
    except ReefError as exc:
        return _fail(str(exc), exc.exit_code)
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        return _fail(f"cannot access{where}: {exc.strerror or exc}", 2)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except Exception as exc:
        if os.environ.get("REEF_DEBUG"):
            traceback.print_exc()
        return _fail(
            f"internal error: {type(exc).__name__}: {exc} (set REEF_DEBUG=1 for a traceback)", 1
        )


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Fingerprint language models and measure whether one was derived from another (REEF/CKA).",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fp = commands.add_parser(
        "fingerprint",
        help="extract a model's per-layer representations of a probe set",
        description="Extract per-layer pooled hidden states of MODEL (a Hugging Face folder or a "
        "GGUF file) on a probe set and write them as a fingerprint directory.",
    )
    fp.add_argument("model", metavar="MODEL", help="Hugging Face model folder or .gguf file")
    fp.add_argument("--out", required=True, metavar="DIR", help="fingerprint directory to create")
    _add_probe_options(fp)
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
    fp.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16", "auto"),
        default="float32",
        help="compute dtype (default float32; representations are always stored as float32)",
    )
    fp.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
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
    _add_output_options(fp)
    fp.set_defaults(handler=_cmd_fingerprint)

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
    _add_output_options(cmp)
    cmp.set_defaults(handler=_cmd_compare)

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
    return parser


def _add_probe_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--probes",
        default=DEFAULT_SPEC,
        metavar="SPEC",
        help=f"builtin:NAME, FILE.txt|.jsonl|.csv, or hf:DATASET (default {DEFAULT_SPEC})",
    )
    parser.add_argument(
        "--probes-column", metavar="NAME", help="field or column holding the text (default text)"
    )
    parser.add_argument(
        "--probes-split", metavar="NAME", help="dataset split for hf: sets (default train)"
    )
    parser.add_argument("--probes-limit", type=int, metavar="N", help="keep only the first N texts")


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", metavar="FILE", help="also write the result as JSON to FILE ('-' for stdout)"
    )
    progress = parser.add_mutually_exclusive_group()
    progress.add_argument(
        "--progress", dest="progress", action="store_true", default=None, help="show a progress bar"
    )
    progress.add_argument(
        "--no-progress", dest="progress", action="store_false", help="hide the progress bar"
    )


def _show_progress(args: argparse.Namespace) -> bool:
    return sys.stderr.isatty() if args.progress is None else bool(args.progress)


def _cmd_fingerprint(args: argparse.Namespace) -> int:
    from .fingerprinting import fingerprint_model

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
        progress=_show_progress(args),
    )
    summary = _fingerprint_summary(fingerprint)
    if args.json:
        _emit_json(args.json, summary)
    if args.json != "-":
        print(
            f"fingerprint {fingerprint.path}: {fingerprint.model_name}, {fingerprint.num_samples} "
            f"probe texts x {len(fingerprint.layers)} layers, pooling {fingerprint.pooling}\n"
            f"  model digest        {fingerprint.model_digest}\n"
            f"  probes digest       {fingerprint.probes_digest}\n"
            f"  fingerprint digest  {fingerprint.digest}"
        )
    return 0


def _fingerprint_summary(fingerprint: Fingerprint) -> dict[str, Any]:
    return {
        **fingerprint.describe(),
        "num_samples": fingerprint.num_samples,
        "pooling": fingerprint.pooling,
        "layers": fingerprint.layers,
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
        a, b, method=method, force=args.force, progress=_show_progress(args)
    )
    if args.json:
        _emit_json(args.json, comparison.as_json())
    if args.json != "-":
        print(render_comparison(comparison))
    return 0


def _cmd_probes(args: argparse.Namespace) -> int:
    probe_set = load_probes(args.spec, column=args.column, split=args.split, limit=args.limit)
    summary = {"name": probe_set.name, "count": len(probe_set), "digest": probe_set.digest}
    if args.json:
        _emit_json(args.json, summary)
    if args.json != "-":
        print(_probes_line(probe_set))
    return 0


def _probes_line(probe_set: ProbeSet) -> str:
    return f"{probe_set.name}: {len(probe_set)} texts, digest {probe_set.digest}"


def _emit_json(destination: str, value: dict[str, Any]) -> None:
    text = json.dumps(value, indent=2, ensure_ascii=False) + "\n"
    if destination == "-":
        sys.stdout.write(text)
    else:
        write_atomic(destination, text.encode("utf-8"))


def _fmt(value: float) -> str:
    return "   n/a" if math.isnan(value) else f"{value:6.4f}"


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
        f"Headline (REEF's relative depth): A {head.layer_a} vs B {head.layer_b}: CKA {_fmt(head.score)}",
        "",
        f"{'layer of A':<14}{'same depth in B':<18}{'CKA':>6}   {'best match in B':<18}{'CKA':>6}",
    ]
    for diagonal, best in zip(comparison.diagonal, comparison.best_match, strict=True):
        lines.append(
            f"{diagonal.layer_a:<14}{diagonal.layer_b:<18}{_fmt(diagonal.score)}   "
            f"{best.layer_b:<18}{_fmt(best.score)}"
        )
    picks = _curve_points(comparison.curve_sizes)
    lines += [
        "",
        "Sample-size stability of the headline score (CKA on the first n texts):",
        "  "
        + "  ".join(
            f"n={comparison.curve_sizes[i]}: {_fmt(comparison.curve_scores[i]).strip()}"
            for i in picks
        ),
    ]
    return "\n".join(lines)


def _curve_points(sizes: list[int], count: int = 6) -> list[int]:
    if len(sizes) <= count:
        return list(range(len(sizes)))
    step = (len(sizes) - 1) / (count - 1)
    return sorted({round(i * step) for i in range(count)})


if __name__ == "__main__":
    raise SystemExit(main())
