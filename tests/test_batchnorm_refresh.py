"""A converted model's BatchNorm statistics at eval(): recomputed from its last training inputs with the
current weights (``ConvertConfig.batchnorm_refresh_samples``, :mod:`binarize.batchnorm`). References:
the mean a BatchNorm sees over the recorded samples in one concatenated float forward, PyTorch's own
statistics of a model that never trained, and ONNX Runtime running the exported file."""
import copy
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import binarize
from binarize import batchnorm
from binarize import checkpoint as ckpt
from binarize.finetune import FinetuneConfig, finetune, refresh_batchnorm
from binarize.models import resnet_small

sys.path.insert(0, str(Path(__file__).parent))
from finetune_worker import freeze_broken_batchnorm  # noqa: E402


def small_resnet():
    torch.manual_seed(0)
    return resnet_small(blocks=(1, 1), widths=(8, 16))


def train_steps(model, sizes, seed=0, shift=0.0):
    """Adam steps at a high rate on random data, one per batch size: the latent weights flip."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    model.train()
    inputs = []
    for i, size in enumerate(sizes):
        x = torch.randn(size, 1, 28, 28, generator=generator) + (shift if i == len(sizes) - 1 else 0.0)
        y = torch.randint(0, 10, (size,), generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        inputs.append(x)
    return inputs


def norms(model):
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def batchnorm_input_means(model, x):
    """Per BatchNorm, the per-channel mean of its input over the samples of ``x``, in one training-mode
    forward of a copy (where each BatchNorm normalizes with the statistics of ``x`` itself)."""
    probe = copy.deepcopy(model)
    batchnorm.freeze(probe)
    captured = {}
    def capture(index):
        def hook(module, args):
            captured[index] = args[0].mean(dim=(0, 2, 3))
        return hook

    hooks = [m.register_forward_pre_hook(capture(i)) for i, m in enumerate(norms(probe))]
    with torch.no_grad():
        probe.train()(x)
    for hook in hooks:
        hook.remove()
    return [captured[i] for i in range(len(hooks))]


def test_eval_after_training_recomputes_statistics_from_the_last_samples_weighted_by_size():
    """The last batch of an epoch is often small (5,000 = 39 x 128 + 8): it must count for its 8
    samples, not as much as a full batch. Its inputs are shifted by 3, so a plain average over
    batches would move every first-layer mean by 1 and more. Mutations caught: a plain average over
    batches; no recompute at eval (PyTorch's momentum-0.1 average of pre-step weights); recording
    before the trim keeps too few samples."""
    model = binarize.convert(small_resnet(), "bireal", batchnorm_refresh_samples=100)
    inputs = train_steps(model, [64, 64, 64, 8], shift=3.0)
    recorder = model.binarize_recent_inputs
    assert recorder.stale and [count for *_, count in recorder.batches] == [64, 64, 8]  # >= 100 samples
    # In training mode every batch is normalized by its own statistics, so each BatchNorm's input
    # mean is taken per batch, and the batches' means are averaged by sample count.
    per_batch = [batchnorm_input_means(model, x) for x in inputs[1:]]
    reference = [sum(len(x) * means[i] for x, means in zip(inputs[1:], per_batch)) / 136
                 for i in range(len(per_batch[0]))]
    model.eval()
    with torch.no_grad():
        model(inputs[0][:2])
    assert not recorder.stale
    for norm, mean in zip(norms(model), reference):
        torch.testing.assert_close(norm.running_mean, mean, rtol=1e-4, atol=1e-5)


def test_without_training_calls_the_statistics_are_left_alone():
    """A model fresh from convert (or only evaluated) keeps the float model's statistics."""
    float_model = small_resnet()
    with torch.no_grad():
        for norm in norms(float_model):
            norm.running_mean.normal_(0, 0.3)
    model = binarize.convert(float_model, "bireal")
    before = [norm.running_mean.clone() for norm in norms(model)]
    model.eval()
    with torch.no_grad():
        model(torch.randn(4, 1, 28, 28))
    assert all(torch.equal(a, norm.running_mean) for a, norm in zip(before, norms(model)))


def test_turned_off_the_model_keeps_pytorchs_running_averages():
    model = binarize.convert(small_resnet(), "bireal", batchnorm_refresh_samples=0)
    assert batchnorm.recorder_of(model) is None
    train_steps(model, [32, 32])
    before = [norm.running_mean.clone() for norm in norms(model)]
    model.eval()
    with torch.no_grad():
        model(torch.randn(2, 1, 28, 28))
    assert all(torch.equal(a, norm.running_mean) for a, norm in zip(before, norms(model)))
    with pytest.raises(ValueError, match="batchnorm_refresh_samples"):
        binarize.convert(small_resnet(), "bireal", batchnorm_refresh_samples=-1)


def test_state_dict_copies_and_loading():
    """state_dict() of a stale model holds the recomputed statistics; a deep copy keeps the hook and
    the recorded inputs (without sharing the mark); loading a state_dict keeps the loaded statistics
    (they describe the loaded weights). Mutation caught: the deepcopy hook not registered."""
    model = binarize.convert(small_resnet(), "bireal")
    train_steps(model, [32, 32, 32])
    twin = copy.deepcopy(model)
    assert twin.binarize_recent_inputs is not model.binarize_recent_inputs and twin.binarize_recent_inputs.stale
    state = model.state_dict()
    assert not model.binarize_recent_inputs.stale and twin.binarize_recent_inputs.stale
    twin.eval()(torch.zeros(1, 1, 28, 28))
    key = next(k for k in state if k.endswith("running_var"))
    torch.testing.assert_close(twin.state_dict()[key], state[key])

    other = binarize.convert(small_resnet(), "bireal")
    train_steps(other, [32, 32], seed=1)
    other.load_state_dict(state)
    assert not other.binarize_recent_inputs.stale
    other.eval()(torch.zeros(1, 1, 28, 28))
    torch.testing.assert_close(other.state_dict()[key], state[key])


def test_the_recompute_leaves_the_callers_random_stream_alone():
    """A model with dropout: its training-mode forwards inside the recompute draw random numbers."""
    float_model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Dropout(0.5),
                                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    model = binarize.convert(float_model, "bireal", keep_costly_float=False)
    train_steps(model, [16, 16])
    state = torch.get_rng_state()
    model.eval()(torch.zeros(1, 1, 28, 28))
    assert not model.binarize_recent_inputs.stale
    assert torch.equal(torch.get_rng_state(), state)


def test_a_model_moved_after_training_recomputes_with_its_inputs_moved_too():
    """Trained in float32 (on a GPU, say), then converted (.double(), .cpu()) before evaluation: the
    recorded inputs follow the model. Mutation caught: the recorded inputs used as they are."""
    model = binarize.convert(small_resnet(), "bireal")
    train_steps(model, [32, 32])
    model.double().eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 1, 28, 28, dtype=torch.float64))
    assert out.dtype == torch.float64 and not model.binarize_recent_inputs.stale


