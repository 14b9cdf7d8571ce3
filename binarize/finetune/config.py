"""The options of :func:`binarize.finetune` and the record of what it measured."""
from __future__ import annotations

import typing
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from ..config import VersionedConfig, field_docs, option, parse_bool


@dataclass
class FinetuneConfig(VersionedConfig):
    """Options of :func:`binarize.finetune`. Defaults follow the papers where they give a value (noted).
    A field left at None takes the student's method default (:class:`binarize.methods.TrainingPolicy`).

    Fields:
    """

    # -- schedule
    epochs: int = option(10, "epochs of the (final) binary stage")
    lr: float = option(0.01, "its initial learning rate (CBCN, RBCN: 0.01; BiPer stage 2: 0.01)")
    stage1_epochs: Optional[int] = option(
        None, "epochs of a two-stage method's stage 1 (BiPer: real-valued sin(omega w) weights); None: as "
              "many as epochs if the student is in stage 1, else 0")
    stage1_lr: float = option(0.1, "stage 1's initial learning rate (BiPer: 0.1)")
    warmup_epochs: float = option(
        0.0, "linear warm-up at the start of each stage, in epochs (fractions allowed), then cosine decay "
             "to min_lr at the stage's end (BiPer: cosine; the papers use no warm-up)")
    min_lr: float = option(0.0, "the learning rate the cosine decay ends at")
    optimizer: str = option("sgd", "'sgd' (with momentum) or 'adam'")
    momentum: float = option(0.9, "SGD momentum (0.9 in all three papers)")
    weight_decay: float = option(
        1e-4, "on conv/linear weights only; never on BatchNorm, biases, scales or a method's own "
              "parameter groups such as RBCN's C (1e-4: CBCN and RBCN, ResNet-18)")
    steps_per_epoch: Optional[int] = option(None, "use only the first N batches of each epoch (quick runs); None: all")
    # -- losses
    ce_weight: float = option(1.0, "weight of the cross-entropy with the labels")
    kd_weight: float = option(1.0, "weight of logit distillation from the teacher (0 turns it off)")
    kd_temperature: float = option(4.0, "distillation temperature (Hinton's T = 4)")
    gan_weight: float = option(
        0.01, "lambda2 of RBCN eq. 4, the adversarial feature loss (CIFAR: 0.01; ImageNet: 0.1); 0 turns "
              "the discriminators off")
    gan_features: Union[str, Sequence[str]] = option(
        "auto", "module names whose outputs are compared (the same name in teacher and student); 'auto': "
                "the BatchNorm after each binary layer (the layer itself if none follows)", cli=False)
    gan_pool: int = option(
        2, "each compared map is average-pooled to gan_pool x gan_pool, flattened and fed to four Linear "
           "layers of width gan_hidden (RBCN: 'four basic blocks of a linear layer and a LeakyReLU'; "
           "pooling and width are not given in the paper)")
    gan_hidden: int = option(256, "width of the discriminators' Linear layers")
    gan_lr: float = option(1e-4, "the discriminators' Adam learning rate (betas 0.5, 0.999; not given in the paper)")
    rbcn_c_lr: float = option(1e-2, "eta2 of RBCN eq. 15, the learning rate of the matrices C (same schedule shape)")
    loss_weight_decay: float = option(
        0.9, "lambda1 and lambda2 (the method's own losses and gan_weight) are multiplied by this every "
             "loss_weight_decay_every epochs (RBCN: 0.9 every 60 on CIFAR)")
    loss_weight_decay_every: int = option(60, "see loss_weight_decay")
    center_loss_weight: Optional[float] = option(
        None, "lambda of the center loss on the classifier's input (Wen et al., 2016); None: the method's "
              "default (CBCN: 0.01), else off")
    center_lr: float = option(0.5, "alpha, the centers' update rate (Wen et al.: 0.5)")
    bn_refresh: Optional[bool] = option(
        None, "recompute the BatchNorm statistics after each epoch with the weights fixed (RBCN, algorithm 1 "
              "line 17); None: the method's default (on for RBCN), else off")
    # -- run
    run_dir: Optional[str] = option(
        None, "where checkpoints, metrics.csv, curves.png and best.pt go; None: nothing is written", cli=False)
    keep_checkpoints: int = option(3, "how many training checkpoints to keep (the newest)")
    checkpoint_every: int = option(0, "also save every N steps within an epoch (0: at epoch ends only)")
    resume: Optional[str] = option(
        None, "a training checkpoint or a run folder (its newest checkpoint) to continue from", cli=False)
    seed: Optional[int] = option(0, "seeds torch, numpy and random at the start of a fresh run, plus the rank "
                                    "(None: leave them)", cli=False)
    deterministic: bool = option(
        False, "torch.use_deterministic_algorithms(True) (needed for bit-exact resume on GPU)", cli=False)
    device: Optional[str] = option(None, "None picks cuda:LOCAL_RANK when available, else the CPU", cli=False)
    progress: bool = option(True, "tqdm progress bars and the final summary (rank 0 only)", cli=False)
    evaluate_initial: bool = option(True, "measure teacher and student accuracy before training (for the summary)")
    recipe: Optional[Dict[str, Any]] = option(
        None, "plain-data description of how the student was built (see binarize.checkpoint), stored in "
              "every checkpoint so the run can be rebuilt from the file; the CLI fills it in", cli=False)

    def __post_init__(self):
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer={self.optimizer!r}: expected 'sgd' or 'adam'")
        if self.epochs < 0 or (self.stage1_epochs or 0) < 0:
            raise ValueError("epochs and stage1_epochs must be >= 0")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch={self.steps_per_epoch}: expected a positive number or None")
        if isinstance(self.gan_features, str):
            if self.gan_features != "auto":
                self.gan_features = (self.gan_features,)
        else:  # a tuple, as plain data's lists come back
            self.gan_features = tuple(self.gan_features)


