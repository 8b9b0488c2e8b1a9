"""Safe model loading: untrusted models are data, not code.

`resolve_model` inspects a path without importing torch and decides what it is: a Hugging Face
folder (``config.json`` plus safetensors weights, sharded or not) or a GGUF file. Pickle
checkpoints (``.bin``, ``.pt``, ...) can run code when loaded, so a folder that holds only
those is refused unless ``allow_pickle``; a config that needs code from the model's folder
(``auto_map`` for an architecture transformers does not know) is refused unless
``trust_remote_code``. Safetensors and GGUF headers are checked before transformers sees them.

`model_digest` hashes the weight, config and tokenizer files, streaming, in a stable order.
`load_model` returns the torch model and its tokenizer: on one device, or with device ``auto``
spread by accelerate's device map over the GPUs, the CPU and the disk (``max_memory`` caps what
each may hold), so a model larger than any one device's memory can still be fingerprinted.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import warnings
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from reef_forensics.digests import sha256_file, sha256_json
from reef_forensics.errors import BadInputError, ModelLoadError, TokenizerError, first_line
from reef_forensics.files import parse_json
from reef_forensics.formats.gguf_file import read_gguf_header
from reef_forensics.formats.safetensors_file import read_header
from reef_forensics.models.native import native_calls

if TYPE_CHECKING:
    import torch
from reef_forensics.models.placement import _device_map_options, _place, _quiet_accelerate

#: How a refusal of pickle weights ends, for the CLI; the worker, which has no such option,
#: replaces it.
ALLOW_PICKLE_HINT = ", or pass --allow-pickle if you trust the file"
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
#: More layers than any released model has (the deepest have about 130). Building even an empty
#: (meta-device) model costs about 35 KB of memory and 2 ms per layer, so a config declaring
#: 10,000 is refused before anything is built.
MAX_LAYERS = 1024
#: Config keys that count layers (``num_hidden_layers``, ``n_layer``, ``encoder_layers``, ...),
#: at any depth of config.json; GGUF metadata keys ending in ``block_count``.
_LAYER_KEY = re.compile(r"(?:^|_)layers$|^n_layer$")
#: Values buffers (rotary tables, position ids) may hold beyond the values in the weight files.
BUFFER_ALLOWANCE = 1 << 24
#: A quantized checkpoint stores up to eight 4-bit values in one int32: its tensors hold fewer
#: values than the architecture has.
QUANTIZED_PACKING = 8


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
    gguf_add_bos: bool = False  # a GGUF file's tokenizer.ggml.add_bos_token, from its header
    #: every tensor of the weight files and its shape, from their checked headers (empty for
    #: pickle weights, which are not read before loading)
    tensor_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict, repr=False)

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
    #: where input ids go (the device of the first module)
    device: str = "cpu"
    #: where the weights are, as a fingerprint records it: a device, or ``auto:`` and the
    #: devices of accelerate's map (``auto:cpu+disk``)
    placement: str = "cpu"
    _cleanup: weakref.finalize[Any, Any] | None = field(default=None, repr=False)

    def close(self) -> None:
        """Remove the scratch offload folder made for this model, if any (also done when the
        model is garbage-collected, or at exit)."""
        if self._cleanup is not None:
            self._cleanup()


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
        shapes: dict[str, tuple[int, ...]] = {}
        for weight_file in safetensors:
            try:
                header = read_header(weight_file)
            except BadInputError as exc:
                raise ModelLoadError(str(exc)) from None
            shapes.update((name, entry.shape) for name, entry in header.tensors.items())
        _check_layer_count(config_path, _declared_layers(config), len(shapes))
        return ModelSource(
            model_path, "hf-directory", tuple(safetensors), False, config, tensor_shapes=shapes
        )
    if not pickles:
        raise ModelLoadError(f"{model_path} has no weight files (*.safetensors)")
    if not allow_pickle:
        names = ", ".join(p.name for p in pickles)
        raise ModelLoadError(
            f"{model_path} holds only pickle weights ({names}), which can run code when loaded: "
            f"convert them to safetensors{ALLOW_PICKLE_HINT}"
        )
    _check_layer_count(config_path, _declared_layers(config), None)
    return ModelSource(model_path, "hf-directory", tuple(pickles), True, config)


def _gguf_source(path: Path) -> ModelSource:
    with open(path, "rb") as handle:
        if handle.read(4) != b"GGUF":
            raise ModelLoadError(f"{path} is not a GGUF file (bad magic bytes)")
    try:
        header = read_gguf_header(path)  # gguf's own reader trusts every count and offset
    except BadInputError as exc:
        raise ModelLoadError(str(exc)) from None
    add_bos = bool(header.scalars.get("tokenizer.ggml.add_bos_token", False))
    layers = sum(
        value
        for key, value in header.scalars.items()
        if key.endswith("block_count") and _is_count(value)
    )
    _check_layer_count(path, int(layers), len(header.tensors))
    shapes = {tensor.name: tensor.shape for tensor in header.tensors}
    return ModelSource(path, "gguf", (path,), gguf_add_bos=add_bos, tensor_shapes=shapes)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _declared_layers(config: Mapping[str, Any], depth: int = 0) -> int:
    """The layers a config.json declares: its layer counts summed over every level (a
    vision-language model's ``text_config`` and ``vision_config``, an encoder's and a decoder's)."""
    total = 0
    for key, value in config.items():
        if isinstance(value, Mapping) and depth < 8:
            total += _declared_layers(value, depth + 1)
        elif _LAYER_KEY.search(str(key)) and _is_count(value):
            total += int(value)
    return total


def _check_layer_count(where: Path, layers: int, tensors: int | None) -> None:
    """Refuse a config that declares more layers than any model has, or than its weight files
    have tensors (every layer has weights of its own), before transformers builds anything: a
    config's own constructor can allocate per layer (``layer_types`` lists)."""
    if layers > MAX_LAYERS:
        raise ModelLoadError(
            f"{where} declares {layers} layers, more than {MAX_LAYERS} (the deepest released "
            "models have about 130); refused before anything is built"
        )
    if tensors is not None and layers > tensors:
        raise ModelLoadError(
            f"{where} declares {layers} layers, but the weights hold only {tensors} tensor(s): "
            "the weights lack most of the architecture; refused before anything is built"
        )


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


def load_model(
    source: ModelSource,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
    max_memory: str | Mapping[Any, Any] | None = None,
    offload_dir: str | os.PathLike[str] | None = None,
) -> LoadedModel:
    """Load the base model (the one returning hidden states) and its tokenizer, offline.

    ``device`` ``auto`` lets accelerate place the weights: the GPUs first, then the CPU, then
    the disk, each device holding at most its ``max_memory`` (`parse_max_memory`). Weights
    placed on the disk stay in their safetensors files (or in ``offload_dir``, a scratch folder
    by default) and are read, one block at a time, when the forward pass reaches them.
    """
    from reef_forensics.models.weights_check import check_weights_fill_architecture

    if device != "auto" and (max_memory is not None or offload_dir is not None):
        raise ModelLoadError(
            "--max-memory and --offload-dir need --device auto (accelerate's device map)"
        )
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
    if not source.uses_pickle:  # pickle weights cannot be looked at before they are loaded
        check_weights_fill_architecture(source, trust_remote_code=trust_remote_code)
    try:
        with native_calls(f"the tokenizer of {source.path}"):
            tokenizer = AutoTokenizer.from_pretrained(location, **common, **extra)
    except TokenizerError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load the tokenizer of {source.path}: {first_line(exc)}"
        ) from None
    mapping, scratch = (
        _device_map_options(max_memory, offload_dir) if device == "auto" else ({}, None)
    )
    try:
        with _quiet_accelerate():
            model = _load_weights(
                AutoModel, source, location, dtype=torch_dtype, **common, **extra, **mapping
            )
    except BaseException:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        raise
    # the scratch folder lives as long as the model (or until LoadedModel.close)
    cleanup = weakref.finalize(model, shutil.rmtree, scratch, True) if scratch else None
    if source.kind == "gguf":
        _apply_gguf_bos(source, tokenizer)
    config = model.config
    _refuse_encoder_decoder(source, config)
    input_device, placement = _place(model, device)
    model.eval()
    return LoadedModel(
        source=source,
        model=model,
        tokenizer=tokenizer,
        model_type=str(config.model_type),
        is_encoder=_is_encoder(config),
        device=input_device,
        placement=placement,
        _cleanup=cleanup,
    )


