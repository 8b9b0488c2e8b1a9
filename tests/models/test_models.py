"""Safe model loading: what is refused, what is loaded, and the model digest."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch

from reef_forensics import ModelLoadError, load_model, model_digest, resolve_model
from reef_forensics.formats.safetensors_file import read_header


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_hf_folder_resolves_and_loads_base_model(zoo: dict[str, Path]) -> None:
    source = resolve_model(zoo["victim"])
    assert source.kind == "hf-directory" and [p.name for p in source.weight_files] == [
        "model.safetensors"
    ]
    loaded = load_model(source)
    assert type(loaded.model).__name__ == "LlamaModel"
    assert not loaded.is_encoder and loaded.model_type == "llama"
    assert load_model(resolve_model(zoo["bert"])).is_encoder


def test_model_digest_is_stable_and_covers_weights_config_and_tokenizer(
    zoo: dict[str, Path], tmp_path: Path
) -> None:
    first = model_digest(resolve_model(zoo["victim"]))
    assert first == model_digest(resolve_model(zoo["victim"]))
    names = [f.path for f in first.files]
    assert names == sorted(names)
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(names)
    assert "generation_config.json" not in names
    copy_code = copy_model(zoo["victim"], tmp_path / "with-code")
    (copy_code / "modeling_custom.py").write_text("# code that --trust-remote-code would run\n")
    assert "modeling_custom.py" in [f.path for f in model_digest(resolve_model(copy_code)).files]
    copy = copy_model(zoo["victim"], tmp_path / "copy")
    assert (
        model_digest(resolve_model(copy)).digest == first.digest
    )  # the folder's name does not count
    (copy / "README.md").write_text("notes do not change the model")
    assert model_digest(resolve_model(copy)).digest == first.digest
    tokenizer = json.loads((copy / "tokenizer.json").read_text())
    tokenizer["model"]["vocab"]["zzz-new"] = 99999
    (copy / "tokenizer.json").write_text(json.dumps(tokenizer))
    assert model_digest(resolve_model(copy)).digest != first.digest


def test_sharded_safetensors_load_and_a_missing_shard_is_refused(
    zoo: dict[str, Path], tmp_path: Path
) -> None:
    from transformers import AutoModel

    sharded = tmp_path / "sharded"
    AutoModel.from_pretrained(zoo["victim"]).save_pretrained(sharded, max_shard_size="50KB")
    shutil.copy(zoo["victim"] / "tokenizer.json", sharded)
    shutil.copy(zoo["victim"] / "tokenizer_config.json", sharded)
    source = resolve_model(sharded)
    assert len(source.weight_files) > 1
    assert load_model(source).model.config.num_hidden_layers == 4
    source.weight_files[-1].unlink()
    with pytest.raises(ModelLoadError, match="missing weight shard"):
        resolve_model(sharded)


def test_pickle_only_checkpoint_is_refused_unless_allowed(
    zoo: dict[str, Path], tmp_path: Path
) -> None:
    folder = copy_model(zoo["victim"], tmp_path / "pickled")
    (folder / "model.safetensors").unlink()
    torch.save(
        load_model(resolve_model(zoo["victim"])).model.state_dict(), folder / "pytorch_model.bin"
    )
    with pytest.raises(
        ModelLoadError, match=r"only pickle weights \(pytorch_model.bin\).*--allow-pickle"
    ):
        resolve_model(folder)
    source = resolve_model(folder, allow_pickle=True)
    assert source.uses_pickle
    assert load_model(source).model.config.num_hidden_layers == 4


class Canary:
    """Unpickling this writes a file: proof that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.write_text, (self.marker, "pickle code ran"))


def test_a_malicious_pickle_is_never_executed(zoo: dict[str, Path], tmp_path: Path) -> None:
    import pickle

    marker = tmp_path / "pwned"
    payload = pickle.dumps(Canary(marker))
    pickle_only = copy_model(zoo["victim"], tmp_path / "pickle-only")
    (pickle_only / "model.safetensors").unlink()
    (pickle_only / "pytorch_model.bin").write_bytes(payload)
    with pytest.raises(ModelLoadError, match="--allow-pickle"):
        resolve_model(pickle_only)
    beside = copy_model(zoo["victim"], tmp_path / "beside")
    (beside / "pytorch_model.bin").write_bytes(payload)
    source = resolve_model(beside)
    assert not source.uses_pickle
    load_model(source)  # loads the safetensors weights; the .bin is never opened
    assert not marker.exists()
    pickle.loads(payload)  # the canary works: unpickling it does write the marker
    assert marker.exists()


def test_remote_code_is_refused_unless_trusted(zoo: dict[str, Path], tmp_path: Path) -> None:
    folder = copy_model(zoo["victim"], tmp_path / "remote")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="evil-arch", auto_map={"AutoModel": "modeling_evil.EvilModel"})
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="--trust-remote-code"):
        resolve_model(folder)
    assert resolve_model(folder, trust_remote_code=True).kind == "hf-directory"


