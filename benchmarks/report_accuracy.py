"""Section 1 of the evidence report: accuracy of every method and one-factor ablations.

Every run is a plain use of the public API: a float teacher trained with ``binarize.finetune``
(no teacher), converted with ``binarize.convert`` and fine-tuned with ``binarize.finetune`` against
that teacher. Each run's result is one JSON file in the cache folder (written atomically), so an
interrupted report resumes where it stopped; the teachers are cached as state_dict files.
"""
from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

import binarize
from binarize import checkpoint as ckpt
from binarize.datasets import make_loaders
from binarize.finetune import FinetuneConfig, finetune
from binarize.finetune.config import VERSION_2_DEFAULTS, VERSION_3_DEFAULTS
from binarize.methods import paper_recipe, training_policy
from binarize.models import resnet_small

DATASETS = ("mnist5k", "mnist5k-rot")
BATCH_SIZE = 128
TEST_BATCH_SIZE = 500


def lenet(num_classes: int = 10, widths: Sequence[int] = (10, 20, 40, 80)) -> nn.Module:
    """CBCN's MNIST LeNet (section 4.1: four 3x3 conv layers, max-pooling and ReLU after each, dropout
    before the classifier) at its 10-20-40-80 kernel stage, with a BatchNorm after each conv (the
    binary layers need it), for 32x32 inputs."""
    layers: List[nn.Module] = []
    channels = 1
    for width in widths:
        layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                   nn.MaxPool2d(2)]
        channels = width
    spatial = 32 // 2 ** len(widths)
    return nn.Sequential(*layers, nn.Flatten(), nn.Dropout(0.5), nn.Linear(channels * spatial * spatial, num_classes))


def resnet(num_classes: int = 10) -> nn.Module:
    """binarize.models.resnet_small with one basic block per stage (16-32-64): ResNet-8."""
    return resnet_small(num_classes=num_classes, in_channels=1, blocks=(1, 1, 1))


#: name -> (constructor, input side). LeNet takes CBCN's 32x32 frame, the ResNet MNIST's own 28x28.
NETS = {"lenet": (lenet, 32), "resnet8": (resnet, 28)}


@dataclass(frozen=True)
class Variant:
    """One row of the tables: a method with its conversion options and fine-tuning overrides."""

    label: str
    method: str  # "float" for the teacher itself
    convert: Dict[str, object] = field(default_factory=dict)
    finetune: Dict[str, object] = field(default_factory=dict)

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.label).strip("-")


FLOAT = Variant("float", "float")
#: The method list, each with its defaults.
METHODS = (
    Variant("xnor", "xnor"),
    Variant("bireal", "bireal"),
    Variant("biper w0=20", "biper", {"omega": 20.0}),
    Variant("biper auto", "biper", {"omega": "auto"}),
    Variant("cbcn K=1", "cbcn", {"orientations": 1}),
    Variant("cbcn K=2", "cbcn", {"orientations": 2}),
    Variant("cbcn K=4", "cbcn", {"orientations": 4}),
    Variant("rbcn", "rbcn"),
)
#: CBCN's two layouts (binarize.methods.cbcn): "max" (a max over orientations after every layer) and
#: "widen" (the paper's K-orientation feature maps), K = 1, 2, 4, named explicitly whatever the default.
CBCN_LAYOUTS = tuple(Variant(f"cbcn {layout} K={k}", "cbcn", {"orientations": k, "layout": layout})
                     for layout in ("max", "widen") for k in (1, 2, 4))
#: One factor changed from "cbcn widen K=4" (LeNet, MNIST-rot): CBCN table 3's centre loss and doubled
#: shortcuts, RBCN table 2's discriminators.
CBCN_LAYOUT_ABLATIONS = tuple(
    (Variant(f"cbcn widen K=4 {change}", "cbcn", {"orientations": 4, "layout": "widen", **convert}, finetune),
     "cbcn widen K=4")
    for change, convert, finetune in (("-center loss", {}, {"center_loss_weight": 0.0}),
                                      ("-double skip", {"double_skip": False}, {}),
                                      ("-GAN", {}, {"gan_weight": 0.0})))


