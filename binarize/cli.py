"""The ``binarize`` command: convert, fine-tune, export, summarize and benchmark 1-bit networks.

    binarize convert  torchvision:resnet18 --weights resnet18.pt --method biper --out student.pt
    binarize finetune binarize.models:resnet_small mnist5k --weights teacher.pt --epochs 3 --run-dir runs/demo
    binarize finetune --resume runs/demo
    binarize export   runs/demo/best.pt model.onnx
    binarize summary  runs/demo/best.pt
    binarize bench    model.onnx float.onnx --threads 1
"""
from __future__ import annotations

import argparse
import ast
import os
import runpy
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from . import checkpoint as ckpt
from .finetune.config import cli_options

MODEL_HELP = ("the float model: 'torchvision:NAME' (architecture only; nothing is downloaded), "
              "'package.module:factory' or 'path/to/file.py:factory'")
DATA_HELP = ("the data: 'mnist5k' or 'mnist5k-rot' (bundled), 'cifar10' (with --data-dir), "
             "or the path of an ImageFolder directory")


def _literal(text: str) -> Any:
    """'10' -> 10, 'False' -> False, '(1, 2)' -> (1, 2), anything else stays a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _key_values(items: Sequence[str], option: str) -> Dict[str, Any]:
    result = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{option} {item!r}: expected KEY=VALUE")
        result[key.replace("-", "_")] = _literal(value)
    return result


def _input_size(text: Optional[str]) -> Optional[Tuple[int, ...]]:
    if text is None:
        return None
    try:
        dims = tuple(int(d) for d in text.replace("x", ",").split(","))
    except ValueError:
        raise ValueError(f"--input-size {text!r}: expected numbers like 1,3,224,224 or 3,32,32") from None
    return dims if len(dims) == 4 else (1,) + dims


def _first_conv_channels(model: nn.Module) -> Optional[int]:
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return conv.in_channels if conv is not None else None


def _float_model(args) -> nn.Module:
    model = ckpt.build_model(args.model, **_key_values(args.model_arg, "--model-arg"))
    if args.weights:
        ckpt.load_float_weights(model, args.weights)
    return model


def _convert_config(args):
    from .methods import get_method

    return get_method(args.method).config().with_overrides(**_key_values(args.set, "--set"))


def _recipe_input_size(recipe: Optional[Dict[str, Any]]) -> Optional[Tuple[int, ...]]:
    data = (recipe or {}).get("data")
    return (1, data["channels"], data["image_size"], data["image_size"]) if data else None


# ------------------------------------------------------------------------------------ commands

def cmd_convert(args) -> None:
    from . import convert, summary

    model = _float_model(args)
    config = _convert_config(args)
    student = convert(model, config)
    print(student.binarize_plan)
    size = _input_size(args.input_size)
    if size:
        print(summary(student, size))
    if args.out:
        recipe = ckpt.make_recipe(args.model, config, args.weights, **_key_values(args.model_arg, "--model-arg"))
        ckpt.atomic_save(ckpt.student_checkpoint(student, recipe), args.out)
        print(f"wrote {args.out} (a student checkpoint: binarize finetune/export/summary accept it)")


def cmd_finetune(args) -> None:
    from .datasets import make_loaders
    from .finetune import FinetuneConfig, finetune, init_distributed
    from .finetune.state import read_training_state

    rank, world = init_distributed()
    if args.resume:
        state = read_training_state(ckpt.latest_checkpoint(args.resume))
        recipe = state["recipe"]
        if not recipe or "data" not in recipe:
            raise ValueError(f"{args.resume}: the checkpoint has no recipe with the data settings; resume it "
                             f"from Python with FinetuneConfig(resume=...)")
        config_data = dict(state["config"], resume=str(args.resume), progress=not args.quiet)
        if args.device:
            config_data["device"] = args.device
        config = FinetuneConfig.from_data(config_data)
        data = recipe["data"]
        teacher, student = ckpt.build_from_recipe(recipe)
    else:
        if not (args.model and args.data):
            raise ValueError("finetune needs MODEL and DATA (or --resume RUN_DIR_OR_CHECKPOINT)")
        teacher = _float_model(args)
        convert_config = _convert_config(args)
        if args.student:
            student, _ = ckpt.load_student(args.student)
        else:
            from . import convert

            student = convert(teacher, convert_config)
        if args.batch_size % world:
            raise ValueError(f"--batch-size {args.batch_size} is the global batch: it must divide by the "
                             f"{world} processes")
        from .datasets import DATASET_NAMES

        # Paths are stored absolute, so a resumed run finds the data from any working directory.
        name = str(args.data) if args.data in DATASET_NAMES else str(Path(args.data).resolve())
        data = {"name": name, "data_dir": args.data_dir and str(Path(args.data_dir).resolve()),
                "batch_size": args.batch_size,
                "image_size": args.image_size, "channels": args.channels or _first_conv_channels(teacher),
                "num_workers": args.workers, "seed": args.seed}
        recipe = ckpt.make_recipe(args.model, student.binarize_config, args.weights,
                                  **_key_values(args.model_arg, "--model-arg"))
        overrides = {name: getattr(args, name) for name in cli_options() if getattr(args, name) is not None}
        config = FinetuneConfig(run_dir=args.run_dir, seed=args.seed, deterministic=args.deterministic,
                                device=args.device, progress=not args.quiet, recipe=recipe, **overrides)
    train_loader, val_loader, info = make_loaders(
        data["name"], data["data_dir"], batch_size=data["batch_size"] // world, num_workers=data["num_workers"],
        seed=data["seed"], distributed=world > 1, image_size=data["image_size"], channels=data["channels"],
        pin_memory=torch.cuda.is_available())
    if not args.resume:
        data.update(image_size=info.image_size, channels=info.in_channels)
        recipe["data"] = data
        _check_classes(teacher, info)
    if args.no_teacher:
        teacher = None
    _, history = finetune(student, teacher, train_loader, val_loader, config)
    if rank == 0 and config.run_dir:
        print(f"next: binarize export {Path(config.run_dir) / 'best.pt'} model.onnx")


def _check_classes(model: nn.Module, info) -> None:
    with torch.no_grad():
        outputs = model.eval()(torch.zeros(1, info.in_channels, info.image_size, info.image_size)).shape[-1]
    model.train()
    if outputs != info.num_classes:
        raise ValueError(f"the model outputs {outputs} classes but {info.name} has {info.num_classes}: "
                         f"pass --model-arg num_classes={info.num_classes} (and matching --weights)")


def cmd_export(args) -> None:
    import binarize

    student, data = ckpt.load_student(args.checkpoint)
    size = _input_size(args.input_size) or _recipe_input_size(data["recipe"])
    if size is None:
        raise ValueError(f"{args.checkpoint} does not record the input size: pass --input-size C,H,W")
    example = torch.randn(*size)
    model = ckpt.build_from_recipe(data["recipe"])[0] if args.float else student
    binarize.export(model.eval(), args.out, example)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1024:.1f} KiB)")


def cmd_summary(args) -> None:
    from . import convert, summary

    if Path(args.model).is_file():
        model, data = ckpt.load_student(args.model)
        default_size = _recipe_input_size(data["recipe"])
    else:
        model = _float_model(args)
        if args.method:
            model = convert(model, _convert_config(args))
        default_size = None
    size = _input_size(args.input_size) or default_size or (1, 3, 224, 224)
    if hasattr(model, "binarize_plan"):
        print(model.binarize_plan)
        print()
    print(summary(model, size))


def bench_onnx(path: str, threads: Optional[int] = 1, batch: int = 1, runs: int = 50, warmup: int = 5) -> Dict[str, float]:
    """Median and 90th-percentile latency (ms) of an ONNX file under ONNX Runtime with binarize's
    kernels registered (float models run there unchanged)."""
    import numpy as np

    from .runtime import session

    sess = session(path, threads=threads)
    feed = {}
    for spec in sess.get_inputs():
        shape = [d if isinstance(d, int) else batch for d in spec.shape]
        feed[spec.name] = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {"median_ms": statistics.median(times), "p90_ms": times[int(0.9 * (len(times) - 1))],
            "size_kib": os.path.getsize(path) / 1024}


def cmd_bench(args) -> None:
    rows = []
    for path in args.onnx:
        if not Path(path).is_file():
            raise FileNotFoundError(f"ONNX file {path} does not exist")
        rows.append((path, bench_onnx(path, args.threads, args.batch, args.runs)))
    width = max(len(p) for p, _ in rows)
    print(f"{'model':<{width}}  {'size KiB':>9}  {'median ms':>9}  {'p90 ms':>8}   (batch {args.batch}, "
          f"{args.threads or 'default'} thread(s), {args.runs} runs)")
    for path, r in rows:
        print(f"{path:<{width}}  {r['size_kib']:>9.1f}  {r['median_ms']:>9.3f}  {r['p90_ms']:>8.3f}")


def run_evidence_report(report_args: List[str]) -> int:
    """``binarize bench accuracy [OPTIONS]``: the evidence report, ``benchmarks/report.py`` of a
    source checkout (it is not installed with the package: it trains ~150 networks)."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "report.py"
    if not script.is_file():
        print(f"binarize bench accuracy: error: the evidence report needs a source checkout of binarize "
              f"({script} does not exist)", file=sys.stderr)
        return 2
    sys.argv = [str(script), *report_args]
    runpy.run_path(str(script), run_name="__main__")
    return 0


