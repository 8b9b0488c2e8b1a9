"""The neuron-matching test between two fingerprints, and its entry in the findings.

`compare_units` runs `unit_matching.match_block` on each pair of blocks the CKA alignment paired
(victim block i with the other model's block path[i]: models of different depth are matched
block to corresponding block), on the MLP units both fingerprints stored for the same first
probe texts. `UnitsOutcome` is what the verdict needs from that record, read back from the
record itself, so that `check` and `verify` decide from the same numbers.
"""

from __future__ import annotations

import math
import os
from collections.abc import MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from reef_forensics.formats.findings_record import UnitsBlock, UnitsTest
from reef_forensics.formats.fingerprint import EMBEDDINGS_LAYER, Fingerprint
from reef_forensics.formats.json_records import Absent, present
from reef_forensics.similarity.unit_matching import (
    DEFAULT_MAX_ROWS,
    BlockMatch,
    BlockViews,
    bonferroni_log10,
    coincidence_log10_p,
    format_log10_p,
    match_prepared,
    prepare,
)

#: Blocks matched at once: the matrix products and the assignments run outside Python's lock.
WORKERS = max(1, min(4, os.cpu_count() or 1))
#: The victim's blocks prepared for matching, kept across the models one check compares with it.
VictimCache = MutableMapping[tuple[str, int], BlockViews]

STATISTIC = (
    "per block: the suspect's MLP units are matched to the victim's twice (Hungarian assignment "
    "on activation correlations, once per view); the statistic is the number x of the k matched "
    "units given the same partner by both, among m candidates; p <= C(k, x) / (m (m-1) ... "
    "(m-x+1)), exact under independence (log10_p); Spearman's correlation of the two matchings "
    "(Zhu et al. 2025) is recorded for comparison; combined: blocks compared x the smallest "
    "block p-value (Bonferroni)"
)


def _clean(value: float) -> float | None:
    return None if math.isnan(value) or math.isinf(value) else float(value)


def skipped(reason: str) -> dict[str, Any]:
    return {"ran": False, "skipped": reason}


def compare_units(
    victim: Fingerprint,
    other: Fingerprint,
    path: Sequence[int],
    *,
    role: str = "suspect",
    max_rows: int = DEFAULT_MAX_ROWS,
    cache: VictimCache | None = None,
) -> dict[str, Any]:
    """The test's record for ``other`` against ``victim`` along the alignment ``path`` (for each
    victim layer, the index of the other fingerprint's layer it is paired with). Pass the same
    ``cache`` (an empty dict at first) for every model compared with one victim."""
    for who, fingerprint in (("victim", victim), (role, other)):
        reason = fingerprint.units_skipped
        if reason is not None:
            return skipped(f"the {who}'s fingerprint holds no MLP units: {reason}")
    assert victim.units is not None and other.units is not None
    samples = min(int(victim.units["samples"]), int(other.units["samples"]))
    pairs = [
        (name, other.layers[path[i]])
        for i, name in enumerate(victim.layers)
        if name != EMBEDDINGS_LAYER
        and name in victim.unit_blocks
        and other.layers[path[i]] in other.unit_blocks
    ]
    if not pairs:
        return skipped("no block paired by the alignment has MLP units on both sides")

    def one(pair: tuple[str, str]) -> BlockMatch:
        layer_a, layer_b = pair
        key = (layer_a, samples)
        prepared = None if cache is None else cache.get(key)
        if prepared is None:
            a1, a2 = victim.unit_views(layer_a)
            prepared = prepare(a1[:samples], a2[:samples])
            if cache is not None:
                cache[key] = prepared
        b1, b2 = other.unit_views(layer_b)
        return match_prepared(prepared, prepare(b1[:samples], b2[:samples]), max_rows=max_rows)

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        matches = list(pool.map(one, pairs))
    blocks: list[dict[str, Any]] = [
        {
            "layer_a": layer_a,
            "layer_b": layer_b,
            "units_a": match.units_a,
            "units_b": match.units_b,
            "matched": match.matched,
            "candidates": match.candidates,
            "agreed": match.agreed,
            "spearman": _clean(match.spearman),
            "log10_p": match.log10_p,
        }
        for (layer_a, layer_b), match in zip(pairs, matches, strict=True)
    ]
    return {
        "ran": True,
        "skipped": None,
        "kinds": {"victim": victim.units["kind"], role: other.units["kind"]},
        "samples": samples,
        "max_rows": max_rows,
        "blocks": blocks,
        "blocks_compared": len(blocks),
        "log10_p_value": bonferroni_log10([match.log10_p for match in matches]),
    }


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """What a reference's or a control's row keeps of its test: the combined p and the count."""
    if not record["ran"]:
        return {"skipped": record["skipped"]}
    return {"log10_p_value": record["log10_p_value"], "blocks_compared": record["blocks_compared"]}


