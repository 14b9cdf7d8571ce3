"""The ``binarize`` command: every subcommand once, with tiny settings, plus its error messages."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from binarize.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["binarize.models:resnet_small", "--model-arg", "widths=(4,8,8)", "--model-arg", "blocks=(1,1,1)"]


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for command in ("convert", "finetune", "export", "summary", "bench"):
        assert command in text
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    assert "--resume" in capsys.readouterr().out


def test_console_script_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "binarize.cli", "--help"], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60)
    assert result.returncode == 0 and "finetune" in result.stdout


def test_convert_finetune_resume_export_summary_bench(tmp_path, capsys):
    student = tmp_path / "student.pt"
    assert main(["convert", *TINY, "--input-size", "1,28,28", "--out", str(student)]) == 0
    assert "binary" in capsys.readouterr().out and student.is_file()

    run = tmp_path / "run"
    # Options before the positional DATA on purpose: the parser accepts them intermixed.
    assert main(["finetune", *TINY, "--epochs", "1", "--stage1-epochs", "1", "--steps-per-epoch", "2",
                 "mnist5k", "--batch-size", "32", "--run-dir", str(run), "--quiet"]) == 0
    assert (run / "best.pt").is_file() and (run / "metrics.csv").is_file()
    assert main(["finetune", "--resume", str(run), "--quiet"]) == 0  # finished: nothing left to do

    binary, floating = tmp_path / "binary.onnx", tmp_path / "float.onnx"
    assert main(["export", str(run / "best.pt"), str(binary)]) == 0
    assert main(["export", str(run / "best.pt"), str(floating), "--float"]) == 0
    assert binary.is_file() and floating.is_file()

    assert main(["summary", str(run / "best.pt")]) == 0
    assert "binary" in capsys.readouterr().out
    assert main(["summary", "torchvision:resnet18", "--method", "xnor"]) == 0
    assert "MACs" in capsys.readouterr().out

    assert main(["bench", str(binary), str(floating), "--runs", "3"]) == 0
    table = capsys.readouterr().out
    assert "median ms" in table and "binary.onnx" in table


def test_errors_name_the_offending_file_or_argument(tmp_path, capsys):
    assert main(["finetune", *TINY, "mnist5k", "--weights", str(tmp_path / "nope.pt")]) == 2
    assert "nope.pt does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 10)
    assert main(["export", str(bad), str(tmp_path / "x.onnx")]) == 2
    assert "bad.pt" in capsys.readouterr().err
    assert main(["convert", "torchvision:no_such_net"]) == 2
    assert "no_such_net" in capsys.readouterr().err
    assert main(["finetune", "torchvision:resnet18", "mnist5k"]) == 2
    assert "num_classes=10" in capsys.readouterr().err
    assert main(["convert", *TINY, "--set", "bogus_option=1"]) == 2
    assert "bogus_option" in capsys.readouterr().err
