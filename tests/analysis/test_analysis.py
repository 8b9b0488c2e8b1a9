"""The forensic check on synthetic representations with known answers, and its statistics."""

from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest

from reef_forensics import ComparisonError, read_fingerprint
from reef_forensics.analysis.calibration import calibrate
from reef_forensics.analysis.check import check
from reef_forensics.analysis.invariance import invariance_controls
from reef_forensics.analysis.verdict import DecisionRule, decide
from reef_forensics.digests import canonical_json
from reef_forensics.formats.fingerprint import layer_names
from reef_forensics.formats.fingerprint_writer import FingerprintWriter
from reef_forensics.formats.probes import load_probes
from reef_forensics.similarity.cka import CkaMethod, gram
from reef_forensics.similarity.statistics import bootstrap_curve, fisher_z, null_calibration

N, WIDTH, BLOCKS = 120, 24, 4
TEXTS = load_probes().texts[:N]


def synthetic(folder: Path, layers: list[np.ndarray], name: str) -> Path:
    """A real fingerprint directory holding the given representations."""
    from reef_forensics.digests import texts_digest

    with FingerprintWriter(folder) as writer:
        writer.start(layer_names(len(layers)), [x.shape[1] for x in layers], N)
        writer.write_rows(np.arange(N), [x.astype(np.float32) for x in layers])
        writer.commit(
            TEXTS,
            {
                "tool": {"name": "reef-forensics", "version": "test"},
                "created": "2026-01-01T00:00:00Z",
                "model": {
                    "name": name,
                    "kind": "hf-directory",
                    "digest": "sha256:" + name.encode().hex().ljust(64, "0")[:64],
                    "files": [],
                },
                "probes": {"name": "synthetic", "digest": texts_digest(TEXTS), "count": N},
                "extraction": {"pooling": "last"},
            },
        )
    return folder


def model_layers(seed: int, inputs: np.ndarray) -> list[np.ndarray]:
    """A random 'network': each layer a nonlinear map of the previous one."""
    rng = np.random.default_rng(seed)
    layers, state = [inputs], inputs
    for _ in range(BLOCKS):
        state = np.tanh(state @ rng.normal(size=(WIDTH, WIDTH)) / math.sqrt(WIDTH))
        layers.append(state)
    return layers


