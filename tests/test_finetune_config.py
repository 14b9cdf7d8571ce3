"""Configs as plain data (one versioned path for every config), training checkpoints of another
version refused, and the command line's finetune options generated from FinetuneConfig."""
import dataclasses
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import binarize
from binarize import checkpoint as ckpt
from binarize.cli import build_parser
from binarize.config import ConfigVersionError
from binarize.datasets import make_loaders
from binarize.finetune import FinetuneConfig, finetune
from binarize.finetune.state import STATE_VERSION

sys.path.insert(0, str(Path(__file__).parent))
from finetune_worker import tiny_model  # noqa: E402


def test_finetune_config_round_trips_through_plain_data():
    config = FinetuneConfig(epochs=3, gan_features=("0", "3"), bn_refresh=True, recipe={"model": "m", "kw": [1, 2]})
    data = config.to_data()
    assert data["version"] == FinetuneConfig.version
    assert data["gan_features"] == ["0", "3"]  # plain lists, not tuples
    assert FinetuneConfig.from_data(data) == config
    with pytest.raises(ConfigVersionError, match=rf"FinetuneConfig data of version 99: this binarize reads version {FinetuneConfig.version}"):
        FinetuneConfig.from_data(dict(data, version=99))
    with pytest.raises(ConfigVersionError, match="unknown field.*'bogus'"):
        FinetuneConfig.from_data(dict(data, bogus=1))


def test_convert_config_round_trips_with_its_classes():
    config = binarize.CBCNConfig(orientations=2, exclude_types=(nn.Linear,), leaf_modules=("features", nn.Sequential))
    data = ckpt.config_to_data(config)
    assert data["options"]["exclude_types"] == ["torch.nn.modules.linear:Linear"]
    assert data["options"]["version"] == binarize.CBCNConfig.version
    assert ckpt.config_from_data(data) == config
    # Recipes written before configs carried a version are version 1, which had no shortcut options:
    # they rebuild the model they described, without the cost rule of version 2 or version 3's RSign/RPReLU.
    version_1 = {k: v for k, v in data["options"].items()
                 if k not in ("version", "shortcut", "keep_costly_float", "input_threshold", "rprelu")}
    rebuilt = ckpt.config_from_data({"method": "cbcn", "options": version_1})
    assert rebuilt == dataclasses.replace(config, shortcut="conv", keep_costly_float=False, input_threshold=False,
                                          rprelu=False)
    future = binarize.CBCNConfig.version + 1
    with pytest.raises(ConfigVersionError, match=f"CBCNConfig data of version {future}"):
        ckpt.config_from_data({"method": "cbcn", "options": dict(data["options"], version=future)})


def test_training_checkpoint_of_another_version_is_refused_naming_file_and_versions(tmp_path, one_thread):
    torch.manual_seed(0)
    teacher = tiny_model(True)
    first, second, third = (binarize.convert(teacher, "xnor") for _ in range(3))  # before finetune freezes the teacher
    train, val, _ = make_loaders("mnist5k", batch_size=16)
    config = FinetuneConfig(epochs=1, two_step=False, steps_per_epoch=2, progress=False, evaluate_initial=False,
                            gan_weight=0, run_dir=str(tmp_path / "run"))
    finetune(first, teacher, train, val, config)
    path = ckpt.latest_checkpoint(tmp_path / "run")
    state = ckpt.load_checkpoint(path, "finetune")
    assert state["version"] == STATE_VERSION
    old = tmp_path / "old.pt"
    ckpt.atomic_save(dict(state, version=1), old)
    with pytest.raises(ckpt.CheckpointError) as err:
        finetune(second, teacher, train, val, dataclasses.replace(config, resume=str(old)))
    message = str(err.value)
    assert str(old) in message and "version 1" in message and f"version {STATE_VERSION}" in message
    # the file as written resumes (a finished run: nothing left to train)
    _, history = finetune(third, teacher, train, val, dataclasses.replace(config, resume=str(path)))
    assert len(history.epochs) == 1


def test_cli_offers_every_documented_finetune_field():
    parser = build_parser()
    finetune_parser = parser._subparsers._group_actions[0].choices["finetune"]
    options = {a.dest: a for a in finetune_parser._actions}
    for field in dataclasses.fields(FinetuneConfig):
        assert field.metadata["help"] in FinetuneConfig.__doc__  # the docstring documents every field
        if field.metadata["cli"]:
            assert field.metadata["help"] in options[field.name].help
        else:  # a dedicated option (--run-dir, --seed, ...) or none (recipe, gan_features)
            assert field.name in ("run_dir", "resume", "seed", "deterministic", "device", "progress",
                                  "recipe", "gan_features")
    args = finetune_parser.parse_args(["m", "d", "--bn-refresh", "false", "--min-lr", "0.001", "--gan-pool", "3"])
    assert (args.bn_refresh, args.min_lr, args.gan_pool) == (False, 0.001, 3)
    with pytest.raises(SystemExit):
        finetune_parser.parse_args(["m", "d", "--bn-refresh", "maybe"])
