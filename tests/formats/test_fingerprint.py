"""The fingerprint format: contents, integrity checks, atomic writing, and GGUF models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from reef_forensics import FingerprintError, ProbeSet, fingerprint_model, read_fingerprint
from reef_forensics.digests import canonical_json, sha256_file
from reef_forensics.formats.fingerprint import (
    FORMAT_VERSION,
    MANIFEST,
    PROBES,
    REPRESENTATIONS,
    UNITS,
)
from reef_forensics.formats.safetensors_file import StreamWriter


def test_fingerprint_holds_every_layer_in_probe_order(
    fingerprints: dict[str, Path], probes: ProbeSet
) -> None:
    fp = read_fingerprint(fingerprints["victim"])
    manifest = fp.manifest
    assert manifest["format"] == "reef-fingerprint" and manifest["format_version"] == FORMAT_VERSION
    assert manifest["probes"] == {
        "name": "builtin:default",
        "digest": probes.digest,
        "count": len(probes),
    }
    assert manifest["extraction"]["pooling"] == "last"
    assert manifest["model"]["digest"].startswith("sha256:")
    assert manifest["tool"]["name"] == "reef-forensics"
    assert fp.layers == ["embeddings", "block_1", "block_2", "block_3", "block_4"]
    assert fp.texts == probes.texts
    # an independent reader (the safetensors library) sees the same tensors
    tensors = load_file(fp.path / REPRESENTATIONS)
    assert list(tensors) == fp.layers or sorted(tensors) == sorted(fp.layers)
    for name in fp.layers:
        assert tensors[name].shape == (len(probes), 64) and tensors[name].dtype == np.float32
        np.testing.assert_array_equal(tensors[name], fp.layer(name))
    assert (fp.path / MANIFEST).read_bytes() == canonical_json(manifest)


def test_encoder_fingerprint_defaults_to_mean_pooling(fingerprints: dict[str, Path]) -> None:
    assert read_fingerprint(fingerprints["bert"]).pooling == "mean"


def test_fingerprint_is_the_same_whatever_the_batch_size(
    zoo: dict[str, Path], small_probes: ProbeSet, tmp_path: Path
) -> None:
    one = fingerprint_model(zoo["victim"], tmp_path / "b1", probes=small_probes, batch_size=1)
    many = fingerprint_model(zoo["victim"], tmp_path / "b7", probes=small_probes, batch_size=7)
    for name in one.layers:
        a, b = one.layer(name), many.layer(name)
        assert np.abs(a - b).max() / np.abs(a).max() < 1e-4


def test_gguf_model_fingerprints_like_its_safetensors_original(
    zoo: dict[str, Path], small_probes: ProbeSet, tmp_path: Path
) -> None:
    from_gguf = fingerprint_model(zoo["gguf"], tmp_path / "gguf", probes=small_probes)
    from_hf = fingerprint_model(zoo["victim"], tmp_path / "hf", probes=small_probes)
    assert from_gguf.manifest["model"]["kind"] == "gguf"
    assert [f["path"] for f in from_gguf.manifest["model"]["files"]] == ["victim.gguf"]
    assert from_gguf.layers == from_hf.layers
    for name in from_hf.layers:
        a, b = from_gguf.layer(name), from_hf.layer(name)
        assert np.abs(a - b).max() / np.abs(b).max() < 1e-4


def test_tokenizer_files_beside_a_gguf_count_in_its_digest(
    zoo: dict[str, Path], tmp_path: Path
) -> None:
    from reef_forensics import model_digest, resolve_model

    folder = tmp_path / "gguf"
    folder.mkdir()
    shutil.copy(zoo["gguf"], folder)
    alone = model_digest(resolve_model(folder))
    shutil.copy(zoo["victim"] / "tokenizer.json", folder)  # transformers would use this one
    beside = model_digest(resolve_model(folder))
    assert [f.path for f in beside.files] == ["tokenizer.json", "victim.gguf"]
    assert beside.digest != alone.digest


def test_folder_holding_one_gguf_file_is_accepted(
    zoo: dict[str, Path], small_probes: ProbeSet, tmp_path: Path
) -> None:
    fp = fingerprint_model(zoo["gguf"].parent, tmp_path / "fp", probes=small_probes)
    assert fp.manifest["model"]["kind"] == "gguf"


def copy_fingerprint(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        ("flip-representation-byte", "representations.safetensors does not match the digest"),
        ("edit-probe-text", "probes.jsonl does not match the digest"),
        ("delete-probes", "probes.jsonl is missing"),
        ("delete-representations", "representations.safetensors is missing"),
        ("delete-manifest", "fingerprint.json is missing"),
        ("pretty-print-manifest", "not in canonical form"),
        ("future-version", "format version 99 is not supported"),
        ("not-json", "is not valid JSON"),
        ("consistent-but-wrong-count", "does not match the probe digest and count"),
        ("drop-field", "lacks required fields"),
    ],
)
def test_missing_or_edited_files_are_detected(
    fingerprints: dict[str, Path], tmp_path: Path, tamper: str, message: str
) -> None:
    fp = copy_fingerprint(fingerprints["victim"], tmp_path / "fp")
    manifest = json.loads((fp / MANIFEST).read_text())
    if tamper == "flip-representation-byte":
        data = bytearray((fp / REPRESENTATIONS).read_bytes())
        data[len(data) // 2] ^= 0x01
        (fp / REPRESENTATIONS).write_bytes(bytes(data))
    elif tamper == "edit-probe-text":
        text = (fp / PROBES).read_text().replace("Q:", "Q;", 1)
        (fp / PROBES).write_text(text)
    elif tamper.startswith("delete-"):
        {"probes": fp / PROBES, "representations": fp / REPRESENTATIONS, "manifest": fp / MANIFEST}[
            tamper[7:]
        ].unlink()
    elif tamper == "pretty-print-manifest":
        (fp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    elif tamper == "future-version":
        manifest["format_version"] = 99
        (fp / MANIFEST).write_bytes(canonical_json(manifest))
    elif tamper == "not-json":
        (fp / MANIFEST).write_text("{")
    elif tamper == "consistent-but-wrong-count":
        manifest["probes"]["count"] += 1
        (fp / MANIFEST).write_bytes(canonical_json(manifest))
    elif tamper == "drop-field":
        del manifest["extraction"]
        (fp / MANIFEST).write_bytes(canonical_json(manifest))
    with pytest.raises(FingerprintError, match=message):
        read_fingerprint(fp)


def test_a_failed_extraction_leaves_nothing_behind(
    zoo: dict[str, Path], small_probes: ProbeSet, tmp_path: Path
) -> None:
    """A token whose embedding is NaN appears only in the shortest text, so the last batch fails
    after the others were written to the staging directory."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from reef_forensics import ExtractionError

    broken = tmp_path / "broken"
    model = AutoModel.from_pretrained(zoo["victim"])
    tokenizer = AutoTokenizer.from_pretrained(zoo["victim"])
    poisoned = tokenizer("~", add_special_tokens=False).input_ids[0]
    with torch.no_grad():
        model.embed_tokens.weight[poisoned] = float("nan")
    model.save_pretrained(broken)
    tokenizer.save_pretrained(broken)
    out_parent = tmp_path / "out"
    out_parent.mkdir()
    texts = (*small_probes.texts, "~")
    with pytest.raises(ExtractionError, match="NaN or infinite"):
        fingerprint_model(broken, out_parent / "fp", probes=ProbeSet("t", texts), batch_size=8)
    assert list(out_parent.iterdir()) == []