@pytest.fixture(scope="module")
def panel(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synthetic")
    inputs = np.random.default_rng(100).normal(size=(N, WIDTH))  # the probe texts, embedded
    victim = model_layers(1, inputs)
    noise = np.random.default_rng(2)
    derived = [x + 0.05 * noise.normal(size=x.shape) for x in victim]  # a lightly perturbed copy
    made = {
        "victim": synthetic(root / "victim", victim, "victim"),
        "derived": synthetic(root / "derived", derived, "derived"),
    }
    for i in range(5):
        made[f"ref{i}"] = synthetic(
            root / f"ref{i}",
            model_layers(10 + i, np.random.default_rng(200 + i).normal(size=(N, WIDTH))),
            f"ref{i}",
        )
    made["unrelated"] = synthetic(
        root / "unrelated",
        model_layers(50, np.random.default_rng(300).normal(size=(N, WIDTH))),
        "unrelated",
    )
    return made


def load(panel: dict[str, Path], *names: str):  # type: ignore[no-untyped-def]
    return [read_fingerprint(panel[n]) for n in names]


def test_a_derived_copy_is_found_derived(panel: dict[str, Path]) -> None:
    victim, derived, *refs = load(
        panel, "victim", "derived", "ref0", "ref1", "ref2", "ref3", "ref4"
    )
    findings = check(victim, derived, refs, resamples=50).as_json()
    assert findings["verdict"] == "derived", findings["reasons"]
    assert findings["score"] > 0.95 and findings["p_value"] < 0.01
    assert findings["empirical_p_value"] == pytest.approx(1 / 6)
    assert findings["panel_size"] == 5 and len(findings["references"]) == 5


def test_an_independent_model_is_found_unrelated(panel: dict[str, Path]) -> None:
    victim, unrelated, *refs = load(
        panel, "victim", "unrelated", "ref0", "ref1", "ref2", "ref3", "ref4"
    )
    findings = check(victim, unrelated, refs, resamples=50).as_json()
    assert findings["verdict"] == "unrelated", findings["reasons"]
    assert findings["p_value"] >= 0.05


def test_a_derivative_that_kept_one_block_is_found_by_the_layer_test(tmp_path: Path) -> None:
    """Heavy pruning keeps the first blocks and wrecks the rest: the mean over the blocks looks
    ordinary (below the references, which share some structure with the victim everywhere),
    the kept block does not."""
    rng = np.random.default_rng(11)
    victim = model_layers(1, rng.normal(size=(N, WIDTH)))

    def mix(signal: float, x: np.ndarray) -> np.ndarray:
        return signal * x + (1 - signal) * rng.normal(size=x.shape) * x.std()

    partial = [victim[0], mix(0.97, victim[1])] + [mix(0.0, x) for x in victim[2:]]
    refs = [
        read_fingerprint(
            synthetic(tmp_path / f"ref{r}", [mix(0.45 + 0.06 * r, x) for x in victim], f"r{r}")
        )
        for r in range(5)
    ]
    findings = check(
        read_fingerprint(synthetic(tmp_path / "victim", victim, "victim")),
        read_fingerprint(synthetic(tmp_path / "partial", partial, "partial")),
        refs,
        resamples=20,
    ).as_json()
    tests = findings["tests"]
    assert tests["mean"]["p_value"] > 0.5  # the mean alone would call it unrelated
    assert tests["layer"]["layer"] == "block_1" and tests["layer"]["layers_tested"] == BLOCKS
    assert findings["verdict"] == "derived", findings["reasons"]
    assert findings["p_value"] == pytest.approx(min(1.0, 2 * tests["layer"]["p_value"]))
    assert "block_1" in " ".join(findings["reasons"])


def test_fewer_than_three_references_is_inconclusive_with_numbers(panel: dict[str, Path]) -> None:
    victim, derived, ref = load(panel, "victim", "derived", "ref0")
    findings = check(victim, derived, [ref], resamples=20).as_json()
    assert findings["verdict"] == "inconclusive"
    assert "at least 3" in findings["reasons"][0]
    assert findings["score"] > 0.95 and findings["p_value"] is None
    assert findings["p_value_reason"] == "a parametric p-value needs at least 2 references"


def test_findings_hold_the_documented_fields(panel: dict[str, Path]) -> None:
    victim, derived, *refs = load(panel, "victim", "derived", "ref0", "ref1", "ref2")
    findings = check(victim, derived, refs, resamples=20).as_json()
    assert {
        "verdict",
        "score",
        "p_value",
        "reasons",
        "victim",
        "suspect",
        "probes",
        "per_layer",
        "stability",
        "controls",
        "references",
    } <= set(findings)
    assert (
        findings["victim"]["digest"] == victim.digest
        and findings["suspect"]["digest"] == derived.digest
    )
    assert findings["probes"] == {"name": "synthetic", "digest": victim.probes_digest, "count": N}
    assert findings["extraction"] == {"pooling": "last"}
    per_layer = findings["per_layer"]
    assert per_layer["estimator"] == "linear-debiased"
    assert len(per_layer["matrix"]) == BLOCKS + 1 and len(per_layer["matrix_biased"]) == BLOCKS + 1
    assert [
        a["layer_b"] for a in per_layer["alignment"]
    ] == victim.layers  # same model shape: the diagonal
    assert all({"n", "score", "low", "high"} == set(p) for p in findings["stability"])
    assert findings["stability"][-1]["n"] == N
    assert [c["score"] for c in findings["controls"]["invariance"]] == pytest.approx(
        [1.0, 1.0, 1.0]
    )
    canonical_json(findings)  # no NaN, nothing JSON cannot hold


def test_victim_against_itself_is_reported_identical(panel: dict[str, Path]) -> None:
    victim, *refs = load(panel, "victim", "ref0", "ref1", "ref2")
    findings = check(victim, victim, refs, resamples=20).as_json()
    assert findings["identical"] is True and findings["score"] == pytest.approx(1.0)
    assert "the victim itself" in findings["reasons"][0]


def test_references_on_other_probe_texts_are_refused_by_name(
    panel: dict[str, Path], tmp_path: Path
) -> None:
    from reef_forensics.digests import texts_digest

    victim, derived = load(panel, "victim", "derived")
    other = synthetic(
        tmp_path / "other",
        model_layers(9, np.random.default_rng(9).normal(size=(N, WIDTH))),
        "other",
    )
    manifest = json.loads((other / "fingerprint.json").read_text())
    assert manifest["probes"]["digest"] == texts_digest(TEXTS)
    (other / "probes.jsonl").write_text(
        "".join(json.dumps({"text": t + "!"}) + "\n" for t in TEXTS)
    )
    from reef_forensics.digests import sha256_file

    manifest["probes"]["digest"] = texts_digest([t + "!" for t in TEXTS])
    manifest["files"]["probes.jsonl"] = sha256_file(other / "probes.jsonl")
    (other / "fingerprint.json").write_bytes(canonical_json(manifest))
    with pytest.raises(
        ComparisonError, match=rf"the reference {other} was fingerprinted on other probe texts"
    ):
        check(victim, derived, [read_fingerprint(other)])


# --- the statistics themselves ------------------------------------------------------------


def one_block(score: float, refs: list[float]):  # type: ignore[no-untyped-def]
    """A calibration where every model has one block: the mean and the layer test coincide."""
    return calibrate(score, [score], [(r, [r]) for r in refs])


def test_empirical_and_parametric_p_values_follow_their_definitions() -> None:
    refs = [0.20, 0.25, 0.30, 0.35, 0.40]
    calibration = null_calibration(0.33, refs)
    assert calibration.empirical_p == pytest.approx((1 + 2) / 6)
    from reef_forensics.similarity.statistics import student_t_sf

    z = fisher_z(refs)  # the t predictive: df = k - 1, scale sd * sqrt(1 + 1/k)
    t = (float(fisher_z(0.33)) - float(z.mean())) / (float(z.std(ddof=1)) * math.sqrt(1 + 1 / 5))
    assert calibration.parametric_p == pytest.approx(student_t_sf(t, 4), rel=1e-9)
    normal_tail = 1 - NormalDist(float(z.mean()), float(z.std(ddof=1))).cdf(float(fisher_z(0.33)))
    assert calibration.parametric_p > normal_tail  # heavier tail: estimated null, more caution
    assert null_calibration(0.99, refs).parametric_p < 1e-4
    assert null_calibration(float("nan"), refs).reason == "the suspect's score is undefined"
    assert null_calibration(0.5, []).reason == "no reference models were given"


@pytest.mark.parametrize(
    ("score", "refs", "verdict"),
    [
        (0.95, [0.30, 0.35, 0.40], "derived"),
        (0.35, [0.30, 0.35, 0.40], "unrelated"),
        (0.95, [0.30, 0.35], "inconclusive"),  # too few references
        (0.43, [0.30, 0.35, 0.40, 0.38], "unrelated"),  # ordinary under the t predictive
        (float("nan"), [0.30, 0.35, 0.40], "inconclusive"),
    ],
)
def test_decision_rule(score: float, refs: list[float], verdict: str) -> None:
    decided, reasons = decide(one_block(score, refs), DecisionRule())
    assert decided == verdict and reasons


def test_bootstrap_band_brackets_the_estimate_and_narrows_with_more_samples() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(300, 10))
    y = x @ rng.normal(size=(10, 8)) + rng.normal(size=(300, 8))
    method = CkaMethod()
    k, l = gram(x, method), gram(y, method)  # noqa: E741
    sizes = [20, 100, 300]
    low, high = bootstrap_curve(k, l, sizes, resamples=200, seed=1)
    from reef_forensics.similarity.cka import cka_curve

    curve = cka_curve(k, l, sizes)
    assert np.all(low <= curve + 0.05) and np.all(curve - 0.05 <= high)
    widths = high - low
    assert widths[0] > widths[1] > widths[2] > 0
    same_low, same_high = bootstrap_curve(k, k, sizes, resamples=30)
    np.testing.assert_allclose([same_low, same_high], 1.0, atol=1e-9)