@dataclass(frozen=True)
class UnitsOutcome:
    """The test as the verdict uses it; `from_record` re-derives every p-value from the recorded
    counts, so a record whose p-values were edited does not decide anything."""

    ran: bool
    skipped: str | None = None
    log10_p: float = 0.0  # combined over blocks
    blocks_compared: int = 0
    lined_up: int = 0  # blocks whose own p-value is below 0.01 / blocks compared
    agreement: float = math.nan  # mean over blocks of the fraction of units matched alike
    #: the combined log10 p had every matched unit been paired alike (a derivative's units are):
    #: the strongest finding the test could have made with these blocks, its power
    best_log10_p: float = 0.0

    @classmethod
    def from_record(cls, record: UnitsTest) -> UnitsOutcome:
        """Raises TypeError or ValueError for a record that states no usable test."""
        if record.ran is not True:
            if not isinstance(record.skipped, str):
                raise TypeError("a skipped units test needs its reason")
            return cls(ran=False, skipped=record.skipped)
        logs = []
        bests = []
        agreements = []
        for block in _blocks(record):
            counts = [block.agreed, block.matched, block.candidates]
            logs.append(coincidence_log10_p(*counts))
            bests.append(coincidence_log10_p(counts[1], counts[1], counts[2]))
            if counts[1]:
                agreements.append(counts[0] / counts[1])
        if not logs:
            raise ValueError("a units test that ran compares at least one block")
        threshold = math.log10(0.01 / len(logs))
        return cls(
            ran=True,
            log10_p=bonferroni_log10(logs),
            blocks_compared=len(logs),
            lined_up=sum(value < threshold for value in logs),
            agreement=sum(agreements) / len(agreements) if agreements else math.nan,
            best_log10_p=bonferroni_log10(bests),
        )

    def sentence(self) -> str:
        """The finding in plain words, for the reasons and the report."""
        if not self.ran:
            return f"The neuron-matching test could not be run: {self.skipped}."
        share = "" if math.isnan(self.agreement) else f" ({self.agreement:.0%} of units on average)"
        return (
            f"Neuron matching: the suspect's internal units line up one-to-one with the victim's "
            f"in {self.lined_up} of {self.blocks_compared} blocks{share}, where independently "
            f"trained models line up by chance only; the probability of this for an independent "
            f"model is {format_log10_p(self.log10_p)} (corrected for {self.blocks_compared} blocks)."
        )


def _blocks(record: UnitsTest) -> tuple[UnitsBlock, ...]:
    if isinstance(record.blocks, Absent):
        raise ValueError("a units test that ran states its blocks")
    return record.blocks


def units_record_problem(record: UnitsTest) -> str | None:
    """Whether a recorded test's p-values are what its rank correlations give (None: they are).
    Raises ValueError for a test that ran without blocks."""
    if record.ran is not True:
        return None
    logs = []
    for block in _blocks(record):
        expected = coincidence_log10_p(block.agreed, block.matched, block.candidates)
        if not math.isclose(block.log10_p, expected, rel_tol=1e-9, abs_tol=1e-12):
            return f"units_test: block {block.layer_a}'s p-value does not follow from its counts"
        logs.append(expected)
    combined = present(record.log10_p_value)
    if (
        combined is None
        or not math.isclose(combined, bonferroni_log10(logs), rel_tol=1e-9, abs_tol=1e-12)
        or present(record.blocks_compared) != len(logs)
    ):
        return "units_test: the combined p-value does not follow from the blocks'"
    return None