def test_existing_destination_needs_overwrite(
    zoo: dict[str, Path], small_probes: ProbeSet, tmp_path: Path
) -> None:
    out = tmp_path / "fp"
    first = fingerprint_model(zoo["victim"], out, probes=small_probes)
    with pytest.raises(FingerprintError, match="already exists"):
        fingerprint_model(zoo["victim"], out, probes=small_probes)
    second = fingerprint_model(zoo["unrelated"], out, probes=small_probes, overwrite=True)
    assert second.model_digest != first.model_digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp"]
    other = tmp_path / "notes"
    other.mkdir()
    (other / "important.txt").write_text("keep me")
    with pytest.raises(FingerprintError, match="not a fingerprint"):
        fingerprint_model(zoo["victim"], other, probes=small_probes, overwrite=True)
    assert (other / "important.txt").read_text() == "keep me"


def test_stream_writer_puts_rows_on_disk_as_they_come(tmp_path: Path) -> None:
    path = tmp_path / "r.safetensors"
    writer = StreamWriter(path, [("a", (4, 3)), ("b", (4, 2))])
    writer.write_rows("a", [2, 0], np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32))
    writer.write_rows("b", [3], np.array([[7, 8]], dtype=np.float32))
    before_close = path.read_bytes()  # the rows reach the file through the shared map
    writer.close()
    assert before_close == path.read_bytes()
    loaded = load_file(path)
    np.testing.assert_array_equal(loaded["a"], [[4, 5, 6], [0, 0, 0], [1, 2, 3], [0, 0, 0]])
    np.testing.assert_array_equal(loaded["b"], [[0, 0], [0, 0], [0, 0], [7, 8]])


