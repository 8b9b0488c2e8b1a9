"""Where a model's weights go: a device, or accelerate's device map over the GPUs, the CPU and the disk with what each may hold (`--max-memory`); and handing freed memory back."""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reef_forensics.errors import BadInputError, ModelLoadError, first_line

if TYPE_CHECKING:
    pass


#: Accelerate's ``max_memory``: a GPU index or ``"cpu"`` -> the bytes that device may hold.
MaxMemory = dict[int | str, int]

_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([kmgt]i?b|b)?", re.IGNORECASE)

_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


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


def _place(model: Any, device: str) -> tuple[str, str]:
    """Move the model to ``device`` (accelerate already placed it for ``auto``); return the
    device its inputs go to and the placement a fingerprint records."""
    if device == "auto":
        return _mapped_devices(getattr(model, "hf_device_map", None) or {"": "cpu"})
    try:
        model.to(device)
    except (RuntimeError, AssertionError) as exc:
        raise ModelLoadError(
            f"cannot move the model to device {device!r}: {first_line(exc)}"
        ) from None
    return device, device


def _mapped_devices(device_map: Mapping[str, Any]) -> tuple[str, str]:
    """The input device and the placement label of an accelerate device map (module -> GPU
    index, ``cpu`` or ``disk``, in module order: the embeddings come first)."""
    devices: list[str] = []
    for value in device_map.values():
        name = f"cuda:{value}" if isinstance(value, int) else str(value)
        if name not in devices:
            devices.append(name)
    first = devices[0] if devices else "cpu"
    input_device = first if first.startswith("cuda") else "cpu"
    if len(devices) == 1 and first != "disk":
        return input_device, first
    return input_device, "auto:" + "+".join(devices)


def _device_map_options(
    max_memory: str | Mapping[Any, Any] | None, offload_dir: str | os.PathLike[str] | None
) -> tuple[dict[str, Any], Path | None]:
    """``from_pretrained``'s options for accelerate's device map, and the scratch offload
    folder made here when none was given (None otherwise)."""
    import torch

    _return_freed_memory()
    options: dict[str, Any] = {"device_map": "auto"}
    if max_memory is not None:
        limits = parse_max_memory(max_memory)
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        missing = sorted(d for d in limits if isinstance(d, int) and d >= gpus)
        if missing:
            raise ModelLoadError(
                f"--max-memory names GPU {missing[0]}, but this machine has {gpus} CUDA device(s)"
            )
        options["max_memory"] = limits
    if offload_dir is None:
        folder = Path(tempfile.mkdtemp(prefix="reef-offload-"))
        options["offload_folder"] = str(folder)
        return options, folder
    folder = Path(offload_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelLoadError(
            f"cannot use {folder} as --offload-dir: {exc.strerror or exc}"
        ) from None
    options["offload_folder"] = str(folder)
    return options, None


def _return_freed_memory() -> None:
    """Make glibc hand large freed blocks back to the system at once.

    Offloaded weights are read into memory for their block's forward pass and freed after it.
    glibc raises its mmap threshold each time such a block is freed, so later ones come from
    the heap and stay resident: without this, an offloaded model ends up nearly as resident as
    a loaded one. Pinning the threshold (at glibc's default, 128 KiB) keeps peak memory near
    one block. Does nothing where the C library has no ``mallopt``.
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return
    mallopt(_M_MMAP_THRESHOLD, 128 * 1024)


@contextmanager
def _quiet_accelerate() -> Iterator[None]:
    """Silence accelerate's warning that offloaded parameters sit on the meta device: that is
    what offloading means, not a problem to report."""
    accelerate_logger = logging.getLogger("accelerate")
    level = accelerate_logger.level
    accelerate_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        accelerate_logger.setLevel(level)


def parse_size(text: str) -> int:
    """A byte count from ``300MB``, ``1.5GB``, ``2GiB`` or a plain number of bytes (units are
    case-insensitive; ``MB`` is 10**6 bytes, ``MiB`` 2**20)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise BadInputError(f"{text!r} is not a size (such as 300MB, 2GiB or 1000000)")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "b").lower()])


def parse_max_memory(spec: str | Mapping[Any, Any]) -> MaxMemory:
    """How much each device may hold, as accelerate's ``max_memory``.

    ``spec`` is ``DEVICE:SIZE`` pairs separated by commas (``0:2GiB,cpu:1GiB``) or a mapping
    (``{"cpu": "300MB"}``); a device is ``cpu``, a GPU index ``N`` or ``cuda:N``. Devices not
    named get nothing; what fits nowhere goes to the disk.
    """
    items = list(spec.items()) if isinstance(spec, Mapping) else _memory_pairs(spec)
    if not items:
        raise BadInputError("--max-memory is empty: give DEVICE:SIZE pairs, such as cpu:300MB")
    limits: MaxMemory = {}
    for key, value in items:
        device = _memory_device(key)
        if device in limits:
            raise BadInputError(f"--max-memory names {key!r} twice")
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise BadInputError(f"--max-memory: {value!r} is not a size (such as 300MB or 2GiB)")
        limits[device] = value if isinstance(value, int) else parse_size(value)
        if limits[device] < 0:
            raise BadInputError(f"--max-memory: the size for {key!r} is negative")
    return limits


def _memory_pairs(spec: str) -> list[tuple[str, str]]:
    pairs = []
    for part in spec.split(","):
        if not part.strip():
            continue
        device, sep, size = part.rpartition(":")  # rpartition: cuda:0:2GiB names cuda:0
        if not sep or not device.strip():
            raise BadInputError(
                f"--max-memory: {part.strip()!r} is not DEVICE:SIZE (such as cpu:300MB)"
            )
        pairs.append((device.strip(), size.strip()))
    return pairs


def _memory_device(key: Any) -> int | str:
    if isinstance(key, int) and not isinstance(key, bool) and key >= 0:
        return key
    text = str(key).strip().lower()
    if text == "cpu":
        return "cpu"
    index = text.removeprefix("cuda:")
    if index.isdigit():
        return int(index)
    raise BadInputError(f"--max-memory: unknown device {key!r} (expected cpu, N or cuda:N)")
