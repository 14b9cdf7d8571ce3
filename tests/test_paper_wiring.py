"""Tests that pin how each paper's equations are wired into the layers and the trainer (issue 10):
each one fails for a named mutation of the code (listed in its docstring), checked against an
independent float/autograd reference or the paper's own numbers written out here."""
import copy
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

import binarize
from binarize import tags
from binarize.datasets import make_loaders
from binarize.finetune import FinetuneConfig, _Trainer, adversarial_loss, finetune, refresh_batchnorm

sys.path.insert(0, str(Path(__file__).parent))
from finetune_worker import tiny_model  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # the test machine's cores are shared
    yield
    torch.set_num_threads(previous)


def _fixed_loader(batch_size=16, batches=2):
    """The first images of mnist5k in a fixed order: every epoch sees the same batches."""
    train, _, _ = make_loaders("mnist5k", batch_size=batch_size)
    return DataLoader(Subset(train.dataset, range(batch_size * batches)), batch_size=batch_size, shuffle=False)


def _quiet(**options):
    """The papers' own setting (SGD, one binary stage), quiet; ``options`` on top."""
    return FinetuneConfig(**{"progress": False, "evaluate_initial": False, "optimizer": "sgd", "two_step": False,
                             **options})


def _pair(method, **convert_options):
    torch.manual_seed(0)
    teacher = tiny_model(True)
    return teacher, binarize.convert(teacher, method, **convert_options)


# ------------------------------------------------------------------------------------------ BiPer

def test_biper_stage_1_trains_at_stage1_lr_and_stage_2_at_lr():
    """Section 3.1: "The learning rate was set to 0.1 in the first stage and, 0.01 in the second
    stage." Mutation caught: swapping ``config.stage1_lr`` and ``config.lr`` in BiPer's phases."""
    teacher, student = _pair("biper")
    config = _quiet(stage1_epochs=1, epochs=1, stage1_lr=0.1, lr=0.01, schedule="constant", steps_per_epoch=1,
                    kd_weight=0.0, gan_weight=0.0)
    _, history = finetune(student, teacher, _fixed_loader(), None, config)
    assert [(row["phase"], row["lr"]) for row in history.epochs] == [("stage 1", 0.1), ("stage 2", 0.01)]


# ------------------------------------------------------------------------------------------- CBCN

def _sign(x):
    return torch.where(x >= 0, 1.0, -1.0)


def _approx_sign_reference(x):
    """sign(x) forward; backward the derivative of 2x - x|x| on [-1, 1] (constant outside), which is
    Bi-Real's / RBCN eq. 8's 2 - 2|x|."""
    c = x.clamp(-1, 1)
    smooth = 2 * c - c * c.abs()
    return (smooth - smooth.detach()) + _sign(x)  # exactly sign(x): the difference is 0


def _gaussian_sign_reference(g):
    """sign(g) forward; backward the derivative of A/2 erf(g / sigma), i.e. CBCN eq. 10,
    A / (sigma sqrt(pi)) exp(-g^2 / sigma^2), with the paper's A = 3 sqrt(2 pi), sigma = 1 (section 4.1)."""
    amplitude, sigma = 3 * math.sqrt(2 * math.pi), 1.0
    smooth = amplitude / 2 * torch.erf(g / sigma)
    return (smooth - smooth.detach()) + _sign(g)


