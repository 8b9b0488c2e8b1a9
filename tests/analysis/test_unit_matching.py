"""The neuron-matching test: its math, its null, and its place in fingerprints and verdicts."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from reef_forensics import ProbeSet, fingerprint_model, read_fingerprint
from reef_forensics.analysis import neuron_test
from reef_forensics.analysis.calibration import calibrate
from reef_forensics.analysis.check import check
from reef_forensics.analysis.neuron_test import UnitsOutcome, compare_units, units_record_problem
from reef_forensics.analysis.verdict import DecisionRule, decide
from reef_forensics.demo.toy_models import make_model
from reef_forensics.formats.findings_record import UnitsBlock, UnitsTest
from reef_forensics.formats.json_records import RecordTypeError, decode
from reef_forensics.similarity.unit_matching import (
    bonferroni_log10,
    coincidence_log10_p,
    correlations,
    format_log10_p,
    live_units,
    match_block,
    matching,
)

ROOT = Path(__file__).resolve().parents[2]


def views(rng: np.random.Generator, samples: int, units: int) -> tuple[np.ndarray, np.ndarray]:
    """Two views of a random block's units: correlated with each other, as gate and up are."""
    shared = rng.normal(size=(samples, 1))
    return (
        rng.normal(size=(samples, units)) + shared,
        rng.normal(size=(samples, units)) + 0.5 * shared,
    )


# --- the math -------------------------------------------------------------------------------


def test_correlations_agree_with_numpy_corrcoef() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 4)), rng.normal(size=(50, 6))
    expected = np.corrcoef(a.T, b.T)[:4, 4:]
    np.testing.assert_allclose(correlations(a, b), expected, atol=1e-12)


def test_matching_recovers_a_permutation_of_the_units() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(80, 30))
    perm = rng.permutation(30)
    partner = matching(correlations(a, a[:, perm]))
    assert (perm[partner] == np.arange(30)).all()


def test_coincidence_bound_is_the_exact_chance_for_small_cases() -> None:
    # k = m = 3: two random orderings; P(X >= 3) = 1/6 exactly, P(X >= 2) = 1/6 too (two
    # agreements force the third), bounded by C(3,2)/(3*2) = 1/2.
    assert coincidence_log10_p(3, 3, 3) == pytest.approx(math.log10(1 / 6))
    assert coincidence_log10_p(2, 3, 3) == pytest.approx(math.log10(1 / 2))
    assert coincidence_log10_p(0, 10, 20) == 0.0
    # every one of 512 units agreeing among 512 candidates: 1/512!, far below a double
    assert coincidence_log10_p(512, 512, 512) < -1100
    with pytest.raises(ValueError):
        coincidence_log10_p(5, 4, 10)


def test_coincidence_bound_holds_for_random_assignments() -> None:
    """Simulated under its null (a uniformly random second assignment), the bound is never
    below the observed tail frequency."""
    rng = np.random.default_rng(2)
    k, m, trials = 8, 12, 20000
    counts = np.array(
        [np.sum(rng.permutation(m)[:k] == np.arange(k)) for _ in range(trials)], dtype=int
    )
    for x in range(1, 5):
        observed = np.mean(counts >= x)
        assert 10 ** coincidence_log10_p(x, k, m) >= observed - 3 * math.sqrt(observed / trials)


def test_bonferroni_multiplies_the_smallest_p_by_the_number_of_blocks() -> None:
    assert bonferroni_log10([-3.0, -1.0, 0.0]) == pytest.approx(math.log10(3) - 3.0)
    assert bonferroni_log10([-0.1, -0.2]) == 0.0  # capped at p = 1
    assert bonferroni_log10([]) == 0.0


def test_p_values_below_a_double_print_as_a_bound() -> None:
    assert format_log10_p(-1166.0) == "< 1e-300"
    assert format_log10_p(math.log10(0.0042)) == "0.0042"


def test_dead_units_are_left_out() -> None:
    rng = np.random.default_rng(3)
    a = rng.normal(size=(40, 6))
    a[:, 2] = 0.0
    assert live_units(a, a).tolist() == [True, True, False, True, True, True]