def paper_variant(method: str, dataset: str, convert: Optional[Dict[str, object]] = None) -> Variant:
    """A method trained with its paper's recipe for ``dataset`` (``FinetuneConfig.paper``: optimizer,
    learning rate and schedule shape, which losses are on, convert options such as RBCN's lambda1),
    at the report's own length: the recipe's epochs and decay intervals (50-200 epochs) are left out.
    The cost rule is off (``keep_costly_float=False``): the papers binarize every conv but the first and
    the last, however narrow (LeNet's 10-channel conv)."""
    recipe = paper_recipe(method, dataset)
    lengths = ("epochs", "stage1_epochs", "lr_decay_every", "loss_weight_decay_every")
    finetune = {k: v for k, v in recipe.finetune.items() if k not in lengths}
    label = f"{method} paper {dataset}" + "".join(f" {v}" if k == "layout" else f" K={v}" if k == "orientations"
                                                  else f" {k}={v}" for k, v in sorted((convert or {}).items()))
    return Variant(label, method, {"keep_costly_float": False, **recipe.convert, **(convert or {})}, finetune)


#: The papers' own recipes (issue 10's presets): CBCN's MNIST recipe in both layouts; BiPer and RBCN
#: give none for MNIST, so their ImageNet / CIFAR-10 recipes stand in.
PAPER_PRESETS = (paper_variant("cbcn", "mnist-rot", {"orientations": 4, "layout": "widen"}),
                 paper_variant("cbcn", "mnist-rot", {"orientations": 4, "layout": "max"}),
                 paper_variant("biper", "imagenet"), paper_variant("rbcn", "cifar10"))

#: One factor changed from a method's default recipe; (variant, the METHODS label it is compared to).
ABLATIONS = (
    (Variant("xnor +double skip", "xnor", {"double_skip": True}), "xnor"),
    (Variant("bireal -double skip", "bireal", {"double_skip": False}), "bireal"),
    (Variant("cbcn K=4 -double skip", "cbcn", {"orientations": 4, "double_skip": False}), "cbcn K=4"),
    (Variant("bireal -KD", "bireal", {}, {"kd_weight": 0.0}), "bireal"),
    (Variant("cbcn K=4 -KD", "cbcn", {"orientations": 4}, {"kd_weight": 0.0}), "cbcn K=4"),
    (Variant("rbcn -KD", "rbcn", {}, {"kd_weight": 0.0}), "rbcn"),
    (Variant("bireal -GAN", "bireal", {}, {"gan_weight": 0.0}), "bireal"),
    (Variant("cbcn K=4 -GAN", "cbcn", {"orientations": 4}, {"gan_weight": 0.0}), "cbcn K=4"),
    (Variant("rbcn -GAN", "rbcn", {}, {"gan_weight": 0.0}), "rbcn"),
    (Variant("rbcn -kernel loss", "rbcn", {"kernel_loss_weight": 0.0}), "rbcn"),
    (Variant("rbcn -BN refresh", "rbcn", {}, {"bn_refresh": False}), "rbcn"),
    (Variant("cbcn K=4 -center loss", "cbcn", {"orientations": 4}, {"center_loss_weight": 0.0}), "cbcn K=4"),
)


#: One lever of the default recipe changed back (or a left-out one added); (variant, the METHODS label).
LEVERS = (
    (Variant("xnor -RSign", "xnor", {"input_threshold": False}), "xnor"),
    (Variant("xnor +RPReLU", "xnor", {"rprelu": True}), "xnor"),
    (Variant("xnor -cost rule", "xnor", {"keep_costly_float": False}), "xnor"),
    (Variant("xnor lr 2e-3", "xnor", {}, {"lr": 2e-3, "stage1_lr": 2e-3}), "xnor"),
    (Variant("xnor -warm-up", "xnor", {}, {"warmup_epochs": 0.0}), "xnor"),
    (Variant("xnor SGD", "xnor", {}, {k: VERSION_2_DEFAULTS[k] for k in ("optimizer", "lr", "stage1_lr")}), "xnor"),
    (Variant("xnor +two step", "xnor", {}, {"two_step": True}), "xnor"),
    (Variant("xnor +weight decay", "xnor", {}, {"weight_decay": 1e-4}), "xnor"),
    (Variant("xnor -KD", "xnor", {}, {"kd_weight": 0.0}), "xnor"),
    (Variant("bireal +GAN", "bireal", {}, {"gan_weight": 0.01}), "bireal"),
    (Variant("xnor +BN refresh", "xnor", {}, {"bn_refresh": True}), "xnor"),
)
#: Version 2's defaults (FinetuneConfig version 2; no RSign, no RPReLU, the version-2 cost rule) for the
#: same epochs: the "before" rows.
BEFORE = tuple(
    (Variant(f"{v.label} v2 recipe", v.method,
             {**v.convert, "input_threshold": False, "rprelu": False, "cost_model": "shortcut"},
             {**VERSION_3_DEFAULTS, **VERSION_2_DEFAULTS}), v.label)
    for v in METHODS if v.label in ("xnor", "bireal", "biper w0=20", "cbcn K=4", "rbcn"))
