"""NaN/inf never becomes an answer: validation, the pipelines and --json output all refuse it."""

import dataclasses
import json
import shutil
import struct

import numpy as np
import pytest
from click.testing import CliRunner

from exporter.cli import main
from exporter.cli.common import emit
from exporter.compare import compare
from runtime import Artifact, KilnError, SourceError, TensorSpec, ValidationError
from runtime.errors import ModelOutputError
from runtime.pipeline import Embedder, TextClassifier
from tests.conftest import VOCAB

THE = VOCAB.index("the")  # the validation feeds draw ids from the upper half of the vocabulary only


class FixedSession:
    """A stand-in Session that answers every feed with the same outputs."""

    def __init__(self, outputs: dict[str, np.ndarray]) -> None:
        self.outputs = tuple(TensorSpec(n, "float32", ("batch",) + ("x",) * (v.ndim - 1)) for n, v in outputs.items())
        self.inputs = tuple(TensorSpec(n, "int64", ("batch", "sequence"))
                            for n in ("input_ids", "attention_mask", "token_type_ids"))
        self.values = outputs

    def run(self, feed):
        n = len(feed["input_ids"])
        return {k: v[:n] for k, v in self.values.items()}

    def close(self):
        pass


FEEDS = [{"input_ids": np.ones((4, 3), np.int64)}]
GOOD = np.arange(8, dtype=np.float32).reshape(4, 2)


def test_compare_fails_when_the_candidate_gives_nan():
    bad = GOOD.copy()
    bad[1, 0], bad[2, 1] = np.nan, np.inf
    cmp = compare(FixedSession({"logits": GOOD}), FixedSession({"logits": bad}), FEEDS)
    assert not cmp.passed
    assert "output 'logits': the candidate gives 2 of 8 values NaN/inf" in cmp.failures()[0]
    # the recorded metrics stay finite: they go into a JSON manifest
    json.dumps(cmp.metrics(), allow_nan=False)


def test_compare_fails_when_the_reference_gives_nan():
    bad = np.full_like(GOOD, np.nan)
    cmp = compare(FixedSession({"logits": bad}), FixedSession({"logits": bad}), FEEDS)
    assert not cmp.passed and "the reference gives 8 of 8 values NaN/inf" in " ".join(cmp.failures())
    json.dumps(cmp.metrics(), allow_nan=False)


def corrupt_safetensors_row(path, row, value=float("nan")):
    """Overwrite one row of the word embeddings in place: same file length, header still valid."""
    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    key = next(k for k in header if "word_embeddings" in k)
    start, _ = header[key]["data_offsets"]
    width = header[key]["shape"][1]
    offset = 8 + n + start + row * width * 4
    raw[offset:offset + width * 4] = np.full(width, value, np.float32).tobytes()
    path.write_bytes(bytes(raw))


def test_export_refuses_weights_that_are_nan(model_copy, tmp_path):
    from exporter.load import load_checkpoint
    from exporter.onnx_export import OnnxConfig, to_onnx

    corrupt_safetensors_row(model_copy / "model.safetensors", THE)
    with pytest.raises(SourceError, match=r"source model's weights give NaN/inf: 32 values in .*word_embeddings"):
        to_onnx(load_checkpoint(model_copy, "text-classification"), OnnxConfig(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_validation_names_a_nan_reference(monkeypatch, model_copy, tmp_path):
    """Weights can be finite and still overflow to inf; validation says it is the source, not the export."""
    from exporter import onnx_export
    from exporter.load import load_checkpoint

    monkeypatch.setattr(onnx_export, "check_finite_weights", lambda model, origin: None, raising=False)
    for row in range(len(VOCAB)):
        corrupt_safetensors_row(model_copy / "model.safetensors", row, np.inf)
    with pytest.raises(ValidationError, match=r"the source model's weights give NaN/inf.*'logits'.*of \d+ values"):
        onnx_export.to_onnx(load_checkpoint(model_copy, "text-classification"), onnx_export.OnnxConfig(),
                            tmp_path / "out")


@pytest.fixture()
def nan_onnx(tiny_onnx, tmp_path):
    """The tiny ONNX artifact with the embedding of "the" set to NaN (edited after export, in place)."""
    import onnx
    from onnx import numpy_helper

    dst = tmp_path / "nan-onnx"
    shutil.copytree(tiny_onnx.path, dst)
    model = onnx.load(str(dst / "model.onnx"))
    for init in model.graph.initializer:
        if init.name.endswith("word_embeddings.weight"):
            w = numpy_helper.to_array(init).copy()
            w[THE] = np.nan
            init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(model, str(dst / "model.onnx"))
    return dst


def test_classifier_refuses_nan_outputs(nan_onnx):
    with TextClassifier(nan_onnx) as clf:
        assert clf.predict(["good film"])[0].label in ("negative", "positive")  # untouched rows still answer
        with pytest.raises(ModelOutputError, match=r"NaN/inf for input 1; .*kiln inspect --verify"):
            clf.predict(["good film", "the film"])
        with pytest.raises(ModelOutputError, match="input 0"):
            clf.logits(["the film"])


def test_embedder_refuses_nan_outputs(tiny_onnx):
    art = dataclasses.replace(tiny_onnx, task="feature-extraction")
    hidden = np.ones((3, 8, 4), np.float32)
    hidden[2, 1, 0] = np.nan
    with Embedder(art, session=FixedSession({"last_hidden_state": hidden})) as emb:
        assert emb.embed(["good", "bad"]).shape == (2, 4)
        with pytest.raises(ModelOutputError, match="input 2"):
            emb.embed(["good", "bad", "fun"])


def test_model_output_error_is_a_kiln_error():
    assert issubclass(ModelOutputError, KilnError)


def test_predict_json_never_prints_nan(nan_onnx):
    r = CliRunner().invoke(main, ["predict", str(nan_onnx), "the movie", "--json"])
    assert r.exit_code != 0 and "Traceback" not in r.output and "NaN," not in r.output
    assert r.output.strip().splitlines()[-1].startswith("error: the model produced NaN/inf for input 0")


def test_emit_refuses_values_json_cannot_hold():
    with pytest.raises(KilnError, match="NaN or infinity"):
        emit({"score": float("nan")}, True, lambda: "")
    with pytest.raises(KilnError, match="NaN or infinity"):
        emit([{"x": float("-inf")}], True, lambda: "")
