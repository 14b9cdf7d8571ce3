"""The ``binarize`` command: every subcommand once, with tiny settings, plus its error messages."""
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch

from binarize.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["binarize.models:resnet_small", "--model-arg", "widths=(16,16,16)", "--model-arg", "blocks=(1,1,1)"]


pytestmark = pytest.mark.usefixtures("one_thread")


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
    calibrated = tmp_path / "int8.onnx"
    assert main(["export", str(run / "best.pt"), str(calibrated), "--calibrate", "2"]) == 0
    assert "QuantizeLinear" in {node.op_type for node in onnx.load(calibrated).graph.node}
    _user_error(capsys, ["export", str(student), str(tmp_path / "s.onnx"), "--calibrate", "2"], str(student),
                "records no training data to calibrate on")

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


# ------------------------------------------------------------------ user errors: short, exit 2, no traceback

def _user_error(capsys, argv, *words):
    """Run ``main(argv)`` (argparse errors raise SystemExit): exit code 2, at most two lines on
    stderr naming ``words``, no traceback. Returns the message."""
    try:
        code = main(argv)
    except SystemExit as done:
        code = done.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
    for word in words:
        assert word in err, err
    return err


@pytest.fixture
def student(tmp_path):
    """A 1-channel xnor student checkpoint written by `convert --out` without --input-size."""
    path = tmp_path / "student.pt"
    assert main(["convert", *TINY, "--method", "xnor", "--out", str(path)]) == 0
    return path


def test_wrong_channel_count_in_input_size(student, tmp_path, capsys):
    _user_error(capsys, ["convert", *TINY, "--input-size", "3,28,28"], "--input-size 3,28,28", "1 channel",
                "--input-size 1,28,28")
    _user_error(capsys, ["export", str(student), str(tmp_path / "m.onnx"), "--input-size", "3,28,28"],
                "--input-size 3,28,28", "1 channel")
    _user_error(capsys, ["summary", str(student), "--input-size", "3,28,28"], "--input-size", "1 channel")
    _user_error(capsys, ["convert", *TINY, "--input-size", "1,0,28"], "--input-size", "positive")
    assert not (tmp_path / "m.onnx").exists()


def test_summary_and_finetune_name_what_does_not_exist(tmp_path, capsys):
    _user_error(capsys, ["summary", str(tmp_path / "nope.pt")], "nope.pt", "neither an existing checkpoint")
    _user_error(capsys, ["finetune", *TINY, "mnist5k", "--device", "gpu0"], "--device 'gpu0'")
    if not torch.cuda.is_available():
        _user_error(capsys, ["finetune", *TINY, "mnist5k", "--device", "cuda:0"], "--device cuda:0", "--device cpu")


def test_summary_of_a_one_channel_student_uses_its_channels(student, capsys):
    assert main(["summary", str(student)]) == 0
    captured = capsys.readouterr()
    assert "1x224x224" in captured.err and "MACs" in captured.out


def test_bench_given_a_checkpoint_or_a_non_onnx_file(student, tmp_path, capsys):
    _user_error(capsys, ["bench", str(student)], "student.pt", "not an ONNX file", "binarize export")
    text = tmp_path / "notes.onnx"
    text.write_text("not a model")
    _user_error(capsys, ["bench", str(text)], "notes.onnx", "not an ONNX model")


@pytest.mark.parametrize("argv, option", [
    (["bench", "m.onnx", "--batch", "0"], "--batch"),
    (["bench", "m.onnx", "--threads", "-1"], "--threads"),
    (["bench", "m.onnx", "--runs", "0"], "--runs"),
    (["bench", "m.onnx", "--runs", "many"], "--runs"),
    (["finetune", "m:f", "mnist5k", "--batch-size", "0"], "--batch-size"),
    (["finetune", "m:f", "mnist5k", "--workers", "-2"], "--workers"),
])
def test_counts_are_checked_while_parsing(capsys, argv, option):
    _user_error(capsys, argv, f"argument {option}")


