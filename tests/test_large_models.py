"""Large models: disk offload, layer selection, streaming to disk, a memory bound, the GPU path.

Offloaded loading (accelerate's device map with a small ``max_memory``) must give the same
fingerprint as normal loading; a layer selection the same numbers as those layers of a full
run, without running the blocks after the last one; and an offloaded run's peak memory must stay
under the bound bench/bench_memory.py states, measured in a fresh process.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
from argparse import Namespace
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from reef_forensics import (
    ComparisonError,
    FingerprintError,
    ProbeSet,
    fingerprint_model,
    load_model,
    read_fingerprint,
    resolve_model,
)
from reef_forensics.analysis.check import check
from reef_forensics.analysis.comparison import compare_fingerprints
from reef_forensics.cli.main import main
from reef_forensics.digests import canonical_json, sha256_file
from reef_forensics.errors import BadInputError, ExtractionError, ModelLoadError
from reef_forensics.formats.fingerprint import MANIFEST, REPRESENTATIONS
from reef_forensics.formats.fingerprint_writer import FingerprintWriter
from reef_forensics.formats.safetensors_file import read_header
from reef_forensics.models.extraction import _pool, iter_pooled, parse_layers, tokenize_probes
from reef_forensics.models.placement import parse_max_memory, parse_size
from reef_forensics.similarity.cka import CkaMethod, centered_grams, cka_matrix, gram

ROOT = Path(__file__).parent.parent
SHORT = 32  # --max-length of these tests: the numbers do not need long texts
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def load_bench() -> ModuleType:
    """bench/bench_memory.py, the memory benchmark whose measurement the bound test shares."""
    spec = importlib.util.spec_from_file_location("bench_memory", ROOT / "bench/bench_memory.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_memory"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench()


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory, bench: ModuleType, probes: ProbeSet) -> Path:
    """A small Llama-style model (6 blocks of about 0.6 MB) in shards of at most 1 MB."""
    folder = tmp_path_factory.mktemp("sharded") / "model"
    return Path(
        bench.build(folder, hidden=128, blocks=6, texts=list(probes.texts), shard_size="1MB")
    )


def all_rows(fingerprint: Any) -> dict[str, np.ndarray]:
    return dict(fingerprint.iter_layers())


# --- offloaded loading --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_offloaded_loading_gives_the_same_fingerprint(
    sharded: Path, small_probes: ProbeSet, tmp_path: Path, dtype: str
) -> None:
    assert len(list(sharded.glob("*.safetensors"))) > 2  # really sharded
    normal = fingerprint_model(
        sharded, tmp_path / "normal", probes=small_probes, dtype=dtype, max_length=SHORT
    )
    offloaded = fingerprint_model(
        sharded,
        tmp_path / "offloaded",
        probes=small_probes,
        dtype=dtype,
        max_length=SHORT,
        device="auto",
        max_memory={"cpu": "1MB"},
        offload_dir=tmp_path / "offload",
    )
    assert "disk" in offloaded.manifest["extraction"]["device"]  # e.g. auto:cpu+disk
    assert normal.manifest["extraction"]["device"] == "cpu"
    # deterministic on the CPU: the same bytes, hence the same representations digest
    assert sha256_file(offloaded.path / REPRESENTATIONS) == sha256_file(
        normal.path / REPRESENTATIONS
    )
    assert offloaded.manifest["files"] == normal.manifest["files"]


def test_offloaded_layer_selection_matches_the_full_run(
    sharded: Path, small_probes: ProbeSet, tmp_path: Path
) -> None:
    full = fingerprint_model(sharded, tmp_path / "full", probes=small_probes, max_length=SHORT)
    chosen = fingerprint_model(
        sharded,
        tmp_path / "chosen",
        probes=small_probes,
        max_length=SHORT,
        device="auto",
        max_memory="cpu:1MB",
        layers="0,2-3",
    )
    assert chosen.layers == ["embeddings", "block_2", "block_3"]
    for name, values in all_rows(chosen).items():
        np.testing.assert_array_equal(values, full.layer(name))


def test_max_memory_needs_device_auto(
    sharded: Path, small_probes: ProbeSet, tmp_path: Path
) -> None:
    with pytest.raises(ModelLoadError, match="need --device auto"):
        fingerprint_model(sharded, tmp_path / "fp", probes=small_probes, max_memory="cpu:1MB")
    assert not (tmp_path / "fp").exists()


def test_a_scratch_offload_folder_is_removed_with_the_model(
    sharded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where mkdtemp makes folders
    loaded = load_model(resolve_model(sharded), device="auto", max_memory={"cpu": "1MB"})
    assert [p.name[:13] for p in tmp_path.iterdir()] == ["reef-offload-"]
    loaded.close()
    assert list(tmp_path.iterdir()) == []


# --- layer selection ----------------------------------------------------------------------


def pooled(loaded: Any, texts: tuple[str, ...], layers: tuple[int, ...] | None) -> list[Any]:
    """Every kept layer's rows, in probe order, assembled in memory."""
    tokens = tokenize_probes(loaded.tokenizer, texts, SHORT)
    kept: list[np.ndarray] = []
    for batch in iter_pooled(loaded, tokens, pooling="mean", batch_size=16, layers=layers):
        if not kept:
            kept = [np.zeros((len(texts), a.shape[1]), np.float32) for a in batch.layers]
        for layer, values in zip(kept, batch.layers, strict=True):
            layer[batch.indices] = values
    return kept