def test_a_derivative_matches_one_to_one_in_both_views() -> None:
    rng = np.random.default_rng(4)
    a1, a2 = views(rng, 200, 64)
    perm = rng.permutation(64)
    noise = 0.3
    b1 = a1[:, perm] + noise * rng.normal(size=a1.shape)
    b2 = a2[:, perm] + noise * rng.normal(size=a2.shape)
    block = match_block(a1, a2, b1, b2)
    assert block.agreed == 64 and block.matched == 64
    assert block.log10_p == pytest.approx(coincidence_log10_p(64, 64, 64))
    assert block.log10_p < -80


def test_an_independent_block_agrees_by_chance_only() -> None:
    rng = np.random.default_rng(5)
    a1, a2 = views(rng, 200, 64)
    b1, b2 = views(rng, 200, 64)
    block = match_block(a1, a2, b1, b2)
    assert block.agreed <= 4
    assert block.log10_p > -2


def test_a_narrower_suspect_is_matched_into_the_wider_victim() -> None:
    """Intermediate units pruned away (a narrower MLP): rows are the narrower side's units."""
    rng = np.random.default_rng(6)
    a1, a2 = views(rng, 200, 96)
    kept = rng.permutation(96)[:64]
    block = match_block(a1, a2, a1[:, kept], a2[:, kept])
    assert (block.units_a, block.units_b, block.matched, block.candidates) == (96, 64, 64, 96)
    assert block.agreed == 64
    assert block.log10_p < -100


def test_views_of_different_samples_are_refused() -> None:
    rng = np.random.default_rng(7)
    a1, a2 = views(rng, 50, 8)
    b1, b2 = views(rng, 40, 8)
    with pytest.raises(ValueError, match="same samples"):
        match_block(a1, a2, b1, b2)


# --- its null, measured -----------------------------------------------------------------------


@pytest.mark.slow
def test_independently_trained_models_are_not_found_derived(tmp_path: Path) -> None:
    """The null simulation (bench/null_simulation.py, figures in bench/README.md): tiny models
    trained independently on the same texts with a shared tokenizer, of the same and of
    different architectures; the false-derived rate stays at or below alpha, and the first
    model's derivatives are found."""
    out = tmp_path / "null.json"
    subprocess.run(
        [sys.executable, ROOT / "bench" / "null_simulation.py", "--json", out],
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(out.read_text())
    summary = result["summary"]
    assert summary["same architecture"]["pairs"] >= 20
    assert summary["different architectures"]["pairs"] >= 10
    for entry in summary.values():
        assert entry["rate_at_0.01"] <= 0.01
        assert entry["rate_at_0.05"] <= 0.05
    for row in result["derived"]:
        assert row["log10_p"] < -6, row
    # with reference panels, by the rules of findings versions 3 and 4: no independent model is
    # called derived, every derivative is, and version 4 only ever turns inconclusive to unrelated
    for label, entry in result["panel_summary"].items():
        assert entry["checks"] >= 3, label
        for version in ("v3", "v4"):
            expected = entry["checks"] if label.startswith("derived") else 0
            assert entry[version]["derived"] == expected, (label, entry)
        assert entry["v4"]["unrelated"] >= entry["v3"]["unrelated"], (label, entry)
    for row in result["panel_verdicts"]:
        assert row["v4"] == row["v3"] or (row["v3"], row["v4"]) == ("inconclusive", "unrelated")


# --- in fingerprints --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [("victim", "gated"), ("gpt2", "split-input"), ("bert", "split-input")],
)
def test_fingerprints_store_two_views_of_every_blocks_mlp_units(
    fingerprints: dict[str, Path], name: str, kind: str
) -> None:
    fp = read_fingerprint(fingerprints[name])
    assert fp.format_version == 2
    assert fp.units is not None and fp.units["kind"] == kind
    assert list(fp.unit_blocks) == [f"block_{i}" for i in range(1, len(fp.layers))]
    a, b = fp.unit_views("block_1")
    assert a.shape == b.shape == (fp.units["samples"], fp.unit_blocks["block_1"])
    assert fp.units["samples"] == min(256, fp.num_samples)
    assert not np.allclose(a, b)