def test_invariance_controls_score_one() -> None:
    x = np.random.default_rng(5).normal(size=(50, 12))
    for method in (CkaMethod(), CkaMethod(standardize=True), CkaMethod(kernel="rbf")):
        assert [c["score"] for c in invariance_controls(x, method)] == pytest.approx(
            [1.0, 1.0, 1.0]
        )


# --- review fixes: the null, the bands, the panel, the rule ---------------------------------


def test_student_t_tail_matches_tabulated_critical_values() -> None:
    from reef_forensics.similarity.statistics import student_t_sf

    table = [
        (6.314, 1, 0.05),
        (31.821, 1, 0.01),
        (2.920, 2, 0.05),
        (6.965, 2, 0.01),
        (4.541, 3, 0.01),
        (3.365, 5, 0.01),
        (2.764, 10, 0.01),
    ]
    for t, df, p in table:
        assert student_t_sf(t, df) == pytest.approx(p, rel=2e-3)
    assert student_t_sf(0.0, 4) == pytest.approx(0.5)
    assert student_t_sf(-2.920, 2) == pytest.approx(0.95, rel=1e-3)


def test_the_t_tail_stays_accurate_far_out_and_old_findings_keep_theirs() -> None:
    """Findings format 4 takes the tail from scipy; the series of formats 2 and 3 loses its
    digits as the tail shrinks (1 minus a sum near 1) and is kept only to re-derive them."""
    from scipy import stats

    from reef_forensics.similarity.statistics import legacy_student_t_sf, student_t_sf

    assert legacy_student_t_sf(15.0, 39) == 0.0  # the old series underflows to a false zero
    assert student_t_sf(15.0, 39) == pytest.approx(float(stats.t.sf(15.0, 39)), rel=1e-12)
    assert 0.0 < student_t_sf(15.0, 39) < 1e-16
    for t, df in [(1.5, 4), (3.0, 6), (-0.7, 9)]:  # where both are accurate they agree
        assert legacy_student_t_sf(t, df) == pytest.approx(student_t_sf(t, df), rel=1e-9)
    refs = [(0.20, [0.20]), (0.22, [0.22]), (0.25, [0.25]), (0.21, [0.21])]
    new, old = calibrate(0.99, [0.99], refs, 4), calibrate(0.99, [0.99], refs, 3)
    score_t = (float(fisher_z(0.99)) - float(fisher_z([r for r, _ in refs]).mean())) / (
        0.05 * math.sqrt(1 + 1 / 4)
    )
    assert new.mean.calibration.parametric_p == pytest.approx(student_t_sf(score_t, 3), rel=1e-9)
    assert old.mean.calibration.parametric_p == legacy_student_t_sf(score_t, 3)


