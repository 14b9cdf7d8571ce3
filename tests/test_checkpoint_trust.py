"""Checkpoints never import or call code they name unless the user opts in (``trust_code=True`` /
``--trust-code``); names inside torchvision and binarize need no opt-in.

A crafted checkpoint names a ``file.py`` factory (or type) that writes a marker file when imported:
the marker is the independent witness of whether the checkpoint's code ran.
"""
import textwrap

import pytest
import torch

from binarize import checkpoint as ckpt
from binarize import convert
from binarize.cli import main
from binarize.methods.xnor import XnorConfig
from binarize.models import resnet_small

TINY_KWARGS = {"widths": [16, 16], "blocks": [1, 1]}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def crafted(tmp_path):
    """(checkpoint naming evil.py:factory, marker file evil.py writes when imported)."""
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.py"
    evil.write_text(textwrap.dedent(f"""
        import pathlib
        pathlib.Path({str(marker)!r}).write_text("imported")
        from binarize.models import resnet_small as factory
        from torch.nn import Identity as Marked
    """))
    config = XnorConfig()
    student = convert(resnet_small(**TINY_KWARGS), config)
    recipe = ckpt.make_recipe(f"{evil}:factory", config, None, **TINY_KWARGS)
    recipe["input_size"] = [1, 1, 28, 28]
    path = tmp_path / "crafted.pt"
    ckpt.atomic_save(ckpt.student_checkpoint(student, recipe), path)
    return path, marker


def test_load_student_does_not_run_a_named_file_without_trust_code(crafted):
    path, marker = crafted
    with pytest.raises(ckpt.UntrustedCodeError, match="trust_code=True") as err:
        ckpt.load_student(path)
    assert str(path) in str(err.value) and "evil.py" in str(err.value)
    assert not marker.exists()
    student, _ = ckpt.load_student(path, trust_code=True)
    assert marker.exists()
    reference = ckpt.load_checkpoint(path)["model"]
    assert all(torch.equal(student.state_dict()[k], v) for k, v in reference.items())


@pytest.mark.parametrize("command", [["export", "{path}", "{out}"], ["summary", "{path}"]])
def test_cli_refuses_checkpoint_code_until_trust_code(crafted, tmp_path, capsys, command):
    path, marker = crafted
    argv = [a.format(path=path, out=tmp_path / "m.onnx") for a in command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--trust-code" in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2
    assert not marker.exists()
    assert main(argv + ["--trust-code"]) == 0
    assert marker.exists()


def test_finetune_resume_refuses_checkpoint_code_until_trust_code(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["finetune", "binarize.models:resnet_small", "--model-arg", "widths=(16,16)", "--model-arg",
                 "blocks=(1,1)", "mnist5k", "--method", "xnor", "--epochs", "1", "--steps-per-epoch", "2",
                 "--batch-size", "16", "--run-dir", str(run), "--quiet"]) == 0
    checkpoint = ckpt.latest_checkpoint(run)
    state = ckpt.load_checkpoint(checkpoint, "finetune")
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.py"
    evil.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
                    f"from binarize.models import resnet_small as factory\n")
    state["recipe"]["model"] = f"{evil}:factory"
    ckpt.atomic_save(state, checkpoint)
    capsys.readouterr()
    assert main(["finetune", "--resume", str(run), "--quiet"]) == 2
    assert "--trust-code" in capsys.readouterr().err and not marker.exists()
    assert main(["finetune", "--resume", str(run), "--quiet", "--trust-code"]) == 0
    assert marker.exists()


def test_named_types_outside_torch_and_binarize_need_trust_code(crafted, tmp_path):
    path, marker = crafted
    data = ckpt.load_checkpoint(path)
    data["recipe"]["model"] = "binarize.models:resnet_small"
    data["recipe"]["convert"]["options"]["leaf_modules"] = [f"{tmp_path / 'evil.py'}:Marked"]
    ckpt.atomic_save(data, path)
    with pytest.raises(ckpt.UntrustedCodeError, match="leaf_modules"):
        ckpt.load_student(path)
    assert not marker.exists()
    # A type of torch itself is built in: no opt-in needed.
    data["recipe"]["convert"]["options"]["leaf_modules"] = ["torch.nn.modules.linear:Identity"]
    ckpt.atomic_save(data, path)
    student, _ = ckpt.load_student(path)
    assert student.binarize_config.leaf_modules == (torch.nn.Identity,)


@pytest.mark.parametrize("spec, kwargs", [
    ("torch:load", {"f": "weights.pt", "weights_only": False}),  # a torch callable that unpickles code
    ("os:system", {"command": "true"}),  # a module outside torch, torchvision and binarize
    ("binarize.models:nn.Module", {}),  # reaches torch through binarize.models' imports
])
def test_only_builtin_model_factories_run_without_trust_code(spec, kwargs):
    with pytest.raises(ckpt.UntrustedCodeError, match="trust_code=True"):
        ckpt.build_model(spec, **kwargs)


def test_builtin_factories_need_no_opt_in():
    assert isinstance(ckpt.build_model("binarize.models:resnet_small", **TINY_KWARGS), torch.nn.Module)
    assert type(ckpt.build_model("torchvision:resnet18", num_classes=3)).__name__ == "ResNet"
