"""The options of :func:`binarize.finetune` and the record of what it measured."""
from __future__ import annotations

import typing
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from ..config import VersionedConfig, added_fields, field_docs, option, parse_bool

#: The shapes ``FinetuneConfig.schedule`` names (:class:`binarize.finetune.phases.Schedule` draws them).
SCHEDULES = ("cosine", "step", "constant")


@dataclass
class FinetuneConfig(VersionedConfig):
    """Options of :func:`binarize.finetune`. Defaults follow the papers where they give a value (noted).
    A field left at None takes the student's method default (:class:`binarize.methods.TrainingPolicy`).

    Fields:
    """

    # -- schedule
    epochs: int = option(10, "epochs of the (final) binary stage")
    lr: Optional[float] = option(
        None, "its initial learning rate; None: the method's default (Adam 1e-2 for every method: "
              "benchmarks/RESULTS.md, \"Accuracy levers\"; the papers, with SGD: CBCN 0.01, BiPer stage 2 0.01, "
              "RBCN gives none)")
    two_step: bool = option(
        False, "train every binary student in two steps (Martinez et al. 2020, ReActNet): stage 1 with binary "
               "activations and real-valued weights, then stage 2 with binary weights (BiPer has its own stages "
               "and always trains them); off by default: in a budget of 8 epochs one binary stage was more "
               "accurate (benchmarks/RESULTS.md)")
    stage1_epochs: Optional[int] = option(
        None, "epochs of stage 1 (BiPer: real-valued sin(omega w) weights; two_step: the latent weights); "
              "None: as many as epochs (BiPer: if the student is in stage 1, else 0)")
    stage1_lr: float = option(1e-2, "stage 1's initial learning rate (BiPer's paper, with SGD: 0.1)")
    warmup_epochs: float = option(
        0.5, "linear warm-up at the start of each stage, in epochs (fractions allowed), then the schedule "
             "(the papers use no warm-up; at lr 1e-2 it avoids the first epochs' accuracy collapses)")
    schedule: str = option(
        "cosine", "the learning rate of each stage after the warm-up: 'cosine' (decay to min_lr at the stage's "
                  "end; BiPer), 'step' (times lr_decay every lr_decay_every epochs; CBCN on CIFAR and "
                  "ImageNet) or 'constant' (CBCN's LeNet)")
    min_lr: float = option(0.0, "the learning rate the cosine decay ends at")
    lr_decay: float = option(
        0.9, "schedule='step': the factor (CBCN's 'degradation of 10 percent' read as 0.9; 0.1 is the other "
              "reading)")
    lr_decay_every: int = option(60, "schedule='step': epochs between decays, counted from the stage's start "
                                     "(CBCN: 60 on CIFAR, 20 on ImageNet)")
    optimizer: str = option("adam", "'adam' or 'sgd' (with momentum; the three papers' choice)")
    momentum: float = option(0.9, "SGD momentum (0.9 in all three papers)")
    weight_decay: float = option(
        0.0, "on conv/linear weights only; never on BatchNorm, biases, scales or a method's own "
             "parameter groups such as RBCN's C (CBCN and RBCN, ResNet-18: 1e-4; decay pulls latent binary "
             "weights to 0, where their signs flip)")
    steps_per_epoch: Optional[int] = option(None, "use only the first N batches of each epoch (quick runs); None: all")
    # -- losses
    ce_weight: float = option(1.0, "weight of the cross-entropy with the labels")
    kd_weight: float = option(1.0, "weight of logit distillation from the teacher (0 turns it off)")
    kd_temperature: float = option(4.0, "distillation temperature (Hinton's T = 4)")
    gan_weight: Optional[float] = option(
        None, "lambda2 of RBCN eq. 4, the adversarial feature loss (CIFAR: 0.01; ImageNet: 0.1); 0 turns "
              "the discriminators off; None: the method's default (RBCN: 0.01), else off")
    gan_features: Union[str, Sequence[str]] = option(
        "auto", "module names whose outputs are compared (the same name in teacher and student); 'auto': "
                "the BatchNorm after each binary layer (the layer itself if none follows)", cli=False)
    gan_pool: int = option(
        2, "each compared map is average-pooled to gan_pool x gan_pool, flattened and fed to four Linear "
           "layers of width gan_hidden (RBCN: 'four basic blocks of a linear layer and a LeakyReLU'; "
           "pooling and width are not given in the paper)")
    gan_hidden: int = option(256, "width of the discriminators' Linear layers")
    gan_reduction: str = option(
        "mean", "how lambda2's term adds up the samples of a batch: 'mean' or 'sum' (RBCN eq. 4, 'lambda2/2 "
                "sum_l sum_i ||1 - D(T_i^l; Y)||^2', sums, i being the filter index; the discriminators give "
                "one probability per sample and layer, so 'sum' sums over the batch and grows with its size)")
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
    bn_refresh_mode: str = option(
        "stats", "what bn_refresh updates (RBCN algorithm 1, line 17: 'Update all the parameters of the batch "
                 "normalization layers'; section 2: 'the batch normalization (BN) layers are updated with W and "
                 "C fixed after each epoch'): 'stats' recomputes the running statistics; 'affine' first trains "
                 "the BatchNorm weights and biases for one pass over the epoch's batches with the objective, "
                 "everything else frozen, then recomputes the statistics")
    bn_final_check: bool = option(
        True, "after the last epoch, recompute the BatchNorm statistics from training batches and keep them "
              "instead of the running averages only where they classify other training batches better in eval "
              "mode by over 3 points (binarize.finetune.evaluation.check_batchnorm): it rescues a last epoch whose "
              "running averages no longer fit the weights; skipped where bn_refresh recomputes them every epoch")
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

    # Version 2 added schedule, lr_decay, lr_decay_every, gan_reduction and bn_refresh_mode; their
    # defaults are version 1's behaviour. Version 3 added two_step and changed the defaults of the
    # recipe (VERSION_2_DEFAULTS): data of version 2 keeps what it meant. Version 4 raised the learning
    # rates and added a warm-up (VERSION_3_DEFAULTS). Version 5 added bn_final_check, off in older data.
    version = 5
    upgrades = {1: added_fields, 2: lambda options: {**VERSION_2_DEFAULTS, **options},
                3: lambda options: {**VERSION_3_DEFAULTS, **options},
                4: lambda options: {"bn_final_check": False, **options}}

    def __post_init__(self):
        for name, allowed in (("optimizer", ("sgd", "adam")), ("schedule", SCHEDULES),
                              ("gan_reduction", ("mean", "sum")), ("bn_refresh_mode", ("stats", "affine"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected one of {', '.join(map(repr, allowed))}")
        if self.lr_decay_every < 1:
            raise ValueError(f"lr_decay_every={self.lr_decay_every}: expected a positive number of epochs")
        if self.epochs < 0 or (self.stage1_epochs or 0) < 0:
            raise ValueError("epochs and stage1_epochs must be >= 0")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch={self.steps_per_epoch}: expected a positive number or None")
        if isinstance(self.gan_features, str):
            if self.gan_features != "auto":
                self.gan_features = (self.gan_features,)
        else:  # a tuple, as plain data's lists come back
            self.gan_features = tuple(self.gan_features)

    @classmethod
    def paper(cls, method: str, dataset: str, **overrides) -> "FinetuneConfig":
        """The training recipe ``method``'s paper reports for ``dataset`` (its record's
        ``paper_recipes``), with ``overrides`` on top; fields the paper leaves open keep binarize's
        defaults. Some recipes also set convert options (RBCN's lambda1):
        ``binarize.convert(model, method, **binarize.methods.paper_recipe(method, dataset).convert)``."""
        from ..methods import paper_recipe

        return cls(**{**paper_recipe(method, dataset).finetune, **overrides})


#: The defaults version 3 changed, as version 2 had them (two_step did not exist: one binary stage).
VERSION_2_DEFAULTS = {"lr": 0.01, "stage1_lr": 0.1, "optimizer": "sgd", "weight_decay": 1e-4, "gan_weight": 0.01,
                      "two_step": False}
#: The defaults version 4 changed, as version 3 had them.
VERSION_3_DEFAULTS = {"lr": 2e-3, "stage1_lr": 2e-3, "warmup_epochs": 0.0}

# The fields' help texts are the one source of their documentation (also of `binarize finetune --help`).
FinetuneConfig.__doc__ = FinetuneConfig.__doc__.rstrip(" ") + field_docs(FinetuneConfig) + "\n"

#: What a field left at None means when the student's method gives no default: the loss terms off,
#: Adam's learning rate 1e-2 (2e-3 before version 4).
FALLBACKS = {"center_loss_weight": 0.0, "bn_refresh": False, "gan_weight": 0.0, "lr": 1e-2}


def method_defaults(config: FinetuneConfig, policy) -> Dict[str, Any]:
    """``center_loss_weight``, ``bn_refresh``, ``gan_weight`` and ``lr`` as this run uses them: the config's value,
    else the method's default (``policy.finetune_defaults``), else :data:`FALLBACKS`."""
    return {name: getattr(config, name) if getattr(config, name) is not None
            else policy.finetune_defaults.get(name, fallback) for name, fallback in FALLBACKS.items()}


def paper_table() -> str:
    """README's table: every paper recipe next to binarize's defaults, one row per field a recipe sets
    ("·": the paper does not give it, binarize's default applies; "method default": the method's own)."""
    from ..methods import METHODS

    columns = []  # (method, datasets, recipe), datasets sharing a recipe in one column
    for name, method in METHODS.items():
        shared: Dict[int, Tuple[Any, List[str]]] = {}
        for dataset, recipe in method.paper_recipes.items():
            shared.setdefault(id(recipe), (recipe, []))[1].append(dataset)
        columns += [(name, datasets, recipe) for recipe, datasets in shared.values()]
    defaults = FinetuneConfig()
    rows = [(f"`{f.name}`", getattr(defaults, f.name), "finetune", f.name) for f in fields(FinetuneConfig)
            if any(f.name in recipe.finetune for _, _, recipe in columns)]
    for name, _, recipe in columns:
        for key in recipe.convert:
            label = f"`{key}` (convert)"
            if label not in [row[0] for row in rows]:
                rows.append((label, getattr(METHODS[name].config(), key), "convert", key))

    def cell(value: Any) -> str:
        return "method default" if value is None else f"{value:g}" if isinstance(value, float) else str(value)

    lines = ["| field | binarize default | " + " | ".join(f"{n} {', '.join(d)}" for n, d, _ in columns) + " |",
             "|---" * (len(columns) + 2) + "|"]
    for label, default, part, key in rows:
        values = [cell(getattr(r, part)[key]) if key in getattr(r, part) else "·" for _, _, r in columns]
        lines.append(f"| {label} | {cell(default)} | " + " | ".join(values) + " |")
    return "\n".join(lines)


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
    batchnorm_check: Optional[Dict[str, Any]] = None  # bn_final_check's measurement and choice
    checkpoint: Optional[str] = None  # the last training checkpoint written