@pytest.mark.parametrize("panel_size", [3, 5])
def test_false_derived_rate_under_the_null_stays_below_alpha(panel_size: int) -> None:
    """Suspect and references all drawn from one null distribution: 'derived' must be rare."""
    rng = np.random.default_rng(panel_size)
    rule = DecisionRule()
    trials, derived = 4000, 0
    for _ in range(trials):
        z = rng.normal(0.6, 0.3, size=panel_size + 1)
        scores = np.tanh(z)
        verdict, _ = decide(one_block(float(scores[0]), list(scores[1:])), rule)
        derived += verdict == "derived"
    assert derived / trials <= rule.alpha + 0.005


def test_combined_p_is_twice_the_smaller_of_the_mean_and_bonferroni_layer_p() -> None:
    refs = [(0.30, [0.2, 0.3, 0.4]), (0.35, [0.3, 0.35, 0.4]), (0.40, [0.35, 0.4, 0.45])]
    blocks = [0.9, 0.4, 0.45]
    combined = calibrate(float(np.mean(blocks)), blocks, refs)
    mean_p = null_calibration(float(np.mean(blocks)), [r for r, _ in refs]).parametric_p
    layer_ps = [
        null_calibration(v, [row[i] for _, row in refs]).parametric_p for i, v in enumerate(blocks)
    ]
    assert combined.mean.p_value == pytest.approx(mean_p, rel=1e-12)
    assert combined.layer is not None and combined.layer.layer == 0
    assert combined.layer.p_value == pytest.approx(min(1.0, 3 * min(layer_ps)), rel=1e-12)  # type: ignore[type-var]
    assert combined.p_value == pytest.approx(
        min(1.0, 2 * min(mean_p, 3 * min(layer_ps))), rel=1e-12
    )  # type: ignore[type-var, operator]
    with pytest.raises(ValueError, match="every reference needs a score at each tested layer"):
        calibrate(0.5, blocks, [(0.3, [0.2, 0.3])] * 3)


