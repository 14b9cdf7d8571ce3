"""The evidence report: one command regenerates accuracy/ablation tables with the papers' claims
checked, BiPer's quantization-error figure, and speed, size and training-cost tables, with plots.

    python benchmarks/report.py              # full report: 198 runs (about 3 h of process time on Zen 5, 8 on Zen 1)
    python benchmarks/report.py --from-cache # the report from the runs cached so far, training nothing
    python benchmarks/report.py --smoke      # tiny version (CI), under a minute

Writes ``benchmarks/report/``: ``REPORT.md``, PNG plots (when matplotlib is installed:
``pip install binarize[report]``; otherwise the plots are skipped with a message) and the raw
results as CSV/JSON. Training runs are cached one JSON file per run under
``--cache``/<recipe> (default ``runs/report``, ``runs/report-smoke`` for --smoke), so an interrupted
report resumes and a changed recipe (--student-epochs, --teacher-epochs, or FinetuneConfig's defaults) retrains
everything, a method's changed defaults only that method's runs (the run files carry a digest of them); delete
the folder to retrain. Nothing is downloaded: the data is the bundled MNIST-5k.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import onnxruntime as ort
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the report's helpers and bench_* beside it

import binarize  # noqa: E402
from binarize import analysis  # noqa: E402
from binarize import checkpoint as ckpt  # noqa: E402
from binarize.kernels import available_isas  # noqa: E402
from binarize.config import ConvertConfig  # noqa: E402
from binarize.finetune.config import FALLBACKS  # noqa: E402

import report_accuracy as acc  # noqa: E402

REPOSITORY = Path(__file__).resolve().parent.parent
#: BiPer figure 3: Laplace parameters b of the curves, and the omega_0 where Monte-Carlo points go.
QE_B_VALUES = (0.005, 0.01, 0.02, 0.05, 0.1)
QE_MC_OMEGAS = (2.0, 10.0, 20.0, 50.0, 100.0, 300.0)
#: Training-step timing: the batch the accuracy runs use, and the target of the issue.
STEP_TARGET = 1.5
STEP_TARGET_METHODS = ("xnor", "bireal", "biper")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPOSITORY / "benchmarks" / "report",
                        help="output folder (default benchmarks/report)")
    parser.add_argument("--cache", type=Path, help="per-run cache (default runs/report, runs/report-smoke)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny version: 1 seed, LeNet on MNIST-rot, xnor and bireal, a few batches; "
                             "no kernel or ONNX timings")
    parser.add_argument("--workers", type=int, default=2, help="training processes, one thread each (default 2)")
    parser.add_argument("--from-cache", action="store_true",
                        help="train nothing: report the runs already in the cache (missing cells read '-'; the "
                             "environment table counts them)")
    recipe = acc.Recipe()
    parser.add_argument("--seeds", type=int, default=3, help="seeds per configuration (default 3; --smoke: 1)")
    parser.add_argument("--teacher-epochs", type=int, default=recipe.teacher_epochs,
                        help=f"float teacher epochs (default {recipe.teacher_epochs})")
    parser.add_argument("--student-epochs", type=int, default=recipe.student_epochs,
                        help=f"epochs of every student in all, every stage together (FinetuneConfig(epochs=...), "
                             f"every other field at its default; default {recipe.student_epochs})")
    return parser.parse_args(argv)


# -------------------------------------------------------------------------------- environment

def environment(command: str) -> Dict[str, str]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    wanted = ("avx2", "avx512f", "avx512bw", "avx512_vpopcntdq", "popcnt")
    return {
        "command": command,
        "cpu": next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                     if line.startswith("model name")), platform.processor() or platform.machine()),
        "cpus visible": str(os.cpu_count()),
        "ISA flags": " ".join(f for f in wanted if f in flags) or "unknown",
        "kernel paths": ", ".join(available_isas()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "binarize commit": git_commit(),
        "date (UTC)": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }


def git_commit() -> str:
    """HEAD, plus "(with uncommitted changes)" when the tree differs; read-only git calls
    (GIT_OPTIONAL_LOCKS=0: `git status` must not refresh the index)."""
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPOSITORY, env=env, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPOSITORY, env=env,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + (" (with uncommitted changes)" if dirty else "")


# -------------------------------------------------------------------------------------- output

class Plots:
    """matplotlib when installed; otherwise every plot is skipped with one message."""

    def __init__(self, out: Path):
        self.out = out
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib is not installed: skipping the plots (pip install 'binarize[report]')")
            self.plt = None
        else:
            self.plt = plt

    def save(self, fig, name: str) -> str:
        fig.tight_layout()
        fig.savefig(self.out / name, dpi=90)
        self.plt.close(fig)
        return f"![{name}]({name})"


def write_csv(rows: List[dict], path: Path) -> None:
    if not rows:
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
    writer.writeheader()
    writer.writerows(rows)
    ckpt.atomic_write_text(buffer.getvalue(), path)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


# ------------------------------------------------------------------------------ 1. accuracy

def accuracy_section(grid: acc.Grid, results: List[dict], out: Path, plots: Plots) -> List[str]:
    write_csv(results, out / "runs.csv")
    cells = acc.aggregate(results)
    ckpt.atomic_write_text(json.dumps({" | ".join(key): {"mean": c.mean, "std": c.std, "accs": c.accs}
                                       for key, c in cells.items()}, indent=1), out / "accuracy.json")
    claims = acc.claims(cells, grid)
    write_csv([vars(c) for c in claims], out / "claims.csv")
    recipe = grid.recipe
    settings = [(n, d) for n in grid.nets for d in grid.datasets]
    labels = [acc.FLOAT.label] + [v.label for v in grid.methods]
    lines = ["## 1. Accuracy and ablations", "",
             f"Test accuracy (%) on the fixed 1,000-image test split, mean ± std over seeds {list(grid.seeds)} "
             f"(the seed changes the teacher's and the student's initialisation and batch order). "
             f"Nets: `lenet` = CBCN's MNIST LeNet (four 3x3 convs 10-20-40-80 with BN, max-pool, ReLU; "
             f"32x32 input), `resnet8` = `binarize.models.resnet_small(blocks=(1, 1, 1))` (16-32-64, 28x28). "
             f"Recipe: float teacher Adam lr {recipe.teacher_lr:g}, {recipe.teacher_epochs} epochs; each "
             f"student `binarize.convert(teacher, method)` then `binarize.finetune` against that teacher for "
             f"{recipe.student_epochs} epochs in all: `FinetuneConfig(epochs=...)` with every other field at its "
             f"default (version {acc.FinetuneConfig.version}: Adam lr {FALLBACKS['lr']:g} "
             + "".join(f"({name}'s binary stage: {m.finetune_defaults['lr']:g}) " for name, m in
                       sorted(binarize.METHODS.items()) if "lr" in m.finetune_defaults)
             + f"with a {acc.FinetuneConfig.warmup_epochs:g}-epoch warm-up, cosine decay, no weight decay; BiPer "
             f"`epochs={recipe.student_epochs // 2}`, its stage 1 as long), batch {acc.BATCH_SIZE}"
             + (f", {recipe.steps_per_epoch} batches per epoch" if recipe.steps_per_epoch else "")
             + "; objective CE + KD (T = 4) + the method's own terms (RBCN: kernel loss, discriminators, BN "
               "refresh; CBCN: center loss). Conversion defaults: "
             + ("RSign thresholds" if ConvertConfig().input_threshold else "no RSign thresholds")
             + (" and RPReLU" if ConvertConfig().rprelu else ", no RPReLU")
             + " on every binary layer; first conv, 1x1 shortcuts, classifier and the layers the cost rule "
               "finds slower binary (`keep_costly_float`: LeNet's 10-channel conv) stay float.", ""]
    rows = [[label] + [str(cells[(n, d, label)]) if (n, d, label) in cells else "-" for n, d in settings]
            for label in labels]
    lines += markdown_table(["method"] + [f"{n}, {d}" for n, d in settings], rows)
    lines += [""]
    if plots.plt:
        lines += [accuracy_plot(plots, cells, settings, labels), ""]

    lines += [f"### One-factor ablation ({grid.ablation_net}, {grid.ablation_data})", "",
              "Each row changes one thing in a method's default recipe; Δ = row − its default "
              "(percentage points; ± one standard error of the difference).", ""]
    rows = []
    for variant, base in grid.ablations:
        key = (grid.ablation_net, grid.ablation_data)
        row, ref = cells.get(key + (variant.label,)), cells.get(key + (base,))
        if row is None or ref is None:
            continue
        noise = (row.sem ** 2 + ref.sem ** 2) ** 0.5
        rows.append([variant.label, str(row), base, str(ref), f"{100 * (row.mean - ref.mean):+.2f} ± {100 * noise:.2f}"])
    lines += markdown_table(["variant", "acc %", "default", "default acc %", "Δ pp"], rows) + [""]
    if plots.plt and rows:
        lines += [ablation_plot(plots, cells, grid), ""]

    lines += ["## Claims of the papers, checked", "",
              "Verdict rule: *holds* when the mean gap points the paper's way by more than one standard "
              "error of the difference; *within noise* when the gap is smaller than one standard error "
              "(either sign); *does not hold* when it points the other way by more than that. "
              "For \"at least as good\", any gap ≥ 0 holds. With one seed the standard error is 0.", ""]
    lines += markdown_table(
        ["claim", "source", "setting", "compared", "gap pp", "verdict"],
        [[c.claim, c.source, c.setting, f"{c.better} vs {c.worse}",
          "-" if c.gap_pp is None else f"{c.gap_pp:+.2f} ± {c.noise_pp:.2f}", f"**{c.verdict}**"] for c in claims])
    return lines + [""]


def accuracy_plot(plots: Plots, cells, settings, labels) -> str:
    plt = plots.plt
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(settings)
    for index, (net, data) in enumerate(settings):
        present = [i for i, label in enumerate(labels) if (net, data, label) in cells]
        means = [100 * cells[(net, data, labels[i])].mean for i in present]
        stds = [100 * cells[(net, data, labels[i])].std for i in present]
        ax.bar([i + (index - (len(settings) - 1) / 2) * width for i in present], means, width, yerr=stds,
               capsize=2, label=f"{net}, {data}")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_ylabel("test accuracy (%)")
    lowest = min(100 * (c.mean - c.std) for c in cells.values())
    ax.set_ylim(max(0, 10 * int(lowest / 10) - 10), 100)
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(axis="y", alpha=0.3)
    return plots.save(fig, "accuracy.png")


def ablation_plot(plots: Plots, cells, grid: acc.Grid) -> str:
    plt = plots.plt
    key = (grid.ablation_net, grid.ablation_data)
    rows = [(v.label, cells[key + (v.label,)], cells[key + (base,)]) for v, base in grid.ablations
            if key + (v.label,) in cells and key + (base,) in cells]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1))
    deltas = [100 * (row.mean - ref.mean) for _, row, ref in rows]
    errors = [100 * (row.sem ** 2 + ref.sem ** 2) ** 0.5 for _, row, ref in rows]
    ax.barh(range(len(rows)), deltas, xerr=errors, capsize=2, color=["tab:green" if d >= 0 else "tab:red" for d in deltas])
    ax.set_yticks(range(len(rows)), [label for label, _, _ in rows])
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("accuracy change vs the method's default recipe (pp)")
    ax.set_title(f"one-factor ablation, {key[0]} on {key[1]}", fontsize=9)
    return plots.save(fig, "ablation.png")


# ---------------------------------------------------------------------- 2. quantization error

def qe_section(teachers: Dict[str, torch.nn.Module], smoke: bool, out: Path, plots: Plots) -> List[str]:
    samples = 20_000 if smoke else 400_000
    monte_carlo = [{"b": b, "omega": w, "closed_form": float(analysis.quantization_error(b, w)),
                    "monte_carlo": analysis.monte_carlo_quantization_error(b, w, samples)}
                   for b in QE_B_VALUES for w in QE_MC_OMEGAS]
    layers = []
    for net, teacher in teachers.items():
        reports = {omega: analysis.quantization_report(binarize.convert(teacher, "biper", omega=omega))
                   for omega in (20.0, "auto")}
        for at_20, auto in zip(reports[20.0].layers, reports["auto"].layers):
            layers.append({"net": net, "layer": at_20.name, "b": at_20.b, "omega_auto": auto.omega,
                           "qe_closed_20": at_20.qe, "qe_measured_20": at_20.measured_qe,
                           "qe_closed_auto": auto.qe, "qe_measured_auto": auto.measured_qe})
    ckpt.atomic_write_text(json.dumps({"monte_carlo": monte_carlo, "layers": layers}, indent=1), out / "qe.json")
    worst = max(abs(r["monte_carlo"] - r["closed_form"]) for r in monte_carlo)
    lines = ["## 2. Quantization error (BiPer figure 3)", "",
             f"Closed form (eqs. 7-8, `binarize.analysis.quantization_error`) against Monte-Carlo estimates "
             f"({samples:,} Laplace samples per point) at b ∈ {list(QE_B_VALUES)}, ω0 ∈ {list(QE_MC_OMEGAS)}: "
             f"largest difference {worst:.2e}. The peak is {analysis.QE_PEAK} at b·ω0 = {analysis.QE_PEAK_PRODUCT}. "
             f"Measured: the per-layer QE of the float teachers (trained above, seed 0) converted with BiPer "
             f"(real weights, per-channel scale, so not exactly Laplace), at ω0 = 20 and at `omega=\"auto\"`, "
             f"which puts every layer at b·ω0 = {analysis.AUTO_OMEGA_PRODUCT} "
             f"(closed-form QE {float(analysis.quantization_error(1.0, analysis.AUTO_OMEGA_PRODUCT)):.4f}).", ""]
    if plots.plt:
        lines += [qe_plot(plots, monte_carlo, layers), ""]
    lines += markdown_table(
        ["net", "layer", "b = mean abs w", "b·20", "QE@20 closed", "QE@20 measured", "ω0 auto", "QE auto closed",
         "QE auto measured"],
        [[r["net"], r["layer"], f"{r['b']:.4f}", f"{20 * r['b']:.3f}", f"{r['qe_closed_20']:.4f}",
          f"{r['qe_measured_20']:.4f}", f"{r['omega_auto']:.1f}", f"{r['qe_closed_auto']:.4f}",
          f"{r['qe_measured_auto']:.4f}"] for r in layers])
    return lines + [""]


def qe_plot(plots: Plots, monte_carlo: List[dict], layers: List[dict]) -> str:
    plt = plots.plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    omegas = np.logspace(-0.5, 3, 300)
    for b in QE_B_VALUES:
        line, = left.plot(omegas, analysis.quantization_error(b, omegas), label=f"b = {b:g}")
        points = [r for r in monte_carlo if r["b"] == b]
        left.plot([r["omega"] for r in points], [r["monte_carlo"] for r in points], "o", color=line.get_color(), ms=4)
    left.axhline(analysis.QE_PEAK, ls=":", color="gray")
    left.set(xscale="log", xlabel="ω0", ylabel="QE", title="QE vs ω0 (lines: eq. 7; dots: Monte-Carlo)")
    left.legend(fontsize=8)
    products = np.logspace(-2, 2, 300)
    right.plot(products, analysis.quantization_error(1.0, products), color="black", label="eq. 7 (any b)")
    for net in sorted({r["net"] for r in layers}):
        rows = [r for r in layers if r["net"] == net]
        right.plot([20 * r["b"] for r in rows], [r["qe_measured_20"] for r in rows], "o", ms=5,
                   label=f"{net} layers, ω0 = 20 (measured)")
        right.plot([r["b"] * r["omega_auto"] for r in rows], [r["qe_measured_auto"] for r in rows], "x", ms=7,
                   label=f"{net} layers, ω0 auto (measured)")
    right.set(xscale="log", xlabel="b·ω0", ylabel="QE", title="pretrained teachers' layers on the curve")
    right.legend(fontsize=7)
    return plots.save(fig, "qe.png")


# ------------------------------------------------------------------ 3. speed, size, training cost

def speed_section(teachers: Dict[str, torch.nn.Module], grid: acc.Grid, results: List[dict], smoke: bool,
                  out: Path, plots: Plots) -> List[str]:
    import report_cost as cost  # imports bench_kernels/bench_models (onnxruntime.quantization)

    lines = ["## 3. Speed, size and training cost", ""]
    if smoke:
        lines += ["(smoke mode: kernel and ONNX timings skipped)", ""]
    else:
        print("section 3: kernel latency per layer")
        kernels = cost.kernel_latencies(runs=200)
        print("section 3: end-to-end latency per model")
        models = cost.resnet18_latencies(runs=30) + cost.small_net_latencies(teachers, runs=200)
        write_csv(kernels, out / "kernels.csv")
        write_csv(models, out / "models.csv")
        lines += kernel_lines(kernels, plots) + model_lines(models, plots)

    print("section 3: training step time")
    variants = list(grid.methods)
    step_rows, profiles = [], {}
    for net in grid.nets:
        step_rows += cost.train_step_times(net, variants, batch=acc.BATCH_SIZE, steps=3 if smoke else 15,
                                           rounds=1 if smoke else 3)
        profiles[net] = cost.where_time_goes(net, variants, batch=acc.BATCH_SIZE)
    write_csv(step_rows, out / "train_step.csv")
    ckpt.atomic_write_text(json.dumps(profiles, indent=1), out / "train_profile.json")
    lines += training_cost_lines(step_rows, profiles, results, grid, plots)
    return lines


def kernel_lines(rows: List[dict], plots: Plots) -> List[str]:
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    candidates = list(dict.fromkeys(r["candidate"] for r in rows))
    us = {(r["layer"], r["candidate"]): r["us"] for r in rows}
    lines = ["### Kernel latency by layer", "",
             "`benchmarks/bench_kernels.py`'s layers and candidates (one 3x3 conv, stride 1, pad 1, batch 1, "
             "C -> C), re-measured here: median µs of `session.run` at 1 thread, 200 runs interleaved in 5 rounds; "
             "the binary kernel with each ISA path forced, against ORT's float and int8 (QDQ) Conv.", ""]
    lines += markdown_table(["layer"] + candidates + [f"float / {c.split()[-1]}" for c in candidates if c.startswith("binary")],
                            [[layer] + [f"{us[(layer, c)]:.1f}" for c in candidates]
                             + [f"{us[(layer, 'ORT float')] / us[(layer, c)]:.1f}x" for c in candidates if c.startswith("binary")]
                             for layer in layers])
    lines += [""]
    if plots.plt:
        plt = plots.plt
        fig, ax = plt.subplots(figsize=(8, 3.8))
        width = 0.8 / len(candidates)
        for index, candidate in enumerate(candidates):
            ax.bar([i + (index - (len(candidates) - 1) / 2) * width for i in range(len(layers))],
                   [us[(layer, candidate)] for layer in layers], width, label=candidate)
        ax.set(yscale="log", ylabel="µs per call (log)", title="one 3x3 conv, batch 1, 1 thread")
        ax.set_xticks(range(len(layers)), layers)
        ax.legend(fontsize=8)
        lines += [plots.save(fig, "kernel_latency.png"), ""]
    return lines


def model_lines(rows: List[dict], plots: Plots) -> List[str]:
    lines = ["### End to end by model, and file sizes", "",
             "ResNet-18 at 224x224 as in `benchmarks/bench_models.py` (random weights; binary = biper stage 2, "
             "int8 = ORT static QDQ quantization of the float file; 30 interleaved runs), and the report's own nets "
             "(trained teachers and their biper conversion; `binarize.cli.bench_onnx`, 200 runs). Batch 1, 1 thread.", ""]
    by_model: Dict[str, Dict[str, dict]] = {}
    for r in rows:
        by_model.setdefault(r["model"], {})[r["variant"]] = r
    table_rows = []
    for model, variants in by_model.items():
        binary = variants["binary"]
        for name, r in variants.items():
            table_rows.append([model, name, f"{r['ms']:.3f}", f"{r['size_kib']:.1f}",
                               f"{r['ms'] / binary['ms']:.2f}x", f"{r['size_kib'] / binary['size_kib']:.1f}x"])
    lines += markdown_table(["model", "variant", "latency ms", "file KiB", "time / binary", "size / binary"], table_rows)
    lines += [""]
    if plots.plt:
        plt = plots.plt
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
        names = list(by_model)
        variants = list(dict.fromkeys(v for m in by_model.values() for v in m))
        width = 0.8 / len(variants)
        for index, variant in enumerate(variants):
            xs = [i + (index - (len(variants) - 1) / 2) * width for i, m in enumerate(names) if variant in by_model[m]]
            present = [m for m in names if variant in by_model[m]]
            left.bar(xs, [by_model[m][variant]["ms"] for m in present], width, label=variant)
            right.bar(xs, [by_model[m][variant]["size_kib"] for m in present], width, label=variant)
        for ax, label in ((left, "latency ms (log)"), (right, "ONNX file KiB (log)")):
            ax.set(yscale="log", ylabel=label)
            ax.set_xticks(range(len(names)), names, fontsize=8)
            ax.legend(fontsize=8)
        lines += [plots.save(fig, "model_latency_size.png"), ""]
    return lines


def training_cost_lines(step_rows: List[dict], profiles: Dict[str, Dict[str, List[dict]]], results: List[dict],
                        grid: acc.Grid, plots: Plots) -> List[str]:
    lines = ["### Training cost", "",
             f"One training step (forward + backward + SGD step, CE plus the method's own losses) of each method's "
             f"converted model against the float model, batch {acc.BATCH_SIZE}, 1 thread, random weights and "
             f"data, the models taking turns in rounds in one process; median ms. Target: ≤ {STEP_TARGET}x float "
             f"for {', '.join(STEP_TARGET_METHODS)}. This is the student alone; the full recipe adds the teacher's "
             f"forward and the discriminators (last column: training images/s of that method's accuracy runs "
             f"above, mean over datasets and seeds, two runs sharing the machine at a time, so only roughly "
             f"comparable; float: the teacher's own training, Adam and no teacher).", ""]
    throughput: Dict[tuple, List[float]] = {}
    for r in results:
        throughput.setdefault((r["net"], r["label"]), []).append(r["images_per_s"])
    rows = []
    for r in step_rows:
        base = r["model"].replace(" stage 2", "")
        method = "float" if base == "float" else next((v.method for v in grid.methods if v.label == base), "")
        target = "-"
        if method in STEP_TARGET_METHODS:
            target = "met" if r["ratio"] <= STEP_TARGET else "missed"
        full = throughput.get((r["net"], base)) if not r["model"].endswith("stage 2") else None
        rows.append([r["net"], r["model"], f"{r['ms']:.1f}", f"{r['ratio']:.2f}x", target,
                     f"{np.mean(full):.0f}" if full else "-"])
    lines += markdown_table(["net", "model", "step ms", "vs float", f"≤ {STEP_TARGET}x", "full recipe img/s"], rows)
    lines += [""]
    if plots.plt:
        plt = plots.plt
        nets = list(dict.fromkeys(r["net"] for r in step_rows))
        fig, axes = plt.subplots(1, len(nets), figsize=(5.5 * len(nets), 3.8), squeeze=False)
        for ax, net in zip(axes[0], nets):
            rows_net = [r for r in step_rows if r["net"] == net]
            ax.bar(range(len(rows_net)), [r["ratio"] for r in rows_net])
            ax.axhline(STEP_TARGET, ls="--", color="red", label=f"target {STEP_TARGET}x")
            ax.set_xticks(range(len(rows_net)), [r["model"] for r in rows_net], rotation=40, ha="right", fontsize=8)
            ax.set(ylabel="step time / float", title=f"{net}, batch {acc.BATCH_SIZE}, 1 thread")
            ax.legend(fontsize=8)
        lines += [plots.save(fig, "train_step.png"), ""]
    lines += ["Where the time goes (torch.profiler, self CPU time per step of the top ops, 3 steps):", ""]
    table_rows = []
    for net, by_model in profiles.items():
        for model, ops in by_model.items():
            table_rows.append([net, model, "; ".join(f"{o['op']} {o['ms_per_step']:.1f} ms ({o['share']:.0%})" for o in ops)])
    lines += markdown_table(["net", "model", "top ops (self CPU ms per step, share)"], table_rows)
    return lines + [""]


# ---------------------------------------------------------------------------------------- main

def main(argv: Optional[Sequence[str]] = None) -> Path:
    args = parse_args(argv)
    start = time.time()
    command = "python benchmarks/report.py" + "".join(f" {shlex.quote(a)}" for a in
                                                                   (sys.argv[1:] if argv is None else argv))
    if args.smoke:
        grid = acc.SMOKE_GRID
    else:
        recipe = acc.Recipe(teacher_epochs=args.teacher_epochs, student_epochs=args.student_epochs)
        grid = dataclasses.replace(acc.FULL_GRID, recipe=recipe, seeds=tuple(range(args.seeds)))
    cache = acc.recipe_cache(args.cache or REPOSITORY / "runs" / ("report-smoke" if args.smoke else "report"), grid)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    plots = Plots(out)
    env = environment(command)

    print(f"section 1: {len(grid.jobs())} student runs + teachers, {args.workers} processes (cache {cache})")
    results = acc.run_grid(grid, cache, args.workers, from_cache=args.from_cache)
    torch.set_num_threads(1)
    qe_data = grid.datasets[0]
    teachers = {net: acc.load_teacher(cache, net, qe_data, grid.seeds[0]) for net in grid.nets
                if acc.teacher_path(cache, net, qe_data, grid.seeds[0]).is_file()}
    sections = accuracy_section(grid, results, out, plots)
    print("section 2: quantization error")
    sections += qe_section(teachers, args.smoke, out, plots)
    sections += speed_section(teachers, grid, results, args.smoke, out, plots)

    cached = sum(r["cached"] for r in results)
    env["wall time"] = f"{time.time() - start:.0f} s" + (f" ({cached} of {len(results)} training runs read from "
                                                        f"the cache)" if cached else "")
    env["training runs"] = (f"{len(results)} runs, {sum(r['train_s'] for r in results) / 60:.0f} min of process "
                            f"time (whenever they ran) over {args.workers} one-thread processes")
    expected = len(grid.jobs()) + len({(n, d, s) for n, d, _, s in grid.jobs()})
    if len(results) < expected:
        env["training runs"] += f"; {expected - len(results)} of the grid's {expected} runs missing (--from-cache)"
    ckpt.atomic_write_text(json.dumps(env, indent=1), out / "environment.json")
    head = ["# binarize evidence report" + (" (smoke)" if args.smoke else ""), "",
            "Regenerate with (from the repository root):", "", f"    {command}", ""]
    head += markdown_table(["", ""], [[key, f"`{value}`" if key == "command" else value] for key, value in env.items()])
    ckpt.atomic_write_text("\n".join(head + [""] + sections), out / "REPORT.md")
    print(f"wrote {out / 'REPORT.md'} in {time.time() - start:.0f} s")
    return out / "REPORT.md"


if __name__ == "__main__":
    main()