# The fields' help texts are the one source of their documentation (also of `binarize finetune --help`).
FinetuneConfig.__doc__ = FinetuneConfig.__doc__.rstrip(" ") + field_docs(FinetuneConfig) + "\n"

#: What a field left at None means when the student's method gives no default.
OFF = {"center_loss_weight": 0.0, "bn_refresh": False}


def method_defaults(config: FinetuneConfig, policy) -> Dict[str, Any]:
    """``center_loss_weight`` and ``bn_refresh`` as this run uses them: the config's value, else the
    method's default (``policy.finetune_defaults``), else off."""
    return {name: getattr(config, name) if getattr(config, name) is not None
            else policy.finetune_defaults.get(name, off) for name, off in OFF.items()}


def cli_options() -> Dict[str, Tuple[Callable[[str], Any], str]]:
    """The fields the command line offers as ``--name``: name -> (parser of the text, help)."""
    hints = typing.get_type_hints(FinetuneConfig)
    result = {}
    for f in fields(FinetuneConfig):
        if not f.metadata["cli"]:
            continue
        kind = hints[f.name]
        if typing.get_origin(kind) is Union:  # Optional[X]
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        parse = parse_bool if kind is bool else kind
        result[f.name] = (parse, f"{f.metadata['help']} (default {f.default})")
    return result


@dataclass
class History:
    """What :func:`finetune` measured: one row per epoch plus the numbers around them."""

    epochs: List[Dict[str, Any]] = field(default_factory=list)  # epoch, phase, lr, train_*, val_*, images_per_s
    initial: Dict[str, float] = field(default_factory=dict)  # teacher_val_acc, student_val_acc before training
    best_val_acc: Optional[float] = None  # best of the final (binary) stage
    best_epoch: Optional[int] = None
    checkpoint: Optional[str] = None  # the last training checkpoint written
