"""Image datasets: a folder with one subfolder per label (ImageNet / torchvision ImageFolder layout),
or a named dataset (mnist-5k:SPLIT) built into the same layout in the local cache."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

from calibration.datasets import Labelled
from runtime.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class LabelledImages(Labelled):
    @property
    def paths(self) -> list[Path]:
        return self.inputs


def named_image_datasets() -> dict[str, Any]:
    from calibration.mnist_5k import NAMED

    return NAMED


def resolve_images(source: str | Path) -> tuple[Path, list[str] | None]:
    """A path, or NAME:SPLIT for a named image dataset (built into the cache on first use)."""
    from calibration.datasets import data_dir

    s = str(source)
    name, _, split = s.partition(":")
    named = named_image_datasets()
    if name in named and not Path(s).exists():
        builder, splits, names = named[name]
        if split not in splits:
            raise DataError(f"dataset {name!r} has splits {', '.join(splits)}; got {split or 'none'!r} "
                            f"(write it as {name}:{splits[0]})")
        return builder(data_dir()) / split, list(names)
    return Path(s), None


def is_image_source(source: str | Path) -> bool:
    """A named image dataset, an image folder or an image file (rather than a CSV/TSV/JSONL of texts)."""
    s = str(source)
    if s.partition(":")[0] in named_image_datasets() and not Path(s).exists():
        return True
    p = Path(s)
    return p.is_dir() or p.suffix.lower() in IMAGE_SUFFIXES


def image_files(folder: Path) -> list[Path]:
    """Image files under folder (recursively), sorted; hidden files and folders are skipped."""
    return sorted(f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                  and not any(part.startswith(".") for part in f.relative_to(folder).parts))


def load_images(source: str | Path) -> list[Path]:
    """Unlabelled images: one image file, or every image under a folder (for calibration and predict)."""
    path, _ = resolve_images(source)
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"{path} is not an image file; image suffixes are {', '.join(IMAGE_SUFFIXES)}")
        return [path]
    if not path.is_dir():
        raise DataError(f"image source {str(source)!r} does not exist; give an image folder, an image file or "
                        "mnist-5k:SPLIT")
    files = image_files(path)
    if not files:
        raise DataError(f"image folder {path} has no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def label_sort_key(v: str) -> tuple[int, int, str]:
    # integers in numeric order (so 0,1,...,10), then names alphabetically: the text datasets' order
    return (0, int(v), "") if v.lstrip("-").isdigit() else (1, 0, v)


def load_image_folder(source: str | Path, label_names: Sequence[str] | None = None) -> LabelledImages:
    """Labelled images from a folder with one subfolder per label. With label_names (a model's labels)
    every subfolder must name one of them."""
    path, named_labels = resolve_images(source)
    if not path.is_dir():
        raise DataError(f"labelled image data {str(source)!r} is not a folder; give a folder with one subfolder "
                        "per label (e.g. data/7/img.png), or mnist-5k:SPLIT")
    dirs = sorted((d for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")),
                  key=lambda d: label_sort_key(d.name))
    loose = [f.name for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
    if loose:
        raise DataError(f"image folder {path} has images outside label subfolders ({loose[0]}, ...); put each image "
                        "in a subfolder named after its label")
    per_dir = {d.name: image_files(d) for d in dirs}
    if not any(per_dir.values()):
        raise DataError(f"image folder {path} has no images; expected one subfolder per label holding "
                        f"{', '.join(IMAGE_SUFFIXES)} files")
    names = list(label_names or named_labels or [d.name for d in dirs])
    index = {name: i for i, name in enumerate(names)}
    paths, labels = [], []
    h = hashlib.sha256()
    for d in dirs:
        if d.name not in index:
            raise DataError(f"{path}: label folder {d.name!r} is not one of the model's labels {names}")
        for f in per_dir[d.name]:
            paths.append(f)
            labels.append(index[d.name])
            h.update(f"{f.relative_to(path)}\0".encode() + hashlib.sha256(f.read_bytes()).digest())
    return LabelledImages(paths, labels, names, str(source), h.hexdigest(), {"path": str(path)})


def image_arguments(args: Sequence[str]) -> list[Path]:
    """Image files, or folders of them, named on a command line (`kiln predict ARTIFACT img.png folder`)."""
    from runtime.errors import ConfigError

    if not args:
        raise ConfigError("give image files or folders to classify: kiln predict ARTIFACT img.png [more.png | folder]")
    return [p for a in args for p in load_images(a)]


def refuse_images_for_text(args: Sequence[str], task: str) -> None:
    """A text model given image files: say so, rather than classify the file names as text."""
    from runtime.errors import InputError

    images = [a for a in args if Path(a).suffix.lower() in IMAGE_SUFFIXES and Path(a).is_file()]
    if images:
        raise InputError(f"{images[0]} is an image, but this is a {task} model; it takes texts")