@pytest.mark.parametrize("family", ["victim", "gpt2", "bert", "roberta"])
def test_layer_selection_equals_those_layers_of_a_full_run(
    zoo: dict[str, Path], small_probes: ProbeSet, family: str
) -> None:
    loaded = load_model(resolve_model(zoo[family]))  # 4 blocks each
    full = pooled(loaded, small_probes.texts, None)
    assert len(full) == 5
    for spec in ("0,2", "3", "1,4", "0", "2-4"):
        selection = parse_layers(spec, 4)
        assert selection is not None
        chosen = pooled(loaded, small_probes.texts, selection)
        assert len(chosen) == len(selection)
        for index, values in zip(selection, chosen, strict=True):
            np.testing.assert_allclose(values, full[index], rtol=1e-6, atol=1e-6)


def count_block_calls(model: torch.nn.Module) -> tuple[list[int], list[Any]]:
    blocks = model.layers  # type: ignore[union-attr]
    calls = [0] * len(blocks)
    handles = []
    for i, block in enumerate(blocks):

        def tick(*_: Any, index: int = i) -> None:
            calls[index] += 1

        handles.append(block.register_forward_hook(tick))
    return calls, handles


@pytest.mark.parametrize(("layers", "blocks_run"), [((0, 2), 2), ((0,), 0), ((1, 4), 4)])
def test_the_forward_pass_stops_after_the_last_selected_layer(
    zoo: dict[str, Path], small_probes: ProbeSet, layers: tuple[int, ...], blocks_run: int
) -> None:
    loaded = load_model(resolve_model(zoo["victim"]))  # 4 blocks
    tokens = tokenize_probes(loaded.tokenizer, small_probes.texts, 64)
    calls, handles = count_block_calls(loaded.model)
    try:
        batches = list(iter_pooled(loaded, tokens, pooling="last", batch_size=16, layers=layers))
    finally:
        for handle in handles:
            handle.remove()
    assert all(len(batch.layers) == len(layers) for batch in batches)
    assert calls == [len(batches)] * blocks_run + [0] * (4 - blocks_run)


