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
import itertools
import os
import runpy
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from . import checkpoint as ckpt
from .config import ConfigVersionError, parse_bool
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


def _boolean(text: str, option: str) -> bool:
    """Strict (:func:`binarize.config.parse_bool`); anything else is an error naming ``option``."""
    try:
        return parse_bool(text)
    except ValueError:
        raise ValueError(f"{option}: {text!r} is not a boolean: write true or false") from None


def _key_values(items: Sequence[str], option: str, booleans: Sequence[str] = ()) -> Dict[str, Any]:
    """KEY=VALUE items as a dict; values are Python literals, except that the keys in ``booleans``
    are parsed strictly by :func:`_boolean`."""
    result = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{option} {item!r}: expected KEY=VALUE")
        key = key.replace("-", "_")
        result[key] = _boolean(value, f"{option} {key}") if key in booleans else _literal(value)
    return result


def _input_size(text: Optional[str]) -> Optional[Tuple[int, ...]]:
    if text is None:
        return None
    try:
        dims = tuple(int(d) for d in text.replace("x", ",").split(","))
    except ValueError:
        dims = ()
    if len(dims) not in (3, 4) or min(dims) < 1:
        raise ValueError(f"--input-size {text!r}: expected positive sizes C,H,W (like 3,224,224) or N,C,H,W")
    return dims if len(dims) == 4 else (1,) + dims


def _first_conv_channels(model: nn.Module) -> Optional[int]:
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return conv.in_channels if conv is not None else None


def _checked_input_size(model: nn.Module, size: Tuple[int, ...], source: str) -> Tuple[int, ...]:
    """``size`` after checking that ``model`` accepts it, so a wrong size is reported as such and not
    as an error deep inside summary or export. ``source`` says where the size came from."""
    channels = _first_conv_channels(model)
    if channels is not None and size[1] != channels:
        raise ValueError(f"{source} {','.join(map(str, size[1:]))}: the model's first convolution takes {channels} "
                         f"channel(s), not {size[1]}: pass --input-size {channels},{size[2]},{size[3]}")
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(size))
    except RuntimeError as err:
        raise ValueError(f"{source} {','.join(map(str, size[1:]))} does not fit the model: "
                         f"{str(err).strip().splitlines()[0]}") from err
    finally:
        model.train(was_training)
    return size


