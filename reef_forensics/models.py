"""Safe model loading: untrusted models are data, not code.

`resolve_model` inspects a path without importing torch and decides what it is: a Hugging Face
folder (``config.json`` plus safetensors weights, sharded or not) or a GGUF file. Pickle
checkpoints (``.bin``, ``.pt``, ...) can run code when loaded, so a folder that holds only
those is refused unless ``allow_pickle``; a config that needs code from the model's folder
(``auto_map`` for an architecture transformers does not know) is refused unless
``trust_remote_code``. Safetensors headers are checked before transformers sees them.

`model_digest` hashes the weight, config and tokenizer files, streaming, in a stable order.
`load_model` returns the torch model and its tokenizer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .digests import sha256_file, sha256_json
from .errors import BadInputError, ModelLoadError, first_line
from .files import parse_json
from .safetensors_file import read_header

if TYPE_CHECKING:
    import torch

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
#: Tokenizer files transformers reads from a model's folder (for a GGUF file too: a
#: tokenizer.json beside it takes precedence over the tokenizer inside it).
TOKENIZER_NAMES = frozenset(
    {
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.json",
        "vocab.txt",
        "merges.txt",
        "tokenizer.model",
        "spiece.model",
        "sentencepiece.bpe.model",
        "spm.model",
        "bpe.codes",
    }
)
#: Files besides the weights that decide what the model computes or how text is tokenized.
DIGESTED_NAMES = TOKENIZER_NAMES | {
    "config.json",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
}
#: Also digested: tiktoken vocabularies, and Python files (code that --trust-remote-code runs).
DIGESTED_SUFFIXES = (".tiktoken", ".py")
DTYPES = ("auto", "float32", "bfloat16", "float16")
ModelKind = Literal["hf-directory", "gguf"]


def _is_digested(name: str) -> bool:
    return name in DIGESTED_NAMES or name.endswith(DIGESTED_SUFFIXES)


@dataclass(frozen=True)
class FileDigest:
    path: str  # relative to the model folder
    size: int
    sha256: str

    def as_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class ModelSource:
    """A model on disk, inspected but not loaded."""

    path: Path  # the folder, or the .gguf file
    kind: ModelKind
    weight_files: tuple[Path, ...]
    uses_pickle: bool = False
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.stem if self.kind == "gguf" else self.path.name

    @property
    def folder(self) -> Path:
        return self.path.parent if self.kind == "gguf" else self.path

    def digest_files(self) -> list[Path]:
        if self.kind == "gguf":
            beside = [p for p in self.folder.iterdir() if p.is_file() and p.name in TOKENIZER_NAMES]
            return sorted({self.path, *beside}, key=lambda p: p.name)
        others = [p for p in self.path.iterdir() if p.is_file() and _is_digested(p.name)]
        return sorted({*self.weight_files, *others}, key=lambda p: p.name)


@dataclass(frozen=True)
class ModelDigest:
    """sha256 of the canonical JSON list of the model's files (path, size, sha256)."""

    digest: str
    files: tuple[FileDigest, ...]


@dataclass
class LoadedModel:
    source: ModelSource
    model: torch.nn.Module
    tokenizer: Any
    model_type: str
    is_encoder: bool


