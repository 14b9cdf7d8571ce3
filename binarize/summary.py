"""``binarize.summary``: memory and compute of a model, split by precision.

Conventions (those of Bi-Real Net and RBCN's table 6, so the numbers are comparable):

- memory: every float parameter costs 32 bits, every binary weight 1 bit (scales, C, biases and
  BatchNorm affine parameters are float); buffers (BatchNorm running statistics) are not counted;
- MACs: only Conv2d and Linear layers count (Cout * Cin/groups * kh * kw per output position);
  a CBCN layer of layout "max" performs ``orientations`` (K) times the MACs of its float counterpart;
  one of layout "widen" counts the K-wide maps in its ``in_channels``/``out_channels``, so K^2 times,
  and a float module run per orientation (``PerOrientation``) K times;
- ``flops = float MACs + binary MACs / 64`` (64 binary MACs per 64-bit xnor + popcount).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Sequence

import torch
from torch import nn

from .layers import BinaryLayer

FLOAT_BITS = 32
BINARY_MACS_PER_FLOP = 64


@dataclass
class LayerRow:
    name: str
    kind: str
    precision: str  # "binary" or "float"
    float_params: int
    binary_params: int
    float_macs: int
    binary_macs: int

    @property
    def memory_bits(self) -> int:
        return self.float_params * FLOAT_BITS + self.binary_params


@dataclass
class Summary:
    input_size: Sequence[int]
    rows: List[LayerRow] = field(default_factory=list)

    def _total(self, attr: str) -> int:
        return sum(getattr(r, attr) for r in self.rows)

    @property
    def float_params(self) -> int:
        return self._total("float_params")

    @property
    def binary_params(self) -> int:
        return self._total("binary_params")

    @property
    def float_macs(self) -> int:
        return self._total("float_macs")

    @property
    def binary_macs(self) -> int:
        return self._total("binary_macs")

    @property
    def memory_bits(self) -> int:
        return self._total("memory_bits")

    @property
    def flops(self) -> float:
        return self.float_macs + self.binary_macs / BINARY_MACS_PER_FLOP

    def __str__(self) -> str:
        head = (f"{'layer':<34} {'type':<16} {'prec':<6} {'params':>10} {'memory (bit)':>13} "
                f"{'float MACs':>13} {'binary MACs':>13}")
        lines = [f"binarize.summary, input {tuple(self.input_size)}", head, "-" * len(head)]
        for r in self.rows:
            lines.append(f"{r.name[:34]:<34} {r.kind[:16]:<16} {r.precision:<6} "
                         f"{r.float_params + r.binary_params:>10,} {r.memory_bits:>13,} "
                         f"{r.float_macs:>13,} {r.binary_macs:>13,}")
        lines.append("-" * len(head))
        lines.append(f"parameters: {self.float_params:,} float + {self.binary_params:,} binary")
        lines.append(f"memory:     {self.memory_bits / 1e6:.2f} Mbit ({self.memory_bits / 8e6:.2f} MB)")
        lines.append(f"MACs:       {self.float_macs:.3e} float + {self.binary_macs:.3e} binary")
        lines.append(f"FLOPs:      {self.flops:.3e} (float MACs + binary MACs / {BINARY_MACS_PER_FLOP})")
        return "\n".join(lines)


def _macs(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        return output.numel() * per_output * getattr(module, "orientations", 1)
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


def summary(model: nn.Module, input_size: Sequence[int], device: str = "cpu") -> Summary:
    """Run ``model`` once on a zero tensor of ``input_size`` (batch included) and tabulate every
    module that owns parameters or does Conv2d/Linear MACs."""
    macs: Dict[str, int] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            def record(mod, _inputs, output, name=name):
                macs[name] = macs.get(name, 0) + _macs(mod, output)
            hooks.append(module.register_forward_hook(record))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(*input_size, device=device))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)

    result = Summary(tuple(input_size))
    for name, module in model.named_modules():
        own = dict(module.named_parameters(recurse=False))
        binary = isinstance(module, BinaryLayer)
        binary_params = own["weight"].numel() if binary else 0
        float_params = sum(p.numel() for p in own.values()) - binary_params
        layer_macs = macs.get(name, 0)
        if not own and not layer_macs:
            continue
        result.rows.append(LayerRow(
            name=name or "(root)", kind=type(module).__name__,
            precision="binary" if binary else "float", float_params=float_params,
            binary_params=binary_params, float_macs=0 if binary else layer_macs,
            binary_macs=layer_macs if binary else 0))
    return result