#: ABLATIONS rows left out of the full grid: made identical to a default by version 3 (the GAN is off by
#: default but for RBCN) or covered by a lever row ("xnor -KD"), to fit the grid's time.
LEFT_OUT = ("bireal -GAN", "cbcn K=4 -GAN", "bireal -KD", "cbcn K=4 -KD", "rbcn -KD")
#: METHODS rows left out of the full grid to fit its time (their choices are compared in earlier reports).
SLOW = ("biper auto", "cbcn K=1", "cbcn K=2")


#: Variants whose runs take several times the others' (16x xnor's binary MACs): run last off the ablation net.
COSTLY = ("cbcn widen K=4",)


@dataclass(frozen=True)
class Recipe:
    """Training lengths. Every student trains ``student_epochs`` epochs in all, every stage together:
    ``FinetuneConfig(epochs=...)`` with every other field at its default, ``epochs`` the largest that
    fits (:func:`epochs_within`: half of them for a two-stage run such as BiPer's)."""

    teacher_epochs: int = 4
    student_epochs: int = 8
    steps_per_epoch: Optional[int] = None
    teacher_lr: float = 3e-3  # Adam

    def tag(self) -> str:
        """Names the cache folder, so that runs of different recipes (or FinetuneConfig defaults) never
        mix; a method's own defaults name its runs' files (:func:`run_path`)."""
        steps = f"-steps{self.steps_per_epoch}" if self.steps_per_epoch else ""
        return (f"teacher{self.teacher_epochs}ep-lr{self.teacher_lr:g}_student{self.student_epochs}ep-defaults"
                f"-finetune{FinetuneConfig.version}-{_digest(FinetuneConfig().to_data())}{steps}")


def _digest(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:8]


def method_digest(name: str) -> str:
    """A short digest of a method's defaults (its convert config, version included, and its training
    policy's ``finetune_defaults``): a default changed within a config version (RPReLU switched off,
    BiPer's stage-2 learning rate) gets new runs of that method, and the other methods' runs stay."""
    method = binarize.METHODS[name]
    return _digest({"convert": method.config().to_data(), "finetune": dict(method.finetune_defaults)})


@dataclass(frozen=True)
class Grid:
    nets: Tuple[str, ...]
    datasets: Tuple[str, ...]
    seeds: Tuple[int, ...]
    methods: Tuple[Variant, ...]
    ablations: Tuple[Tuple[Variant, str], ...]
    ablation_net: str
    ablation_data: str
    recipe: Recipe
    #: The first ``full_rows`` ablations (the "before" rows) run every seed early; the others run their
    #: first two seeds early and the rest last.
    full_rows: int = 0

    def jobs(self) -> List[Tuple[str, str, Variant, int]]:
        """(net, data, variant, seed) of every student run, most wanted first, every seed of a cell
        together, so that a report cut short (``--from-cache``) has whole cells: every setting's main
        runs (the ablation setting's first), the "before" rows, the first two seeds of the other
        ablations in their order, then their other seeds, then the :data:`COSTLY` variants' main runs
        on the other nets."""
        first = (self.ablation_net, self.ablation_data)
        settings = [first] + [(n, d) for n in self.nets for d in self.datasets if (n, d) != first]
        main = [(n, d, v, s) for n, d in settings for v in self.methods for s in self.seeds]
        costly = [job for job in main if job[2].label in COSTLY and job[0] != self.ablation_net]
        main = [job for job in main if job not in costly]
        full, rest = self.ablations[:self.full_rows], self.ablations[self.full_rows:]
        before = [first + (v, s) for v, _ in full for s in self.seeds]
        early = [first + (v, s) for v, _ in rest for s in self.seeds[:2]]
        late = [first + (v, s) for v, _ in rest for s in self.seeds[2:]]
        return main + before + early + late + costly


