"""Shared fixtures: tiny models built in code (unit tests) and the real MiniLM (integration tests)."""

from __future__ import annotations

import csv
import importlib.util
import os
import shutil
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing is ever downloaded from a model hub in tests
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "movie-snippets"

WORDS = ("the a an movie film story acting plot is was not very good great bad boring fun dull "
         "beautiful awful , . ! ' and but it this too long short").split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *"abcdefghijklmnopqrstuvwxyz",
         *(f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz")]


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


def write_tokenizer(path: Path) -> None:
    from transformers import BertTokenizerFast

    (path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(str(path))


def build_tiny(path: Path, model_type: str = "bert", task: str = "text-classification", seed: int = 0) -> Path:
    """A tiny randomly initialised model + tokenizer, saved as a Hugging Face directory."""
    import torch
    import transformers

    torch.manual_seed(seed)
    common = dict(vocab_size=len(VOCAB), max_position_embeddings=160, num_labels=2,
                  id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    if model_type == "bert":
        cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=64, **common)
    elif model_type == "distilbert":
        cfg = transformers.DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64, **common)
    elif model_type == "roberta":
        cfg = transformers.RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=64, pad_token_id=0, **common)
    else:
        raise ValueError(model_type)
    auto = transformers.AutoModelForSequenceClassification if task == "text-classification" else transformers.AutoModel
    model = auto.from_config(cfg).eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    write_tokenizer(path)
    return path


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


def dev_sentences(n: int) -> list[str]:
    """Real movie-review sentences from the shared data (skips when the folder is absent)."""
    path = SHARED_DATA / "dev.csv"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    with open(path, newline="", encoding="utf-8") as f:
        return [row["text"] for _, row in zip(range(n), csv.DictReader(f))]


@pytest.fixture(scope="session")
def minilm_onnx(tmp_path_factory: pytest.TempPathFactory):
    from exporter.load import load_checkpoint
    from exporter.onnx_export import OnnxConfig, to_onnx

    out = tmp_path_factory.mktemp("minilm") / "minilm-onnx"
    return to_onnx(load_checkpoint("minilm", "feature-extraction"), OnnxConfig(), out)
