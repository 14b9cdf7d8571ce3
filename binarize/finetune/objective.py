"""The training objective: the loss functions and one small module per term of the loss.

Each term is a :class:`Term` whose ``losses(batch)`` gives its weighted loss(es) by name (the
names become ``train_<name>`` metrics); :class:`Objective` sums them in a fixed order: cross-entropy
(``ce``), logit distillation (``kd``), RBCN's adversarial feature loss (``gan``, which first steps
the discriminators), the losses the method's binary layers add (RBCN's ``rbcn_kernel``), the
center loss (``center``). Terms with state of their own (discriminators, centers) are modules and
are saved with the training state.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import tags
from ..convert import extra_losses
from ..orientations import pool_orientations
from .distributed import all_reduce_sum, average_gradients, broadcast_from_main

# ------------------------------------------------------------------------------- loss functions


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 KL(softmax(t/T) || softmax(s/T))``, mean over the batch (T^2 keeps gradients T-independent)."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * temperature ** 2


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """``-[log D(R) + log(1 - D(T))]`` (the negated objective of RBCN algorithm 1, line 11), mean over the batch."""
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def adversarial_loss(fake_logits: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """``1/2 ||1 - D(T)||^2`` per sample (RBCN eq. 4 without lambda2), mean (or, ``reduction="sum"``,
    sum) over the batch."""
    per_sample = 0.5 * (1 - torch.sigmoid(fake_logits)).pow(2)
    return per_sample.sum() if reduction == "sum" else per_sample.mean()


class FeatureDiscriminator(nn.Module):
    """RBCN's D(.): a feature map average-pooled to ``pool x pool`` and flattened (a 2-D feature is
    used as is), then four Linear layers, LeakyReLU(0.2) after the first three. Returns one logit per
    sample; D = sigmoid(logit) (the paper's LeakyReLU on the last block cannot give a probability)."""

    def __init__(self, feature_shape: Sequence[int], pool: int = 2, hidden: int = 256):
        super().__init__()
        channels = feature_shape[0]
        self.pool = nn.AdaptiveAvgPool2d(pool) if len(feature_shape) == 3 else nn.Identity()
        width = channels * pool * pool if len(feature_shape) == 3 else channels
        layers: List[nn.Module] = []
        for _ in range(3):
            layers += [nn.Linear(width, hidden), nn.LeakyReLU(0.2)]
            width = hidden
        self.net = nn.Sequential(*layers, nn.Linear(hidden, 1))

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.net(self.pool(feature).flatten(1)).squeeze(1)


class CenterLoss(nn.Module):
    """Center loss (Wen et al., 2016; used by CBCN): ``1/2 ||f_i - c_{y_i}||^2``, mean over the batch.
    The centers are a buffer moved by Wen's rule, ``c_j -= alpha * sum_{y_i=j}(c_j - f_i) / (1 + n_j)``,
    not by gradients, so all ranks of a distributed run can apply the same summed update."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.register_buffer("centers", torch.zeros(num_classes, dim))

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return 0.5 * (features - self.centers[labels]).pow(2).sum(1).mean()

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor, rate: float,
               all_reduce_sum: Callable[[torch.Tensor], None] = lambda t: None) -> None:
        delta = torch.zeros_like(self.centers).index_add_(0, labels, self.centers[labels] - features.detach())
        counts = torch.bincount(labels, minlength=self.centers.shape[0]).to(delta.dtype)
        all_reduce_sum(delta)
        all_reduce_sum(counts)
        self.centers -= rate * delta / (1 + counts)[:, None]


# --------------------------------------------------------------------------------- feature maps

class FeatureTaps:
    """Forward hooks keeping the output (or, with ``inputs=True``, the first input) of named modules."""

    def __init__(self, model: nn.Module, names: Sequence[str], inputs: bool = False):
        self.features: Dict[str, torch.Tensor] = {}
        self.handles = []
        for name in names:
            module = model.get_submodule(name)
            if inputs:
                hook = module.register_forward_pre_hook(lambda m, args, name=name: self.features.__setitem__(name, args[0]))
            else:
                hook = module.register_forward_hook(lambda m, args, out, name=name: self.features.__setitem__(name, out))
            self.handles.append(hook)

    def take(self) -> Dict[str, torch.Tensor]:
        features, self.features = self.features, {}
        return features

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def default_feature_maps(student: nn.Module) -> List[str]:
    """The BatchNorm right after each binary layer (the layer itself when no BatchNorm follows), as
    :mod:`binarize.tags` records it: the one rule the passes and the exporter also read."""
    return tags.feature_maps(student)


def classifier_name(model: nn.Module) -> str:
    """The last nn.Linear of the model: its input is what the center loss clusters."""
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("center loss: the student has no nn.Linear classifier whose input to cluster")
    return linears[-1]


# ------------------------------------------------------------------------------------ the terms

@dataclass
class Batch:
    """What the terms of one training step see. ``decay`` is the loss-weight decay of this epoch;
    terms add numbers to report (not part of the loss) to ``reports``."""

    images: torch.Tensor
    labels: torch.Tensor
    logits: torch.Tensor
    teacher_logits: Optional[torch.Tensor]
    decay: float
    reports: Dict[str, float] = field(default_factory=dict)


class Term:
    """One part of the objective. ``needs_teacher``: the step runs the teacher for it."""

    needs_teacher = False

    def losses(self, batch: Batch) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def after_step(self, batch: Batch) -> None:
        """Called after the student's optimizers stepped (the center update)."""

    def optimizers(self, make_adam: Callable[..., torch.optim.Optimizer]) -> Dict[str, torch.optim.Optimizer]:
        """The term's own optimizers, built fresh for every phase."""
        return {}

    def close(self) -> None:
        """Remove any hooks the term put on the models."""


class CrossEntropy(Term):
    def __init__(self, weight: float):
        self.weight = weight

    def losses(self, batch):
        return {"ce": self.weight * F.cross_entropy(batch.logits, batch.labels)}


class Distillation(Term):
    """Hinton et al.'s logit distillation."""

    needs_teacher = True

    def __init__(self, weight: float, temperature: float):
        self.weight, self.temperature = weight, temperature

    def losses(self, batch):
        return {"kd": self.weight * kd_loss(batch.logits, batch.teacher_logits, self.temperature)}


def discriminator_key(feature: str) -> str:
    """ModuleDict keys cannot contain dots; feature names are module paths."""
    return feature.replace(".", "_")


class AdversarialFeatures(Term):
    """RBCN's adversarial feature distillation (eqs. 2 and 4, algorithm 1): one discriminator per
    feature map, teacher maps "real", student maps "fake". Every step the discriminators take one
    step of their own Adam on ``-[log D(R) + log(1 - D(T))]``, then the student gets
    ``lambda2 / 2 * ||1 - D(T)||^2`` (times the epoch's loss-weight decay). A student map that carries
    K orientation channels per channel (:func:`binarize.tags.feature_orientations`: CBCN's layout
    "widen") is compared after the max over its orientations, the pooling its classifier also sees."""

    needs_teacher = True

    def __init__(self, student: nn.Module, teacher: nn.Module, names: Sequence[str], weight: float, lr: float,
                 reduction: str = "mean"):
        self.names, self.weight, self.lr, self.reduction = list(names), weight, lr, reduction
        self.discriminators = nn.ModuleDict()
        self.student_taps = FeatureTaps(student, self.names)
        self.orientations = tags.feature_orientations(student)
        self.teacher_taps = FeatureTaps(teacher, self.names)
        self.optimizer: Optional[torch.optim.Optimizer] = None

    def build(self, student_features, teacher_features, pool: int, hidden: int, device) -> None:
        for name in self.names:
            s_shape, t_shape = tuple(student_features[name].shape), tuple(teacher_features[name].shape)
            if s_shape != t_shape or len(s_shape) not in (2, 4):
                raise ValueError(f"gan_features {name!r}: student output {s_shape} and teacher output "
                                 f"{t_shape} must be equal N x C (x H x W) maps")
            self.discriminators[discriminator_key(name)] = FeatureDiscriminator(s_shape[1:], pool, hidden)
        self.discriminators.to(device)
        # every rank starts from rank 0's discriminators, as DDP does for the student
        broadcast_from_main(list(self.discriminators.parameters()) + list(self.discriminators.buffers()))

    def take_student(self) -> Dict[str, torch.Tensor]:
        """The student's tapped maps, each with as many channels as the teacher's."""
        return {name: pool_orientations(value, self.orientations[name]) if self.orientations.get(name, 1) > 1
                else value for name, value in self.student_taps.take().items()}

    def discriminator(self, feature: str) -> nn.Module:
        return self.discriminators[discriminator_key(feature)]

    def optimizers(self, make_adam):
        self.optimizer = make_adam(self.discriminators.parameters(), lr=self.lr, betas=(0.5, 0.999))
        return {"discriminators": self.optimizer}

    def discriminator_step(self, real: Dict[str, torch.Tensor], fake: Dict[str, torch.Tensor]) -> float:
        """RBCN algorithm 1, lines 10-11: one step of every discriminator before the student's."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = sum(discriminator_loss(self.discriminator(n)(real[n]), self.discriminator(n)(fake[n].detach()))
                   for n in self.names)
        loss.backward()
        average_gradients(self.discriminators.parameters())
        self.optimizer.step()
        return float(loss.detach())

    def losses(self, batch):
        real, fake = self.teacher_taps.take(), self.take_student()
        batch.reports["disc"] = self.discriminator_step(real, fake)
        self.discriminators.requires_grad_(False)  # the student's term must not train D
        loss = self.weight * batch.decay * sum(adversarial_loss(self.discriminator(n)(fake[n]), self.reduction)
                                                  for n in self.names)
        self.discriminators.requires_grad_(True)
        return {"gan": loss}

    def close(self):
        self.student_taps.remove()
        self.teacher_taps.remove()


class LayerLosses(Term):
    """The losses the method's binary layers add (``binarize.extra_losses``: RBCN's kernel loss,
    lambda1 inside), times the epoch's loss-weight decay."""

    def __init__(self, student: nn.Module):
        self.student = student

    def losses(self, batch):
        return {name: batch.decay * value for name, value in extra_losses(self.student).items()}