#: The version-4 levers, run right after the "before" rows.
NEW_LEVERS = ("xnor -cost rule", "xnor lr 2e-3", "xnor -warm-up", "xnor -RSign", "xnor SGD")
#: The paper presets, each compared with its method's default row.
PRESET_ROWS = tuple(zip(PAPER_PRESETS, ("cbcn widen K=4", "cbcn K=4", "biper w0=20", "rbcn")))
#: Every method's default row (issue 10's CBCN paper layout at K = 1, 2, 4 included: the "cbcn K=k"
#: rows are the default layout, "max") on every net and dataset. Ablation order on the ablation
#: setting: the "before" rows, the version-4 levers, issue 10's rows (the widen ablations and the paper
#: presets), then the other levers and ablations.
FULL_GRID = Grid(nets=tuple(NETS), datasets=DATASETS, seeds=(0, 1, 2),
                 methods=tuple(v for v in METHODS if v.label not in SLOW) + CBCN_LAYOUTS[3:],
                 ablations=(BEFORE + tuple(a for a in LEVERS if a[0].label in NEW_LEVERS)
                            + CBCN_LAYOUT_ABLATIONS + PRESET_ROWS
                            + tuple(a for a in LEVERS if a[0].label not in NEW_LEVERS)
                            + tuple(a for a in ABLATIONS if a[0].label not in LEFT_OUT)),
                 ablation_net="lenet", ablation_data="mnist5k", recipe=Recipe(), full_rows=len(BEFORE))
SMOKE_GRID = Grid(nets=("lenet",), datasets=("mnist5k-rot",), seeds=(0,), methods=METHODS[:2],
                  ablations=ABLATIONS[1:2], ablation_net="lenet", ablation_data="mnist5k-rot",
                  recipe=Recipe(teacher_epochs=1, student_epochs=1, steps_per_epoch=3))


def _loaders(net: str, data: str, seed: int):
    return make_loaders(data, batch_size=BATCH_SIZE, test_batch_size=TEST_BATCH_SIZE, seed=seed,
                        image_size=NETS[net][1])