def _output_file(path: str, option: str, suffix: str) -> Path:
    """Check an output path before the work starts: not a folder, and its folder (created when
    missing, as ``--run-dir`` is) writable."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder: give a file name, e.g. {path / ('model' + suffix)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"{option} {path}: cannot create its folder {path.parent} ({err.strerror})") from None
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path}: the folder {path.parent} is not writable: choose another location")
    return path


def _float_model(args) -> nn.Module:
    # The user named this model on the command line: their own code may run (trust_code).
    model = ckpt.build_model(args.model, trust_code=True, **_key_values(args.model_arg, "--model-arg"))
    if args.weights:
        ckpt.load_float_weights(model, args.weights)
    return model


def _convert_config(args, paper_options: Optional[Dict[str, Any]] = None):
    """The method's config with a paper recipe's convert options (``paper_options``), then --set."""
    from dataclasses import fields

    from .methods import get_method

    config = get_method(args.method).config(**(paper_options or {}))
    booleans = [f.name for f in fields(config) if isinstance(getattr(config, f.name), bool)]
    try:
        return config.with_overrides(**_key_values(args.set, "--set", booleans))
    except TypeError as err:  # an unknown option, or a value of the wrong type
        raise ValueError(f"--set: {err}") from err


def _recipe_input_size(recipe: Optional[Dict[str, Any]]) -> Optional[Tuple[int, ...]]:
    """The input size a recipe records: convert's --input-size, else the training data's."""
    recipe = recipe or {}
    if recipe.get("input_size"):
        return tuple(recipe["input_size"])
    data = recipe.get("data")
    return (1, data["channels"], data["image_size"], data["image_size"]) if data else None


def _check_device(text: str) -> None:
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ValueError(f"--device {text!r}: expected a device such as cpu, cuda or cuda:0") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {text}: no CUDA GPU is available here: use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {text}: this machine has {torch.cuda.device_count()} GPU(s)")


def _resumed_run_dir(path: Path) -> Path:
    """The run folder of a training checkpoint or run folder: where a resumed run writes by default."""
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


#: Up to this many usable CPU cores, training defaults to one intra-op thread: torch's default (one
#: per core) made a step 18x slower on a loaded 2-core machine, while one thread costs at most 2x idle.
SMALL_MACHINE_CORES = 2


def _set_training_threads(requested: Optional[int], announce: bool) -> None:
    """``--threads``: N sets torch's intra-op threads, 0 keeps torch's default; unset, small machines
    (:data:`SMALL_MACHINE_CORES`) get 1 unless OMP_NUM_THREADS says otherwise, and a loaded
    machine gets a warning."""
    if requested is not None:
        if requested:
            torch.set_num_threads(requested)
        return
    if "OMP_NUM_THREADS" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cores <= SMALL_MACHINE_CORES:
        torch.set_num_threads(1)
        if announce:
            print(f"binarize finetune: training with 1 thread on this {cores}-core machine "
                  f"(--threads N to change)", file=sys.stderr)
    elif announce and hasattr(os, "getloadavg") and os.getloadavg()[0] >= cores:
        print(f"binarize finetune: warning: the machine is busy (load {os.getloadavg()[0]:.1f} on {cores} cores); "
              f"torch's {torch.get_num_threads()} threads may train much slower than --threads 1", file=sys.stderr)


# ------------------------------------------------------------------------------------ commands

def cmd_convert(args) -> None:
    from . import convert, summary

    out = _output_file(args.out, "--out", ".pt") if args.out else None
    model = _float_model(args)
    config = _convert_config(args)
    student = convert(model, config)
    print(student.binarize_plan)
    size = _input_size(args.input_size)
    if size:
        print(summary(student, _checked_input_size(student, size, "--input-size")))
    if out:
        recipe = ckpt.make_recipe(args.model, config, args.weights, **_key_values(args.model_arg, "--model-arg"))
        if size:
            recipe["input_size"] = list(size)  # so export and summary need no --input-size
        ckpt.atomic_save(ckpt.student_checkpoint(student, recipe), out)
        print(f"wrote {out} (a student checkpoint: binarize finetune/export/summary accept it)")


def cmd_finetune(args) -> None:
    from .datasets import data_source, make_loaders
    from .finetune import FinetuneConfig, finetune, init_distributed
    from .finetune.state import read_training_state

    if args.device:
        _check_device(args.device)
    rank, world = init_distributed()
    _set_training_threads(args.threads, announce=rank == 0 and not args.quiet)
    if args.resume and args.paper:
        raise ValueError("--paper starts a fresh run with a paper's recipe; a resumed run keeps the options it "
                         "was started with: drop --paper")
    if args.resume:
        path = ckpt.latest_checkpoint(args.resume)
        state = read_training_state(path)
        recipe = state["recipe"]
        if not recipe or "data" not in recipe:
            raise ValueError(f"{args.resume}: the checkpoint has no recipe with the data settings; resume it "
                             f"from Python with FinetuneConfig(resume=...)")
        # A resumed run writes where the user points: --run-dir, else the folder resumed from (never
        # the folder stored in the checkpoint, which may be the original of a copied run).
        run_dir = args.run_dir or str(_resumed_run_dir(Path(args.resume)))
        config_data = dict(state["config"], resume=str(path), run_dir=run_dir, progress=not args.quiet)
        if args.device:
            config_data["device"] = args.device
        try:
            config = FinetuneConfig.from_data(config_data)
        except ConfigVersionError as err:
            raise ckpt.CheckpointError(f"{path}: its training options do not fit this binarize: {err}") from None
        data = recipe["data"]
        teacher, student = ckpt.rebuild_from_checkpoint(path, recipe, trust_code=args.trust_code)
    else:
        if not (args.model and args.data):
            raise ValueError("finetune needs MODEL and DATA (or --resume RUN_DIR_OR_CHECKPOINT)")
        # Checked first, so a typo fails before the model is built; paths are stored absolute,
        # so a resumed run finds the data from any working directory.
        name = data_source(args.data)
        teacher = _float_model(args)
        from .methods import paper_recipe

        paper = paper_recipe(args.method, args.paper) if args.paper else None
        convert_config = _convert_config(args, dict(paper.convert) if paper else {})
        if args.student:
            student, _ = ckpt.load_student(args.student, trust_code=args.trust_code)
            _check_paper_conversion(student, paper, args.paper)
        else:
            from . import convert

            student = convert(teacher, convert_config)
        if args.batch_size % world:
            raise ValueError(f"--batch-size {args.batch_size} is the global batch: it must divide by the "
                             f"{world} processes")
        data = {"name": name, "data_dir": args.data_dir and str(Path(args.data_dir).resolve()),
                "batch_size": args.batch_size,
                "image_size": args.image_size, "channels": args.channels or _first_conv_channels(teacher),
                "num_workers": args.workers, "seed": args.seed}
        recipe = ckpt.make_recipe(args.model, student.binarize_config, args.weights,
                                  **_key_values(args.model_arg, "--model-arg"))
        overrides = {name: getattr(args, name) for name in cli_options() if getattr(args, name) is not None}
        make_config = partial(FinetuneConfig.paper, args.method, args.paper) if paper else FinetuneConfig
        config = make_config(run_dir=args.run_dir or DEFAULT_RUN_DIR, seed=args.seed,
                             deterministic=args.deterministic, device=args.device, progress=not args.quiet,
                             recipe=recipe, **overrides)
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


def _check_paper_conversion(student: nn.Module, paper, dataset: Optional[str]) -> None:
    """A --student converted before must have the convert options the --paper recipe sets."""
    config = getattr(student, "binarize_config", None)
    for key, value in (paper.convert.items() if paper else ()):
        if getattr(config, key, value) != value:
            raise ValueError(f"--paper {dataset} sets the conversion option {key}={value!r}, but the --student "
                             f"was converted with {key}={getattr(config, key)!r}: convert it again, or drop --student")


def _check_classes(model: nn.Module, info) -> None:
    with torch.no_grad():
        outputs = model.eval()(torch.zeros(1, info.in_channels, info.image_size, info.image_size)).shape[-1]
    model.train()
    if outputs != info.num_classes:
        raise ValueError(f"the model outputs {outputs} classes but {info.name} has {info.num_classes}: "
                         f"pass --model-arg num_classes={info.num_classes} (and matching --weights)")


def cmd_export(args) -> None:
    import binarize

    out = _output_file(args.out, "OUT", ".onnx")
    student, data = ckpt.load_student(args.checkpoint, trust_code=args.trust_code)
    model = (ckpt.rebuild_from_checkpoint(args.checkpoint, data["recipe"], trust_code=args.trust_code)[0]
             if args.float else student).eval()
    size = _input_size(args.input_size)
    source = "--input-size"
    if size is None:
        size, source = _recipe_input_size(data["recipe"]), f"the input size recorded in {args.checkpoint}"
    if size is None:
        raise ValueError(f"{args.checkpoint} does not record the input size: pass --input-size C,H,W")
    calibration = _calibration_batches(args.checkpoint, data["recipe"], args.calibrate) if args.calibrate else None
    binarize.export(model, out, torch.randn(*_checked_input_size(model, size, source)), calibration=calibration)
    print(f"wrote {out} ({os.path.getsize(out) / 1024:.1f} KiB)")


def _calibration_batches(checkpoint, recipe, count: int) -> List[torch.Tensor]:
    """The first ``count`` batches of the training data the checkpoint's run used."""
    from .datasets import make_loaders

    data = (recipe or {}).get("data")
    if not data:
        raise ValueError(f"{checkpoint} records no training data to calibrate on (only checkpoints of "
                         f"`binarize finetune` do): use binarize.export(..., calibration=batches) from Python")
    train, _, _ = make_loaders(data["name"], data["data_dir"], batch_size=data["batch_size"], seed=data["seed"],
                               image_size=data["image_size"], channels=data["channels"])
    return [images for images, _ in itertools.islice(train, count)]


