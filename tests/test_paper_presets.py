"""Paper presets (``FinetuneConfig.paper``, ``binarize finetune --paper``), the step and constant
learning-rate schedules, and FinetuneConfig version 1 data read by version 2 (issue 10, item 2)."""
import dataclasses
import re
import sys
from pathlib import Path

import pytest
import torch

import binarize
from binarize import checkpoint as ckpt
from binarize.cli import main
from binarize.config import ConfigVersionError
from binarize.finetune import FinetuneConfig
from binarize.finetune.config import method_defaults, paper_table
from binarize.finetune.phases import Phase, Schedule, step_lr
from binarize.methods import get_method, paper_recipe

ROOT = Path(__file__).resolve().parents[1]
TINY = ["binarize.models:resnet_small", "--model-arg", "widths=(16,16,16)", "--model-arg", "blocks=(1,1,1)"]
sys.path.insert(0, str(Path(__file__).parent))


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py's


# The papers' numbers, written out from their text (section 3.1 of BiPer and RBCN, 4.1 of CBCN).
PAPERS = {
    ("biper", "imagenet"): dict(optimizer="sgd", momentum=0.9, stage1_lr=0.1, lr=0.01, schedule="cosine"),
    ("cbcn", "mnist"): dict(lr=0.01, schedule="constant", epochs=50),
    ("cbcn", "mnist-rot"): dict(lr=0.01, schedule="constant", epochs=50),
    ("cbcn", "cifar10"): dict(optimizer="sgd", momentum=0.9, weight_decay=1e-4, lr=0.01, schedule="step",
                              lr_decay=0.9, lr_decay_every=60, epochs=200),
    ("cbcn", "cifar100"): dict(lr=0.01, schedule="step", lr_decay=0.9, lr_decay_every=60, epochs=200),
    ("cbcn", "imagenet"): dict(optimizer="sgd", momentum=0.9, weight_decay=1e-4, lr=0.01, schedule="step",
                               lr_decay=0.9, lr_decay_every=20, epochs=70),
    ("rbcn", "cifar10"): dict(gan_weight=0.01, loss_weight_decay=0.9, loss_weight_decay_every=60, epochs=200,
                              optimizer="sgd", momentum=0.9, weight_decay=1e-4),
    ("rbcn", "imagenet"): dict(gan_weight=0.1, loss_weight_decay=0.9, loss_weight_decay_every=20, epochs=70,
                               optimizer="sgd", momentum=0.9, weight_decay=1e-4),
}
LAMBDA1 = {"cifar10": 0.01, "cifar100": 0.01, "imagenet": 0.1}  # RBCN's kernel loss weight
# Which losses each paper trains with (besides cross-entropy): none uses logit distillation.
LOSSES = {"biper": set(), "cbcn": {"center"}, "rbcn": {"gan", "bn_refresh"}}


@pytest.mark.parametrize("method,dataset", sorted(PAPERS))
def test_paper_preset_holds_the_papers_numbers_and_losses(method, dataset):
    config = FinetuneConfig.paper(method, dataset)
    for name, value in PAPERS[method, dataset].items():
        assert getattr(config, name) == value, name
    assert config.warmup_epochs == 0 and config.kd_weight == 0
    resolved = method_defaults(config, get_method(method))
    switches = {"center": resolved["center_loss_weight"] > 0, "gan": config.gan_weight > 0,
                "bn_refresh": bool(resolved["bn_refresh"])}
    on = {name for name, value in switches.items() if value}
    assert on == LOSSES[method]
    if method == "rbcn":
        assert paper_recipe(method, dataset).convert == {"kernel_loss_weight": LAMBDA1[dataset]}


def test_paper_preset_takes_overrides_and_names_what_exists():
    assert FinetuneConfig.paper("rbcn", "ImageNet", epochs=3).epochs == 3
    with pytest.raises(ValueError, match=r"dataset='svhn': the cbcn paper gives a recipe for cifar10, .*mnist"):
        FinetuneConfig.paper("cbcn", "svhn")
    with pytest.raises(ValueError, match=r"method 'xnor' has no paper recipe; methods with one: \['biper', 'cbcn', 'rbcn'\]"):
        FinetuneConfig.paper("xnor", "imagenet")


def test_readme_table_is_the_generated_one():
    readme = (ROOT / "README.md").read_text()
    table = re.search(r"<!-- paper-table:start -->\n(.*?)\n<!-- paper-table:end -->", readme, re.S).group(1)
    assert table == paper_table(), ("README's paper table is stale: replace it with the output of "
                                    "python -c 'from binarize.finetune.config import paper_table; print(paper_table())'")


# ------------------------------------------------------------------------------------------ schedules

def _lrs(config, phases, steps_per_epoch):
    schedule = Schedule(phases, config)
    optimizer = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)], "base_lr": phases[0].lr}], lr=1.0)
    result = []
    for epoch in range(schedule.total_epochs):
        index = schedule.phase_of(epoch)
        optimizer.param_groups[0]["base_lr"] = phases[index].lr
        for step in range(steps_per_epoch):
            schedule.set_lr({"student": optimizer}, index, epoch, step, steps_per_epoch)
            result.append(optimizer.param_groups[0]["lr"])
    return result


