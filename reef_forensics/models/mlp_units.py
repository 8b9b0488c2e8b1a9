"""Capturing each block's MLP hidden units in two views, for the neuron-matching test.

`UnitCapture.attach` finds every block's MLP and hooks it; during each forward pass the hooks
pool the two views of every hidden unit (at the same token positions as the representations:
the last real token, or the mean over real tokens) and keep them for the batch:

- ``gated`` MLPs (``gate_proj`` and ``up_proj``, or a fused ``gate_up_proj``: Llama, Qwen,
  Gemma, Mistral, Phi-3): the outputs of the gate projection and of the up projection;
- ``split-input`` MLPs without a gate (GPT-2's ``c_fc``, BERT's and RoBERTa's
  ``intermediate.dense``, GPT-NeoX's ``dense_h_to_4h``, OPT's ``fc1``): the unit's
  pre-activation, bias left out, computed once from the even and once from the odd coordinates
  of its input. Each view depends on its own half of the unit's weights, as gate and up do.

Families whose MLP cannot be found (mixtures of experts, unknown layouts) are not captured; the
reason is recorded in the fingerprint, and the test is skipped with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

Pool = Callable[[torch.Tensor, torch.Tensor], NDArray[np.float32]]

#: The views of each kind, in the order they are stored (``a`` then ``b``).
VIEWS = {
    "gated": ("gate projection output", "up projection output"),
    "split-input": (
        "pre-activation from the even input coordinates",
        "pre-activation from the odd input coordinates",
    ),
}
#: In-projections of MLPs without a gate, by their name inside the block.
_PLAIN_IN_PROJECTIONS = (
    "mlp.c_fc",
    "intermediate.dense",
    "mlp.dense_h_to_4h",
    "mlp.fc1",
    "fc1",
    "mlp.fc_in",
    "ffn.lin1",
)
_EXPERTS = ("experts", "block_sparse_moe", "moe")


class UnitsUnsupported(Exception):
    """The model's MLPs cannot be captured (the reason is the message)."""


@dataclass
class _Hooked:
    block: int  # 1-based: block i's output is hidden state i
    kind: str
    units: int
    values: dict[str, NDArray[np.float32]] = field(default_factory=dict)


def block_modules(model: Any) -> list[torch.nn.Module]:
    """The model's transformer blocks, in order: the module list as long as the config's
    number of hidden layers."""
    count = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count and count:
            return list(module)
    raise UnitsUnsupported(
        f"{type(model).__name__}: no list of {count} transformer blocks was found"
    )


