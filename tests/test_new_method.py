"""A sixth method, registered from this file only: convert -> finetune -> export -> ONNX Runtime work
with nothing outside binarize/methods' registry knowing about it (issue 8, "methods own their policy").

The toy method, "gained sign": weights ``g * sign(w)`` with one learnable gain g per layer, trained by
its own optimizer at half the student's learning rate, plus a loss of its own pulling g towards
mean |w| (weight ``gain_loss_weight``); its students get the center loss by default."""
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import binarize
from binarize.config import ConvertConfig
from binarize.datasets import make_loaders
from binarize.finetune import FinetuneConfig, _Trainer, cosine_lr
from binarize.layers import BinaryConv2d, BinaryLinear
from binarize.methods import Method, ParameterGroup, register_method, unregister_method
from binarize.quantizers import binary_sign

sys.path.insert(0, str(Path(__file__).parent))
from finetune_worker import tiny_model  # noqa: E402


@dataclass
class GainedSignConfig(ConvertConfig):
    gain_loss_weight: float = 0.5
    method = "gained_sign"


class GainedSignWeights:
    def _init_method_state(self):
        self.gain = nn.Parameter(self.latent_weight.detach().abs().mean())

    def binarized_weight(self):
        return self.gain * self.weight_estimator(self.latent_weight)

    def export_weight(self):
        w = self.latent_weight.detach()
        return binary_sign(w), self.gain.detach().expand(w.shape[0]).clone()

    def extra_losses(self):
        return {"gain": self.config.gain_loss_weight * (self.gain - self.latent_weight.detach().abs().mean()) ** 2}


class GainedSignConv2d(GainedSignWeights, BinaryConv2d):
    pass


class GainedSignLinear(GainedSignWeights, BinaryLinear):
    pass


class GainedSign(Method):
    finetune_defaults = {"center_loss_weight": 0.03}

    def parameter_groups(self, model, config):
        gains = [m.gain for m in model.modules() if isinstance(m, GainedSignWeights)]
        return [ParameterGroup("gains", gains, config.lr / 2)]


@pytest.fixture
def gained_sign():
    method = register_method(GainedSign("gained_sign", GainedSignConfig, GainedSignConv2d, GainedSignLinear))
    yield method
    unregister_method("gained_sign")
    assert "gained_sign" not in binarize.METHODS


def test_a_registered_method_converts_trains_with_its_policy_and_exports(gained_sign, tmp_path, one_thread):
    torch.manual_seed(0)
    teacher = tiny_model(True)
    # tiny layers: the cost rule (keep_costly_float) would keep them float
    student = binarize.convert(teacher, "gained_sign", gain_loss_weight=0.25, keep_costly_float=False)
    layers = [m for _, m in binarize.binary_layers(student)]
    assert len(layers) == 2 and all(isinstance(m, GainedSignConv2d) for m in layers)

    train, val, _ = make_loaders("mnist5k", batch_size=16)
    config = FinetuneConfig(epochs=1, lr=0.02, steps_per_epoch=4, progress=False, evaluate_initial=False,
                            two_step=False, gan_weight=0.01, warmup_epochs=0.0, run_dir=str(tmp_path / "run"))
    trainer = _Trainer(student, teacher, train, val, config)
    optimizers = trainer.optimizers.optimizers
    assert list(optimizers) == ["student", "gains", "discriminators"]
    gains = [m.gain for m in layers]
    (gain_group,) = optimizers["gains"].param_groups
    assert [id(p) for p in gain_group["params"]] == [id(g) for g in gains]
    assert gain_group["weight_decay"] == 0.0
    in_student = {id(p) for group in optimizers["student"].param_groups for p in group["params"]}
    assert not in_student & {id(g) for g in gains}

    # The method's loss term and its default center loss are in the objective, by the formula.
    images, labels = next(iter(train))
    trainer.epoch_order = [[0]] * 4
    trainer.step = 1  # the second of four steps: the cosine schedule has left the base lr
    trainer._lr_step()
    assert gain_group["lr"] == pytest.approx(cosine_lr(1, 4, 0.01))
    assert optimizers["student"].param_groups[0]["lr"] == pytest.approx(cosine_lr(1, 4, 0.02))
    expected_gain_loss = sum(0.25 * (m.gain.item() - m.latent_weight.detach().abs().mean().item()) ** 2 for m in layers)
    _, terms, _ = trainer._train_step(images, labels)
    assert {"gain", "center"} <= set(terms)
    assert terms["gain"] == pytest.approx(expected_gain_loss, rel=1e-5)
    trainer.step = 0
    trainer.epoch_order = None

    before = [g.item() for g in gains]
    student, history = trainer.run()
    assert [g.item() for g in gains] != before
    assert "train_gain" in history.epochs[-1] and "train_center" in history.epochs[-1]

    # It exports through the layers' export_weight and runs under ONNX Runtime with binarize's kernels.
    x = torch.randn(2, 1, 28, 28)
    path = tmp_path / "gained.onnx"
    binarize.export(student.eval(), path, x)
    session = binarize.runtime.session(str(path))
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = student(x).numpy()
    assert np.allclose(got, expected, atol=1e-4), np.abs(got - expected).max()


def test_the_registry_holds_it_once_and_it_has_one_stage(gained_sign):
    assert set(binarize.METHODS) == {"xnor", "bireal", "biper", "cbcn", "rbcn", "gained_sign"}
    with pytest.raises(ValueError, match="already registered"):
        register_method(gained_sign)
    with pytest.raises(ValueError, match="set_stage"):
        binarize.set_stage(binarize.convert(tiny_model(True), "gained_sign"), 2)
