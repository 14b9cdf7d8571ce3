"""BiPer: binary neural networks using a periodic function (Vargas et al., 2024).

Weights (eqs. 1-2): forward ``w_q = sign(sin(omega w))``; backward through the sine surrogate
``w_hat = sin(omega w)``, so ``dL/dw = dL/dw_q * omega * cos(omega w)``.

Scale: one learnable float per output channel, initialised (not random) with the closed-form
optimal scale of eq. 8, ``gamma(b, omega)``, where ``b`` is a zero-mean Laplace fit (mean |w|) of
that channel's pretrained weights.

How pretrained weights enter ``sin(omega w)``: they are used unchanged as the latent weights.
For ``|w| < pi / omega`` (0.157 at omega = 20), ``sin(omega w)`` has the sign of ``w``, so a
pretrained network keeps its weight signs except for the (rare) larger weights, which the periodic
function folds over; ``binarize.analysis.quantization_report`` shows ``b`` and the QE per layer.
``omega="auto"`` picks ``omega = 0.27777 / b`` per layer (see :func:`binarize.analysis.auto_omega`).

Two stages (section 2.3): stage 1 trains with the real-valued ``w_hat = sin(omega w)`` and binary
activations; stage 2 with ``scale * sign(sin(omega w))``. ``binarize.set_stage(model, 2)`` switches
and re-fits the scale from the stage-1 weights (eq. 8), so stage 2 is warm-started from stage 1.
Only a stage-2 model exports. Activations: sign with the ApproxSign gradient.
Cost: as XNOR-Net at inference; training adds one sin/cos per weight.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Union

import torch
from torch import nn

from ..analysis import auto_omega, laplace_fit, optimal_scale
from ..config import ConvertConfig
from ..layers import BinaryConv2d, BinaryLinear, per_channel
from ..quantizers import binary_sign
from . import Method, PaperRecipe, Phase, register_method


@dataclass
class BiPerConfig(ConvertConfig):
    """BiPer.

    - ``omega``: frequency omega_0 of the periodic function; 20 (the paper's choice) or ``"auto"``.
    - ``stage``: 1 (real-valued sin(omega w) weights, binary activations) or 2 (binary weights).
    - ``activation_estimator``: "approx_sign"; ``weight_estimator``: "sine" (the surrogate of eq. 2).
    """

    omega: Union[float, str] = 20.0
    stage: int = 1
    activation_estimator: str = "approx_sign"
    weight_estimator: str = "sine"
    method = "biper"

    def __post_init__(self):
        super().__post_init__()
        if self.omega != "auto" and not (isinstance(self.omega, (int, float)) and self.omega > 0):
            raise ValueError(f"omega={self.omega!r}: expected a positive number or 'auto'")
        if self.stage not in (1, 2):
            raise ValueError(f"stage={self.stage!r}: expected 1 or 2")


class BiPerWeights:
    def _init_method_state(self):
        b = float(laplace_fit(self.latent_weight))
        omega = auto_omega(b) if self.config.omega == "auto" else float(self.config.omega)
        self.register_buffer("omega", torch.tensor(omega, dtype=self.weight.dtype))
        self.register_buffer("stage", torch.tensor(self.config.stage))
        self.scale = nn.Parameter(torch.empty(self.weight.shape[0], dtype=self.weight.dtype))
        self.fit_scale()

    @torch.no_grad()
    def fit_scale(self):
        """Eq. 8 per output channel, from a Laplace fit of that channel's latent weights."""
        b = laplace_fit(self.latent_weight, dim=0).clamp_min(1e-12).cpu().double().numpy()
        gamma = optimal_scale(b, float(self.omega))
        self.scale.copy_(torch.as_tensor(gamma, dtype=self.scale.dtype))

    def set_stage(self, stage: int):
        if stage not in (1, 2):
            raise ValueError(f"stage={stage!r}: expected 1 or 2")
        if int(self.stage) == 1 and stage == 2:
            self.fit_scale()
        self.stage.fill_(stage)

    def binarized_weight(self):
        w = self.latent_weight
        if int(self.stage) == 1:
            return torch.sin(self.omega * w)
        return per_channel(self.scale, w) * self.weight_estimator(w, omega=self.omega)

    def export_weight(self):
        if int(self.stage) != 2:
            raise ValueError("a BiPer layer in stage 1 has real-valued weights and cannot be "
                             "exported as binary: call binarize.set_stage(model, 2) (and fine-tune) first")
        w = self.latent_weight.detach()
        return binary_sign(torch.sin(self.omega * w)), self.scale.detach().clone()

    def extra_repr(self):
        return f"{super().extra_repr()}, omega={float(self.omega):.4g}, stage={int(self.stage)}"


class BiPerConv2d(BiPerWeights, BinaryConv2d):
    pass


class BiPerLinear(BiPerWeights, BinaryLinear):
    pass


#: Section 3.1, ImageNet (the only dataset): "All experiments used SGD optimization with 0.9
#: momentum." "The learning rate was set to 0.1 in the first stage and, 0.01 in the second stage. In
#: both stages the learning rate was adjusted by the cosine scheduler." The paper trains with
#: cross-entropy alone (no distillation, no discriminators) and gives no epochs, batch size or weight decay.
IMAGENET = PaperRecipe(
    finetune={"optimizer": "sgd", "momentum": 0.9, "stage1_lr": 0.1, "lr": 0.01, "schedule": "cosine",
              "warmup_epochs": 0.0, "kd_weight": 0.0, "gan_weight": 0.0, "center_loss_weight": 0.0,
              "bn_refresh": False},
    source="section 3.1")


class BiPerMethod(Method):
    """Two training stages (section 2.3): stage 1 at ``stage1_lr`` for ``stage1_epochs``, then
    stage 2 at ``lr`` for ``epochs``, each with its own optimizers and schedule.

    Stage 2 trains at the common default (``lr=None``: Adam at 1e-2), not at a tenth of stage 1's
    rate as the paper's SGD recipe does (its preset keeps that): in 7 paired runs (ResNet-8 on
    MNIST-5k over 3 seeds and on MNIST-rot over 2, LeNet, the demo) 1e-2 ended 0.2-2.6 pp above
    2e-3, although stage 2's first epochs dip (benchmarks/RESULTS.md, "BiPer's stage-2 learning rate")."""

    stages = 2
    paper_recipes = {"imagenet": IMAGENET}

    def training_phases(self, model, config) -> List[Phase]:
        current = self.current_stage(model)
        stage1 = config.stage1_epochs if config.stage1_epochs is not None else (config.epochs if current == 1 else 0)
        if stage1 and current == 2:
            raise ValueError(f"stage1_epochs={stage1}, but the student is already in stage 2 (binary weights)")
        phases = [Phase("stage 1", stage1, config.stage1_lr, 1)] if stage1 else []
        return phases + [Phase("stage 2", config.epochs, self.binary_lr(config), 2)]

    def current_stage(self, model) -> Optional[int]:
        """The first layer's stage."""
        return int(_layers(model)[0].stage)

    def set_stage(self, model, stage: int) -> None:
        for layer in _layers(model):
            layer.set_stage(stage)

    def prepare_phase(self, model, phase: Phase) -> None:
        # set_stage(2) re-fits the scales: only when a layer is not in the stage yet (not on resume).
        if any(int(m.stage) != phase.stage for m in _layers(model)):
            self.set_stage(model, phase.stage)


def _layers(model) -> List[BiPerWeights]:
    return [m for m in model.modules() if isinstance(m, BiPerWeights)]


register_method(BiPerMethod("biper", BiPerConfig, BiPerConv2d, BiPerLinear))
