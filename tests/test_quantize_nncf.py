"""nncf-int8: NNCF post-training QDQ with symmetric activations (what TensorRT parses), on the tiny model."""

import hashlib
import json
import sys

import numpy as np
import pytest

from exporter.quantize import QuantConfig, quantize
from runtime import Artifact, ConfigError, InputError
from tests.conftest import sentiment_rows, write_csv
from tests.test_cli import one_line_error, run

pytest.importorskip("nncf")


@pytest.fixture(scope="module")
def nncf_int8(tiny_onnx, tmp_path_factory):
    """One quantization through the CLI, shared by the checks below (NNCF takes seconds even on the tiny model)."""
    d = tmp_path_factory.mktemp("nncf")
    data = write_csv(d / "calib.csv", sentiment_rows(24, seed=7))
    res = run("quantize", tiny_onnx.path, "--method", "nncf-int8", "--calib-data", data, "--calib-samples", "24",
              "--subset-size", "16", "--calib-pad-length", "16", "-o", d / "q", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["lineage"][-1]["stage"] == "quantize"  # NNCF's progress bars stay off stdout
    return Artifact.load(d / "q"), data


def zero_points(path):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    consts |= {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node if n.op_type == "Constant"}
    return [consts[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]


def test_qdq_with_symmetric_activations_validated_and_recorded(nncf_int8):
    loaded, data = nncf_int8
    zps = zero_points(loaded.model_file)
    assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)  # every activation zero point is 0
    step = loaded.lineage[-1]
    assert loaded.meta["precision"] == "int8" and loaded.meta["method"] == "nncf-int8"
    assert loaded.meta["answers_depend_on_batching"] is False
    assert step.config["preset"] == "performance" and step.config["model_type"] == "transformer"
    assert step.config["smooth_quant_alpha"] == 0.95
    m = step.metrics
    assert m["nncf_version"].count(".") >= 1
    assert m["qdq"]["symmetric"] and m["qdq"]["tensorrt_parsable"] and m["qdq"]["int32_dequantize"] == 0
    assert m["calibration"]["items"] == 24 and m["calibration"]["used"] == 16
    assert len(m["calibration"]["feeds_sha256"]) == 64 and m["calibration"]["sequence_lengths"] == [16]
    assert step.config["calib_data_sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert m["validation"]["enforced"] and m["validation"]["outputs"]["logits"]["cosine"] >= 0.95
    assert m["validation"]["feeds"] == "calibration, unpadded"


def test_answers_do_not_depend_on_batching(nncf_int8):
    """Fixed scales: the same logits one sentence at a time as in padded batches."""
    from runtime.pipeline import TextClassifier

    q, _ = nncf_int8
    texts = [t for t, _ in sentiment_rows(24, seed=11)]
    with TextClassifier(q, batch_size=1) as one, \
            TextClassifier(q, batch_size=16, call_overhead_tokens=float("inf")) as many:
        np.testing.assert_allclose(many.logits(texts), one.logits(texts), atol=1e-5)


def test_calib_pad_length_zero_keeps_each_length(tiny_onnx, tmp_path, monkeypatch):
    import exporter.quantize_nncf as qn

    seen = []
    monkeypatch.setattr(qn, "run_nncf", lambda model, feeds, config, silent=False: seen.extend(feeds) or model)  # no NNCF: plumbing only
    data = write_csv(tmp_path / "calib.csv", sentiment_rows(12, seed=5))
    res = run("quantize", tiny_onnx.path, "--method", "nncf-int8", "--calib-data", data, "--calib-pad-length", "0",
              "-o", tmp_path / "q", "--json")
    assert res.exit_code == 0, res.output
    assert len(seen) == 12 and all(f["input_ids"].shape[0] == 1 for f in seen)  # one text per calibration item
    step = json.loads(res.stdout)["lineage"][-1]
    assert step["config"]["calib_pad_length"] == 0 and len(step["metrics"]["calibration"]["sequence_lengths"]) > 1
    assert step["metrics"]["qdq"]["tensorrt_parsable"] is False  # nothing was quantized, and the summary says so


def test_bad_input_one_line_each(tiny_onnx, tmp_path, monkeypatch):
    from exporter.quantize_nncf import NncfConfig

    with pytest.raises(ConfigError, match="nncf-int8 needs calibration data"):
        quantize(tiny_onnx, QuantConfig(method="nncf-int8"), tmp_path / "a")
    with pytest.raises(InputError, match="calibration data is empty"):
        quantize(tiny_onnx, NncfConfig(), tmp_path / "b", calibration=[])
    with pytest.raises(ConfigError, match="smooth_quant_alpha must be in \\[0, 1\\] or -1"):
        NncfConfig(smooth_quant_alpha=2)
    with pytest.raises(ConfigError, match="unknown preset 'fast'; valid: performance, mixed"):
        NncfConfig(preset="fast")
    monkeypatch.setitem(sys.modules, "nncf", None)  # as if the extra were not installed
    with pytest.raises(ConfigError, match=r"needs NNCF; pip install 'modelkiln\[nncf\]', or use --method static-int8"):
        quantize(tiny_onnx, NncfConfig(), tmp_path / "c", calibration=[{s.name: np.ones((1, 4), np.int64)
                                                                         for s in tiny_onnx.inputs}])
    monkeypatch.undo()
    for args, message in [([], "nncf-int8 needs calibration data"),
                          (["--calib-data", write_csv(tmp_path / "h.csv", [])], "has a header but no rows"),
                          (["--preset", "fast"], "'fast' is not one of 'performance', 'mixed'")]:
        one_line_error(run("quantize", tiny_onnx.path, "--method", "nncf-int8", "-o", tmp_path / "o", *args), message)
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.kiln-tmp-*"))


def test_validation_feeds_have_no_padding():
    """int8 moves outputs at padding positions far more than real tokens' (MiniLM: cosine 0.64 vs 0.996), so
    validating on padded calibration feeds failed a good model; validation cuts each row to its real tokens."""
    from runtime.tasks import families

    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])
    feed = {"input_ids": np.arange(8).reshape(2, 4), "attention_mask": mask, "token_type_ids": np.zeros((2, 4), int)}
    rows = list(families()["text"].unpadded([feed, {"input_ids": np.ones((2, 3), int)}]))
    assert [r["input_ids"].tolist() for r in rows[:2]] == [[[0, 1, 2]], [[4, 5]]]
    assert all(r["attention_mask"].all() for r in rows[:2]) and rows[2]["input_ids"].shape == (2, 3)
    images = {"pixel_values": np.ones((2, 1, 4, 4), np.float32)}  # a family without padding: unchanged
    assert list(families()["vision"].unpadded([images])) == [images]