# -------------------------------------------------------------------------------------- parser

def _add_model_options(parser: argparse.ArgumentParser, method_default: Optional[str] = "biper") -> None:
    parser.add_argument("--weights", metavar="FILE", help="float weights (a state_dict file) to start from")
    parser.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                        help="keyword argument of the model constructor, e.g. num_classes=10 (repeatable)")
    parser.add_argument("--method", default=method_default, metavar="NAME",
                        help="binarization method: xnor, bireal, biper, cbcn or rbcn"
                             + (f" (default {method_default})" if method_default else " (default: no conversion)"))
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="conversion option, e.g. omega=auto or keep_first=False (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="binarize", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Turn a pretrained PyTorch network into a 1-bit network, fine-tune it against the "
                    "float original, and ship it as ONNX with fast XNOR-popcount kernels.",
        epilog="Run 'binarize COMMAND --help' for the options of a command.\n\n" + __doc__.split("\n\n", 1)[1])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.commands = commands.choices  # name -> sub-parser, for main()'s intermixed parsing

    p = commands.add_parser("convert", help="convert a float model and show what became binary",
                            description="Convert a float model to a binary student; print the conversion plan "
                                        "(and a memory/compute summary with --input-size).")
    p.add_argument("model", help=MODEL_HELP)
    _add_model_options(p)
    p.add_argument("--input-size", metavar="C,H,W", help="also print the summary for this input size")
    p.add_argument("--out", metavar="FILE", help="write the student checkpoint here")
    p.set_defaults(run=cmd_convert)

    p = commands.add_parser("finetune", help="fine-tune a binary student against its float teacher",
                            description="Convert MODEL and fine-tune it on DATA against the float MODEL as a frozen "
                                        "teacher (KD + per-layer discriminators), or continue a run with --resume. "
                                        "Under torchrun, every process trains a shard (DistributedDataParallel).")
    p.add_argument("model", nargs="?", help=MODEL_HELP)
    p.add_argument("data", nargs="?", help=DATA_HELP)
    _add_model_options(p)
    p.add_argument("--student", metavar="FILE", help="start from this student checkpoint instead of converting")
    p.add_argument("--resume", metavar="PATH", help="continue the run in this folder (or from this checkpoint) exactly")
    p.add_argument("--data-dir", metavar="DIR", help="for cifar10: the folder holding cifar-10-batches-py/")
    p.add_argument("--batch-size", type=int, default=128, help="global batch size, split over processes (default 128)")
    p.add_argument("--image-size", type=int, help="square input side (default: the data's own)")
    p.add_argument("--channels", type=int, choices=(1, 3), help="input channels (default: what the model's first conv takes)")
    p.add_argument("--workers", type=int, default=0, help="data loading processes (default 0)")
    p.add_argument("--run-dir", default="runs/finetune", help="checkpoints, metrics.csv, best.pt go here (default runs/finetune)")
    p.add_argument("--no-teacher", action="store_true", help="train on the labels only (no KD, no discriminators)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms (bit-exact resume on GPU)")
    p.add_argument("--device", help="e.g. cpu or cuda:0 (default: the GPU of this process if any)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    for name, (kind, text) in cli_options().items():  # the FinetuneConfig fields, documented there
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, help=text)
    p.set_defaults(run=cmd_finetune)

    p = commands.add_parser("export", help="export a student checkpoint to ONNX",
                            description="Export the student in CHECKPOINT (from convert --out, finetune's best.pt "
                                        "or a training checkpoint) to ONNX with binarize's custom ops.")
    p.add_argument("checkpoint", help="a student or training checkpoint")
    p.add_argument("out", help="the .onnx file to write")
    p.add_argument("--input-size", metavar="C,H,W", help="example input size (default: the run's data)")
    p.add_argument("--float", action="store_true", help="export the float teacher instead (for comparisons)")
    p.set_defaults(run=cmd_export)

    p = commands.add_parser("summary", help="memory and compute of a model, by precision",
                            description="Print the memory and MACs of a student checkpoint, or of MODEL "
                                        "(converted with --method).")
    p.add_argument("model", help="a student/training checkpoint, or " + MODEL_HELP)
    _add_model_options(p, method_default=None)
    p.add_argument("--input-size", metavar="C,H,W", help="input size (default: the run's data, else 3,224,224)")
    p.set_defaults(run=cmd_summary)

    p = commands.add_parser("bench", help="time ONNX files with ONNX Runtime and binarize's kernels",
                            description="Median latency of each ONNX file (random input) under ONNX Runtime with "
                                        "binarize's custom ops registered; float models run unchanged.")
    p.add_argument("onnx", nargs="+", help="ONNX files ('binarize bench accuracy [--smoke ...]' instead runs "
                                           "the evidence report, benchmarks/report.py, of a source checkout)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1; 0: ONNX Runtime's default)")
    p.add_argument("--batch", type=int, default=1, help="batch size for dynamic batch dimensions (default 1)")
    p.add_argument("--runs", type=int, default=50, help="timed runs (default 50)")
    p.set_defaults(run=cmd_bench)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from .finetune import TrainingInterrupted

    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:2] == ["bench", "accuracy"]:  # the report has its own options: hand them over untouched
        return run_evidence_report(argv[2:])
    if argv and argv[0] in parser.commands:
        # Intermixed, so positionals may follow options: `finetune MODEL --weights W DATA`.
        args = parser.commands[argv[0]].parse_intermixed_args(argv[1:])
        args.command = argv[0]
    else:
        args = parser.parse_args(argv)
    if getattr(args, "threads", None) == 0:
        args.threads = None
    try:
        args.run(args)
    except TrainingInterrupted as stop:
        where = stop.checkpoint.parent.parent if stop.checkpoint else None
        print(f"\n{stop}\nresume with: binarize finetune --resume {where}" if where else f"\n{stop}", file=sys.stderr)
        return 130
    except (ckpt.CheckpointError, ValueError, FileNotFoundError, TypeError) as err:
        print(f"binarize {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