def resolve_model(
    path: str | os.PathLike[str], *, allow_pickle: bool = False, trust_remote_code: bool = False
) -> ModelSource:
    """Inspect a model path and check it is safe to load; raise `ModelLoadError` if not."""
    model_path = Path(path)
    if not model_path.exists():
        raise ModelLoadError(f"model not found: {model_path}")
    if model_path.is_file():
        if model_path.suffix.lower() == ".gguf":
            return _gguf_source(model_path)
        raise ModelLoadError(
            f"{model_path} is not a model: give a Hugging Face folder (with config.json) or a .gguf file"
        )
    config_path = model_path / "config.json"
    if not config_path.is_file():
        ggufs = sorted(model_path.glob("*.gguf"))
        if len(ggufs) == 1:
            return _gguf_source(ggufs[0])
        if len(ggufs) > 1:
            names = ", ".join(p.name for p in ggufs)
            raise ModelLoadError(f"{model_path} holds several GGUF files ({names}): name one")
        raise ModelLoadError(
            f"{model_path} is not a model folder: no config.json and no .gguf file"
        )
    config = _read_config(config_path)
    _check_remote_code(model_path, config, trust_remote_code)
    safetensors = sorted(model_path.glob("*.safetensors"))
    pickles = sorted(p for p in model_path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if safetensors:
        _check_shards(model_path, safetensors)
        for weight_file in safetensors:
            try:
                read_header(weight_file)
            except BadInputError as exc:
                raise ModelLoadError(str(exc)) from None
        return ModelSource(model_path, "hf-directory", tuple(safetensors), False, config)
    if not pickles:
        raise ModelLoadError(f"{model_path} has no weight files (*.safetensors)")
    if not allow_pickle:
        names = ", ".join(p.name for p in pickles)
        raise ModelLoadError(
            f"{model_path} holds only pickle weights ({names}), which can run code when loaded: "
            "convert them to safetensors, or pass --allow-pickle if you trust the file"
        )
    return ModelSource(model_path, "hf-directory", tuple(pickles), True, config)


def _gguf_source(path: Path) -> ModelSource:
    with open(path, "rb") as handle:
        if handle.read(4) != b"GGUF":
            raise ModelLoadError(f"{path} is not a GGUF file (bad magic bytes)")
    return ModelSource(path, "gguf", (path,))


def _read_config(config_path: Path) -> dict[str, Any]:
    try:
        config = parse_json(config_path.read_bytes())
    except ValueError as exc:
        raise ModelLoadError(f"{config_path} is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{config_path} is not a JSON object")
    return config


def _check_remote_code(folder: Path, config: dict[str, Any], trust_remote_code: bool) -> None:
    if trust_remote_code:
        return
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type")
    if model_type in CONFIG_MAPPING:
        return  # transformers has this architecture; any auto_map is ignored
    if "auto_map" in config:
        raise ModelLoadError(
            f"{folder} needs code shipped with the model (auto_map in config.json) to load; "
            "pass --trust-remote-code only if you trust its author"
        )
    raise ModelLoadError(f"{folder}: model type {model_type!r} is not supported by transformers")


def _check_shards(folder: Path, present: list[Path]) -> None:
    index_path = folder / "model.safetensors.index.json"
    if not index_path.is_file():
        return
    try:
        index = parse_json(index_path.read_bytes())
        needed = set(index["weight_map"].values())
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ModelLoadError(f"{index_path} is not a valid shard index") from None
    missing = sorted(needed - {p.name for p in present})
    if missing:
        raise ModelLoadError(f"{folder} is missing weight shard(s): {', '.join(missing)}")


def model_digest(source: ModelSource) -> ModelDigest:
    """Digest of the files that define the model, each hashed streaming, in name order."""
    files = tuple(
        FileDigest(path=p.name, size=p.stat().st_size, sha256=sha256_file(p))
        for p in source.digest_files()
    )
    return ModelDigest(digest=sha256_json([f.as_json() for f in files]), files=files)


def resolve_dtype(name: str) -> torch.dtype | str:
    import torch

    if name == "auto":
        return "auto"
    if name not in DTYPES:
        raise ModelLoadError(f"unknown dtype {name!r}: expected one of {', '.join(DTYPES)}")
    dtype: torch.dtype = getattr(torch, name)
    return dtype


def resolve_device(name: str) -> str:
    """``auto`` picks the first CUDA device when there is one; other names are checked by torch."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ModelLoadError(
            f"unknown device {name!r}: expected cpu, cuda, cuda:N or auto"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {name!r} asked for, but no CUDA device is available")
    return name


def load_model(
    source: ModelSource,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load the base model (the one returning hidden states) and its tokenizer, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch_dtype = resolve_dtype(dtype)
    common: dict[str, Any] = {"local_files_only": True, "trust_remote_code": trust_remote_code}
    extra: dict[str, Any]
    if source.kind == "gguf":
        location, extra = str(source.folder), {"gguf_file": source.path.name}
    else:
        location, extra = str(source.path), {"use_safetensors": not source.uses_pickle}
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **common, **extra)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load the tokenizer of {source.path}: {first_line(exc)}"
        ) from None
    try:
        model = AutoModel.from_pretrained(location, dtype=torch_dtype, **common, **extra)
    except Exception as exc:
        raise ModelLoadError(f"cannot load {source.path}: {first_line(exc)}") from None
    if source.kind == "gguf":
        _apply_gguf_bos(source.path, tokenizer)
    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        raise ModelLoadError(
            f"{source.path} is an encoder-decoder model ({config.model_type}); "
            "only decoder-only and encoder-only models are supported"
        )
    try:
        model.to(device)
    except (RuntimeError, AssertionError) as exc:
        raise ModelLoadError(
            f"cannot move the model to device {device!r}: {first_line(exc)}"
        ) from None
    model.eval()
    return LoadedModel(
        source=source,
        model=model,
        tokenizer=tokenizer,
        model_type=str(config.model_type),
        is_encoder=_is_encoder(config),
    )


def _apply_gguf_bos(path: Path, tokenizer: Any) -> None:
    """Honour ``tokenizer.ggml.add_bos_token``, which transformers' GGUF tokenizer ignores.

    llama.cpp prepends BOS when the file says so; without it every representation of a decoder
    shifts, and a GGUF copy of a model would look less like its original than it is.
    """
    from gguf import GGUFReader

    field = GGUFReader(path).fields.get("tokenizer.ggml.add_bos_token")
    if field is None or not field.data:
        return
    wants_bos = bool(field.parts[field.data[0]][0])
    if wants_bos and tokenizer.bos_token is not None and not tokenizer.add_bos_token:
        tokenizer.add_bos_token = True


def _is_encoder(config: Any) -> bool:
    """Masked-LM families (BERT, RoBERTa, ...) not configured as decoders are encoders."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(
        config, "is_decoder", False
    )


def dequantize_gguf(gguf: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """A GGUF causal LM saved as a plain float32 safetensors folder (with its tokenizer, read by
    this module's loader so that GGUF's BOS rule holds). transformers refuses to save a model it
    dequantized from GGUF, so the weights move into a fresh model built from the same config."""
    from transformers import AutoModelForCausalLM

    source = Path(gguf)
    folder = Path(out)
    loaded = load_model(resolve_model(source))
    dequantized = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name)
    config = dequantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are plain float32 now
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(dequantized.state_dict())
    plain.save_pretrained(folder, safe_serialization=True)
    loaded.tokenizer.save_pretrained(folder)
    return folder
