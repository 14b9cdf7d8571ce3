"""``binarize.finetune``: train a converted (binary) student against its frozen float teacher.

    student = binarize.convert(model, "biper")
    student, history = binarize.finetune(student, model, train_loader, val_loader,
                                         binarize.FinetuneConfig(epochs=5, run_dir="runs/biper"))

The objective, each term a :class:`FinetuneConfig` field (0 switches it off):

- cross-entropy on the labels (``ce_weight``);
- knowledge distillation on the logits, ``T^2 KL(softmax(t/T) || softmax(s/T))`` (``kd_weight``,
  ``kd_temperature``; Hinton et al., 2015);
- RBCN's adversarial feature distillation (Liu et al., IJCAI 2019, eqs. 2 and 4, algorithm 1): one
  discriminator per selected feature map, teacher maps "real", student maps "fake". Every step the
  discriminators take one step of their own optimizer on ``-[log D(R) + log(1 - D(T))]``, then the
  student gets ``lambda2 / 2 * ||1 - D(T)||^2`` (``gan_weight``);
- the losses the binary layers add (``binarize.extra_losses``: RBCN's kernel loss, lambda1 set by
  ``RBCNConfig.kernel_loss_weight``), with C trained by its own optimizer at ``rbcn_c_lr``;
- CBCN's center loss on the features entering the classifier (``center_loss_weight``; Wen et al., 2016).

Schedules: BiPer students train in two stages (Vargas et al., 2024, section 3.1): stage 1 with the
real-valued ``sin(omega w)`` weights at ``stage1_lr``, then ``binarize.set_stage(model, 2)`` (which
re-fits the scales from the stage-1 weights, the warm start) and stage 2 at ``lr``, each with its own
fresh optimizer and cosine schedule. Other students train in one stage. RBCN's BN refresh recomputes
the BatchNorm statistics after every epoch with all weights fixed (``bn_refresh``).

Runs are resumable exactly (``resume=``; see :mod:`binarize.checkpoint`), Ctrl-C saves a checkpoint,
and under ``torchrun`` the student is wrapped in ``DistributedDataParallel`` (see :func:`init_distributed`).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .convert import binary_layers, extra_losses, set_stage
from .layers import BinaryLayer

__all__ = ["FinetuneConfig", "History", "TrainingInterrupted", "finetune", "evaluate", "init_distributed",
           "kd_loss", "discriminator_loss", "adversarial_loss", "FeatureDiscriminator", "CenterLoss"]


@dataclass
class FinetuneConfig:
    """Options of :func:`finetune`. Defaults follow the papers where they give a value (noted).

    Schedule
    - ``epochs``: epochs of the (final) binary stage.
    - ``lr``: its initial learning rate (CBCN, RBCN: 0.01; BiPer stage 2: 0.01).
    - ``stage1_epochs``: BiPer's stage 1 (real-valued ``sin(omega w)`` weights); None: as many as
      ``epochs`` if the student is in stage 1, else 0. Only for two-stage (biper) students.
    - ``stage1_lr``: stage 1's initial learning rate (BiPer: 0.1).
    - ``warmup_epochs``: linear warm-up at the start of each stage (fractions allowed), then cosine
      decay to ``min_lr`` at the stage's end (BiPer: cosine; the papers use no warm-up).
    - ``optimizer``: "sgd" (with ``momentum``, 0.9 in all three papers) or "adam".
    - ``weight_decay``: on conv/linear weights only; never on BatchNorm, biases, scales or C (1e-4:
      CBCN and RBCN, ResNet-18).
    - ``steps_per_epoch``: use only the first N batches of each epoch (quick runs); None: all.

    Losses
    - ``ce_weight``: cross-entropy with the labels.
    - ``kd_weight``, ``kd_temperature``: logit distillation from the teacher (Hinton's T = 4).
    - ``gan_weight``: lambda2 of RBCN eq. 4 (CIFAR: 0.01; ImageNet: 0.1). 0 disables the discriminators.
    - ``gan_features``: module names whose outputs are compared (the same name in teacher and
      student); "auto": the BatchNorm after each binary layer (the layer itself if none follows).
    - ``gan_pool``, ``gan_hidden``: each map is average-pooled to gan_pool x gan_pool, flattened,
      and fed to four Linear layers of width gan_hidden (RBCN: "four basic blocks of a linear
      layer and a LeakyReLU"; pooling and width are not given in the paper).
    - ``gan_lr``: the discriminators' Adam learning rate (betas 0.5, 0.999; not given in the paper).
    - ``rbcn_c_lr``: eta2 of RBCN eq. 15, the learning rate of the matrices C (same schedule shape).
    - ``loss_weight_decay``, ``loss_weight_decay_every``: lambda1 and lambda2 are multiplied by
      ``loss_weight_decay`` every that many epochs (RBCN: 0.9 every 60 on CIFAR).
    - ``center_loss_weight``: lambda of the center loss; None: 0.01 for CBCN students, else off.
    - ``center_lr``: alpha, the centers' update rate (Wen et al.: 0.5).
    - ``bn_refresh``: recompute BatchNorm statistics after each epoch with the weights fixed
      (RBCN, algorithm 1 line 17); None: on for RBCN students.

    Run
    - ``run_dir``: where checkpoints, ``metrics.csv``, ``curves.png`` and ``best.pt`` go; None: nothing is written.
    - ``keep_checkpoints``: how many training checkpoints to keep (the newest).
    - ``checkpoint_every``: also save every N steps within an epoch (0: at epoch ends only).
    - ``resume``: a training checkpoint or a run folder (its newest checkpoint) to continue from.
    - ``seed``: seeds torch, numpy and random at the start of a fresh run (None: leave them).
    - ``deterministic``: ``torch.use_deterministic_algorithms(True)`` (needed for bit-exact resume on GPU).
    - ``device``: None picks ``cuda:LOCAL_RANK`` when available, else the CPU.
    - ``progress``: tqdm progress bars and the final summary (rank 0 only).
    - ``evaluate_initial``: measure teacher and student accuracy before training (for the summary).
    - ``recipe``: plain-data description of how the student was built (see :mod:`binarize.checkpoint`),
      stored in every checkpoint so the run can be rebuilt from the file; the CLI fills it in.
    """

    epochs: int = 10
    lr: float = 0.01
    stage1_epochs: Optional[int] = None
    stage1_lr: float = 0.1
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    steps_per_epoch: Optional[int] = None
    ce_weight: float = 1.0
    kd_weight: float = 1.0
    kd_temperature: float = 4.0
    gan_weight: float = 0.01
    gan_features: Union[str, Sequence[str]] = "auto"
    gan_pool: int = 2
    gan_hidden: int = 256
    gan_lr: float = 1e-4
    rbcn_c_lr: float = 0.01
    loss_weight_decay: float = 0.9
    loss_weight_decay_every: int = 60
    center_loss_weight: Optional[float] = None
    center_lr: float = 0.5
    bn_refresh: Optional[bool] = None
    run_dir: Optional[str] = None
    keep_checkpoints: int = 3
    checkpoint_every: int = 0
    resume: Optional[str] = None
    seed: Optional[int] = 0
    deterministic: bool = False
    device: Optional[str] = None
    progress: bool = True
    evaluate_initial: bool = True
    recipe: Optional[Dict[str, Any]] = None

    def __post_init__(self):
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer={self.optimizer!r}: expected 'sgd' or 'adam'")
        if self.epochs < 0 or (self.stage1_epochs or 0) < 0:
            raise ValueError("epochs and stage1_epochs must be >= 0")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch={self.steps_per_epoch}: expected a positive number or None")
        if isinstance(self.gan_features, str) and self.gan_features != "auto":
            self.gan_features = (self.gan_features,)

    def to_data(self) -> Dict[str, Any]:
        """The config as plain data (stored in checkpoints)."""
        data = dataclasses.asdict(self)
        data["gan_features"] = self.gan_features if isinstance(self.gan_features, str) else list(self.gan_features)
        return data


@dataclass
class History:
    """What :func:`finetune` measured: one row per epoch plus the numbers around them."""

    epochs: List[Dict[str, Any]] = field(default_factory=list)  # epoch, phase, lr, train_*, val_*, images_per_s
    initial: Dict[str, float] = field(default_factory=dict)  # teacher_val_acc, student_val_acc before training
    best_val_acc: Optional[float] = None  # best of the final (binary) stage
    best_epoch: Optional[int] = None
    checkpoint: Optional[str] = None  # the last training checkpoint written


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training; ``checkpoint`` is the file saved on the way out (None without run_dir)."""

    def __init__(self, message: str, checkpoint: Optional[Path]):
        super().__init__(message)
        self.checkpoint = checkpoint


# ------------------------------------------------------------------------------------- losses

def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 KL(softmax(t/T) || softmax(s/T))``, mean over the batch (T^2 keeps gradients T-independent)."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * temperature ** 2


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """``-[log D(R) + log(1 - D(T))]`` (the negated objective of RBCN algorithm 1, line 11), mean over the batch."""
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """``1/2 ||1 - D(T)||^2`` per sample (RBCN eq. 4 without lambda2), mean over the batch."""
    return 0.5 * (1 - torch.sigmoid(fake_logits)).pow(2).mean()


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
    """The BatchNorm right after each binary layer (the layer itself when no BatchNorm follows)."""
    graph = getattr(student, "graph", None)
    if graph is None:
        return [name for name, _ in binary_layers(student)]
    names = []
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(student.get_submodule(node.target), BinaryLayer):
            norms = [user.target for user in node.users if user.op == "call_module"
                     and isinstance(student.get_submodule(user.target), _BatchNorm)]
            names.append(norms[0] if len(norms) == 1 else node.target)
    return names


def classifier_name(model: nn.Module) -> str:
    """The last nn.Linear of the model: its input is what the center loss clusters."""
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("center loss: the student has no nn.Linear classifier whose input to cluster")
    return linears[-1]


# ---------------------------------------------------------------------------------- schedules

def cosine_lr(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0, min_lr: float = 0.0) -> float:
    """Linear warm-up over ``warmup_steps`` then cosine decay from ``base_lr`` to ``min_lr`` at ``total_steps``."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + (base_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class Phase:
    """A span of epochs with its own optimizers and schedule (BiPer's stages)."""

    name: str
    epochs: int
    lr: float
    biper_stage: Optional[int]  # the stage set on the model when the phase starts


def plan_phases(student: nn.Module, config: FinetuneConfig) -> List[Phase]:
    staged = [m for _, m in binary_layers(student) if hasattr(m, "set_stage")]
    if not staged:
        if config.stage1_epochs:
            raise ValueError("stage1_epochs is for two-stage students (method='biper'); this one has one stage")
        return [Phase("train", config.epochs, config.lr, None)]
    current = int(staged[0].stage)
    stage1 = config.stage1_epochs if config.stage1_epochs is not None else (config.epochs if current == 1 else 0)
    if stage1 and current == 2:
        raise ValueError(f"stage1_epochs={stage1}, but the student is already in stage 2 (binary weights)")
    phases = [Phase("stage 1", stage1, config.stage1_lr, 1)] if stage1 else []
    return phases + [Phase("stage 2", config.epochs, config.lr, 2)]


# -------------------------------------------------------------------------------- distributed

def init_distributed() -> Tuple[int, int]:
    """Join the process group when launched by ``torchrun`` (gloo on CPU, nccl on GPU); returns
    ``(rank, world_size)``, ``(0, 1)`` outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if "WORLD_SIZE" not in os.environ:
        return 0, 1
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def _world() -> Tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce_sum(tensor: torch.Tensor) -> None:
    if _world()[1] > 1:
        dist.all_reduce(tensor)


def _average_gradients(parameters) -> None:
    """DDP-style gradient averaging for modules that are not wrapped (the discriminators)."""
    world = _world()[1]
    if world > 1:
        for p in parameters:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= world


# ------------------------------------------------------------------------------------ evaluation

@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: Union[str, torch.device, None] = None,
             progress: bool = False, desc: str = "eval") -> Dict[str, float]:
    """Cross-entropy and top-1 accuracy of ``model`` on ``loader`` (eval mode; training mode restored)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for images, labels in tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(1) == labels).sum())
        count += len(labels)
    model.train(was_training)
    return {"loss": loss_sum / max(count, 1), "acc": correct / max(count, 1)}


@torch.no_grad()
def refresh_batchnorm(model: nn.Module, loader: DataLoader, device: torch.device) -> None:
    """RBCN's BN update: recompute every BatchNorm's running statistics over ``loader`` with the
    weights fixed (cumulative average over the batches), then average them over ranks."""
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # None: running stats become the plain average over the batches seen
    was_training = model.training
    model.train()
    for images, _ in loader:
        model(images.to(device))
    model.train(was_training)
    world = _world()[1]
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
        for stat in (m.running_mean, m.running_var):
            _all_reduce_sum(stat)
            stat /= world


# --------------------------------------------------------------------------------------- trainer

def finetune(student: nn.Module, teacher: Optional[nn.Module], train_loader: DataLoader,
             val_loader: Optional[DataLoader], config: Optional[FinetuneConfig] = None) -> Tuple[nn.Module, History]:
    """Fine-tune ``student`` (from :func:`binarize.convert`) against the frozen ``teacher``.

    ``teacher`` None trains on the labels alone (no KD, no discriminators). Under torchrun (after
    :func:`init_distributed`), pass loaders built with ``distributed=True``; the batch size is per rank.
    Returns the student (unwrapped, eval mode, on ``config.device``) and its :class:`History`.
    Ctrl-C saves a checkpoint and raises :class:`TrainingInterrupted`.
    """
    return _Trainer(student, teacher, train_loader, val_loader, config or FinetuneConfig()).run()


class _StopRequest:
    """Turns the first Ctrl-C into a request to stop after the current step (a second one aborts)."""

    def __init__(self, announce: Callable[[str], None]):
        self.requested = False
        self.announce = announce
        self.previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.announce("\nCtrl-C: stopping after this step and saving a checkpoint (press again to abort at once)")

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def _discriminator_key(feature: str) -> str:
    """ModuleDict keys cannot contain dots; feature names are module paths."""
    return feature.replace(".", "_")


class _Trainer:
    def __init__(self, student, teacher, train_loader, val_loader, config: FinetuneConfig):
        self.config = config
        self.rank, self.world = _world()
        self.is_main = self.rank == 0
        self.device = torch.device(config.device or (f"cuda:{torch.cuda.current_device()}"
                                                     if torch.cuda.is_available() else "cpu"))
        self.train_loader, self.val_loader = train_loader, val_loader
        if getattr(train_loader, "batch_sampler", None) is None:
            raise ValueError("finetune needs a train_loader with a batch size (DataLoader(batch_size=...))")
        self.resume_path = ckpt.latest_checkpoint(config.resume) if config.resume else None
        resumed = ckpt.load_checkpoint(self.resume_path, "finetune") if self.resume_path else None
        if config.deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        if config.seed is not None and resumed is None:
            _seed_everything(config.seed + self.rank)

        self.model = student.to(self.device).train()
        self.teacher = teacher.to(self.device).eval().requires_grad_(False) if teacher is not None else None
        self.phases = [Phase(**p) for p in resumed["phases"]] if resumed else plan_phases(student, config)
        self.run_dir = Path(config.run_dir) if config.run_dir else None
        self.bn_refresh = config.bn_refresh if config.bn_refresh is not None else _method(student) == "rbcn"
        center_weight = config.center_loss_weight
        self.center_weight = center_weight if center_weight is not None else (0.01 if _method(student) == "cbcn" else 0.0)
        self._build_distillation()
        # BiPer's stage 1 never uses the scales, so DDP must be told that some parameters get no gradient.
        two_stage = any(hasattr(m, "set_stage") for _, m in binary_layers(self.model))
        self.ddp = (nn.parallel.DistributedDataParallel(self.model, find_unused_parameters=two_stage)
                    if self.world > 1 else self.model)

        self.phase_index, self.epoch, self.step = 0, 0, 0
        self.optimizers: Dict[str, torch.optim.Optimizer] = {}
        self.epoch_order: Optional[List[List[int]]] = None
        self.epoch_stats: Dict[str, float] = {}
        self.history = History()
        self.last_checkpoint: Optional[Path] = None
        if resumed is not None:
            self._restore(resumed)
        else:
            self._build_optimizers()

    # -- set-up ------------------------------------------------------------------------------

    def _build_distillation(self):
        config = self.config
        self.gan_names: List[str] = []
        self.discriminators = nn.ModuleDict()
        if self.teacher is not None and config.gan_weight > 0:
            names = default_feature_maps(self.model) if config.gan_features == "auto" else list(config.gan_features)
            for name in names:
                for role, model in (("student", self.model), ("teacher", self.teacher)):
                    try:
                        model.get_submodule(name)
                    except AttributeError:
                        raise ValueError(f"gan_features: the {role} has no module {name!r}") from None
            self.gan_names = names
        self.student_taps = FeatureTaps(self.model, self.gan_names)
        self.teacher_taps = FeatureTaps(self.teacher, self.gan_names) if self.teacher is not None else None
        self.center_name = classifier_name(self.model) if self.center_weight > 0 else None
        self.center_taps = FeatureTaps(self.model, [self.center_name], inputs=True) if self.center_name else None
        self.center_loss = None
        if not (self.gan_names or self.center_name):
            return
        # One forward pass of a sample tells the feature shapes (and checks teacher and student agree).
        sample = self.train_loader.dataset[0][0][None].to(self.device)
        with torch.no_grad():
            was_training = self.model.training
            self.model.eval()
            self.model(sample)
            self.model.train(was_training)
            student_features = self.student_taps.take()
            if self.gan_names:
                self.teacher(sample)
                teacher_features = self.teacher_taps.take()
        for name in self.gan_names:
            s_shape, t_shape = tuple(student_features[name].shape), tuple(teacher_features[name].shape)
            if s_shape != t_shape or len(s_shape) not in (2, 4):
                raise ValueError(f"gan_features {name!r}: student output {s_shape} and teacher output "
                                 f"{t_shape} must be equal N x C (x H x W) maps")
            self.discriminators[_discriminator_key(name)] = FeatureDiscriminator(
                s_shape[1:], config.gan_pool, config.gan_hidden)
        self.discriminators.to(self.device)
        if self.center_name:
            features = self.center_taps.take()[self.center_name]
            num_classes = self.model.get_submodule(self.center_name).out_features
            self.center_loss = CenterLoss(num_classes, features.shape[1]).to(self.device)
        if self.world > 1:  # every rank starts from rank 0's discriminators, as DDP does for the student
            for tensor in list(self.discriminators.parameters()) + list(self.discriminators.buffers()):
                dist.broadcast(tensor.data, 0)

    def _build_optimizers(self):
        """Fresh optimizers for the current phase (a new BiPer stage starts from zero momentum)."""
        config, phase = self.config, self.phases[self.phase_index]
        rectifiers = {id(layer.C) for _, layer in binary_layers(self.model) if isinstance(getattr(layer, "C", None), nn.Parameter)}
        decay, no_decay, c_params = [], [], []
        for p in self.model.parameters():
            if not p.requires_grad:
                continue
            (c_params if id(p) in rectifiers else decay if p.dim() > 1 else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": config.weight_decay, "base_lr": phase.lr},
                  {"params": no_decay, "weight_decay": 0.0, "base_lr": phase.lr}]
        self.optimizers = {"student": _optimizer(config, groups, phase.lr)}
        if c_params:
            self.optimizers["rbcn_c"] = _optimizer(config, [{"params": c_params, "weight_decay": 0.0,
                                                             "base_lr": config.rbcn_c_lr}], config.rbcn_c_lr)
        if len(self.discriminators):
            self.optimizers["discriminators"] = torch.optim.Adam(self.discriminators.parameters(), lr=config.gan_lr,
                                                                 betas=(0.5, 0.999))

    # -- epochs and batches --------------------------------------------------------------------

    @property
    def total_epochs(self) -> int:
        return sum(p.epochs for p in self.phases)

    def _phase_of(self, epoch: int) -> int:
        end = 0
        for index, phase in enumerate(self.phases):
            end += phase.epochs
            if epoch < end:
                return index
        return len(self.phases) - 1

    def _phase_start(self, index: int) -> int:
        return sum(p.epochs for p in self.phases[:index])

    def _order_for_epoch(self, epoch: int) -> List[List[int]]:
        sampler = self.train_loader.sampler
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        batches = [list(b) for b in self.train_loader.batch_sampler]
        return batches[: self.config.steps_per_epoch] if self.config.steps_per_epoch else batches

    def _loader_for(self, batches: List[List[int]]) -> DataLoader:
        """A loader over a fixed list of batches, otherwise like the user's train loader. The order
        is fixed before the epoch starts, so a resumed run continues at the exact batch. Its own
        generator (seeding the workers) keeps it from drawing from the global RNG, which a resumed
        run would otherwise draw from once more than an uninterrupted one."""
        src = self.train_loader
        workers = src.num_workers
        generator = torch.Generator().manual_seed((self.config.seed or 0) * 1_000_003 + self.epoch)
        return DataLoader(src.dataset, batch_sampler=batches, num_workers=workers, collate_fn=src.collate_fn,
                          generator=generator,
                          pin_memory=src.pin_memory, timeout=src.timeout, worker_init_fn=src.worker_init_fn,
                          multiprocessing_context=src.multiprocessing_context if workers else None,
                          prefetch_factor=src.prefetch_factor if workers else None)

    def _lr_step(self, phase: Phase) -> None:
        steps = len(self.epoch_order)
        total = phase.epochs * steps
        step = (self.epoch - self._phase_start(self.phase_index)) * steps + self.step
        warmup = round(self.config.warmup_epochs * steps)
        for name in ("student", "rbcn_c"):
            for group in self.optimizers[name].param_groups if name in self.optimizers else ():
                group["lr"] = cosine_lr(step, total, group["base_lr"], warmup,
                                        min(self.config.min_lr, group["base_lr"]))

    # -- one step ------------------------------------------------------------------------------

    def _train_step(self, images: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, float], torch.Tensor]:
        config = self.config
        decay = config.loss_weight_decay ** (self.epoch // config.loss_weight_decay_every)
        teacher_logits = None
        if self.teacher is not None and (config.kd_weight > 0 or self.gan_names):
            with torch.no_grad():
                teacher_logits = self.teacher(images)
            real = self.teacher_taps.take()
        logits = self.ddp(images)
        fake = self.student_taps.take()

        terms: Dict[str, torch.Tensor] = {"ce": config.ce_weight * F.cross_entropy(logits, labels)}
        if teacher_logits is not None and config.kd_weight > 0:
            terms["kd"] = config.kd_weight * kd_loss(logits, teacher_logits, config.kd_temperature)
        if self.gan_names:
            self._discriminator_step(real, fake)
            self.discriminators.requires_grad_(False)  # the student's term must not train D
            terms["gan"] = config.gan_weight * decay * sum(
                adversarial_loss(self._discriminator(n)(fake[n])) for n in self.gan_names)
            self.discriminators.requires_grad_(True)
        for name, value in extra_losses(self.model).items():  # RBCN's kernel loss (lambda1 inside)
            terms[name] = decay * value
        if self.center_loss is not None:
            features = self.center_taps.take()[self.center_name]
            terms["center"] = self.center_weight * self.center_loss(features, labels)

        loss = sum(terms.values())
        for name in ("student", "rbcn_c"):
            if name in self.optimizers:
                self.optimizers[name].zero_grad(set_to_none=True)
        loss.backward()
        for name in ("student", "rbcn_c"):
            if name in self.optimizers:
                self.optimizers[name].step()
        if self.center_loss is not None:
            self.center_loss.update(features, labels, config.center_lr, _all_reduce_sum)
        return loss.detach(), {k: float(v.detach()) for k, v in terms.items()}, logits.detach()

    def _discriminator(self, feature: str) -> nn.Module:
        return self.discriminators[_discriminator_key(feature)]

    def _discriminator_step(self, real: Dict[str, torch.Tensor], fake: Dict[str, torch.Tensor]) -> None:
        """RBCN algorithm 1, lines 10-11: one step of every discriminator before the student's."""
        optimizer = self.optimizers["discriminators"]
        optimizer.zero_grad(set_to_none=True)
        loss = sum(discriminator_loss(self._discriminator(n)(real[n]), self._discriminator(n)(fake[n].detach()))
                   for n in self.gan_names)
        loss.backward()
        _average_gradients(self.discriminators.parameters())
        optimizer.step()
        self.epoch_stats["disc_sum"] = self.epoch_stats.get("disc_sum", 0.0) + float(loss.detach()) * len(next(iter(real.values())))

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> Tuple[nn.Module, History]:
        config = self.config
        start_time = time.time()
        if self.is_main and self.run_dir:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.tensorboard = _tensorboard(self.run_dir) if self.is_main and self.run_dir else None
        if self.resume_path is None and config.evaluate_initial and self.is_main and self.val_loader is not None:
            self.history.initial["student_val_acc"] = evaluate(self.model, self.val_loader, self.device,
                                                               config.progress, "student before")["acc"]
            if self.teacher is not None:
                self.history.initial["teacher_val_acc"] = evaluate(self.teacher, self.val_loader, self.device,
                                                                   config.progress, "teacher")["acc"]
        try:
            with _StopRequest(self._log) as stop:
                while self.epoch < self.total_epochs:
                    self._run_epoch(stop)
        finally:
            for taps in (self.student_taps, self.teacher_taps, self.center_taps):
                if taps is not None:
                    taps.remove()
            if self.tensorboard is not None:
                self.tensorboard.close()
        self.history.checkpoint = str(self.last_checkpoint) if self.last_checkpoint else None
        if self.is_main and config.progress:
            self._log(self._summary(time.time() - start_time))
        return self.model.eval(), self.history

    def _run_epoch(self, stop: _StopRequest) -> None:
        config = self.config
        phase_index = self._phase_of(self.epoch)
        if phase_index != self.phase_index:  # a new BiPer stage: switch the layers, fresh optimizers
            self.phase_index = phase_index
            self._build_optimizers()
            self.history.best_val_acc = self.history.best_epoch = None  # stage-1 accuracy is not binary accuracy
        phase = self.phases[self.phase_index]
        if phase.biper_stage is not None and self.step == 0:
            if any(int(m.stage) != phase.biper_stage for _, m in binary_layers(self.model) if hasattr(m, "stage")):
                set_stage(self.model, phase.biper_stage)
        if self.epoch_order is None:
            self.epoch_order = self._order_for_epoch(self.epoch)
        batches = self.epoch_order
        bar = tqdm(total=len(batches), initial=self.step, disable=not (config.progress and self.is_main),
                   desc=f"epoch {self.epoch + 1}/{self.total_epochs} {phase.name}", dynamic_ncols=True)
        stats = self.epoch_stats
        segment_start, segment_images = time.time(), 0
        self.model.train()
        for images, labels in self._loader_for(batches[self.step:]):
            images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            self._lr_step(phase)
            loss, terms, logits = self._train_step(images, labels)
            n = len(labels)
            stats["count"] = stats.get("count", 0.0) + n
            stats["loss_sum"] = stats.get("loss_sum", 0.0) + float(loss) * n
            stats["correct"] = stats.get("correct", 0.0) + float((logits.argmax(1) == labels).sum())
            for key, value in terms.items():
                stats[f"{key}_sum"] = stats.get(f"{key}_sum", 0.0) + value * n
            self.step += 1
            segment_images += n * self.world
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss_sum'] / stats['count']:.3f}",
                            acc=f"{stats['correct'] / stats['count']:.3f}",
                            img_s=f"{segment_images / max(time.time() - segment_start, 1e-9):.0f}",
                            lr=f"{self.optimizers['student'].param_groups[0]['lr']:.2g}")
            if self._stop_requested(stop):
                bar.close()
                path = self._save_training_state()
                where = (f"saved {path}" if path else "rank 0 saved the checkpoint" if not self.is_main
                         else "nothing saved (no run_dir)")
                raise TrainingInterrupted(
                    f"training interrupted at epoch {self.epoch + 1}, step {self.step}; {where}. Resume with "
                    f"FinetuneConfig(resume={str(path)!r}, ...) or `binarize finetune --resume {path}`", path)
            if config.checkpoint_every and self.step % config.checkpoint_every == 0 and self.step < len(batches):
                self._save_training_state()
        bar.close()
        self._finish_epoch(phase, segment_images / max(time.time() - segment_start, 1e-9))

    def _stop_requested(self, stop: _StopRequest) -> bool:
        """All ranks must stop at the same step, so the flag is agreed on with an all-reduce."""
        flag = torch.tensor(float(stop.requested))
        if self.world > 1:
            flag = flag.to(self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _finish_epoch(self, phase: Phase, images_per_s: float) -> None:
        config, stats = self.config, self.epoch_stats
        if self.bn_refresh:
            refresh_batchnorm(self.model, self._loader_for(self.epoch_order), self.device)
        keys = sorted(stats)
        totals = torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=self.device)
        _all_reduce_sum(totals)
        totals = dict(zip(keys, totals.tolist()))
        count = totals["count"]
        row: Dict[str, Any] = {"epoch": self.epoch + 1, "phase": phase.name,
                               "lr": self.optimizers["student"].param_groups[0]["lr"],
                               "train_loss": totals["loss_sum"] / count, "train_acc": totals["correct"] / count}
        for key in keys:
            if key.endswith("_sum") and key != "loss_sum":
                row[f"train_{key[:-4]}"] = totals[key] / count
        if self.is_main and self.val_loader is not None:
            result = evaluate(self.model, self.val_loader, self.device, config.progress, "validation")
            row.update(val_loss=result["loss"], val_acc=result["acc"])
        row["images_per_s"] = images_per_s
        self.history.epochs.append(row)
        final_phase = self.phase_index == len(self.phases) - 1
        improved = final_phase and "val_acc" in row and (self.history.best_val_acc is None
                                                         or row["val_acc"] > self.history.best_val_acc)
        if improved:
            self.history.best_val_acc, self.history.best_epoch = row["val_acc"], row["epoch"]
        if self.is_main:
            self._log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        self.epoch, self.step = self.epoch + 1, 0
        self.epoch_order, self.epoch_stats = None, {}
        if self.is_main and self.run_dir:
            if improved:
                ckpt.atomic_save(ckpt.student_checkpoint(self.model, config.recipe), self.run_dir / "best.pt")
            self._write_metrics()
        self._save_training_state()
        if self.world > 1:
            dist.barrier()  # the other ranks wait for rank 0's evaluation and files

    # -- checkpoints -----------------------------------------------------------------------------

    def _loader_generators(self) -> Dict[str, torch.Generator]:
        found = {}
        for key, owner in (("loader", self.train_loader), ("sampler", self.train_loader.sampler)):
            generator = getattr(owner, "generator", None)
            if isinstance(generator, torch.Generator) and all(generator is not g for g in found.values()):
                found[key] = generator
        return found

    def _training_state(self) -> Dict[str, Any]:
        distributed_order = isinstance(self.train_loader.sampler, DistributedSampler)
        order = None
        if self.epoch_order is not None and not distributed_order:  # a DistributedSampler's order is replayed
            order = {"indices": torch.tensor([i for b in self.epoch_order for i in b], dtype=torch.int64),
                     "sizes": torch.tensor([len(b) for b in self.epoch_order], dtype=torch.int64)}
        return {
            "format": ckpt.FORMAT, "kind": "finetune", "version": 1,
            "recipe": self.config.recipe, "config": self.config.to_data(),
            "phases": [dataclasses.asdict(p) for p in self.phases], "phase": self.phase_index,
            "epoch": self.epoch, "step": self.step, "world_size": self.world,
            "model": _cpu(self.model.state_dict()),
            "discriminators": _cpu(self.discriminators.state_dict()),
            "center_loss": _cpu(self.center_loss.state_dict()) if self.center_loss is not None else None,
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "epoch_order": order, "epoch_stats": dict(self.epoch_stats),
            "history": dataclasses.asdict(self.history),
            "rng": ckpt.rng_state(),
            "loader_rng": {k: g.get_state() for k, g in self._loader_generators().items()},
        }

    def _save_training_state(self) -> Optional[Path]:
        if not (self.is_main and self.run_dir):
            return None
        folder = self.run_dir / "checkpoints"
        path = ckpt.atomic_save(self._training_state(), folder / ckpt.checkpoint_name(self.epoch, self.step))
        ckpt.prune_checkpoints(folder, self.config.keep_checkpoints)
        self.last_checkpoint = path
        return path

    def _restore(self, state: Dict[str, Any]) -> None:
        path = self.resume_path
        if state.get("world_size", 1) != self.world and state["step"] != 0:
            raise ckpt.CheckpointError(f"{path} was saved mid-epoch by {state['world_size']} process(es); resume it "
                                       f"with the same number ({self.world} now), or from an epoch-end checkpoint")
        self.phase_index, self.epoch, self.step = state["phase"], state["epoch"], state["step"]
        ckpt.load_state(self.model, state["model"], path)  # BiPer's stage is a buffer: it comes back too
        try:
            self.discriminators.load_state_dict(state["discriminators"])
            if self.center_loss is not None:
                self.center_loss.load_state_dict(state["center_loss"])
            self._build_optimizers()
            if set(state["optimizers"]) != set(self.optimizers):
                raise ValueError(f"it has optimizers {sorted(state['optimizers'])}, this run {sorted(self.optimizers)}")
            for name, optimizer in self.optimizers.items():
                optimizer.load_state_dict(state["optimizers"][name])
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            raise ckpt.CheckpointError(f"{path} does not fit this run (different loss options or model?): {err}") from err
        order = state["epoch_order"]
        if self.step and order is None:
            self.epoch_order = self._order_for_epoch(self.epoch)
        elif order is not None:
            flat = order["indices"].tolist()
            sizes = order["sizes"].tolist()
            starts = [sum(sizes[:i]) for i in range(len(sizes))]
            self.epoch_order = [flat[s:s + n] for s, n in zip(starts, sizes)]
        self.epoch_stats = dict(state["epoch_stats"])
        self.history = History(**state["history"])
        ckpt.set_rng_state(state["rng"])
        generators = self._loader_generators()
        for key, generator_state in state["loader_rng"].items():
            if key in generators:
                generators[key].set_state(generator_state)
        self.last_checkpoint = path
        self._log(f"resumed from {path}: epoch {self.epoch + 1}, step {self.step}")

    # -- reporting -------------------------------------------------------------------------------

    def _log(self, message: str) -> None:
        if self.is_main and self.config.progress:
            tqdm.write(message)

    def _write_metrics(self) -> None:
        rows = self.history.epochs
        columns = list(dict.fromkeys(k for row in rows for k in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        ckpt.atomic_write_text(buffer.getvalue(), self.run_dir / "metrics.csv")
        if self.tensorboard is not None:
            row = rows[-1]
            for key, value in row.items():
                if isinstance(value, float):
                    self.tensorboard.add_scalar(key, value, row["epoch"])
        _plot_curves(rows, self.run_dir / "curves.png")

    def _summary(self, seconds: float) -> str:
        h = self.history
        lines = ["", "fine-tuning summary", "-------------------"]
        if "teacher_val_acc" in h.initial:
            lines.append(f"teacher (float) val acc   {h.initial['teacher_val_acc']:.4f}")
        if "student_val_acc" in h.initial:
            lines.append(f"student before training   {h.initial['student_val_acc']:.4f}")
        if h.epochs and "val_acc" in h.epochs[-1]:
            lines.append(f"student after training    {h.epochs[-1]['val_acc']:.4f} (epoch {h.epochs[-1]['epoch']})")
        if h.best_val_acc is not None:
            lines.append(f"best val acc, last stage  {h.best_val_acc:.4f} (epoch {h.best_epoch})")
        lines.append(f"epochs {self.total_epochs} ({', '.join(f'{p.name}: {p.epochs}' for p in self.phases)}), "
                     f"{seconds:.0f} s this session")
        if self.run_dir:
            lines.append(f"run folder {self.run_dir}: metrics.csv, best.pt, checkpoints/ (last: {self.last_checkpoint})")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------- helpers

def _method(model: nn.Module) -> Optional[str]:
    config = getattr(model, "binarize_config", None)
    return getattr(config, "method", None)


def _optimizer(config: FinetuneConfig, groups, lr: float) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=config.momentum)
    return torch.optim.Adam(groups, lr=lr)


def _cpu(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in state.items()}


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _plot_curves(rows: List[Dict[str, Any]], path: Path) -> None:
    """Loss and accuracy per epoch as a PNG, written atomically; skipped without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    epochs = [row["epoch"] for row in rows]
    figure, (loss_axis, acc_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for key, axis in (("train_loss", loss_axis), ("val_loss", loss_axis), ("train_acc", acc_axis), ("val_acc", acc_axis)):
        if all(key in row for row in rows):
            axis.plot(epochs, [row[key] for row in rows], marker="o", label=key)
    for axis, label in ((loss_axis, "loss"), (acc_axis, "accuracy")):
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.legend()
    ckpt.atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=100))
    plt.close(figure)