def _refuse_encoder_decoder(source: ModelSource, config: Any) -> None:
    if getattr(config, "is_encoder_decoder", False):
        raise ModelLoadError(
            f"{source.path} is an encoder-decoder model ({config.model_type}); "
            "only decoder-only and encoder-only models are supported"
        )


def _load_weights(auto_class: Any, source: ModelSource, location: str, **options: Any) -> Any:
    """``auto_class.from_pretrained``; pickle weights (``--allow-pickle``) only ever through
    torch's ``weights_only`` unpickler, which builds tensors and refuses everything else, so a
    checkpoint that smuggles code in is refused, not run."""
    if source.uses_pickle:
        options["weights_only"] = True  # explicit: whatever transformers' default becomes
    try:
        with (
            native_calls(f"loading the weights of {source.path}", ModelLoadError),
            warnings.catch_warnings(),
        ):
            # torch warns, over three lines, about pickle protocols its unpickler may not know
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            model, info = auto_class.from_pretrained(location, output_loading_info=True, **options)
    except ModelLoadError:
        raise
    except pickle.UnpicklingError as exc:
        raise ModelLoadError(
            f"{source.path}: the pickle weights hold more than tensors, and torch's weights-only "
            f"unpickler refused them ({_unpickler_reason(exc)}); nothing in them was run"
        ) from None
    except Exception as exc:
        raise ModelLoadError(f"cannot load {source.path}: {first_line(exc)}") from None
    missing = [k for k in info.get("missing_keys", ()) if not _OPTIONAL_WEIGHTS.match(k)]
    if missing:
        raise ModelLoadError(
            f"{source.path}: the weights lack {len(missing)} of the architecture's parameters "
            f"(first: {sorted(missing)[0]}); transformers would fill them with random numbers, "
            "so a truncated or foreign checkpoint is refused"
        )
    return model


#: Parameters a checkpoint may lack without changing the hidden states: heads on top of them.
_OPTIONAL_WEIGHTS = re.compile(r"(pooler|lm_head|score|classifier|cls|qa_outputs)\.")


def _unpickler_reason(exc: pickle.UnpicklingError) -> str:
    """What torch's weights-only unpickler objected to, without its advice to retry unsafely."""
    _, marker, rest = str(exc).partition("WeightsUnpickler error:")
    reason = rest.strip().split("\n\n")[0].split(". ")[0].strip() if marker else ""
    return reason or first_line(exc)


def _apply_gguf_bos(source: ModelSource, tokenizer: Any) -> None:
    """Honour ``tokenizer.ggml.add_bos_token``, which transformers' GGUF tokenizer ignores.

    llama.cpp prepends BOS when the file says so; without it every representation of a decoder
    shifts, and a GGUF copy of a model would look less like its original than it is. The flag
    comes from the header checked when the source was resolved, not gguf's reader: that one
    builds a numpy view of every element of every metadata array (about 700 bytes each: 500 MB
    for a 262k-token vocabulary).
    """
    if source.gguf_add_bos and tokenizer.bos_token is not None and not tokenizer.add_bos_token:
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
