"""binarize.datasets: the bundled MNIST-5k, its rotated variant, CIFAR-10 and ImageFolder loaders."""
import hashlib
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DistributedSampler
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from binarize import datasets
from binarize.datasets import MNIST_MEAN, MNIST_STD, load_mnist5k, make_loaders

# sha256 of the images bytes then the int64 labels bytes, as in binarize/data/LICENSE-MNIST5K.md.
MNIST5K_CONTENT_SHA256 = "1f75c140503b3082c96134f5593303f3133e59989a92e21f060c644c655c3722"


def test_bundled_mnist5k_is_the_converted_file():
    with np.load(datasets.MNIST5K_PATH) as bundle:
        images, labels = bundle["images"], bundle["labels"]
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (5000,) and labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [500] * 10
    digest = hashlib.sha256(images.tobytes() + labels.astype("<i8").tobytes()).hexdigest()
    assert digest == MNIST5K_CONTENT_SHA256
    assert datasets.MNIST5K_PATH.stat().st_size < 2_000_000


def test_split_is_fixed_stratified_and_disjoint():
    train, test = load_mnist5k("train"), load_mnist5k("test")
    assert train.images.shape == (4000, 28, 28) and test.images.shape == (1000, 28, 28)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert torch.bincount(train.labels).tolist() == [400] * 10
    assert torch.bincount(test.labels).tolist() == [100] * 10
    all_rows = torch.cat([train.indices, test.indices])
    assert sorted(all_rows.tolist()) == list(range(5000))
    # Recomputed from the file, bypassing the per-process cache: the same rows again.
    fresh = datasets._load_mnist5k.__wrapped__("test", False)
    assert torch.equal(fresh.indices, test.indices) and torch.equal(fresh.images, test.images)


def test_rotation_is_deterministic_in_range_and_matches_torchvision():
    plain, rotated = load_mnist5k("train"), load_mnist5k("train", rotated=True)
    again = datasets._load_mnist5k.__wrapped__("train", True)
    assert torch.equal(rotated.images, again.images) and torch.equal(rotated.angles, again.angles)
    assert torch.equal(rotated.labels, plain.labels) and torch.equal(rotated.indices, plain.indices)
    angles = rotated.angles
    assert angles.abs().max() <= 45 and angles.min() < -40 and angles.max() > 40
    assert abs(float(angles.mean())) < 3  # uniform on [-45, 45]: mean 0, standard error ~0.4
    # torchvision's rotate by the recorded angle gives the same image; it samples in float32, we in
    # float64, so a pixel may round to the neighbouring grey level.
    picked = range(0, 4000, 40)
    bilinear = InterpolationMode.BILINEAR
    expected = torch.stack([TF.rotate(plain.images[i][None], float(angles[i]), interpolation=bilinear)[0]
                            for i in picked])
    difference = (rotated.images[list(picked)].int() - expected.int()).abs()
    assert difference.max() <= 1 and (difference > 0).float().mean() < 1e-3
    changed = (rotated.images != plain.images).flatten(1).any(dim=1)
    assert changed.float().mean() > 0.99
    test_angles = load_mnist5k("test", rotated=True).angles
    assert not torch.equal(test_angles[:100], angles[:100])  # each split has its own seed


def test_mnist_loaders_shapes_normalisation_and_framing():
    train_loader, test_loader, info = make_loaders("mnist5k-rot", batch_size=64, image_size=32)
    assert (info.num_classes, info.in_channels, info.image_size) == (10, 1, 32)
    assert (info.num_train, info.num_test) == (4000, 1000) and info.class_names[3] == "3"
    images, labels = next(iter(test_loader))
    assert images.shape == (64, 1, 32, 32) and images.dtype == torch.float32 and labels.dtype == torch.int64
    raw = load_mnist5k("test", rotated=True).images[0].float() / 255
    assert torch.allclose(images[0, 0, 2:30, 2:30], (raw - MNIST_MEAN[0]) / MNIST_STD[0])
    assert torch.allclose(images[0, 0, 0], torch.full((32,), -MNIST_MEAN[0] / MNIST_STD[0]))
    assert len(train_loader) == 63
    _, rgb_loader, rgb_info = make_loaders("mnist5k", batch_size=8, channels=3, image_size=64)
    rgb = next(iter(rgb_loader))[0]
    assert rgb.shape == (8, 3, 64, 64) and torch.equal(rgb[:, 0], rgb[:, 2]) and rgb_info.mean == MNIST_MEAN * 3