def test_manifest_records_file_digests(fingerprints: dict[str, Path]) -> None:
    fp = read_fingerprint(fingerprints["victim"])
    assert fp.manifest["files"] == {
        PROBES: sha256_file(fp.path / PROBES),
        REPRESENTATIONS: sha256_file(fp.path / REPRESENTATIONS),
        UNITS: sha256_file(fp.path / UNITS),
    }


def test_reduced_precision_compute_is_stored_as_float32_and_stays_close(
    zoo: dict[str, Path], small_probes: ProbeSet, tmp_path: Path
) -> None:
    full = fingerprint_model(zoo["victim"], tmp_path / "f32", probes=small_probes)
    half = fingerprint_model(
        zoo["victim"], tmp_path / "bf16", probes=small_probes, dtype="bfloat16"
    )
    assert half.manifest["extraction"]["compute_dtype"] == "bfloat16"
    for name in full.layers:
        low, high = half.layer(name), full.layer(name)
        assert low.dtype == np.float32
        assert np.abs(low - high).max() / np.abs(high).max() < 0.05


def test_texts_with_unicode_line_separators_round_trip(
    zoo: dict[str, Path], small_probes: ProbeSet, tmp_path: Path
) -> None:
    texts = (
        *small_probes.texts[:12],
        "one\u2028two",
        "three\u2029four",
        "five\x85six",
        "tab\there\r",
    )
    fp = fingerprint_model(zoo["victim"], tmp_path / "fp", probes=ProbeSet("odd", texts))
    assert read_fingerprint(tmp_path / "fp").texts == texts == fp.texts


def rewrite_manifest(folder: Path, change) -> None:  # type: ignore[no-untyped-def]
    manifest = json.loads((folder / MANIFEST).read_text())
    change(manifest)
    (folder / MANIFEST).write_bytes(canonical_json(manifest))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda m: m["representations"]["layers"][1].update(name="layer_x"),
            "layer names other than",
        ),
        (
            lambda m: m["representations"]["layers"][2].update(name="block_1"),
            "layer names other than",
        ),
        (lambda m: m["representations"]["layers"][0].update(dim=0), "not a positive integer"),
        (lambda m: m["representations"]["layers"][0].update(dim=63), r"expected F32 \[620, 63\]"),
        (lambda m: m["probes"].update(count=3), "at least 10"),
        (lambda m: m["model"].pop("name"), "lacks required fields"),
        (lambda m: m["model"].update(kind=7), "wrong type"),
    ],
)
def test_consistent_but_malformed_manifests_are_refused(
    fingerprints: dict[str, Path],
    tmp_path: Path,
    change,
    message: str,  # type: ignore[no-untyped-def]
) -> None:
    fp = copy_fingerprint(fingerprints["victim"], tmp_path / "fp")
    rewrite_manifest(fp, change)
    with pytest.raises(FingerprintError, match=message):
        read_fingerprint(fp)


@pytest.mark.parametrize(
    "payload", ["[" * 100_000 + "]" * 100_000, '{"format": ' + "9" * 5000 + "}"]
)
def test_hostile_json_manifest_is_a_clean_error(
    fingerprints: dict[str, Path], tmp_path: Path, payload: str
) -> None:
    fp = copy_fingerprint(fingerprints["victim"], tmp_path / "fp")
    (fp / MANIFEST).write_text(payload)
    with pytest.raises(FingerprintError, match="not valid JSON"):
        read_fingerprint(fp)


def test_stored_nan_is_refused_when_read(fingerprints: dict[str, Path], tmp_path: Path) -> None:
    """A fingerprint made by someone else, consistent with its manifest, but holding NaN."""
    from safetensors.numpy import save_file

    from reef_forensics import compare_fingerprints

    fp = copy_fingerprint(fingerprints["victim"], tmp_path / "fp")
    tensors = load_file(fp / REPRESENTATIONS)
    tensors["block_2"][5, 3] = np.nan
    save_file(
        {name: tensors[name] for name in read_fingerprint(fingerprints["victim"]).layers},
        fp / REPRESENTATIONS,
    )
    rewrite_manifest(
        fp, lambda m: m["files"].update({REPRESENTATIONS: sha256_file(fp / REPRESENTATIONS)})
    )
    victim = read_fingerprint(fp)
    with pytest.raises(FingerprintError, match="'block_2' holds NaN"):
        compare_fingerprints(victim, victim)


def test_overwrite_never_removes_a_directory_holding_more_than_files(
    zoo: dict[str, Path], small_probes: ProbeSet, tmp_path: Path
) -> None:
    out = tmp_path / "fp"
    fingerprint_model(zoo["victim"], out, probes=small_probes)
    (out / "user-data").mkdir()
    with pytest.raises(FingerprintError, match="not a fingerprint directory"):
        fingerprint_model(zoo["victim"], out, probes=small_probes, overwrite=True)
    assert (out / "user-data").is_dir()