def test_cbcn_layer_gradient_is_the_sum_over_rotated_copies_plus_the_scale_path():
    """Eq. 8 (circulant back propagation): dL/dW = sum_j P_j^-1 dL/dG_j, each copy's sign gradient
    the Gaussian of eq. 10, plus the path through the scale mean|W_i| shared by the K copies. The
    reference rotates with torch.rot90 (for K = 4 a shift of the 3x3 ring by 2 positions is a
    90-degree turn) and maps the copies' gradients back by hand. Mutations caught: the STE as
    CBCN's weight estimator; A = 1; the scale path cut (mean|W| detached)
    (the ring's direction is not observable here: with a max over all K orientations a clockwise
    shift yields the same set of copies)."""
    torch.manual_seed(0)
    k, c_in, c_out = 4, 3, 5
    # tiny layers: the cost rule (keep_costly_float) would keep them float
    layer = binarize.convert(nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)), "cbcn",
                             keep_first=False, keep_last=False, keep_costly_float=False)
    layer = next(m for _, m in binarize.binary_layers(layer))
    assert layer.orientations == k  # the paper's default
    x = torch.randn(2, c_in, 6, 6, requires_grad=True)
    y = layer(x)
    upstream = torch.randn_like(y)
    (y * upstream).sum().backward()

    w = layer.latent_weight.detach()
    copies = torch.stack([torch.rot90(w, j, dims=(2, 3)) for j in range(k)]).requires_grad_()  # G_j, K x out x in x 3 x 3
    scale = w.abs().mean(dim=(1, 2, 3)).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    weights = (scale.view(1, -1, 1, 1, 1) * _gaussian_sign_reference(copies)).flatten(0, 1)
    responses = F.conv2d(_approx_sign_reference(x_ref), weights, padding=1)
    y_ref = responses.view(2, k, c_out, 6, 6).amax(1)
    (y_ref * upstream).sum().backward()
    assert torch.allclose(y, y_ref, atol=1e-5)
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-5)
    # eq. 8: each copy's gradient turned back by its own rotation, summed; d mean|W_i| / dW_i = sign(W_i) / 9c_in
    through_copies = sum(torch.rot90(copies.grad[j], -j, dims=(2, 3)) for j in range(k))
    through_scale = scale.grad.view(-1, 1, 1, 1) * torch.sign(w) / w[0].numel()
    assert torch.allclose(layer.weight.grad, through_copies + through_scale, rtol=1e-4, atol=1e-5)


def test_cbcn_trains_with_the_center_loss_by_default():
    """Section 3.3 / table 3: CBCN trains with the center loss. Mutation caught: CBCN's
    ``finetune_defaults`` without ``center_loss_weight`` (the run then has no center term)."""
    teacher, student = _pair("cbcn")
    _, history = finetune(student, teacher, _fixed_loader(), None,
                          _quiet(epochs=1, steps_per_epoch=1, kd_weight=0.0, gan_weight=0.0))
    assert history.epochs[0]["train_center"] > 0
    teacher, xnor_student = _pair("xnor")  # a method without the center loss trains without it
    _, history = finetune(xnor_student, teacher, _fixed_loader(), None,
                          _quiet(epochs=1, steps_per_epoch=1, kd_weight=0.0, gan_weight=0.0))
    assert "train_center" not in history.epochs[0]


# ------------------------------------------------------------------------------------------- RBCN

def test_rbcn_lambdas_decay_every_loss_weight_decay_every_epochs():
    """Section 3.1: "lambda1 and lambda2 are set as 0.01 with a degradation of 10% for every 60
    epochs". With every weight frozen (all learning rates 0) and the same batch every epoch, the
    kernel and GAN terms of epoch e are exactly decay^(e // every) times epoch 0's. Mutations caught:
    the trainer's decay left at 1 (no lambda decay); the GAN term without the decay."""
    teacher, student = _pair("rbcn")
    config = _quiet(epochs=4, steps_per_epoch=1, lr=0.0, rbcn_c_lr=0.0, gan_lr=0.0, kd_weight=0.0,
                    loss_weight_decay=0.5, loss_weight_decay_every=2, schedule="constant", bn_refresh=False)
    _, history = finetune(student, teacher, _fixed_loader(), None, config)
    for term in ("train_rbcn_kernel", "train_gan"):
        first = history.epochs[0][term]
        assert first > 0
        ratios = [row[term] / first for row in history.epochs]
        assert ratios == pytest.approx([1, 1, 0.5, 0.5], rel=1e-5), term


def test_gan_term_reaches_the_student_once_with_weight_lambda2():
    """Eq. 4: the student's loss holds lambda2/2 sum_l ||1 - D(T^l)||^2 (binarize: a batch mean).
    One SGD step (no momentum, no decay, ce/kd/kernel off, discriminators frozen at gan_lr 0) must
    move every binary weight by -lr times the gradient of that term computed here from the same
    discriminators. Mutations caught: the GAN term counted twice in the training step's loss; the
    per-sample term without its 1/2."""
    lr, lambda2 = 0.1, 0.5
    teacher, student = _pair("rbcn", kernel_loss_weight=0.0)
    config = _quiet(epochs=1, steps_per_epoch=1, lr=lr, momentum=0.0, weight_decay=0.0, schedule="constant",
                    ce_weight=0.0, kd_weight=0.0, gan_weight=lambda2, gan_lr=0.0, rbcn_c_lr=0.0, bn_refresh=False)
    loader = _fixed_loader(batches=1)
    trainer = _Trainer(student, teacher, loader, None, config)
    reference = copy.deepcopy(student)
    discriminators = copy.deepcopy(trainer.discriminators)
    names = tags.feature_maps(student)
    features = {}
    for name in names:
        reference.get_submodule(name).register_forward_hook(lambda m, a, out, name=name: features.__setitem__(name, out))
    images, _ = next(iter(loader))
    reference.train()(images)
    term = lambda2 / 2 * sum((1 - torch.sigmoid(discriminators[n.replace(".", "_")](features[n]))).pow(2).mean()
                             for n in names)
    term.backward()
    trainer.run()
    binary = dict(binarize.binary_layers(student))
    assert binary
    for name, layer in binary.items():
        before = reference.get_submodule(name)  # the latent weight's SGD step, whatever its latent_gain
        assert torch.allclose(layer.latent_weight.detach() - before.latent_weight.detach(), -lr * before.weight.grad,
                              atol=1e-7), name