def test_train_order_follows_seed():
    def first_labels(seed):
        return next(iter(make_loaders("mnist5k", batch_size=32, seed=seed)[0]))[1]
    assert torch.equal(first_labels(0), first_labels(0))
    assert not torch.equal(first_labels(0), first_labels(1))


def test_distributed_shards_train_only(tmp_path):
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        train_loader, test_loader, _ = make_loaders("mnist5k", batch_size=100, distributed=True)
    finally:
        torch.distributed.destroy_process_group()
    assert isinstance(train_loader.sampler, DistributedSampler)
    assert not isinstance(test_loader.sampler, DistributedSampler)
    assert len(train_loader) == 40 and len(test_loader) == 10


def _write_cifar10(root, per_batch=4):
    """A tiny copy in CIFAR-10's python format: 5 train batches, a test batch, batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "labels": [int(v) for v in rng.integers(0, 10, per_batch)], "batch_label": name}
        (folder / name).write_bytes(pickle.dumps(batch))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names, "num_vis": 3072}))


def test_cifar10_from_disk_without_md5_check(tmp_path):
    _write_cifar10(tmp_path)
    train_loader, test_loader, info = make_loaders("cifar10", tmp_path, batch_size=5, verify=False)
    assert (info.num_train, info.num_test, info.num_classes, info.in_channels) == (20, 4, 10, 3)
    assert info.class_names[0] == "airplane" and info.image_size == 32
    images, labels = next(iter(train_loader))
    assert images.shape == (5, 3, 32, 32) and images.dtype == torch.float32
    gray = next(iter(make_loaders("cifar10", tmp_path, batch_size=4, verify=False, channels=1)[1]))[0]
    assert gray.shape == (4, 1, 32, 32)


def test_cifar10_md5_mismatch_is_a_clear_error(tmp_path):
    _write_cifar10(tmp_path)  # not the real files, so torchvision's md5 check fails
    with pytest.raises(RuntimeError, match="md5.*verify=False"):
        make_loaders("cifar10", tmp_path)


def test_cifar10_missing_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py.*data_batch_1"):
        make_loaders("cifar10", tmp_path)
    with pytest.raises(ValueError, match="data_dir"):
        make_loaders("cifar10")


def _write_png_classes(root, classes=("cat", "dog"), per_class=3):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.full((20, 24, 3), 40 * c + 10 * i, dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def test_image_folder_single_folder_is_split(tmp_path):
    _write_png_classes(tmp_path)
    train_loader, test_loader, info = make_loaders(str(tmp_path), batch_size=8, image_size=16)
    assert info.class_names == ("cat", "dog") and (info.num_train, info.num_test) == (4, 2)
    images, labels = next(iter(train_loader))
    assert images.shape == (4, 3, 16, 16)
    test_images, test_labels = next(iter(test_loader))
    assert test_images.shape == (2, 3, 16, 16) and test_labels.tolist() == [0, 1]
    gray = next(iter(make_loaders(tmp_path, batch_size=8, image_size=16, channels=1)[1]))[0]
    assert gray.shape == (2, 1, 16, 16)


def test_image_folder_train_val_layout(tmp_path):
    _write_png_classes(tmp_path / "train")
    _write_png_classes(tmp_path / "val", per_class=1)
    _, _, info = make_loaders(tmp_path, image_size=16)
    assert (info.num_train, info.num_test, info.num_classes) == (6, 2, 2)


def test_missing_directory_and_unknown_name_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_loaders(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="mnist5k, mnist5k-rot, cifar10"):
        make_loaders("imagenet-1k")