def _linear_width(module: torch.nn.Module) -> int | None:
    """Output width of a Linear (weight out x in) or GPT-2 Conv1D (weight in x out)."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        return None
    return int(weight.shape[0] if isinstance(module, torch.nn.Linear) else weight.shape[1])


def _find_mlp(block: torch.nn.Module, number: int) -> tuple[str, dict[str, torch.nn.Module]]:
    named = dict(block.named_modules())
    if any(name.split(".")[-1] in _EXPERTS for name in named):
        raise UnitsUnsupported(
            f"block {number} has a mixture-of-experts MLP: units are not matched across experts"
        )
    for module in named.values():
        gate, up = getattr(module, "gate_proj", None), getattr(module, "up_proj", None)
        if (
            isinstance(gate, torch.nn.Module)
            and isinstance(up, torch.nn.Module)
            and _linear_width(gate) is not None
            and _linear_width(gate) == _linear_width(up)
        ):
            return "gated", {"gate": gate, "up": up}
        fused = getattr(module, "gate_up_proj", None)
        if isinstance(fused, torch.nn.Module) and _linear_width(fused):
            return "gated", {"fused": fused}
    for suffix in _PLAIN_IN_PROJECTIONS:
        module = named.get(suffix)
        if module is not None and _linear_width(module):
            return "split-input", {"in": module}
    raise UnitsUnsupported(
        f"block {number} ({type(block).__name__}): no MLP with a gate and up projection, nor a "
        "known MLP input projection, was found"
    )


class UnitCapture:
    """Hooks that pool two views of every MLP unit of the chosen blocks, batch by batch."""

    def __init__(self, model: Any, blocks: list[int] | None = None) -> None:
        """``blocks``: the 1-based blocks to capture (None: every block). Raises
        `UnitsUnsupported` when some block's MLP cannot be found."""
        modules = block_modules(model)
        chosen = blocks if blocks is not None else list(range(1, len(modules) + 1))
        self._model = model
        self._handles: list[Any] = []
        self._hooked: list[_Hooked] = []
        self._found: list[tuple[_Hooked, dict[str, torch.nn.Module]]] = []
        kinds = set()
        for number in chosen:
            kind, parts = _find_mlp(modules[number - 1], number)
            kinds.add(kind)
            width = _linear_width(next(iter(parts.values()))) or 0
            units = width // 2 if "fused" in parts else width
            hooked = _Hooked(block=number, kind=kind, units=units)
            self._hooked.append(hooked)
            self._found.append((hooked, parts))
        if len(kinds) > 1:
            raise UnitsUnsupported("the blocks' MLPs are of different kinds")
        self.kind = kinds.pop() if kinds else "gated"
        self._pool: Pool | None = None
        self._mask: torch.Tensor | None = None
        self.failure: str | None = None

    @property
    def blocks(self) -> list[tuple[int, int]]:
        """(block, units) for every captured block."""
        return [(h.block, h.units) for h in self._hooked]

    def attach(self, pool: Pool) -> None:
        """Register the hooks; ``pool(hidden, mask)`` pools (batch, tokens, width) to rows."""
        self._pool = pool
        for hooked, parts in self._found:
            if "gate" in parts:
                self._handles.append(parts["gate"].register_forward_hook(self._output(hooked, "a")))
                self._handles.append(parts["up"].register_forward_hook(self._output(hooked, "b")))
            elif "fused" in parts:
                self._handles.append(parts["fused"].register_forward_hook(self._fused(hooked)))
            else:
                self._handles.append(parts["in"].register_forward_pre_hook(self._split(hooked)))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def begin(self, mask: torch.Tensor) -> None:
        """Before a batch's forward pass: its attention mask."""
        self._mask = mask
        for hooked in self._hooked:
            hooked.values.clear()

    def take(self) -> dict[int, tuple[NDArray[np.float32], NDArray[np.float32]]]:
        """After the forward pass: each block's two pooled views (batch x units)."""
        taken = {}
        for hooked in self._hooked:
            if "a" in hooked.values and "b" in hooked.values:
                taken[hooked.block] = (hooked.values["a"], hooked.values["b"])
        return taken

    def _keep(self, hooked: _Hooked, view: str, hidden: torch.Tensor) -> None:
        assert self._pool is not None and self._mask is not None
        hooked.values[view] = self._pool(hidden, self._mask.to(hidden.device))

    def _output(self, hooked: _Hooked, view: str) -> Callable[[Any, Any, Any], None]:
        def hook(_: Any, __: Any, output: Any) -> None:
            self._keep(hooked, view, output)

        return hook

    def _fused(self, hooked: _Hooked) -> Callable[[Any, Any, Any], None]:
        def hook(_: Any, __: Any, output: Any) -> None:
            gate, up = output.chunk(2, dim=-1)
            self._keep(hooked, "a", gate)
            self._keep(hooked, "b", up)

        return hook

    def _split(self, hooked: _Hooked) -> Callable[[Any, tuple[Any, ...]], None]:
        def hook(module: Any, args: tuple[Any, ...]) -> None:
            weight = module.weight
            if weight.is_meta:
                self.failure = (
                    f"block {hooked.block}: the MLP weights were offloaded when its input was "
                    "seen, so its two views could not be computed"
                )
                return
            hidden = args[0]
            assert self._pool is not None and self._mask is not None
            pooled = torch.from_numpy(self._pool(hidden, self._mask.to(hidden.device)))
            w = weight.detach().float().cpu()
            w = w.T if isinstance(module, torch.nn.Linear) else w  # (in, out)
            hooked.values["a"] = (pooled[:, 0::2] @ w[0::2]).numpy().astype(np.float32)
            hooked.values["b"] = (pooled[:, 1::2] @ w[1::2]).numpy().astype(np.float32)

        return hook