def test_a_roberta_model_is_captured_too(tmp_path: Path, small_probes: ProbeSet) -> None:
    model = make_model(tmp_path / "roberta", small_probes.texts, family="roberta", seed=1)
    fp = fingerprint_model(model, tmp_path / "fp", probes=small_probes)
    assert fp.units is not None and fp.units["kind"] == "split-input"


def test_units_can_be_left_out_and_the_reason_is_recorded(
    zoo: dict[str, Path], tmp_path: Path, small_probes: ProbeSet
) -> None:
    fp = fingerprint_model(zoo["victim"], tmp_path / "fp", probes=small_probes, unit_samples=0)
    assert fp.units is None
    assert "not asked for" in (fp.units_skipped or "")
    assert not (fp.path / "units.safetensors").exists()


def test_an_edited_units_file_is_refused(
    zoo: dict[str, Path], tmp_path: Path, small_probes: ProbeSet
) -> None:
    from reef_forensics.errors import FingerprintError

    fp = fingerprint_model(zoo["victim"], tmp_path / "fp", probes=small_probes)
    data = bytearray((fp.path / "units.safetensors").read_bytes())
    data[-3] ^= 0x40
    (fp.path / "units.safetensors").write_bytes(bytes(data))
    with pytest.raises(FingerprintError, match=r"units\.safetensors does not match"):
        read_fingerprint(fp.path)


# --- in the verdict ---------------------------------------------------------------------------


def _structurally_pruned(source: Path, out: Path, keep: float, drop_block: int | None) -> Path:
    """The victim with a share of every MLP's units removed (a narrower intermediate size) and
    optionally one block dropped, saved as a new model folder."""
    model = AutoModelForCausalLM.from_pretrained(source)
    generator = torch.Generator().manual_seed(0)
    width = model.config.intermediate_size
    kept = torch.randperm(width, generator=generator)[: int(width * keep)].sort().values
    with torch.no_grad():
        for layer in model.model.layers:
            mlp = layer.mlp
            for proj in (mlp.gate_proj, mlp.up_proj):
                proj.weight = torch.nn.Parameter(proj.weight[kept].clone())
                proj.out_features = len(kept)
            mlp.down_proj.weight = torch.nn.Parameter(mlp.down_proj.weight[:, kept].clone())
            mlp.down_proj.in_features = len(kept)
    model.config.intermediate_size = len(kept)
    if drop_block is not None:
        del model.model.layers[drop_block]
        model.config.num_hidden_layers -= 1
        for index, layer in enumerate(model.model.layers):
            layer.self_attn.layer_idx = index
        layer_types = getattr(model.config, "layer_types", None)
        if layer_types:
            model.config.layer_types = layer_types[: model.config.num_hidden_layers]
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return out