def test_default_fingerprints_record_no_selection(
    zoo: dict[str, Path], small_probes: ProbeSet, tmp_path: Path
) -> None:
    everything = fingerprint_model(
        zoo["victim"], tmp_path / "a", probes=small_probes, max_length=SHORT
    )
    spelled_out = fingerprint_model(
        zoo["victim"], tmp_path / "b", probes=small_probes, layers="0-4", max_length=SHORT
    )
    for fingerprint in (everything, spelled_out):
        assert "layers" not in fingerprint.manifest["extraction"]  # the format of before
        assert fingerprint.layer_selection is None
    assert sha256_file(everything.path / REPRESENTATIONS) == sha256_file(
        spelled_out.path / REPRESENTATIONS
    )


def test_a_manifest_whose_selection_disagrees_with_its_layers_is_refused(
    zoo: dict[str, Path], small_probes: ProbeSet, tmp_path: Path
) -> None:
    fingerprint = fingerprint_model(
        zoo["victim"], tmp_path / "fp", probes=small_probes, layers="0,2"
    )
    manifest = json.loads((fingerprint.path / MANIFEST).read_text())
    manifest["extraction"]["layers"] = [0, 3]
    (fingerprint.path / MANIFEST).write_bytes(canonical_json(manifest))
    with pytest.raises(FingerprintError, match="layer selection"):
        read_fingerprint(fingerprint.path)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("0,4,8", (0, 4, 8)), ("8,0,4,4", (0, 4, 8)), ("2-4", (2, 3, 4)), (" 0, 3-4 ", (0, 3, 4))],
)
def test_parse_layers(spec: str, expected: tuple[int, ...]) -> None:
    assert parse_layers(spec, 12) == expected


@pytest.mark.parametrize("spec", ["", "13", "a", "4-2", "1,,2", "-1", "0-13"])
def test_parse_layers_refuses(spec: str) -> None:
    with pytest.raises(ExtractionError, match="--layers"):
        parse_layers(spec, 12)


@given(st.sets(st.integers(min_value=0, max_value=12), min_size=1))
@settings(max_examples=50, deadline=None)
def test_parse_layers_reads_back_any_selection(chosen: set[int]) -> None:
    spec = ",".join(str(i) for i in sorted(chosen, reverse=True))
    parsed = parse_layers(spec, 12)
    assert parsed == (None if len(chosen) == 13 else tuple(sorted(chosen)))


# --- comparing selections -----------------------------------------------------------------