def _write_json(data: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt.atomic_write_text(json.dumps(data, indent=1), path)


def teacher_path(cache: Path, net: str, data: str, seed: int) -> Path:
    return cache / "teachers" / f"{net}-{data}-s{seed}.pt"


def run_path(cache: Path, net: str, data: str, variant: Variant, seed: int) -> Path:
    defaults = "" if variant.method == FLOAT.method else f"-{method_digest(variant.method)}"
    return cache / "runs" / f"{net}-{data}-{variant.slug}{defaults}-s{seed}.json"


def load_teacher(cache: Path, net: str, data: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = NETS[net][0]()
    ckpt.load_float_weights(model, teacher_path(cache, net, data, seed))
    return model.eval()


def train_teacher(cache: Path, net: str, data: str, seed: int, recipe: Recipe) -> dict:
    """The float model every student of this (net, data, seed) starts from; its test accuracy is the
    "float" row. Cached: the weights file and the run's JSON."""
    result_file = run_path(cache, net, data, FLOAT, seed)
    if result_file.is_file():
        return dict(json.loads(result_file.read_text()), cached=True)
    torch.set_num_threads(1)  # the report runs one process per core
    train_loader, test_loader, _ = _loaders(net, data, seed)
    torch.manual_seed(seed)
    model = NETS[net][0]()
    start = time.time()
    model, history = finetune(model, None, train_loader, test_loader, FinetuneConfig(
        optimizer="adam", lr=recipe.teacher_lr, weight_decay=1e-4, epochs=recipe.teacher_epochs, warmup_epochs=0.3,
        steps_per_epoch=recipe.steps_per_epoch, seed=seed, progress=False, evaluate_initial=False))
    ckpt.atomic_save(model.state_dict(), teacher_path(cache, net, data, seed))
    result = {"net": net, "data": data, "label": FLOAT.label, "method": "float", "seed": seed,
              "acc": history.epochs[-1]["val_acc"], "initial_acc": None, "train_s": time.time() - start,
              "images_per_s": statistics.mean(row["images_per_s"] for row in history.epochs)}
    _write_json(result, result_file)
    return dict(result, cached=False)


def epochs_within(student: nn.Module, budget: int, overrides: Dict[str, object]) -> int:
    """The largest ``FinetuneConfig(epochs=...)`` whose run, every stage together, takes at most
    ``budget`` epochs (a two-stage run, BiPer's or two_step's, trains ``epochs`` in each stage)."""
    policy = training_policy(student)
    for epochs in range(budget, 0, -1):
        phases = policy.training_phases(student, FinetuneConfig(**{**overrides, "epochs": epochs}))
        if sum(phase.epochs for phase in phases) <= budget:
            return epochs
    raise ValueError(f"no run fits in {budget} epochs")


def train_student(cache: Path, net: str, data: str, variant: Variant, seed: int, recipe: Recipe) -> dict:
    result_file = run_path(cache, net, data, variant, seed)
    if result_file.is_file():
        return dict(json.loads(result_file.read_text()), cached=True)
    torch.set_num_threads(1)
    train_loader, test_loader, _ = _loaders(net, data, seed)
    teacher = load_teacher(cache, net, data, seed)
    torch.manual_seed(seed)
    student = binarize.convert(teacher, variant.method, **variant.convert)
    options = {"epochs": epochs_within(student, recipe.student_epochs, variant.finetune), **variant.finetune}
    config = FinetuneConfig(**options, steps_per_epoch=recipe.steps_per_epoch, seed=seed, progress=False)
    start = time.time()
    student, history = finetune(student, teacher, train_loader, test_loader, config)
    final = history.epochs[-1]
    result = {"net": net, "data": data, "label": variant.label, "method": variant.method, "seed": seed,
              "acc": final["val_acc"], "initial_acc": history.initial.get("student_val_acc"),
              "train_acc": final["train_acc"], "train_s": time.time() - start,
              "images_per_s": statistics.mean(row["images_per_s"] for row in history.epochs)}
    _write_json(result, result_file)
    return dict(result, cached=False)


def recipe_cache(cache: Path, grid: Grid) -> Path:
    return cache / grid.recipe.tag()


def run_grid(grid: Grid, cache: Path, workers: int, log=print, from_cache: bool = False) -> List[dict]:
    """Net by net: its teachers (students need them), then its students; ``workers`` processes of one
    thread. ``cache`` is the folder of this recipe's runs (:func:`recipe_cache`). ``from_cache``: train
    nothing, return the runs already in the cache (the missing ones are counted in the log)."""
    jobs = grid.jobs()
    if from_cache:
        teachers = sorted({(n, d, s) for n, d, _, s in jobs})
        files = [run_path(cache, n, d, FLOAT, s) for n, d, s in teachers]
        files += [run_path(cache, n, d, v, s) for n, d, v, s in jobs]
        present = [f for f in files if f.is_file()]
        log(f"  from the cache: {len(present)} of {len(files)} runs present, {len(files) - len(present)} missing")
        return [dict(json.loads(f.read_text()), cached=True) for f in present]
    results = []
    groups: List[List[Tuple[str, str, Variant, int]]] = []  # consecutive jobs of one (net, data)
    for job in jobs:
        if groups and groups[-1][0][:2] == job[:2]:
            groups[-1].append(job)
        else:
            groups.append([job])
    trained = set()  # teachers already collected (a setting can come back later in the order)
    # spawn: a forked child would inherit the parent's OpenMP state, which can deadlock torch.
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        for group in groups:
            teachers = sorted({(n, d, s) for n, d, _, s in group} - trained)
            trained.update(teachers)
            results += _collect(pool, [(train_teacher, (cache, n, d, s, grid.recipe)) for n, d, s in teachers], log)
            results += _collect(pool, [(train_student, (cache, n, d, v, s, grid.recipe)) for n, d, v, s in group], log)
    return results


def _collect(pool, calls, log) -> List[dict]:
    futures = [pool.submit(function, *args) for function, args in calls]
    results = []
    for index, future in enumerate(futures, 1):
        result = future.result()
        results.append(result)
        log(f"  [{index}/{len(futures)}] {result['net']} {result['data']} {result['label']} seed {result['seed']}: "
            f"{result['acc']:.2%} ({result['train_s']:.0f} s)")
    return results


# ------------------------------------------------------------------------------ aggregation

@dataclass
class Cell:
    """Test accuracy of one (net, data, label) over seeds."""

    accs: List[float]

    @property
    def mean(self) -> float:
        return statistics.mean(self.accs)

    @property
    def std(self) -> float:
        return statistics.stdev(self.accs) if len(self.accs) > 1 else 0.0

    @property
    def sem(self) -> float:
        return self.std / math.sqrt(len(self.accs))

    def __str__(self) -> str:
        return f"{100 * self.mean:.2f} ± {100 * self.std:.2f}"


def aggregate(results: Sequence[dict]) -> Dict[Tuple[str, str, str], Cell]:
    cells: Dict[Tuple[str, str, str], Cell] = {}
    for r in results:
        cells.setdefault((r["net"], r["data"], r["label"]), Cell([])).accs.append(r["acc"])
    return cells


@dataclass
class Claim:
    claim: str
    source: str
    setting: str
    better: str  # the variant the paper says is more accurate
    worse: str
    verdict: str
    gap_pp: Optional[float]  # accuracy(better) - accuracy(worse), percentage points
    noise_pp: Optional[float]  # standard error of that difference


def compare(cells, claim: str, source: str, net: str, data: str, better: str, worse: str,
            at_least_as_good: bool = False) -> Claim:
    """Verdict on "``better`` is more accurate than ``worse``" (or "at least as accurate").

    holds: the mean gap points the paper's way by more than one standard error of the difference;
    within noise: the gap is smaller than that (either sign); does not hold: the gap points the
    other way by more than one standard error."""
    setting = f"{net}, {data}"
    a, b = cells.get((net, data, better)), cells.get((net, data, worse))
    if a is None or b is None:
        return Claim(claim, source, setting, better, worse, "not measured", None, None)
    gap = a.mean - b.mean
    noise = math.sqrt(a.sem ** 2 + b.sem ** 2)
    if gap > noise or (at_least_as_good and gap >= 0):
        verdict = "holds"
    elif gap >= -noise:
        verdict = "holds within noise" if at_least_as_good else "within noise"
    else:
        verdict = "does not hold"
    return Claim(claim, source, setting, better, worse, verdict, 100 * gap, 100 * noise)


def claims(cells, grid: Grid) -> List[Claim]:
    rows = []
    for net in NETS:
        rows.append(compare(cells, "CBCN error below XNOR on MNIST-rot", "CBCN table 2", net, "mnist5k-rot",
                            "cbcn K=4", "xnor"))
    ablation = dict(net=grid.ablation_net, data=grid.ablation_data)
    for with_skips, without in (("xnor +double skip", "xnor"), ("bireal", "bireal -double skip"),
                                ("cbcn K=4", "cbcn K=4 -double skip")):
        rows.append(compare(cells, "double skips raise binary accuracy", "CBCN table 3", better=with_skips,
                            worse=without, **ablation))
    rows.append(compare(cells, "center loss helps CBCN", "CBCN table 3", better="cbcn K=4",
                        worse="cbcn K=4 -center loss", **ablation))
    rows.append(compare(cells, "kernel loss helps RBCN", "RBCN table 2", better="rbcn", worse="rbcn -kernel loss",
                        **ablation))
    for method in ("rbcn", "bireal", "cbcn K=4"):
        rows.append(compare(cells, "GAN (discriminators) helps", "RBCN table 2", better=method,
                            worse=f"{method} -GAN", **ablation))
    rows.append(compare(cells, "BN refresh helps RBCN", "RBCN table 2", better="rbcn", worse="rbcn -BN refresh",
                        **ablation))
    for net in NETS:
        for data in DATASETS:
            for biper in ("biper w0=20", "biper auto"):
                rows.append(compare(cells, "BiPer at least as good as Bi-Real", "BiPer tables", net, data,
                                    biper, "bireal", at_least_as_good=True))
    return rows + layout_claims(cells, grid)


def layout_claims(cells, grid: Grid) -> List[Claim]:
    """CBCN's claims for the paper's layout "widen" (issue 10), and "more orientations help" (table 3,
    column S) for both layouts ("cbcn K=k" is the default layout, "cbcn widen K=k" the paper's)."""
    rows = [compare(cells, "CBCN error below XNOR on MNIST-rot", "CBCN table 2", net, "mnist5k-rot",
                    "cbcn widen K=4", "xnor") for net in NETS]
    for prefix in ("cbcn", "cbcn widen"):
        for net in NETS:
            for more, fewer in ((4, 2), (2, 1)):
                rows.append(compare(cells, "more orientations help CBCN", "CBCN table 3", net, "mnist5k-rot",
                                    f"{prefix} K={more}", f"{prefix} K={fewer}"))
    ablation = dict(net=grid.ablation_net, data=grid.ablation_data)
    for claim, source, change in (("double skips raise binary accuracy", "CBCN table 3", "-double skip"),
                                  ("center loss helps CBCN", "CBCN table 3", "-center loss"),
                                  ("GAN (discriminators) helps", "RBCN table 2", "-GAN")):
        rows.append(compare(cells, claim, source, better="cbcn widen K=4", worse=f"cbcn widen K=4 {change}",
                            **ablation))
    return rows