def test_step_schedule_decays_every_n_epochs_of_each_phase_after_the_warmup():
    assert step_lr(59, 0.01, 0.9, 60) == 0.01 and step_lr(60, 0.01, 0.9, 60) == pytest.approx(0.009)
    assert step_lr(125, 0.01, 0.9, 60) == pytest.approx(0.01 * 0.81)
    config = FinetuneConfig(schedule="step", lr_decay=0.5, lr_decay_every=2, warmup_epochs=1)
    phases = [Phase("stage 1", 3, 0.1, 1), Phase("stage 2", 3, 0.01, 2)]
    expected = [0.05, 0.1, 0.1, 0.1, 0.05, 0.05,  # a one-epoch warm-up, then halved after 2 epochs
                0.005, 0.01, 0.01, 0.01, 0.005, 0.005]  # counted again from the second phase's start
    assert _lrs(config, phases, 2) == pytest.approx(expected)


def test_constant_schedule_keeps_the_rate():
    config = FinetuneConfig(schedule="constant", min_lr=0.001)
    assert _lrs(config, [Phase("train", 3, 0.01, None)], 2) == [0.01] * 6


def test_trainer_runs_the_configured_schedule():
    from binarize.datasets import make_loaders
    from finetune_worker import tiny_model

    torch.manual_seed(0)
    teacher = tiny_model(True)
    student = binarize.convert(teacher, "xnor")
    train, _, _ = make_loaders("mnist5k", batch_size=16)
    config = FinetuneConfig(epochs=3, two_step=False, steps_per_epoch=1, lr=0.01, schedule="step", lr_decay=0.5,
                            lr_decay_every=1, kd_weight=0.0, gan_weight=0.0, progress=False, evaluate_initial=False)
    _, history = binarize.finetune(student, teacher, train, None, config)
    assert [row["lr"] for row in history.epochs] == pytest.approx([0.01, 0.005, 0.0025])


def test_unknown_schedule_and_modes_are_refused_with_the_choices():
    for name, value in (("schedule", "linear"), ("bn_refresh_mode", "all"), ("gan_reduction", "max")):
        with pytest.raises(ValueError, match=rf"{name}='{value}': expected one of"):
            FinetuneConfig(**{name: value})
    with pytest.raises(ValueError, match="lr_decay_every=0"):
        FinetuneConfig(lr_decay_every=0)


# ------------------------------------------------------------------------------------ config versions

def test_version_1_data_reads_with_the_new_fields_at_their_old_behaviour():
    config = FinetuneConfig(epochs=3, bn_refresh=True)
    added = ("schedule", "lr_decay", "lr_decay_every", "gan_reduction", "bn_refresh_mode")
    version_1 = {k: v for k, v in config.to_data().items() if k not in added + ("bn_final_check",)}
    version_1["version"] = 1
    read = FinetuneConfig.from_data(version_1)
    assert read == dataclasses.replace(config, bn_final_check=False)
    assert (read.schedule, read.gan_reduction, read.bn_refresh_mode) == ("cosine", "mean", "stats")
    # Version 5 added the BatchNorm check at the end of a run: older runs resume without it.
    version_4 = {k: v for k, v in config.to_data().items() if k != "bn_final_check"}
    assert FinetuneConfig.from_data(dict(version_4, version=4)) == dataclasses.replace(config, bn_final_check=False)
    assert FinetuneConfig.from_data(config.to_data()).bn_final_check is True
    with pytest.raises(ConfigVersionError, match="version 0: this binarize reads version 5 \\(and upgrades version 1, 2, 3, 4\\)"):
        FinetuneConfig.from_data(dict(version_1, version=0))


# ------------------------------------------------------------------------------------- command line

def test_cli_paper_recipe_trains_with_the_papers_options_and_conversion(tmp_path):
    run = tmp_path / "run"
    assert main(["finetune", *TINY, "mnist5k", "--method", "rbcn", "--paper", "imagenet", "--epochs", "1",
                 "--steps-per-epoch", "1", "--batch-size", "16", "--run-dir", str(run), "--quiet"]) == 0
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(run), "finetune")
    config = FinetuneConfig.from_data(state["config"])
    assert (config.epochs, config.gan_weight, config.kd_weight, config.loss_weight_decay_every) == (1, 0.1, 0.0, 20)
    assert state["recipe"]["convert"]["options"]["kernel_loss_weight"] == 0.1


def test_cli_paper_errors_name_the_option(tmp_path, capsys):
    student = tmp_path / "student.pt"
    assert main(["convert", *TINY, "--method", "rbcn", "--out", str(student)]) == 0
    assert main(["finetune", *TINY, "mnist5k", "--method", "rbcn", "--paper", "imagenet", "--student",
                 str(student), "--quiet"]) == 2
    assert "--paper imagenet sets the conversion option kernel_loss_weight=0.1" in capsys.readouterr().err
    assert main(["finetune", *TINY, "mnist5k", "--method", "xnor", "--paper", "imagenet"]) == 2
    assert "method 'xnor' has no paper recipe" in capsys.readouterr().err
    assert main(["finetune", "--resume", str(tmp_path), "--paper", "cifar10"]) == 2
    assert "drop --paper" in capsys.readouterr().err