class CenterTerm(Term):
    """CBCN's center loss on the classifier's input; the centers move after the step (Wen's rule),
    by the update summed over ranks."""

    def __init__(self, student: nn.Module, weight: float, rate: float):
        self.name, self.weight, self.rate = classifier_name(student), weight, rate
        self.taps = FeatureTaps(student, [self.name], inputs=True)
        self.num_classes = student.get_submodule(self.name).out_features
        self.center_loss: Optional[CenterLoss] = None
        self.features: Optional[torch.Tensor] = None

    def build(self, features: Dict[str, torch.Tensor], device) -> None:
        self.center_loss = CenterLoss(self.num_classes, features[self.name].shape[1]).to(device)

    def losses(self, batch):
        self.features = self.taps.take()[self.name]
        return {"center": self.weight * self.center_loss(self.features, batch.labels)}

    def after_step(self, batch):
        self.center_loss.update(self.features, batch.labels, self.rate, all_reduce_sum)
        self.features = None

    def close(self):
        self.taps.remove()


class Objective:
    """The terms of a run, in the order their losses are summed."""

    def __init__(self, terms: Sequence[Term]):
        self.terms = list(terms)
        self.needs_teacher = any(t.needs_teacher for t in self.terms)

    def find(self, kind: type) -> Optional[Term]:
        return next((t for t in self.terms if isinstance(t, kind)), None)

    def losses(self, batch: Batch) -> Dict[str, torch.Tensor]:
        terms: Dict[str, torch.Tensor] = {}
        for term in self.terms:
            terms.update(term.losses(batch))
        return terms

    def after_step(self, batch: Batch) -> None:
        for term in self.terms:
            term.after_step(batch)

    def optimizers(self, make_adam) -> Dict[str, torch.optim.Optimizer]:
        found: Dict[str, torch.optim.Optimizer] = {}
        for term in self.terms:
            found.update(term.optimizers(make_adam))
        return found

    def close(self) -> None:
        for term in self.terms:
            term.close()


