"""Shared fixtures: tiny models built in code (unit tests) and the real MiniLM (integration tests)."""

from __future__ import annotations

import csv
import importlib.util
import os
import shutil
from pathlib import Path

import pytest

# the tiny model lives in an installed package (the ci suite builds it outside the tests); re-exported for tests
from benchmarks.harness.tiny_model import VOCAB, WORDS, build_tiny, write_tokenizer  # noqa: F401

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing is ever downloaded from a model hub in tests
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "movie-snippets"  # a copy some machines keep beside the repo
# the user's dataset cache (read before the session fixture points KILN_DATA_DIR at a temporary folder):
# real-sentence tests get movie-snippets the way `kiln` does, built there on first use and reused after
USER_DATA = Path(os.environ.get("KILN_DATA_DIR") or Path.home() / ".cache" / "kiln" / "data")



def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The one place GPU / TensorRT tests are skipped when the hardware or package is absent."""
    has_gpu = False
    if importlib.util.find_spec("torch") is not None:
        import torch

        has_gpu = torch.cuda.is_available()
    has_trt = any(importlib.util.find_spec(m) is not None for m in ("tensorrt", "tensorrt_rtx"))
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="no CUDA GPU visible"))
        if "tensorrt" in item.keywords and not has_trt:
            item.add_marker(pytest.mark.skip(reason="neither tensorrt nor tensorrt_rtx is installed"))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("tiny") / "bert-cls")


@pytest.fixture(scope="session")
def tiny_onnx(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory):
    from exporter.load import load_checkpoint
    from exporter.onnx_export import OnnxConfig, to_onnx

    out = tmp_path_factory.mktemp("art") / "bert-cls-onnx"
    return to_onnx(load_checkpoint(tiny_bert, "text-classification"), OnnxConfig(), out)


@pytest.fixture()
def model_copy(tiny_bert: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny model that a test may damage."""
    dst = tmp_path / "model"
    shutil.copytree(tiny_bert, dst)
    return dst


def movie_snippets() -> Path:
    """The movie-snippets folder as a user gets it: the sibling shared copy if there is one, else the user's cache,
    built there on first use (pip download of the vaderSentiment sdist, sha256 checked); skips only when neither
    exists and PyPI cannot be reached."""
    from calibration.movie_snippets import ensure_movie_snippets
    from runtime.errors import DataError

    if SHARED_DATA.is_dir():
        return SHARED_DATA
    try:
        return ensure_movie_snippets(USER_DATA)
    except DataError as e:
        pytest.skip(f"movie-snippets is not cached and could not be built: {e}")


def dev_sentences(n: int) -> list[str]:
    """Real movie-review sentences (the movie-snippets dev split)."""
    with open(movie_snippets() / "dev.csv", newline="", encoding="utf-8") as f:
        return [row["text"] for _, row in zip(range(n), csv.DictReader(f))]


@pytest.fixture(scope="session")
def minilm_onnx(tmp_path_factory: pytest.TempPathFactory):
    from exporter.load import load_checkpoint
    from exporter.onnx_export import OnnxConfig, to_onnx

    out = tmp_path_factory.mktemp("minilm") / "minilm-onnx"
    return to_onnx(load_checkpoint("minilm", "feature-extraction"), OnnxConfig(), out)


@pytest.fixture(scope="session", autouse=True)
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """KILN_DATA_DIR for the whole run (tests never write into the user's cache), seeded with movie-snippets from
    ../shared or the user's cache when either has it, so named-dataset tests need no download."""
    root = tmp_path_factory.mktemp("kiln-data")
    for source in (SHARED_DATA, USER_DATA / "movie-snippets"):
        if all((source / f"{split}.csv").is_file() for split in ("train", "dev", "test")):
            shutil.copytree(source, root / "movie-snippets", ignore=shutil.ignore_patterns("LICENSE.txt"))
            break
    os.environ["KILN_DATA_DIR"] = str(root)
    return root


def sentiment_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Tiny labelled data in the tiny vocabulary: the label follows the adjective."""
    import random

    rng = random.Random(seed)
    pos, neg = ["good", "great", "fun", "beautiful"], ["bad", "boring", "dull", "awful"]
    rows = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        adj = rng.choice(pos if label == "positive" else neg)
        noun = rng.choice(["movie", "film", "story", "plot", "acting"])
        rows.append((f"the {noun} was very {adj}" + " ." * rng.randint(0, 5), label))
    return rows


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return path


def fill(args: list[str], subs: dict[str, str]) -> list[str]:
    """Command-line arguments with placeholders ({tmp}, {onnx}, ...) replaced: the bad-input tables use them."""
    out = []
    for a in args:
        for k, v in subs.items():
            a = a.replace(k, v)
        out.append(a)
    return out
