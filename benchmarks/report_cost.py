"""Section 3 of the evidence report: inference speed and size (reusing bench_kernels / bench_models)
and the training cost of each method's converted model against the float model."""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import binarize
from binarize.cli import bench_onnx
from binarize.kernels import available_isas
from binarize.runtime import session

import bench_kernels
import bench_models
from report_accuracy import NETS, Variant

#: Speed rows' ISA order: the kernel library's paths, fastest first ("reference" is a test oracle).
KERNEL_ISAS = tuple(isa for isa in available_isas() if isa != "reference")


def kernel_latencies(runs: int, threads: int = 1) -> List[dict]:
    """bench_kernels' per-layer comparison at one thread count: one row per (layer, candidate), in us."""
    rng = np.random.default_rng(0)
    tables = []
    with tempfile.TemporaryDirectory() as tmp:
        for channels, size in bench_kernels.LAYERS:
            float_proto = bench_kernels.float_model(channels, size, rng)
            binary = bench_kernels.binary_model(channels, size, rng)
            int8 = bench_kernels.int8_model(float_proto, channels, size, rng, Path(tmp))
            candidates = [(binary, isa) for isa in KERNEL_ISAS] + [(float_proto.SerializeToString(), None), (int8, None)]
            tables.append((candidates, {"X": rng.standard_normal((1, channels, size, size)).astype(np.float32)}))
    names = [f"binary {isa}" for isa in KERNEL_ISAS] + ["ORT float", "ORT int8"]
    return [{"layer": f"{channels}@{size}x{size}", "candidate": name, "threads": threads, "us": us}
            for (channels, size), times in zip(bench_kernels.LAYERS, bench_kernels.median_us_threads(tables, runs, threads))
            for name, us in zip(names, times)]


def resnet18_latencies(runs: int, threads: int = 1) -> List[dict]:
    """bench_models' ResNet-18 (224x224, batch 1): binary (biper, stage 2) vs float vs ORT int8."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = bench_models.build_models(Path(tmp), calibration_images=4, name="resnet18", method="biper",
                                          options={}, int8_float_layers=False)
        feed = {session(paths["binary"]).get_inputs()[0].name: np.random.default_rng(1).standard_normal(
            bench_models.INPUT_SHAPE).astype(np.float32)}
        labels = list(paths)
        times, = bench_kernels.median_us_threads([([(str(paths[label]), None) for label in labels], feed)], runs, threads)
        return [{"model": "resnet18 224x224", "variant": label, "threads": threads, "ms": us / 1000,
                 "size_kib": paths[label].stat().st_size / 1024} for label, us in zip(labels, times)]


def small_net_latencies(teachers: Dict[str, nn.Module], runs: int, threads: int = 1) -> List[dict]:
    """The report's own nets: each trained float teacher and its biper conversion (stage 2) as ONNX."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for net, teacher in teachers.items():
            example = torch.zeros(1, 1, NETS[net][1], NETS[net][1])
            student = binarize.convert(teacher, "biper")
            binarize.set_stage(student, 2)
            for variant, model in (("float", teacher), ("binary", student)):
                path = binarize.export(model.eval(), Path(tmp) / f"{net}-{variant}.onnx", example)
                result = bench_onnx(str(path), threads=threads, batch=1, runs=runs, warmup=max(5, runs // 10))
                rows.append({"model": net, "variant": variant, "threads": threads, "ms": result["median_ms"],
                             "size_kib": result["size_kib"]})
    return rows


# ----------------------------------------------------------------------------- training cost

def step_models(net: str, variants: Sequence[Variant]) -> List[Tuple[str, nn.Module]]:
    """(label, model) to time: the float net, each variant's conversion of it, and BiPer also in stage 2
    (stage 1 trains the real-valued sin(omega w) weights, stage 2 the binary ones)."""
    torch.manual_seed(0)
    float_model = NETS[net][0]()
    models = [("float", float_model)]
    for variant in variants:
        converted = binarize.convert(float_model, variant.method, **variant.convert)
        models.append((variant.label, converted))
        if variant.method == "biper":
            stage2 = binarize.convert(float_model, variant.method, **variant.convert)
            binarize.set_stage(stage2, 2)
            models.append((f"{variant.label} stage 2", stage2))
    return models


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images, labels) -> None:
    """forward + backward + optimizer step, the method's own losses (RBCN's kernel loss) included."""
    loss = F.cross_entropy(model(images), labels) + sum(binarize.extra_losses(model).values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def train_step_times(net: str, variants: Sequence[Variant], batch: int, steps: int, rounds: int = 3) -> List[dict]:
    """Median step time of every model on the same batch, the models taking turns in ``rounds``
    rounds so that a change in machine load hits all of them alike."""
    side = NETS[net][1]
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 1, side, side, generator=generator)
    labels = torch.randint(0, 10, (batch,), generator=generator)
    models = step_models(net, variants)
    optimizers = [torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for _, m in models]
    samples: List[List[float]] = [[] for _ in models]
    for (_, model), optimizer in zip(models, optimizers):
        model.train()
        _train_step(model, optimizer, images, labels)  # warm-up
    for _ in range(rounds):
        for (_, model), optimizer, times in zip(models, optimizers, samples):
            for _ in range(max(1, steps // rounds)):
                start = time.perf_counter()
                _train_step(model, optimizer, images, labels)
                times.append(time.perf_counter() - start)
    float_ms = statistics.median(samples[0]) * 1000
    return [{"net": net, "model": label, "batch": batch, "ms": statistics.median(times) * 1000,
             "ratio": statistics.median(times) * 1000 / float_ms, "steps": len(times)}
            for (label, _), times in zip(models, samples)]


def where_time_goes(net: str, variants: Sequence[Variant], batch: int, top: int = 5) -> Dict[str, List[dict]]:
    """torch.profiler per-op self CPU time of a few training steps of each model, largest first."""
    side = NETS[net][1]
    images, labels = torch.randn(batch, 1, side, side), torch.randint(0, 10, (batch,))
    profiles = {}
    for label, model in step_models(net, variants):
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        model.train()
        _train_step(model, optimizer, images, labels)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                _train_step(model, optimizer, images, labels)
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events)
        profiles[label] = [{"op": e.key, "ms_per_step": e.self_cpu_time_total / 3 / 1000,
                            "share": e.self_cpu_time_total / total} for e in events[:top]]
    return profiles