@pytest.mark.parametrize("correlation", [0.0, 0.9])
def test_false_derived_rate_with_many_blocks_stays_below_alpha(correlation: float) -> None:
    """Eight blocks per model, independent or strongly correlated across blocks, five
    references: the layer test looks at every block, and the combination still holds alpha."""
    rng = np.random.default_rng(int(correlation * 10) + 7)
    rule = DecisionRule()
    trials, derived, blocks = 3000, 0, 8
    for _ in range(trials):
        shared = rng.normal(size=(6, 1))
        z = 0.6 + 0.3 * (
            math.sqrt(correlation) * shared
            + math.sqrt(1 - correlation) * rng.normal(size=(6, blocks))
        )
        scores = np.tanh(z)
        rows = [(float(row.mean()), [float(v) for v in row]) for row in scores]
        verdict, _ = decide(calibrate(*rows[0], rows[1:]), rule)
        derived += verdict == "derived"
    assert derived / trials <= rule.alpha + 0.005


def test_margin_blocks_a_derived_verdict_even_at_a_small_p_value() -> None:
    calibration = one_block(0.47, [0.0] * 19 + [0.43])
    assert calibration.p_value is not None and calibration.p_value < 0.01
    verdict, reasons = decide(calibration, DecisionRule())
    assert verdict == "inconclusive" and "margin" in reasons[-1]


def test_bands_on_independent_data_contain_the_estimate_near_zero() -> None:
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(300, 200)), rng.normal(size=(300, 200))
    k, l = gram(x, CkaMethod()), gram(y, CkaMethod())  # noqa: E741
    from reef_forensics.similarity.cka import cka_curve

    sizes = [50, 150, 300]
    low, high = bootstrap_curve(k, l, sizes, resamples=100)
    curve = cka_curve(k, l, sizes)
    assert np.all(low <= curve + 1e-12) and np.all(curve <= high + 1e-12)
    assert abs(curve[-1]) < 0.05 and high[0] < 0.2


def test_decision_rule_cannot_be_weakened_below_its_guarantees() -> None:
    for bad in (
        {"min_references": 2},
        {"alpha": 0.0},
        {"alpha": 0.1, "unrelated_alpha": 0.05},
        {"margin": -0.1},
        {"min_references": 3.0},  # the findings record states a count: 3.0 is none
        {"margin": True},
        {"alpha": "0.01"},
    ):
        with pytest.raises(ValueError):
            DecisionRule(**bad)


def test_a_reference_that_is_the_victim_or_the_suspect_is_refused(panel: dict[str, Path]) -> None:
    victim, derived, ref = load(panel, "victim", "derived", "ref0")
    with pytest.raises(ComparisonError, match="is the same model as the victim"):
        check(victim, derived, [ref, victim], resamples=10)
    with pytest.raises(ComparisonError, match="is the same model as the suspect"):
        check(victim, derived, [ref, derived], resamples=10)


def test_the_embeddings_layer_never_counts_toward_the_verdict(
    panel: dict[str, Path], tmp_path: Path
) -> None:
    """A suspect that copies only the victim's embeddings (a shared tokenizer) is not derived."""
    victim, *refs = load(panel, "victim", "ref0", "ref1", "ref2", "ref3")
    copied = [read_fingerprint(panel["victim"]).layer("embeddings")]
    copied += [
        read_fingerprint(panel["unrelated"]).layer(f"block_{i}") for i in range(1, BLOCKS + 1)
    ]
    suspect = read_fingerprint(synthetic(tmp_path / "emb", copied, "emb-copy"))
    findings = check(victim, suspect, refs, resamples=10).as_json()
    assert findings["verdict"] != "derived"
    assert all(a["layer_b"] != "embeddings" for a in findings["per_layer"]["alignment"][1:])


def test_findings_write_replaces_only_a_findings_directory(
    panel: dict[str, Path], tmp_path: Path
) -> None:
    from reef_forensics import BadInputError

    victim, derived, *refs = load(panel, "victim", "derived", "ref0", "ref1", "ref2")
    findings = check(victim, derived, refs, resamples=10)
    out = tmp_path / "case"
    findings.write(out)
    with pytest.raises(BadInputError, match="already exists"):
        findings.write(out)
    (out / "thesis.docx").write_text("keep me")
    with pytest.raises(BadInputError, match="not a findings directory"):
        findings.write(out, overwrite=True)
    assert (out / "thesis.docx").read_text() == "keep me"
    (out / "thesis.docx").unlink()
    findings.write(out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case"]
