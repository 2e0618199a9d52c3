"""Integration: the real packaged MiniLM and real movie-review sentences."""

import json

import numpy as np
import pytest

from runtime import Artifact
from runtime.pipeline import Embedder
from tests.conftest import dev_sentences

pytestmark = pytest.mark.integration


def test_onnx_matches_transformers_automodel(minilm_onnx):
    import torch
    from transformers import AutoModel, AutoTokenizer

    from exporter.load import packaged_model_dir

    texts = dev_sentences(32)
    src = packaged_model_dir("minilm")
    tok = AutoTokenizer.from_pretrained(str(src))
    model = AutoModel.from_pretrained(str(src)).eval()  # default attention, not the export's eager path
    enc = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="np")
    with torch.inference_mode():
        ref = model(**{k: torch.from_numpy(v) for k, v in enc.items()}).last_hidden_state.numpy()
    from runtime import open_session

    with open_session(minilm_onnx) as s:
        got = s.run({k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")})
    assert float(np.abs(got["last_hidden_state"] - ref).max()) <= 1e-4
    step = Artifact.load(minilm_onnx.path).lineage[-1]
    assert step.metrics["validation"]["outputs"]["last_hidden_state"]["max_abs"] <= 1e-4


def test_embedder_matches_sentence_transformers(minilm_onnx):
    st = pytest.importorskip("sentence_transformers")
    from exporter.load import packaged_model_dir

    texts = dev_sentences(16)
    ref = st.SentenceTransformer(str(packaged_model_dir("minilm")), device="cpu").encode(texts)
    with Embedder(minilm_onnx, batch_size=5) as emb:
        got = emb.embed(texts)
    assert got.shape == (16, 384)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert float(np.abs(got - ref).max()) < 1e-4


def test_inspect_shows_symbolic_dims(minilm_onnx):
    from click.testing import CliRunner

    from exporter.cli import main

    r = CliRunner().invoke(main, ["inspect", str(minilm_onnx.path), "--json"])
    d = json.loads(r.stdout)
    assert [i["shape"] for i in d["inputs"]] == [["batch", "sequence"]] * 3
    assert d["meta"]["max_length"] == 256 and d["meta"]["normalize"] is True