@pytest.fixture(scope="module")
def selected(
    tmp_path_factory: pytest.TempPathFactory, zoo: dict[str, Path], small_probes: ProbeSet
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("selected")
    made = {
        name: fingerprint_model(
            zoo[name], root / name, probes=small_probes, layers="0,2,3", max_length=SHORT
        ).path
        for name in ("victim", "derived", "unrelated")
    }
    made["victim-full"] = fingerprint_model(
        zoo["victim"], root / "full", probes=small_probes, max_length=SHORT
    ).path
    return made


def test_fingerprints_with_the_same_selection_compare_and_check(selected: dict[str, Path]) -> None:
    victim, derived, unrelated = (
        read_fingerprint(selected[n]) for n in ("victim", "derived", "unrelated")
    )
    comparison = compare_fingerprints(victim, derived)
    assert comparison.layers_a == comparison.layers_b == ["embeddings", "block_2", "block_3"]
    findings = check(victim, derived, [unrelated], resamples=20)
    assert list(findings.record.per_layer.layers_victim) == victim.layers


def test_different_selections_are_refused_with_a_clear_error(
    selected: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    chosen, full = read_fingerprint(selected["victim"]), read_fingerprint(selected["victim-full"])
    with pytest.raises(ComparisonError, match=r"only layers 0,2,3 .* every layer"):
        compare_fingerprints(chosen, full)
    with pytest.raises(ComparisonError, match="suspect took other layers"):
        check(chosen, full, [])
    code = main(["compare", str(selected["victim"]), str(selected["victim-full"])])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "--layers" in err and "Traceback" not in err


# --- streaming to disk --------------------------------------------------------------------


def test_streamed_representations_are_byte_identical_to_the_in_memory_ones(
    zoo: dict[str, Path], small_probes: ProbeSet, tmp_path: Path
) -> None:
    streamed = fingerprint_model(
        zoo["victim"], tmp_path / "streamed", probes=small_probes, batch_size=7, max_length=SHORT
    )
    loaded = load_model(resolve_model(zoo["victim"]))
    tokens = tokenize_probes(loaded.tokenizer, small_probes.texts, SHORT)
    batches = list(iter_pooled(loaded, tokens, pooling="last", batch_size=7))
    in_memory = [np.zeros((len(small_probes), a.shape[1]), np.float32) for a in batches[0].layers]
    for batch in batches:
        for layer, values in zip(in_memory, batch.layers, strict=True):
            layer[batch.indices] = values
    path = streamed.path / REPRESENTATIONS
    header = read_header(path)
    assert path.read_bytes()[header.data_start :] == b"".join(a.tobytes() for a in in_memory)
    with safe_open(str(path), framework="numpy") as official:
        for name, values in zip(streamed.layers, in_memory, strict=True):
            np.testing.assert_array_equal(official.get_tensor(name), values)
    with FingerprintWriter(tmp_path / "at-once") as writer:  # every row in one write
        writer.start(streamed.layers, [a.shape[1] for a in in_memory], len(small_probes))
        writer.write_rows(np.arange(len(small_probes)), in_memory)
        at_once = writer.commit(small_probes.texts, streamed.manifest)
    assert sha256_file(at_once.path / REPRESENTATIONS) == sha256_file(path)


# --- half precision pooling ---------------------------------------------------------------


def test_mean_pooling_of_half_precision_states_sums_in_float32() -> None:
    # one token of 256 and 299 of 1: the sum, 555, is not a bfloat16 number (556 is)
    hidden = torch.ones((1, 300, 4), dtype=torch.bfloat16)
    hidden[0, 0] = 256.0
    mask = torch.ones((1, 300), dtype=torch.long)
    mean = _pool(hidden, mask, "mean")
    assert mean.dtype == np.float32
    np.testing.assert_allclose(mean, np.full((1, 4), 555 / 300), rtol=1e-6)
    naive = (hidden.sum(dim=1) / 300).float().numpy()
    assert not np.allclose(naive, 555 / 300, rtol=1e-4)  # the test would catch a bfloat16 sum


# --- options --------------------------------------------------------------------------------


def test_parse_max_memory() -> None:
    assert parse_max_memory("0:2GiB,cpu:1GiB") == {0: 2 * 2**30, "cpu": 2**30}
    assert parse_max_memory({"cpu": "300MB", "cuda:1": 5}) == {"cpu": 300 * 10**6, 1: 5}
    assert parse_size("1.5 kib") == 1536
    for bad in ["", "cpu", "cpu:lots", "gpu:1GB", "cpu:1GB,cpu:2GB", "cpu:-1MB"]:
        with pytest.raises(BadInputError, match=r"--max-memory|not a size"):
            parse_max_memory(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_max_memory_for_a_missing_gpu_is_refused(sharded: Path) -> None:
    with pytest.raises(ModelLoadError, match="names GPU 0"):
        load_model(resolve_model(sharded), device="auto", max_memory="0:1GiB,cpu:1GiB")


def test_cli_fingerprint_with_offload_and_layers(
    sharded: Path, small_probes: ProbeSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    probes = tmp_path / "probes.txt"
    probes.write_text("\n".join(small_probes.texts) + "\n")
    common = ["fingerprint", str(sharded), "--probes", str(probes), "--max-length", "32"]
    code = main(
        [*common, "--out", str(tmp_path / "fp"), "--device", "auto", "--max-memory", "cpu:1MB",
         "--offload-dir", str(tmp_path / "offload"), "--layers", "0,3"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    made = read_fingerprint(tmp_path / "fp")
    assert made.layers == ["embeddings", "block_3"]
    assert made.manifest["extraction"]["device"].startswith("auto:")
    capsys.readouterr()
    for bad in (
        ["--max-memory", "cpu:1MB"],
        ["--device", "auto", "--max-memory", "cpu:lots"],
        ["--layers", "0,99"],
    ):
        code = main([*common, "--out", str(tmp_path / "bad"), *bad])
        err = capsys.readouterr().err
        assert code == 2, bad
        assert err.startswith("reef-forensics: error: ") and err.count("\n") == 1, err
        assert not (tmp_path / "bad").exists()


# --- the memory bound ---------------------------------------------------------------------


def test_offloaded_peak_memory_stays_under_the_stated_bound(
    tmp_path: Path, bench: ModuleType, probes: ProbeSet
) -> None:
    model = Path(bench.build(tmp_path / "model", hidden=768, blocks=6, texts=list(probes.texts)))
    total, largest = bench.weight_sizes(model)
    config = json.loads((model / "config.json").read_text())
    settings_ = Namespace(texts=10, batch_size=4, max_length=16)
    limit = bench.bound(config, largest, parse_size("4MB"), settings_, kept=7)["total"]
    # well below holding the whole model (a normal load grows by more than the weights:
    # bench/bench_memory.py measures both; in one process per run, too slow for a test)
    assert limit < total
    offloaded = bench.measure(
        model,
        tmp_path / "offloaded",
        settings_,
        {"device": "auto", "max_memory": {"cpu": "4MB"}, "offload_dir": str(tmp_path / "off")},
    )
    assert "disk" in offloaded["placement"]
    grown = offloaded["peak_bytes"] - offloaded["baseline_bytes"]
    assert grown <= limit, f"grew {grown} bytes, bound {limit}, model {total}"


# --- the GPU path (the same code; on the CPU here) -----------------------------------------


def layer_stack(seed: int, count: int = 3) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    for _ in range(count):
        yield rng.standard_normal((40, 24)).astype(np.float32)


@pytest.mark.parametrize("estimator", ["biased", "debiased"])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_cka_on_a_torch_device_equals_numpy(estimator: str, device: str) -> None:
    method = CkaMethod(estimator=estimator)  # type: ignore[arg-type]
    a_np = centered_grams(layer_stack(0), method, count=3)
    b_np = centered_grams(layer_stack(1), method, count=3)
    a_dev = centered_grams(layer_stack(0), method, count=3, device=device)
    b_dev = centered_grams(layer_stack(1), method, count=3, device=device)
    np.testing.assert_allclose(a_dev, a_np, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(
        cka_matrix(a_dev, b_dev, device=device), cka_matrix(a_np, b_np), rtol=1e-10
    )
    x = next(layer_stack(2))
    np.testing.assert_allclose(gram(x, method, device=device), gram(x, method), rtol=1e-10)


def test_compare_on_a_torch_device_equals_numpy(selected: dict[str, Path]) -> None:
    a, b = read_fingerprint(selected["victim"]), read_fingerprint(selected["derived"])
    np.testing.assert_allclose(
        compare_fingerprints(a, b, device="cpu").matrix,
        compare_fingerprints(a, b).matrix,
        rtol=1e-10,
    )


@CUDA
def test_extraction_on_cuda_matches_the_cpu(
    zoo: dict[str, Path], small_probes: ProbeSet, tmp_path: Path
) -> None:
    cpu = fingerprint_model(zoo["victim"], tmp_path / "cpu", probes=small_probes)
    gpu = fingerprint_model(zoo["victim"], tmp_path / "gpu", probes=small_probes, device="cuda")
    assert gpu.manifest["extraction"]["device"] == "cuda"
    for name, values in all_rows(gpu).items():
        np.testing.assert_allclose(values, cpu.layer(name), rtol=1e-4, atol=1e-4)