def cmd_summary(args) -> None:
    from . import convert, summary

    if Path(args.model).is_file():
        model, data = ckpt.load_student(args.model, trust_code=args.trust_code)
        recorded = _recipe_input_size(data["recipe"])
    elif ":" not in args.model:
        raise FileNotFoundError(f"{args.model} is neither an existing checkpoint file nor a model name "
                                f"('torchvision:NAME', 'package.module:factory' or 'file.py:factory')")
    else:
        model = _float_model(args)
        if args.method:
            model = convert(model, _convert_config(args))
        recorded = None
    size, source = _input_size(args.input_size), "--input-size"
    if size is None and recorded:
        size, source = recorded, f"the input size recorded in {args.model}"
    if size is None:
        size = (1, _first_conv_channels(model) or 3, 224, 224)
        source = "the default input size (no --input-size given)"
        print(f"binarize summary: input size {size[1]}x224x224 assumed (--input-size C,H,W to change)", file=sys.stderr)
    size = _checked_input_size(model, size, source)
    if hasattr(model, "binarize_plan"):
        print(model.binarize_plan)
        print()
    print(summary(model, size))


#: A zip file: what torch.save writes (a checkpoint given to bench instead of an ONNX file).
_ZIP_MAGIC = b"PK\x03\x04"