def test_output_paths_that_are_folders_or_unwritable(student, tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    _user_error(capsys, ["convert", *TINY, "--out", str(folder)], str(folder), "is a folder")
    _user_error(capsys, ["export", str(student), str(folder)], str(folder), "is a folder")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    _user_error(capsys, ["export", str(student), str(blocker / "m.onnx")], str(blocker), "cannot create")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        _user_error(capsys, ["convert", *TINY, "--out", str(locked / "s.pt")], "not writable")


def test_output_folders_are_created_by_convert_and_export_alike(student, tmp_path):
    assert main(["export", str(student), str(tmp_path / "new" / "sub" / "m.onnx"), "--input-size", "1,28,28"]) == 0
    assert main(["convert", *TINY, "--out", str(tmp_path / "other" / "s.pt")]) == 0
    assert (tmp_path / "new" / "sub" / "m.onnx").is_file() and (tmp_path / "other" / "s.pt").is_file()


def test_ctrl_c_during_export_is_one_line_and_leaves_no_file(student, tmp_path, capsys, monkeypatch):
    import binarize

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(binarize, "export", interrupted)
    assert main(["export", str(student), str(tmp_path / "m.onnx"), "--input-size", "1,28,28"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob(".*partial"))


def test_a_bug_keeps_its_traceback(student, tmp_path, monkeypatch):
    """Only user errors are turned into one-line messages: an unexpected exception propagates."""
    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr("binarize.checkpoint.load_student", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["export", str(student), str(tmp_path / "m.onnx")])


def test_set_booleans_are_parsed_strictly(tmp_path, capsys):
    out = tmp_path / "s.pt"
    assert main(["convert", *TINY, "--set", "keep_first=false", "--set", "double_skip=False", "--set",
                 "keep_costly_float=False", "--out", str(out)]) == 0
    options = torch.load(out, weights_only=True)["recipe"]["convert"]["options"]
    assert options["keep_first"] is False and options["double_skip"] is False
    from binarize import BinaryLayer
    from binarize import checkpoint as ckpt

    student_model, _ = ckpt.load_student(out)
    assert isinstance(student_model.get_submodule("0"), BinaryLayer)  # the first conv is binary now
    _user_error(capsys, ["convert", *TINY, "--set", "keep_first=maybe"], "keep_first", "true or false")


def test_convert_input_size_is_stored_for_export(tmp_path, capsys):
    out = tmp_path / "s.pt"
    assert main(["convert", *TINY, "--method", "xnor", "--input-size", "1,20,20", "--out", str(out)]) == 0
    onnx_file = tmp_path / "m.onnx"
    assert main(["export", str(out), str(onnx_file)]) == 0
    import onnx

    dims = onnx.load(str(onnx_file)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [1, 20, 20]


def test_a_dataset_typo_is_not_taken_for_a_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _user_error(capsys, ["finetune", *TINY, "mnist6k"], "unknown dataset 'mnist6k'", "did you mean 'mnist5k'")
    _user_error(capsys, ["finetune", *TINY, "data/imgs"], "ImageFolder directory data/imgs does not exist")


def test_resume_of_a_copied_run_writes_to_the_copy(tmp_path, capsys):
    import shutil

    from binarize import checkpoint as ckpt

    original = tmp_path / "original"
    assert main(["finetune", *TINY, "mnist5k", "--method", "xnor", "--epochs", "1", "--steps-per-epoch", "3",
                 "--batch-size", "16", "--checkpoint-every", "1", "--keep-checkpoints", "10",
                 "--run-dir", str(original), "--quiet"]) == 0
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    for newer in ckpt.list_checkpoints(copy / "checkpoints")[1:]:  # the copy stops after its first step
        newer.unlink()
    (copy / "best.pt").unlink()
    before = {p.relative_to(original): p.read_bytes() for p in original.rglob("*") if p.is_file()}
    assert main(["finetune", "--resume", str(copy), "--quiet"]) == 0
    assert {p.relative_to(original): p.read_bytes() for p in original.rglob("*") if p.is_file()} == before
    assert (copy / "best.pt").is_file()
    assert [p.name for p in ckpt.list_checkpoints(copy / "checkpoints")] == \
        [p.name for p in ckpt.list_checkpoints(original / "checkpoints")]
    elsewhere = tmp_path / "elsewhere"
    assert main(["finetune", "--resume", str(ckpt.list_checkpoints(copy / "checkpoints")[0]), "--run-dir",
                 str(elsewhere), "--quiet"]) == 0
    assert (elsewhere / "best.pt").is_file() and (elsewhere / "metrics.csv").is_file()


def test_training_threads_default_to_one_on_small_machines(monkeypatch, capsys):
    from binarize import cli

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    torch.set_num_threads(2)
    cli._set_training_threads(None, announce=True)
    assert torch.get_num_threads() == 1 and "--threads" in capsys.readouterr().err
    cli._set_training_threads(2, announce=True)
    assert torch.get_num_threads() == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(os, "getloadavg", lambda: (0.5, 0.5, 0.5))
    cli._set_training_threads(None, announce=True)
    assert torch.get_num_threads() == 2  # a big idle machine keeps torch's choice