def test_pickling_the_model_does_not_store_the_training_inputs():
    model = binarize.convert(small_resnet(), "bireal")
    train_steps(model, [256, 256])
    buffer = io.BytesIO()
    torch.save(model.binarize_recent_inputs, buffer)
    assert len(buffer.getvalue()) < 2000  # 512 samples of 28 x 28 floats would be 1.6 MB


def test_refresh_batchnorm_over_a_loader_is_not_redone_from_the_recorded_inputs():
    model = binarize.convert(small_resnet(), "bireal")
    train_steps(model, [32, 32])
    generator = torch.Generator().manual_seed(5)
    loader = [(torch.randn(16, 1, 28, 28, generator=generator), torch.zeros(16, dtype=torch.long)) for _ in range(3)]
    refresh_batchnorm(model, loader)
    assert not model.binarize_recent_inputs.stale
    state = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model.eval()(torch.zeros(1, 1, 28, 28))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_finetune_pauses_the_hook():
    """finetune's recipes were measured with PyTorch's averages and their own bn_refresh policy."""
    teacher = small_resnet()
    model = binarize.convert(teacher, "bireal")
    generator = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 1, 28, 28, generator=generator), torch.randint(0, 10, (64,)))
    loader = torch.utils.data.DataLoader(data, batch_size=32)
    finetune(model, teacher, loader, None, FinetuneConfig(epochs=1, progress=False, evaluate_initial=False))
    recorder = model.binarize_recent_inputs
    assert not recorder.paused and not recorder.stale and len(recorder.batches) == 0


def test_a_compiled_loop_records_and_recomputes_as_an_eager_loop_does():
    """torch.compile traces the forward pre-hook: the recording and the recompute run outside the
    graph, so a compiled loop leaves the statistics an eager one does. torch.export records nothing,
    and fullgraph=True refuses the graph break with a message naming the fix. Mutation caught: the
    hook doing nothing under compilation (PyTorch's running averages stay)."""
    eager = binarize.convert(small_resnet(), "bireal", batchnorm_refresh_samples=100)
    compiled = copy.deepcopy(eager)
    inputs = train_steps(eager, [64, 64, 8])
    train_steps(torch.compile(compiled, backend="eager"), [64, 64, 8])
    assert [count for *_, count in compiled.binarize_recent_inputs.batches] == [64, 64, 8]
    probe = inputs[0][:4]
    with torch.no_grad():
        expected = eager.eval()(probe)
        got = torch.compile(compiled, backend="eager").eval()(probe)
    assert not compiled.binarize_recent_inputs.stale
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)

    exported = binarize.convert(small_resnet(), "bireal")
    torch.export.export(exported.train(), (probe,))
    assert not exported.binarize_recent_inputs.stale and not exported.binarize_recent_inputs.batches
    with pytest.raises(Exception, match="batchnorm_refresh_samples=0"):
        torch.compile(exported, backend="eager", fullgraph=True)(probe)