def bench_onnx(path: str, threads: Optional[int] = 1, batch: int = 1, runs: int = 50, warmup: int = 5) -> Dict[str, float]:
    """Median and 90th-percentile latency (ms) of an ONNX file under ONNX Runtime with binarize's
    kernels registered (float models run there unchanged)."""
    import numpy as np
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

    from .runtime import session

    with open(path, "rb") as handle:
        if handle.read(4) == _ZIP_MAGIC:
            raise ValueError(f"{path} is a PyTorch checkpoint, not an ONNX file: export it first "
                             f"(binarize export {path} model.onnx)")
    try:
        sess = session(path, threads=threads)
    except (ort_errors.InvalidProtobuf, ort_errors.InvalidGraph, ort_errors.Fail) as err:
        raise ValueError(f"{path} is not an ONNX model that ONNX Runtime can load: "
                         f"{str(err).strip().splitlines()[0]}") from err
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
    threads = args.threads or None  # 0: ONNX Runtime's default
    for path in args.onnx:  # all checked before the first is timed
        if not Path(path).is_file():
            raise FileNotFoundError(f"ONNX file {path} does not exist")
    rows = [(path, bench_onnx(path, threads, args.batch, args.runs)) for path in args.onnx]
    width = max(len(p) for p, _ in rows)
    print(f"{'model':<{width}}  {'size KiB':>9}  {'median ms':>9}  {'p90 ms':>8}   (batch {args.batch}, "
          f"{threads or 'default'} thread(s), {args.runs} runs)")
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

DEFAULT_RUN_DIR = "runs/finetune"


def _counting_number(minimum: int):
    """An argparse type: a whole number >= ``minimum``, checked while parsing."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= {minimum}")
        return value
    return parse


_positive, _non_negative = _counting_number(1), _counting_number(0)


def _add_model_options(parser: argparse.ArgumentParser, method_default: Optional[str] = "biper") -> None:
    parser.add_argument("--weights", metavar="FILE", help="float weights (a state_dict file) to start from")
    parser.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                        help="keyword argument of the model constructor, e.g. num_classes=10 (repeatable)")
    parser.add_argument("--method", default=method_default, metavar="NAME",
                        help="binarization method: xnor, bireal, biper, cbcn or rbcn"
                             + (f" (default {method_default})" if method_default else " (default: no conversion)"))
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="conversion option, e.g. omega=auto or keep_first=False (repeatable)")


class _Parser(argparse.ArgumentParser):
    """Errors in two lines (the message, where to find the options), not the full usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\nrun '{self.prog} --help' for the options\n")