def test_the_victims_prepared_blocks_and_threads_change_no_number(
    fingerprints: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`check` prepares the victim's blocks once and matches blocks on threads: each record is
    what matching every block on its own, one after another, gives."""
    victim = read_fingerprint(fingerprints["victim"])
    others = [read_fingerprint(fingerprints[name]) for name in ("derived", "unrelated", "gpt2")]
    cache: dict = {}
    fast = []
    for other in others:
        path = list(range(len(victim.layers)))
        if len(other.layers) != len(victim.layers):
            path = [min(i, len(other.layers) - 1) for i in range(len(victim.layers))]
        fast.append((path, compare_units(victim, other, path, cache=cache)))
    assert len(cache) == len(victim.unit_blocks)
    monkeypatch.setattr(neuron_test, "WORKERS", 1)
    for other, (path, record) in zip(others, fast, strict=True):
        assert compare_units(victim, other, path) == record
        for block in record["blocks"]:  # and each block is `match_block` on the stored views
            a1, a2 = victim.unit_views(block["layer_a"])
            b1, b2 = other.unit_views(block["layer_b"])
            samples = record["samples"]
            match = match_block(a1[:samples], a2[:samples], b1[:samples], b2[:samples])
            assert (match.agreed, match.matched, match.candidates) == (
                block["agreed"],
                block["matched"],
                block["candidates"],
            )
    assert fast[0][1]["log10_p_value"] < -6  # the derivative, so the comparison is not vacuous


def test_a_narrower_shallower_derivative_is_found_with_no_references(
    zoo: dict[str, Path], fingerprints: dict[str, Path], tmp_path: Path, probes: ProbeSet
) -> None:
    """Width pruned to 75% and a block dropped: blocks are paired along the CKA alignment and
    matched rectangularly; the test alone decides, without any reference model."""
    derived = _structurally_pruned(zoo["victim"], tmp_path / "pruned", 0.75, drop_block=1)
    suspect = fingerprint_model(derived, tmp_path / "fp", probes=probes)
    record = check(read_fingerprint(fingerprints["victim"]), suspect, []).as_json()
    units = record["units_test"]
    assert units["ran"] and units["blocks_compared"] == 4
    assert units["log10_p_value"] < -6
    assert record["verdict"] == "derived"
    assert "neuron-matching test decides" in " ".join(record["reasons"])
    assert record["panel_size"] == 0


def test_an_unrelated_model_needs_every_test_to_find_nothing(
    fingerprints: dict[str, Path],
) -> None:
    victim = read_fingerprint(fingerprints["victim"])
    record = check(victim, read_fingerprint(fingerprints["unrelated"]), []).as_json()
    assert record["units_test"]["ran"]
    assert record["units_test"]["log10_p_value"] > -2
    assert record["verdict"] == "inconclusive"  # no CKA panel: independence is not concluded


def _calibration(score: float, references: list[float]):  # type: ignore[no-untyped-def]
    blocks = [score, score]
    return calibrate(score, blocks, [(r, [r, r]) for r in references])


def test_unrelated_is_refused_when_the_neuron_test_finds_what_cka_misses() -> None:
    """A CKA-ordinary score (p about 0.1, the miss of issue 15) with units that line up."""
    calibration = _calibration(0.80, [0.70, 0.85, 0.78, 0.82])
    rule = DecisionRule()
    found = UnitsOutcome(ran=True, log10_p=-400.0, blocks_compared=30, lined_up=30, agreement=1.0)
    nothing = UnitsOutcome(ran=True, log10_p=-0.2, blocks_compared=30, lined_up=0, agreement=0.0)
    assert decide(calibration, rule, ["block_1", "block_2"], found)[0] == "derived"
    assert decide(calibration, rule, ["block_1", "block_2"], nothing)[0] == "unrelated"
    weak = UnitsOutcome(ran=True, log10_p=-1.8, blocks_compared=30, lined_up=1, agreement=0.0)
    assert decide(calibration, rule, ["block_1", "block_2"], weak)[0] == "inconclusive"


PANEL = [0.70, 0.85, 0.78, 0.82, 0.75, 0.80]
BLOCKS = ["block_1", "block_2"]
#: units that found nothing, with the power to find a derivative's units (30 blocks of 512)
CLEAR = UnitsOutcome(
    ran=True, log10_p=0.0, blocks_compared=30, lined_up=0, agreement=0.001, best_log10_p=-1100.0
)


def _corrected(calibration, name: str) -> float:  # type: ignore[no-untyped-def]
    return min(1.0, 3 * next(t.p_value for t in calibration.tests if t.name == name))


def test_version_4_lets_the_neuron_test_settle_a_cka_test_short_of_alpha() -> None:
    """A CKA test unusual against the panel but short of alpha (the Qwen2.5-Coder row of
    bench/README.md): version 3 is inconclusive, version 4 unrelated, and says why."""
    calibration = _calibration(0.92, PANEL)
    assert 0.01 <= _corrected(calibration, "mean") < 0.05  # the case this test is about
    rule = DecisionRule()
    assert decide(calibration, rule, BLOCKS, CLEAR, 3)[0] == "inconclusive"
    verdict, reasons = decide(calibration, rule, BLOCKS, CLEAR, 4)
    assert verdict == "unrelated"
    text = " ".join(reasons)
    assert "CKA mean test finds the suspect somewhat unusual" in text
    assert "needs no reference models and finds nothing" in text
    assert "< 1e-300" in text  # what the units would have given, had they been the victim's


def test_version_4_keeps_inconclusive_where_the_neuron_test_could_not_settle_it() -> None:
    band = _calibration(0.92, PANEL)
    rule = DecisionRule()
    # no power: even perfect agreement could not have reached alpha
    weak_power = UnitsOutcome(
        ran=True, log10_p=0.0, blocks_compared=2, lined_up=0, agreement=0.0, best_log10_p=-1.5
    )
    assert decide(band, rule, BLOCKS, weak_power, 4)[0] == "inconclusive"
    # the units themselves lean toward derivation
    leaning = UnitsOutcome(
        ran=True, log10_p=-2.0, blocks_compared=30, lined_up=1, agreement=0.01, best_log10_p=-1100.0
    )
    assert decide(band, rule, BLOCKS, leaning, 4)[0] == "inconclusive"
    # the test could not run: version 4 decides as version 3
    skipped = UnitsOutcome(ran=False, skipped="the suspect's fingerprint holds no MLP units")
    assert decide(band, rule, BLOCKS, skipped, 4)[0] == "inconclusive"
    # a CKA test below alpha (without the margin a finding needs) is not overruled
    strong = _calibration(0.97, PANEL)  # 0.12 above every reference
    assert _corrected(strong, "mean") < 0.01
    assert decide(strong, DecisionRule(margin=0.2), BLOCKS, CLEAR, 4)[0] == "inconclusive"


def test_the_power_of_the_neuron_test_is_derived_from_its_counts() -> None:
    def block(agreed: int, matched: int, candidates: int) -> UnitsBlock:
        return UnitsBlock("b", "b", candidates, candidates, matched, candidates, agreed, None, 0.0)

    record = UnitsTest(ran=True, blocks=(block(0, 512, 1536), block(1, 2, 3)))
    outcome = UnitsOutcome.from_record(record)
    best = [coincidence_log10_p(512, 512, 1536), coincidence_log10_p(2, 2, 3)]
    assert outcome.best_log10_p == pytest.approx(bonferroni_log10(best))
    assert outcome.best_log10_p < -1000


def test_a_test_that_could_not_run_is_said() -> None:
    calibration = _calibration(0.30, [0.70, 0.85, 0.78, 0.82])
    skipped = UnitsOutcome(ran=False, skipped="the suspect's fingerprint holds no MLP units")
    verdict, reasons = decide(calibration, DecisionRule(), ["block_1", "block_2"], skipped)
    assert verdict == "unrelated"
    assert any("could not be run" in r for r in reasons)


def test_edited_units_numbers_do_not_follow_from_their_counts(
    fingerprints: dict[str, Path],
) -> None:
    record = check(
        read_fingerprint(fingerprints["victim"]), read_fingerprint(fingerprints["derived"]), []
    ).as_json()["units_test"]
    assert units_record_problem(decode(UnitsTest, record)) is None
    edited = json.loads(json.dumps(record))
    edited["blocks"][0]["log10_p"] = -0.5
    assert "does not follow" in (units_record_problem(decode(UnitsTest, edited)) or "")
    edited = json.loads(json.dumps(record))
    edited["log10_p_value"] = -2000.0
    assert "combined" in (units_record_problem(decode(UnitsTest, edited)) or "")
    edited = json.loads(json.dumps(record))
    edited["blocks"][0]["agreed"] = "3"
    with pytest.raises(
        RecordTypeError, match=r"blocks\[0\]\.agreed is the text '3' where an integer"
    ):
        decode(UnitsTest, edited)