def test_known_architecture_with_auto_map_loads_the_builtin_class(
    zoo: dict[str, Path], tmp_path: Path
) -> None:
    folder = copy_model(zoo["victim"], tmp_path / "automap")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    assert type(load_model(resolve_model(folder)).model).__name__ == "LlamaModel"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncate", "ends past the end of the file"),
        ("header-garbage", "header is not valid JSON"),
        ("huge-header", "declares a .*-byte header"),
        ("tiny", "shorter than the 8-byte header length"),
        ("deep-header", "header is not valid JSON"),
    ],
)
def test_corrupt_safetensors_is_refused_before_loading(
    zoo: dict[str, Path], tmp_path: Path, damage: str, message: str
) -> None:
    folder = copy_model(zoo["victim"], tmp_path / "corrupt")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    if damage == "truncate":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "header-garbage":
        weights.write_bytes(data[:8] + b"\xff" * 16 + data[24:])
    elif damage == "deep-header":
        header = b"[" * 50_000 + b"]" * 50_000
        weights.write_bytes(struct.pack("<Q", len(header)) + header)
    elif damage == "huge-header":
        weights.write_bytes(struct.pack("<Q", 1 << 40) + data[8:])
    else:
        weights.write_bytes(b"abc")
    with pytest.raises(ModelLoadError, match=message):
        resolve_model(folder)


def test_overlapping_or_oversized_tensor_declarations_are_refused(tmp_path: Path) -> None:
    def write(header: dict, payload: bytes) -> Path:
        raw = json.dumps(header).encode()
        path = tmp_path / "t.safetensors"
        path.write_bytes(struct.pack("<Q", len(raw)) + raw + payload)
        return path

    overlapping = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    }
    with pytest.raises(Exception, match="overlap"):
        read_header(write(overlapping, b"\0" * 12))
    huge = {"a": {"dtype": "F32", "shape": [1 << 30, 1 << 30], "data_offsets": [0, 8]}}
    with pytest.raises(Exception, match=r"declares .* bytes but spans 8"):
        read_header(write(huge, b"\0" * 8))


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "model not found"),
        ("empty-dir", "no config.json and no .gguf file"),
        ("plain-file", "is not a model"),
        ("no-weights", "has no weight files"),
        ("bad-config", "config.json is not valid JSON"),
        ("fake-gguf", "not a GGUF file"),
        ("deep-config", "config.json is not valid JSON"),
    ],
)
def test_paths_that_are_not_models_are_refused(
    zoo: dict[str, Path], tmp_path: Path, setup: str, message: str
) -> None:
    target = tmp_path / "m"
    if setup == "empty-dir":
        target.mkdir()
    elif setup == "plain-file":
        target = tmp_path / "weights.safetensors"
        target.write_bytes(b"xx")
    elif setup == "no-weights":
        copy_model(zoo["victim"], target)
        (target / "model.safetensors").unlink()
    elif setup == "bad-config":
        copy_model(zoo["victim"], target)
        (target / "config.json").write_text("{not json")
    elif setup == "deep-config":
        copy_model(zoo["victim"], target)
        (target / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    elif setup == "fake-gguf":
        target = tmp_path / "model.gguf"
        target.write_bytes(b"NOPE" + b"\0" * 64)
    with pytest.raises(ModelLoadError, match=message):
        resolve_model(target)


def test_encoder_decoder_models_are_refused_with_a_reason(probes, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from transformers import T5Config, T5Model

    from reef_forensics.demo.toy_models import train_tokenizer

    folder = tmp_path / "t5"
    tokenizer = train_tokenizer(probes.texts[:100], vocab_size=200)
    T5Model(
        T5Config(vocab_size=len(tokenizer), d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8)
    ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    with pytest.raises(ModelLoadError, match="encoder-decoder"):
        load_model(resolve_model(folder))


def test_a_gguf_model_dequantizes_to_a_plain_safetensors_folder(
    zoo: dict[str, Path], tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    from reef_forensics.models.loading import dequantize_gguf, resolve_model

    folder = dequantize_gguf(zoo["gguf"], tmp_path / "plain")
    assert sorted(p.name for p in folder.glob("*.safetensors")) == ["model.safetensors"]
    resolve_model(folder)  # safetensors, no pickle, no remote code: loadable as any model
    plain = AutoModelForCausalLM.from_pretrained(folder)
    original = AutoModelForCausalLM.from_pretrained(zoo["victim"])
    assert sum(p.numel() for p in plain.parameters()) == sum(
        p.numel() for p in original.parameters()
    )


@pytest.mark.parametrize("add_bos", [True, False])
def test_a_gguf_files_add_bos_flag_reaches_the_tokenizer(
    zoo: dict[str, Path], tmp_path: Path, add_bos: bool
) -> None:
    """llama.cpp prepends BOS when the header says so; transformers' GGUF tokenizer ignores the
    flag, so loading applies it from the header checked at resolution."""
    from tests.gguf_export import export_llama_gguf

    (tmp_path / "g").mkdir()
    gguf = export_llama_gguf(zoo["victim"], tmp_path / "g" / "m.gguf", add_bos=add_bos)
    loaded = load_model(resolve_model(gguf))
    ids = loaded.tokenizer("hello world")["input_ids"]
    assert (ids[0] == loaded.tokenizer.bos_token_id) is add_bos