def _add_trust_code(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust-code", action="store_true",
                        help="allow the checkpoint's recipe to import the model factory and types it names outside "
                             "torchvision and binarize (a file.py or another package): that runs their code")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    p.add_argument("--paper", metavar="DATASET",
                   help="train with the recipe --method's paper gives for DATASET (e.g. --method rbcn --paper "
                        "imagenet: lambda1 = lambda2 = 0.1, times 0.9 every 20 epochs, 70 epochs); options given "
                        "here override it; README's 'Paper recipes' table lists them")
    p.add_argument("--data-dir", metavar="DIR", help="for cifar10: the folder holding cifar-10-batches-py/")
    p.add_argument("--batch-size", type=_positive, default=128, help="global batch size, split over processes (default 128)")
    p.add_argument("--image-size", type=_positive, help="square input side (default: the data's own)")
    p.add_argument("--channels", type=int, choices=(1, 3), help="input channels (default: what the model's first conv takes)")
    p.add_argument("--workers", type=_non_negative, default=0, help="data loading processes (default 0)")
    p.add_argument("--run-dir", help=f"checkpoints, metrics.csv, best.pt go here (default {DEFAULT_RUN_DIR}; "
                                     f"with --resume: the folder resumed from)")
    p.add_argument("--threads", type=_non_negative,
                   help=f"torch intra-op threads (0: torch's default, one per core; default: 1 on machines with "
                        f"up to {SMALL_MACHINE_CORES} cores, where more made training up to 18x slower under load)")
    _add_trust_code(p)
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
    p.add_argument("--calibrate", type=_positive, metavar="N",
                   help="store the float convs in int8, ranges measured on N batches of the run's training data "
                        "(smaller file; check the accuracy: README, Export and runtime)")
    _add_trust_code(p)
    p.set_defaults(run=cmd_export)

    p = commands.add_parser("summary", help="memory and compute of a model, by precision",
                            description="Print the memory and MACs of a student checkpoint, or of MODEL "
                                        "(converted with --method).")
    p.add_argument("model", help="a student/training checkpoint, or " + MODEL_HELP)
    _add_model_options(p, method_default=None)
    p.add_argument("--input-size", metavar="C,H,W", help="input size (default: the one the checkpoint records, "
                                                         "else the first conv's channels at 224x224)")
    _add_trust_code(p)
    p.set_defaults(run=cmd_summary)

    p = commands.add_parser("bench", help="time ONNX files with ONNX Runtime and binarize's kernels",
                            description="Median latency of each ONNX file (random input) under ONNX Runtime with "
                                        "binarize's custom ops registered; float models run unchanged.")
    p.add_argument("onnx", nargs="+", help="ONNX files ('binarize bench accuracy [--smoke ...]' instead runs "
                                           "the evidence report, benchmarks/report.py, of a source checkout)")
    p.add_argument("--threads", type=_non_negative, default=1, help="intra-op threads (default 1; 0: ONNX Runtime's default)")
    p.add_argument("--batch", type=_positive, default=1, help="batch size for dynamic batch dimensions (default 1)")
    p.add_argument("--runs", type=_positive, default=50, help="timed runs (default 50)")
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
    try:
        args.run(args)
    except TrainingInterrupted as stop:
        where = stop.checkpoint.parent.parent if stop.checkpoint else None
        print(f"\n{stop}\nresume with: binarize finetune --resume {where}" if where else f"\n{stop}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"\nbinarize {args.command}: interrupted (files are written atomically: nothing half-written is left)",
              file=sys.stderr)
        return 130
    # User errors: bad arguments, files and checkpoints. Anything else is a bug and keeps its traceback.
    except (ckpt.CheckpointError, ValueError, OSError) as err:
        print(f"binarize {args.command}: error: {_error_text(err)}", file=sys.stderr)
        return 2
    return 0


def _error_text(err: Exception) -> str:
    """One line: an OSError as "what: path" (Permission denied: out/model.onnx), others their message."""
    if isinstance(err, OSError) and err.strerror and err.filename:
        return f"{err.strerror}: {err.filename}"
    return str(err)


if __name__ == "__main__":
    sys.exit(main())
