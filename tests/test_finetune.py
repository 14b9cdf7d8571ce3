"""binarize.finetune: loss terms, discriminator step, BiPer stages, checkpoints, resume, DDP, accuracy."""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import binarize
from binarize import checkpoint as ckpt
from binarize.analysis import laplace_fit, optimal_scale
from binarize.datasets import make_loaders
from binarize.finetune import (CenterLoss, FeatureDiscriminator, FinetuneConfig, _Trainer, adversarial_loss,
                               cosine_lr, discriminator_loss, evaluate, finetune, kd_loss)
from binarize.finetune.objective import AdversarialFeatures
from binarize.models import resnet_small
from binarize.quantizers import binary_sign

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("finetune_worker.py")
sys.path.insert(0, str(Path(__file__).parent))
from finetune_worker import tiny_model  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------ loss terms by hand

def test_kd_loss_is_t2_times_kl_of_softened_distributions():
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = torch.tensor([[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    temperature = 2.0
    expected = 0.0
    for row_s, row_t in zip(s.tolist(), t.tolist()):
        zs = sum(math.exp(v / temperature) for v in row_s)
        zt = sum(math.exp(v / temperature) for v in row_t)
        ps = [math.exp(v / temperature) / zs for v in row_s]
        pt = [math.exp(v / temperature) / zt for v in row_t]
        expected += sum(p * math.log(p / q) for p, q in zip(pt, ps))
    expected = expected / 2 * temperature ** 2
    assert kd_loss(s, t, temperature).item() == pytest.approx(expected, rel=1e-6)
    assert kd_loss(t, t, temperature).item() == pytest.approx(0.0, abs=1e-7)


def test_gan_losses_by_hand():
    real, fake = torch.tensor([0.5, -1.0]), torch.tensor([2.0, 0.0])
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected_d = -(math.log(sig(0.5)) + math.log(sig(-1.0))) / 2 - (math.log(1 - sig(2.0)) + math.log(1 - sig(0.0))) / 2
    assert discriminator_loss(real, fake).item() == pytest.approx(expected_d, rel=1e-6)
    expected_g = 0.5 * ((1 - sig(2.0)) ** 2 + (1 - sig(0.0)) ** 2) / 2
    assert adversarial_loss(fake).item() == pytest.approx(expected_g, rel=1e-6)


def test_center_loss_and_update_by_hand():
    loss = CenterLoss(num_classes=2, dim=2)
    loss.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    features = torch.tensor([[1.0, 0.0], [3.0, 1.0], [0.0, 2.0]])
    labels = torch.tensor([0, 1, 0])
    # 1/2 * mean of squared distances: (1 + (4 + 0) + 4) / 3 / 2
    assert loss(features, labels).item() == pytest.approx((1 + 4 + 4) / 3 / 2)
    loss.update(features, labels, rate=0.5)
    # class 0: sum(c - f) = (-1, 0) + (0, -2) = (-1, -2), n = 2 -> c -= 0.5 * (-1, -2) / 3
    assert loss.centers[0].tolist() == pytest.approx([0.5 / 3, 1 / 3])
    # class 1: sum(c - f) = (-2, 0), n = 1 -> c -= 0.5 * (-2, 0) / 2
    assert loss.centers[1].tolist() == pytest.approx([1.5, 1.0])


def test_cosine_schedule_with_warmup():
    assert cosine_lr(0, 100, 0.1, warmup_steps=10) == pytest.approx(0.01)
    assert cosine_lr(9, 100, 0.1, warmup_steps=10) == pytest.approx(0.1)
    assert cosine_lr(10, 100, 0.1, warmup_steps=10) == pytest.approx(0.1)
    assert cosine_lr(55, 100, 0.1, warmup_steps=10) == pytest.approx(0.05)
    assert cosine_lr(100, 100, 0.1, min_lr=0.001) == pytest.approx(0.001)


# tiny layers: the cost rule (keep_costly_float) would keep them float
def _trainer(method="rbcn", batch_norm=True, **options):
    torch.manual_seed(0)
    teacher = tiny_model(batch_norm)
    student = binarize.convert(teacher, method, keep_costly_float=False)
    train, val, _ = make_loaders("mnist5k", batch_size=16)
    config = FinetuneConfig(progress=False, evaluate_initial=False, **options)
    return _Trainer(student, teacher, train, val, config), train


def test_training_step_objective_is_the_sum_of_the_terms():
    trainer, train = _trainer("rbcn", center_loss_weight=0.05, kd_temperature=3.0)
    images, labels = next(iter(train))
    trainer.epoch_order = [[0]]  # one step of a one-step epoch, so the learning rate is the base one
    trainer._lr_step()
    kernel = binarize.extra_losses(trainer.model)["rbcn_kernel"].item()  # before the step changes W and C
    with torch.no_grad():
        teacher_logits = trainer.teacher(images)
    trainer.objective.find(AdversarialFeatures).teacher_taps.take()
    loss, terms, logits = trainer._train_step(images, labels)
    assert set(terms) == {"ce", "kd", "gan", "rbcn_kernel", "center"}
    assert sum(terms.values()) == pytest.approx(loss.item(), rel=1e-6)
    assert terms["ce"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    assert terms["kd"] == pytest.approx(kd_loss(logits, teacher_logits, 3.0).item(), rel=1e-5)
    assert terms["rbcn_kernel"] == pytest.approx(kernel, rel=1e-6)
    assert len(trainer.discriminators) == 2  # one per binary conv (the BatchNorm after each)


def test_discriminator_step_lowers_its_loss_on_a_fixed_batch():
    trainer, train = _trainer("biper", gan_lr=1e-3, gan_weight=0.01)  # the discriminators are on for RBCN only by default
    adversarial = trainer.objective.find(AdversarialFeatures)
    images, _ = next(iter(train))
    with torch.no_grad():
        trainer.teacher(images)
        trainer.model(images)
    real, fake = adversarial.teacher_taps.take(), adversarial.student_taps.take()

    def total_loss():
        with torch.no_grad():
            return sum(discriminator_loss(adversarial.discriminator(n)(real[n]), adversarial.discriminator(n)(fake[n]))
                       for n in adversarial.names).item()

    before = total_loss()
    adversarial.discriminator_step(real, fake)
    assert total_loss() < before


def test_discriminator_shape():
    d = FeatureDiscriminator((16, 7, 7), pool=2, hidden=32)
    assert d(torch.randn(5, 16, 7, 7)).shape == (5,)
    assert sum(isinstance(m, nn.Linear) for m in d.modules()) == 4


# ------------------------------------------------------------------------------------ BiPer stages

def test_biper_stage_switch_changes_the_forward_as_specified(tmp_path):
    torch.manual_seed(0)
    teacher = tiny_model(True)
    student = binarize.convert(teacher, "biper", keep_costly_float=False)
    train, val, _ = make_loaders("mnist5k", batch_size=16)
    name, layer = next(binarize.binary_layers(student))
    x = torch.randn(2, layer.in_channels, 6, 6)

    def conv(weight):  # the input binarized at the layer's RSign thresholds, which stage 1 trains too
        shifted = x - layer.input_threshold.detach().view(1, -1, 1, 1)
        return F.conv2d(binary_sign(shifted), weight, layer.bias, layer.stride, layer.padding)

    with torch.no_grad():  # stage 1: real-valued sin(omega w)
        assert torch.allclose(layer(x), conv(torch.sin(layer.omega * layer.latent_weight)), atol=1e-6)
    # stage 2 at lr 0: the weights stay those stage 1 ended with, so the warm start can be checked
    config = FinetuneConfig(stage1_epochs=1, epochs=1, lr=0.0, steps_per_epoch=3, progress=False,
                            evaluate_initial=False, run_dir=str(tmp_path))
    student, history = finetune(student, teacher, train, val, config)
    assert [row["phase"] for row in history.epochs] == ["stage 1", "stage 2"]
    assert int(layer.stage) == 2
    w = layer.latent_weight.detach()
    expected_scale = optimal_scale(laplace_fit(w, dim=0).double().numpy(), float(layer.omega))
    assert torch.allclose(layer.scale.detach(), torch.as_tensor(expected_scale, dtype=torch.float32), rtol=1e-5)
    signs = binary_sign(torch.sin(layer.omega * w))
    with torch.no_grad():
        assert torch.allclose(layer(x), conv(layer.scale.view(-1, 1, 1, 1) * signs), atol=1e-5)


def test_the_callers_teacher_gets_its_mode_and_requires_grad_back():
    torch.manual_seed(0)
    teacher = tiny_model(True).train()
    teacher[0].weight.requires_grad_(False)  # a user's own choice, kept
    student = binarize.convert(teacher, "xnor")
    train, val, _ = make_loaders("mnist5k", batch_size=16)
    finetune(student, teacher, train, val, FinetuneConfig(epochs=1, steps_per_epoch=2, progress=False,
                                                          evaluate_initial=False))
    assert teacher.training
    assert [p.requires_grad for p in teacher.parameters()] == [False] + [True] * (len(list(teacher.parameters())) - 1)


# ------------------------------------------------------------------------------------ checkpoints

def test_bad_checkpoint_files_get_errors_naming_file_and_problem(tmp_path):
    good = tmp_path / "good.pt"
    ckpt.atomic_save({"format": "binarize", "kind": "student", "recipe": None,
                      "model": tiny_model(True).state_dict()}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    for path, words in ((truncated, "truncated"), (garbage, "truncated or corrupted"), (empty, "empty"),
                        (tmp_path / "missing.pt", "does not exist")):
        with pytest.raises(ckpt.CheckpointError, match=words) as err:
            ckpt.load_checkpoint(path)
        assert str(path) in str(err.value)
    pickled = tmp_path / "pickled.pt"
    torch.save({"format": "binarize", "object": FinetuneConfig()}, pickled)
    with pytest.raises(ckpt.CheckpointError, match="pickled Python objects"):
        ckpt.load_checkpoint(pickled)
    other_model = nn.Sequential(nn.Linear(3, 4))
    with pytest.raises(ckpt.CheckpointError, match=r"good.pt does not match the model.*missing"):
        ckpt.load_state(other_model, ckpt.load_checkpoint(good)["model"], good)
    assert not list(tmp_path.glob("*.partial"))  # atomic writes leave no temporary files


def test_keeps_only_the_last_n_checkpoints(tmp_path):
    trainer, train = _trainer("xnor", epochs=1, steps_per_epoch=6, checkpoint_every=1, keep_checkpoints=2,
                              run_dir=str(tmp_path))
    trainer.run()
    names = [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")]
    assert names == ["epoch0000-step000005.pt", "epoch0001-step000000.pt"]
    assert (tmp_path / "metrics.csv").read_text().startswith("epoch,phase,lr,train_loss")


def _run_worker(options, timeout=120, torchrun_procs=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    if torchrun_procs:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={torchrun_procs}", str(WORKER), json.dumps(options)]
    else:
        command = [sys.executable, str(WORKER), json.dumps(options)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def _final_state(run_dir):
    return ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir), "finetune")


def _assert_same_training_state(a, b, exact=True, atol=0.0):
    for key in ("model", "discriminators", "center_loss"):
        if a[key] is None:
            assert b[key] is None
            continue
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            if exact:
                assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"
            else:
                assert torch.allclose(a[key][name].double(), b[key][name].double(), atol=atol, rtol=0), \
                    f"{key}.{name}: max difference {(a[key][name].double() - b[key][name].double()).abs().max()}"


RESUME_RUN = {"method": "biper", "finetune": {"stage1_epochs": 1, "epochs": 2, "steps_per_epoch": 8,
                                              "checkpoint_every": 3, "center_loss_weight": 0.01, "bn_refresh": True}}


def test_run_killed_mid_epoch_and_resumed_is_bit_identical(tmp_path):
    reference = _run_worker(dict(RESUME_RUN, run_dir=str(tmp_path / "reference"), kill_at_fetch=10 ** 9))
    assert reference.returncode == 0, reference.stderr
    # Fetch 1 is the shape probe, then epoch 1 trains on 8 x 16 samples and the BN refresh reads them
    # again; die while epoch 2 (stage 2) loads its 5th batch, after the checkpoint at its step 3, so
    # the resumed run replays step 4.
    killed = _run_worker(dict(RESUME_RUN, run_dir=str(tmp_path / "killed"), kill_at_fetch=1 + 2 * 128 + 16 * 4 + 5))
    assert killed.returncode == -9
    saved = _final_state(tmp_path / "killed")
    assert (saved["epoch"], saved["step"], saved["phase"]) == (1, 3, 1)
    resumed = _run_worker(dict(RESUME_RUN, run_dir=str(tmp_path / "killed"), kill_at_fetch=10 ** 9,
                               resume=str(tmp_path / "killed")))
    assert resumed.returncode == 0, resumed.stderr
    a, b = _final_state(tmp_path / "reference"), _final_state(tmp_path / "killed")
    assert a["epoch"] == b["epoch"] == 3
    _assert_same_training_state(a, b, exact=True)
    for name, state in a["optimizers"].items():
        for index, param_state in state["state"].items():
            for key, value in param_state.items():
                assert torch.equal(value, b["optimizers"][name]["state"][index][key]), f"{name} optimizer differs"
    strip = lambda rows: [{k: v for k, v in r.items() if k != "images_per_s"} for r in rows]  # noqa: E731
    assert strip(a["history"]["epochs"]) == strip(b["history"]["epochs"])
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])


def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(tmp_path):
    result = _run_worker(dict(RESUME_RUN, run_dir=str(tmp_path), sigint_at_fetch=1 + 16 * 2 + 3))
    assert result.returncode == 130, result.stderr
    assert "Resume with" in result.stdout and "binarize finetune --resume" in result.stdout
    state = _final_state(tmp_path)
    assert (state["epoch"], state["step"]) == (0, 3)  # stopped after the step in flight


def test_torchrun_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    """No BatchNorm in this model (nor in the double skips, which would add one on the downsampling
    shortcut): per-rank batch statistics differ from the global batch's, so with BatchNorm the runs
    would only be close, not equal up to rounding. Everything else is reduced over ranks: DDP averages the
    student's gradients, the discriminators' gradients are averaged by hand, the center update sums
    over ranks, and both runs see the same samples per step (DistributedSampler, one permutation)."""
    run = {"method": "rbcn", "batch_norm": False, "convert": {"double_skip": False}, "distributed": True, "batch_size": 32,
           "finetune": {"epochs": 2, "steps_per_epoch": 4, "center_loss_weight": 0.01, "bn_refresh": False}}
    one = _run_worker(dict(run, run_dir=str(tmp_path / "one")), torchrun_procs=1)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _run_worker(dict(run, run_dir=str(tmp_path / "two"), dump_rng="trained"), torchrun_procs=2)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _final_state(tmp_path / "one"), _final_state(tmp_path / "two")
    assert b["world_size"] == 2
    _assert_same_training_state(a, b, exact=False, atol=1e-5)

    # Every rank saves its own random state (the ranks are seeded seed + rank, so they differ) ...
    assert len(b["rng"]) == 2
    for rank in range(2):
        assert torch.equal(b["rng"][rank]["torch"], torch.load(tmp_path / "two" / f"trained-rank{rank}.pt"))
    assert not torch.equal(b["rng"][0]["torch"], b["rng"][1]["torch"])
    # ... and gets it back on resume (the run is finished: resuming restores and trains nothing).
    again = _run_worker(dict(run, run_dir=str(tmp_path / "two"), resume=str(tmp_path / "two"), dump_rng="resumed"),
                        torchrun_procs=2)
    assert again.returncode == 0, again.stderr[-3000:]
    for rank in range(2):
        assert torch.equal(torch.load(tmp_path / "two" / f"resumed-rank{rank}.pt"), b["rng"][rank]["torch"])


def test_torchrun_ranks_take_the_same_batchnorm_check_decision(tmp_path):
    """bn_final_check under two processes: each rank checks its own batches, the accuracies are summed
    over ranks and the recomputed statistics averaged, so both ranks end with the same statistics."""
    run = {"method": "bireal", "distributed": True, "batch_size": 32, "freeze_broken_batchnorm": True,
           "dump_statistics": "final", "finetune": {"epochs": 1, "steps_per_epoch": 8}}
    two = _run_worker(dict(run, run_dir=str(tmp_path)), torchrun_procs=2)
    assert two.returncode == 0, two.stderr[-3000:]
    check = _final_state(tmp_path)["history"]["batchnorm_check"]
    assert check["kept"] == "recomputed", check
    assert check["check_samples"] == 2 * 2 * 16  # a quarter of 8 steps on each of 2 ranks, 16 samples each
    a, b = (torch.load(tmp_path / f"final-rank{rank}.pt") for rank in range(2))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------ it learns

def test_short_finetune_raises_a_fresh_students_accuracy_clearly():
    torch.manual_seed(0)
    train, val, _ = make_loaders("mnist5k", batch_size=32, test_batch_size=500)
    teacher = resnet_small(widths=(8, 16, 32), blocks=(1, 1, 1))
    teacher, _ = finetune(teacher, None, train, val, FinetuneConfig(optimizer="adam", lr=3e-3, epochs=1,
                                                                    progress=False, evaluate_initial=False))
    student = binarize.convert(teacher, "bireal")
    before = evaluate(student, val)["acc"]
    student, history = finetune(student, teacher, train, val,
                                FinetuneConfig(optimizer="adam", lr=2e-3, epochs=1, progress=False))
    after = history.epochs[-1]["val_acc"]
    assert after == pytest.approx(evaluate(student, val)["acc"])
    assert history.initial["student_val_acc"] == pytest.approx(before)
    assert after > before + 0.3, (before, after)
