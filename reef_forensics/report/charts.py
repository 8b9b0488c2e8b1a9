"""The report's charts: SVG text drawn by matplotlib from a findings record.

Each function takes the record's numbers and returns an SVG document as a string. The SVG is
deterministic (fixed hash salt, no date, text kept as text), so that rendering the same findings
twice gives the same report bytes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from reef_forensics.formats.findings_record import StabilityPoint, UnitsBlock

_STYLE: Any = {  # matplotlib's stubs type rc keys as literals
    "svg.hashsalt": "reef-forensics",
    "svg.fonttype": "none",  # text stays text: searchable, and drawn in the report's font
    "font.family": "DejaVu Sans",
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
SUSPECT_COLOR, REFERENCE_COLOR, CONTROL_COLOR = "#b2182b", "#4d4d4d", "#2166ac"


def _svg(figure: Figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": "reef-forensics"})
    plt.close(figure)
    return buffer.getvalue()


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _short(name: str) -> str:
    return "emb" if name == "embeddings" else name.removeprefix("block_")


def heatmap(
    matrix: Sequence[Sequence[float | None]],
    layers_a: Sequence[str],
    layers_b: Sequence[str],
    path: Sequence[int],
) -> str:
    """The victim-by-suspect layer matrix, with the alignment path drawn over it."""
    with plt.rc_context(_STYLE):
        figure, axes = plt.subplots(figsize=(6.2, 4.6))
        data = [[_number(v) for v in row] for row in matrix]
        image = axes.imshow(
            data, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest"
        )
        axes.plot(path, range(len(path)), color="white", linewidth=1.6, marker="o", markersize=2.5)
        axes.set_xlabel("suspect layer")
        axes.set_ylabel("victim layer")
        step_a = max(1, math.ceil(len(layers_a) / 16))  # at most 16 labels on an axis
        step_b = max(1, math.ceil(len(layers_b) / 16))
        axes.set_yticks(range(0, len(layers_a), step_a))
        axes.set_yticklabels([_short(n) for n in layers_a[::step_a]])
        axes.set_xticks(range(0, len(layers_b), step_b))
        axes.set_xticklabels([_short(n) for n in layers_b[::step_b]])
        figure.colorbar(image, ax=axes, label="CKA (linear, debiased)")
        axes.set_title("Layer-by-layer similarity; white line: the alignment path")
        figure.tight_layout()
        return _svg(figure)


def stability(points: Sequence[StabilityPoint]) -> str:
    """The similarity at REEF's layer as the number of probe texts grows, with its band."""
    with plt.rc_context(_STYLE):
        figure, axes = plt.subplots(figsize=(6.2, 2.8))
        n = [p.n for p in points]
        axes.fill_between(
            n,
            [_number(p.low) for p in points],
            [_number(p.high) for p in points],
            color=CONTROL_COLOR,
            alpha=0.25,
            linewidth=0,
            label="95% band (random subsets)",
        )
        axes.plot(n, [_number(p.score) for p in points], color=CONTROL_COLOR, label="first n texts")
        axes.set_xlabel("number of probe texts (n)")
        axes.set_ylabel("CKA")
        axes.set_ylim(min(-0.05, *[_number(p.low) for p in points if p.low is not None]), 1.05)
        axes.legend(loc="lower right", frameon=False)
        axes.set_title("Sample-size stability at REEF's layer")
        figure.tight_layout()
        return _svg(figure)


def controls(
    suspect: float | None,
    invariance: Sequence[tuple[str, float | None]],
    positive: Sequence[tuple[str, float | None]],
    negative: Sequence[tuple[str, float | None]],
) -> str:
    """Every control's score on one axis, the suspect's marked among them."""
    rows: list[tuple[str, str, float]] = []
    rows += [("invariance", name, _number(v)) for name, v in invariance]
    rows += [("positive", name, _number(v)) for name, v in positive]
    rows += [("reference", name, _number(v)) for name, v in negative]
    colors = {"invariance": "#7f7f7f", "positive": CONTROL_COLOR, "reference": REFERENCE_COLOR}
    with plt.rc_context(_STYLE):
        height = 1.0 + 0.22 * (len(rows) + 1)
        figure, axes = plt.subplots(figsize=(6.2, height))
        labels = [f"{kind}: {name}"[:48] for kind, name, _ in rows] + ["SUSPECT"]
        for i, (kind, _, value) in enumerate(rows):
            if not math.isnan(value):
                axes.plot([0, value], [i, i], color=colors[kind], linewidth=1)
                axes.plot(value, i, "o", color=colors[kind], markersize=4)
        if suspect is not None:
            axes.plot([0, suspect], [len(rows)] * 2, color=SUSPECT_COLOR, linewidth=1.5)
            axes.plot(suspect, len(rows), "D", color=SUSPECT_COLOR, markersize=5)
            axes.axvline(suspect, color=SUSPECT_COLOR, linewidth=0.6, linestyle=":")
        axes.set_yticks(range(len(labels)))
        axes.set_yticklabels(labels)
        axes.set_xlim(min(0.0, *[v for *_, v in rows if not math.isnan(v)]) - 0.02, 1.05)
        axes.set_xlabel("similarity to the victim (the verdict's score)")
        axes.set_title("Controls and references; dotted line: the suspect")
        figure.tight_layout()
        return _svg(figure)


def units(blocks: Sequence[UnitsBlock], references: Sequence[tuple[str, float | None]]) -> str:
    """Per block of the neuron-matching test: the share of units both matchings pair alike (the
    suspect's bars) against what chance gives (1 / candidates, a tick on each bar), and, beside
    it, each reference's combined -log10 p (the test's null, measured)."""
    with plt.rc_context(_STYLE):
        figure, (left, right) = plt.subplots(
            1, 2, figsize=(6.2, 2.8), gridspec_kw={"width_ratios": [3, 1.2]}
        )
        names = [_short(b.layer_a) for b in blocks]
        shares = [b.agreed / b.matched if b.matched else 0.0 for b in blocks]
        chance = [1.0 / b.candidates if b.candidates else 0.0 for b in blocks]
        positions = range(len(blocks))
        left.bar(positions, shares, color=SUSPECT_COLOR, width=0.8, label="suspect")
        left.plot(positions, chance, "_", color="black", markersize=8, label="chance")
        step = max(1, math.ceil(len(blocks) / 16))
        left.set_xticks(list(positions)[::step])
        left.set_xticklabels(names[::step])
        left.set_ylim(0.0, 1.3)
        left.set_yticks([0.0, 0.25, 0.5, 0.75, 1.0])
        left.set_xlabel("victim block")
        left.set_ylabel("units matched alike in both views")
        left.legend(loc="upper left", ncol=2, frameon=False)
        left.set_title("Neuron matching, block by block")
        values = [min(_number(v), 0.0) if v is not None else 0.0 for _, v in references]
        right.barh(range(len(values)), [-v for v in values], color=REFERENCE_COLOR)
        right.set_yticks(range(len(values)))
        right.set_yticklabels([name[:14] for name, _ in references])
        right.axvline(2.0, color="black", linewidth=0.6, linestyle=":")
        right.set_xlabel("-log10 p")
        right.set_title("References")
        figure.tight_layout()
        return _svg(figure)