def test_gan_reduction_sum_is_the_batch_size_times_the_mean():
    """Eq. 4 sums where binarize's default takes a batch mean: ``gan_reduction="sum"`` sums. Mutation
    caught: the trainer not passing ``gan_reduction`` on to the GAN term."""
    logits = torch.tensor([0.5, -1.0, 2.0])
    expected = sum(0.5 * (1 - 1 / (1 + math.exp(-v))) ** 2 for v in logits.tolist())
    assert adversarial_loss(logits, "sum").item() == pytest.approx(expected, rel=1e-6)
    assert adversarial_loss(logits).item() == pytest.approx(expected / 3, rel=1e-6)
    rows = []
    for reduction in ("mean", "sum"):
        teacher, student = _pair("rbcn")
        _, history = finetune(student, teacher, _fixed_loader(batch_size=8, batches=1), None,
                              _quiet(epochs=1, steps_per_epoch=1, kd_weight=0.0, gan_reduction=reduction, bn_refresh=False))
        rows.append(history.epochs[0]["train_gan"])
    assert rows[1] == pytest.approx(8 * rows[0], rel=1e-5)


# -------------------------------------------------------------------------------- BatchNorm update

def test_bn_refresh_recomputes_statistics_as_the_plain_average_over_batches_in_training_mode():
    """RBCN: "the batch normalization (BN) layers are updated with W and C fixed after each epoch".
    The running mean/variance become the average of the batches' own statistics (unbiased variance),
    computed here from the convolution's output. Mutations caught: the pass in eval mode (statistics
    untouched); the BatchNorm's momentum kept (an exponential average)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3, momentum=0.1)).eval()
    loader = [(torch.randn(4, 1, 6, 6) * s + s, None) for s in (1.0, 2.0, 4.0)]
    refresh_batchnorm(model, loader)  # device: the model's
    with torch.no_grad():
        outputs = [model[0](x) for x, _ in loader]
    mean = torch.stack([o.mean(dim=(0, 2, 3)) for o in outputs]).mean(0)
    var = torch.stack([o.transpose(0, 1).flatten(1).var(1, unbiased=True) for o in outputs]).mean(0)
    assert torch.allclose(model[1].running_mean, mean, atol=1e-5)
    assert torch.allclose(model[1].running_var, var, rtol=1e-5)
    assert model[1].momentum == 0.1 and not model.training  # put back as found


def test_bn_refresh_affine_trains_only_the_batchnorm_parameters():
    """``bn_refresh_mode="affine"`` (algorithm 1, line 17: "Update all the parameters of the batch
    normalization layers", W and C fixed). Two runs from the same seed differ only in that mode:
    W and C end equal, the BatchNorm weights and biases not. Mutation caught: the affine pass
    without dropping the other parameters' gradients (W and C then move too)."""
    results = {}
    for mode in ("stats", "affine"):
        teacher, student = _pair("rbcn")
        config = _quiet(epochs=1, steps_per_epoch=2, lr=0.05, kd_weight=0.0, bn_refresh=True, bn_refresh_mode=mode)
        finetune(student, teacher, _fixed_loader(), None, config)
        results[mode] = {name: p.detach().clone() for name, p in student.named_parameters()}
    bn = {name for name, m in student.named_modules() if isinstance(m, nn.BatchNorm2d)}
    for name, value in results["affine"].items():
        same = torch.equal(value, results["stats"][name])
        assert same != (name.rsplit(".", 1)[0] in bn), name