def build_objective(config, student: nn.Module, teacher: Optional[nn.Module], sample: torch.Tensor,
                    defaults: Dict[str, Any], device) -> Objective:
    """The terms ``config`` switches on; ``defaults``: the fields a method resolves
    (:func:`binarize.finetune.config.method_defaults`: center and GAN weights). One forward pass of
    ``sample`` tells the shapes of the compared feature maps (and checks that teacher and student
    agree) and of the center features."""
    center_weight, gan_weight = defaults["center_loss_weight"], defaults["gan_weight"]
    terms: List[Term] = [CrossEntropy(config.ce_weight)]
    if teacher is not None and config.kd_weight > 0:
        terms.append(Distillation(config.kd_weight, config.kd_temperature))
    adversarial = None
    if teacher is not None and gan_weight > 0:
        names = default_feature_maps(student) if config.gan_features == "auto" else list(config.gan_features)
        for name in names:
            for role, model in (("student", student), ("teacher", teacher)):
                try:
                    model.get_submodule(name)
                except AttributeError:
                    raise ValueError(f"gan_features: the {role} has no module {name!r}") from None
        if names:
            adversarial = AdversarialFeatures(student, teacher, names, gan_weight, config.gan_lr,
                                              config.gan_reduction)
            terms.append(adversarial)
    terms.append(LayerLosses(student))
    center = CenterTerm(student, center_weight, config.center_lr) if center_weight > 0 else None
    if center is not None:
        terms.append(center)
    if adversarial is not None or center is not None:
        with torch.no_grad():
            was_training = student.training
            student.eval()
            student(sample)
            student.train(was_training)
            if adversarial is not None:
                teacher(sample)
                adversarial.build(adversarial.take_student(), adversarial.teacher_taps.take(),
                                  config.gan_pool, config.gan_hidden, device)
            if center is not None:
                center.build(center.taps.take(), device)
    return Objective(terms)
