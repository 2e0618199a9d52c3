"""nncf-int8 --target openvino: NNCF's OpenVINO backend, an OpenVINO IR artifact, validated and recorded."""

import json

import numpy as np
import pytest

from exporter.quantize_nncf import NncfConfig
from runtime import Artifact, ConfigError
from tests.conftest import sentiment_rows, write_csv
from tests.test_cli import one_line_error, run


def test_target_and_its_default_preset():
    assert NncfConfig().preset == "performance" and NncfConfig().runs_on == ["tensorrt", "onnxruntime", "openvino"]
    ov = NncfConfig(target="openvino")
    assert ov.preset == "mixed" and ov.runs_on == ["openvino"] and not ov.tensorrt_parsable
    assert NncfConfig(preset="mixed").runs_on == ["onnxruntime", "openvino"]  # asymmetric QDQ: not for TensorRT
    with pytest.raises(ConfigError, match="unknown nncf-int8 target 'cuda'; valid: tensorrt, openvino"):
        NncfConfig(target="cuda")


def test_target_is_an_nncf_option(tiny_onnx, tmp_path):
    one_line_error(run("quantize", tiny_onnx.path, "--method", "dynamic-int8", "--target", "openvino", "-o", tmp_path / "q"),
                   "--target is not used by --method dynamic-int8; it is an option of --method nncf-int8")


@pytest.fixture(scope="module")
def ov_int8(tiny_onnx, tmp_path_factory):
    pytest.importorskip("nncf")
    pytest.importorskip("openvino")
    d = tmp_path_factory.mktemp("nncf-ov")
    data = write_csv(d / "calib.csv", sentiment_rows(24, seed=7))
    evaluation = write_csv(d / "eval.csv", sentiment_rows(16, seed=9))
    res = run("quantize", tiny_onnx.path, "--method", "nncf-int8", "--target", "openvino", "--calib-data", data,
              "--calib-samples", "24", "--subset-size", "16", "--calib-pad-length", "16", "--eval-data", evaluation,
              "--max-accuracy-drop", "100", "-o", d / "q", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["format"] == "openvino"  # NNCF's progress bars stay off stdout
    return Artifact.load(d / "q")


def test_ir_artifact_quantized_validated_and_recorded(ov_int8):
    assert ov_int8.format == "openvino" and ov_int8.model_file.name == "model.xml"
    assert {"model.xml", "model.bin"} <= set(ov_int8.files)
    meta, step = ov_int8.meta, ov_int8.lineage[-1]
    assert meta["precision"] == "int8" and meta["target"] == "openvino" and meta["runs_on"] == ["openvino"]
    assert meta["answers_depend_on_batching"] is False
    assert step.config["target"] == "openvino" and step.config["preset"] == "mixed"
    assert step.config["model_type"] == "transformer"
    m = step.metrics
    assert m["fake_quantize"] > 0 and "qdq" not in m
    assert m["validation"]["enforced"] and m["validation"]["outputs"]["logits"]["cosine"] >= 0.95
    assert m["accuracy_guard"]["batch_sizes"] == [1, 64]  # alone and batched: the worse counts


def test_answers_do_not_depend_on_batching(ov_int8):
    from runtime.pipeline import TextClassifier

    texts = [t for t, _ in sentiment_rows(24, seed=11)]
    with TextClassifier(ov_int8, batch_size=1) as one, \
            TextClassifier(ov_int8, batch_size=16, call_overhead_tokens=float("inf")) as many:
        assert one.session.backend == "openvino"
        np.testing.assert_allclose(many.logits(texts), one.logits(texts), atol=1e-4)


def test_pruned_model_through_nncf_int8_on_openvino(tiny_bert, tmp_path):
    """A structurally pruned model (a layer removed, uneven heads per layer) exports, quantizes with NNCF for
    OpenVINO and runs there, like the 4-layer pruned MiniLM in benchmarks/suites/openvino.toml."""
    pytest.importorskip("nncf")
    pytest.importorskip("openvino")
    from calibration.datasets import load_labelled
    from exporter.load import load_checkpoint
    from exporter.onnx_export import OnnxConfig, to_onnx
    from exporter.prune import PruneConfig, prune
    from exporter.quantize import quantize
    from runtime.pipeline import TextClassifier

    train = load_labelled(write_csv(tmp_path / "train.csv", sentiment_rows(32)))
    pruned = prune(load_checkpoint(tiny_bert, "text-classification"),
                   PruneConfig(kind="structured", layers=1, heads=0.25, samples=16, batch_size=16),
                   tmp_path / "pruned", train=train, show_bar=False)
    assert len(pruned.lineage[-1].metrics["structure"]["heads"]) == 1
    p32 = to_onnx(load_checkpoint(pruned.path), OnnxConfig(), tmp_path / "onnx")
    feeds = p32.family.calibration_feeds(p32, train.texts, 16, batch_size=1, pad_to=16)
    q = quantize(p32, NncfConfig(target="openvino", subset_size=16), tmp_path / "q", calibration=feeds)
    assert q.format == "openvino" and q.lineage[-1].metrics["fake_quantize"] > 0
    texts = [t for t, _ in sentiment_rows(8, seed=4)]
    with TextClassifier(p32, backend="openvino") as ov32, TextClassifier(p32) as ort32, TextClassifier(q) as ov8:
        np.testing.assert_allclose(ov32.logits(texts), ort32.logits(texts), atol=1e-5)
        assert np.abs(ov8.logits(texts) - ort32.logits(texts)).max() < 0.5


def test_quiet_silences_nncf_progress_bars(tiny_onnx, tmp_path):
    """`kiln --quiet` means no progress on stderr, NNCF's own bars included; without it they go to stderr."""
    pytest.importorskip("nncf")
    data = write_csv(tmp_path / "calib.csv", sentiment_rows(16, seed=3))
    args = ["quantize", tiny_onnx.path, "--method", "nncf-int8", "--calib-data", data, "--calib-samples", "16",
            "--subset-size", "8", "--calib-pad-length", "16", "--json"]
    loud = run(*args, "-o", tmp_path / "a")
    quiet = run("--quiet", *args, "-o", tmp_path / "b")
    assert loud.exit_code == 0 and quiet.exit_code == 0, quiet.output
    assert "Statistics collection" in loud.stderr and "Statistics collection" not in quiet.stderr
    assert json.loads(quiet.stdout)["format"] == "onnx"