def test_export_uses_the_statistics_the_next_eval_would_and_leaves_the_model_alone(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = binarize.convert(small_resnet(), "bireal")
    train_steps(model, [64, 64])
    x = torch.randn(3, 1, 28, 28)
    path = binarize.export(model, tmp_path / "m.onnx", x)
    assert model.binarize_recent_inputs.stale  # the export worked on a copy
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    session = binarize.runtime.session(path)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_version_5_recipes_rebuild_without_it():
    data = ckpt.config_to_data(binarize.methods.get_method("bireal").config())
    assert data["options"]["batchnorm_refresh_samples"] == 512
    old = {k: v for k, v in data["options"].items() if k != "batchnorm_refresh_samples"}
    assert ckpt.config_from_data({"method": "bireal", "options": dict(old, version=5)}).batchnorm_refresh_samples == 0


# ------------------------------------------------------------- the check that ends a finetune run

def _mnist_batches(count, batch_size=64):
    from binarize.datasets import make_loaders

    train, val, _ = make_loaders("mnist5k", batch_size=batch_size, test_batch_size=500, seed=0)
    return train, val, [batch for batch, _ in zip(train, range(count))]


def test_the_check_keeps_recomputed_statistics_only_when_they_classify_better_by_the_margin():
    from binarize.finetune.evaluation import check_batchnorm, evaluate

    train, _, batches = _mnist_batches(16)
    teacher = small_resnet()
    model, _ = finetune(binarize.convert(teacher, "bireal"), None, train, None,
                        FinetuneConfig(epochs=1, steps_per_epoch=30, progress=False, evaluate_initial=False,
                                       bn_final_check=False))
    freeze_broken_batchnorm(model)
    check, refresh = batches[8:], batches[:8]
    broken = copy.deepcopy(model)
    reference = copy.deepcopy(model)
    refresh_batchnorm(reference, refresh)
    running_acc, recomputed_acc = evaluate(broken, check)["acc"], evaluate(reference, check)["acc"]
    assert recomputed_acc > running_acc + 0.2, (running_acc, recomputed_acc)

    result = check_batchnorm(model, check, refresh)
    assert result == {"running_acc": pytest.approx(running_acc), "recomputed_acc": pytest.approx(recomputed_acc),
                      "kept": "recomputed", "check_samples": 8 * 64}
    for mine, theirs in zip(norms(model), norms(reference)):
        assert torch.equal(mine.running_mean, theirs.running_mean) and torch.equal(mine.running_var, theirs.running_var)

    # A gain just under the margin: the running statistics stay, bit for bit.
    before = {k: v.clone() for k, v in broken.state_dict().items()}
    result = check_batchnorm(broken, check, refresh, margin=recomputed_acc - running_acc + 1e-6)
    assert result["kept"] == "running"
    assert all(torch.equal(v, before[k]) for k, v in broken.state_dict().items())


def test_finetune_ends_by_replacing_running_statistics_that_no_longer_fit_and_changes_no_weight():
    """Running averages frozen at numbers that describe nothing (freeze_broken_batchnorm):
    with bn_final_check the run's last validation row and the returned model use recomputed
    statistics; without it the broken ones. Training itself is the same run in both."""
    from binarize.finetune.evaluation import evaluate

    runs = {}
    for check in (True, False):
        train, val, _ = _mnist_batches(0)  # fresh loaders: each run draws the same order
        teacher = small_resnet()
        student = binarize.convert(teacher, "bireal")
        freeze_broken_batchnorm(student)
        student, history = finetune(student, None, train, val, FinetuneConfig(
            epochs=1, steps_per_epoch=24, progress=False, evaluate_initial=False, bn_final_check=check))
        runs[check] = student, history
        assert history.epochs[-1]["val_acc"] == pytest.approx(evaluate(student, val)["acc"])
    (checked, history), (unchecked, history_off) = runs[True], runs[False]
    assert history_off.batchnorm_check is None
    assert history.batchnorm_check["kept"] == "recomputed"
    assert history.batchnorm_check["check_samples"] == 6 * 64  # a quarter of the epoch's 24 batches
    assert history.epochs[-1]["val_acc"] > history_off.epochs[-1]["val_acc"] + 0.2
    statistics = ("running_mean", "running_var", "num_batches_tracked")
    a, b = checked.state_dict(), unchecked.state_dict()
    assert all(torch.equal(v, b[k]) for k, v in a.items() if not k.endswith(statistics))
    assert not all(torch.equal(v, b[k]) for k, v in a.items() if k.endswith(statistics))
