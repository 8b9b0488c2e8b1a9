"""Before a model is trusted with a forward pass: its weight files must fill the architecture its configuration declares, tensor by tensor (nothing missing, nothing of the wrong shape)."""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

from reef_forensics.errors import ModelLoadError, first_line

if TYPE_CHECKING:
    pass
from reef_forensics.models.loading import (
    _OPTIONAL_WEIGHTS,
    BUFFER_ALLOWANCE,
    QUANTIZED_PACKING,
    ModelSource,
    _refuse_encoder_decoder,
)


def check_weights_fill_architecture(
    source: ModelSource, *, trust_remote_code: bool = False
) -> None:
    """Refuse a model whose config implies more than its weight files hold, before anything is
    allocated.

    transformers builds the architecture the config describes and fills every parameter the
    weights lack with random numbers: a 40-byte weight file beside a config of hidden size 2048
    took 2.3 GB before `_load_weights` could refuse it, and a config of 10,000 layers beside
    real weights 2.5 GB. Here the architecture is built on the meta device (shapes, no memory)
    and compared with the tensors the checked headers list (`ModelSource.tensor_shapes`):

    - a parameter whose name the weights hold (after the base model's prefix, ``model.``) must
      hold the same number of values there;
    - the parameters whose names the weights lack may not need more values than the weights'
      tensors with names the architecture lacks hold (renamed or fused tensors keep their
      values: ``gamma`` for ``weight``, one tensor per expert for a fused one; GGUF names never
      match, so there the whole architecture is compared with the whole file); heads that do not
      change the hidden states (`_OPTIONAL_WEIGHTS`) are not counted;
    - buffers may hold at most `BUFFER_ALLOWANCE` values more than the weights.

    A quantized checkpoint (``quantization_config``) may pack `QUANTIZED_PACKING` values into
    one; its shapes are not compared. Memory is then bounded by what the files hold (four bytes
    per value at float32), and `_load_weights` still checks each name after loading.
    """
    config, skeleton = _meta_skeleton(source, trust_remote_code)
    quantized = getattr(config, "quantization_config", None) is not None
    prefix = str(getattr(skeleton, "base_model_prefix", "") or "")
    held = {
        name.removeprefix(f"{prefix}.") if prefix else name: shape
        for name, shape in source.tensor_shapes.items()
    }
    needed = {
        name: tuple(parameter.shape)
        for name, parameter in skeleton.named_parameters()
        if not _OPTIONAL_WEIGHTS.match(name)
    }
    buffers = sum(buffer.numel() for buffer in skeleton.buffers())
    del skeleton
    for name, shape in needed.items():
        if not quantized and name in held and math.prod(held[name]) != math.prod(shape):
            raise ModelLoadError(
                f"{source.path}: its configuration gives {name} the shape {_shape(shape)}, its "
                f"weights {_shape(held[name])}: they do not belong together; refused before "
                "anything is allocated"
            )
    missing = sorted(name for name in needed if name not in held)
    lacking = sum(math.prod(needed[name]) for name in missing)
    spare = sum(math.prod(shape) for name, shape in held.items() if name not in needed)
    if lacking > spare * (QUANTIZED_PACKING if quantized else 1):
        raise ModelLoadError(
            f"{source.path}: the weights lack {len(missing)} of the architecture's parameters "
            f"({lacking:,} values, where the weights hold {spare:,} under other names; first: "
            f"{missing[0]}); transformers would fill them with random numbers, so the model is "
            "refused before anything is allocated"
        )
    total = sum(math.prod(shape) for shape in held.values())
    if buffers > total + BUFFER_ALLOWANCE:
        raise ModelLoadError(
            f"{source.path}: the configuration asks for buffers of {buffers:,} values, for "
            f"weights of {total:,}; refused before anything is allocated"
        )


def _meta_skeleton(source: ModelSource, trust_remote_code: bool) -> tuple[Any, Any]:
    """The model's configuration, and its architecture built on the meta device (shapes, no
    memory); an encoder-decoder is refused first."""
    import torch
    from transformers import AutoConfig, AutoModel

    gguf = {"gguf_file": source.path.name} if source.kind == "gguf" else {}
    location = str(source.folder if source.kind == "gguf" else source.path)
    try:
        config = AutoConfig.from_pretrained(
            location, local_files_only=True, trust_remote_code=trust_remote_code, **gguf
        )
    except Exception as exc:
        raise ModelLoadError(
            f"cannot read the configuration of {source.path}: {first_line(exc)}"
        ) from None
    _refuse_encoder_decoder(source, config)
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            skeleton = AutoModel.from_config(config, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot build the architecture of {source.path}: {first_line(exc)}"
        ) from None
    return config, skeleton


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"
