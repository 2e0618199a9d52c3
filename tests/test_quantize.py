import json

import numpy as np
import pytest

from calibration.datasets import load_labelled
from calibration.readers import from_texts, synthetic, synthetic_text
from exporter.load import load_checkpoint
from exporter.onnx_export import OnnxConfig, to_onnx
from exporter.quantize import QuantConfig, graph_ops, quantize
from runtime import Artifact, ConfigError, InputError, ValidationError, open_session
from runtime.pipeline import load_tokenizer
from tests.conftest import sentiment_rows, write_csv


@pytest.fixture(scope="module")
def trained_onnx(tmp_path_factory, tiny_bert):
    """A tiny classifier that has learned the toy task (quantization accuracy needs a trained model)."""
    from exporter.finetune import FinetuneConfig, finetune

    d = tmp_path_factory.mktemp("q")
    train = load_labelled(write_csv(d / "train.csv", sentiment_rows(96)))
    dev = load_labelled(write_csv(d / "dev.csv", sentiment_rows(64, seed=3)))
    ft = finetune(load_checkpoint(tiny_bert, "text-classification"), train, dev,
                  FinetuneConfig(epochs=10, lr=3e-3, batch_size=16, max_length=16, patience=None), d / "ft", show_bar=False)
    return to_onnx(load_checkpoint(ft.path), OnnxConfig(), d / "onnx"), dev


def calib_feeds(art, n=16, pad_to=None):
    texts = [t for t, _ in sentiment_rows(n, seed=7)]
    names = [s.name for s in art.inputs]
    return list(from_texts(load_tokenizer(art), texts, 16, names, batch_size=4, pad_to=pad_to))


@pytest.mark.parametrize("cfg", [
    QuantConfig(method="dynamic-int8"),
    QuantConfig(method="dynamic-int8", optimize=False, per_channel=False),
    QuantConfig(method="static-int8", calibrator="minmax"),
    QuantConfig(method="static-int8", calibrator="percentile", percentile=99.9),
    QuantConfig(method="static-int8", calibrator="entropy"),
    QuantConfig(method="fp16"),
], ids=lambda c: f"{c.method}-{c.calibrator}-{'fused' if c.optimize else 'plain'}")
def test_each_method_validates(trained_onnx, tmp_path, cfg):
    art, _ = trained_onnx
    calib = calib_feeds(art, pad_to=16 if cfg.calibrator != "minmax" else None) if cfg.method == "static-int8" else None
    q = quantize(art, cfg, tmp_path / "q", calibration=calib)
    loaded = Artifact.load(q.path)
    step = loaded.lineage[-1]
    assert step.stage == "quantize" and loaded.meta["precision"] == cfg.precision
    assert step.metrics["validation"]["outputs"]["logits"]["cosine"] >= 0.95
    ops = graph_ops(q.model_file)
    if cfg.method == "dynamic-int8":
        assert ops & {"DynamicQuantizeLinear", "MatMulInteger", "QAttention", "DynamicQuantizeMatMul"}
    if cfg.method == "static-int8":
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        assert (q.path / "calibration_cache.json").is_file()
    if cfg.optimize and cfg.method != "fp16":
        assert step.metrics["fused_ops"].get("Attention") == 2
    with open_session(q) as s:  # runs, and keeps fp32 inputs/outputs
        out = s.run(calib_feeds(art)[0])["logits"]
    assert out.dtype == np.float32


def test_static_int8_answers_do_not_depend_on_batching(trained_onnx, tmp_path):
    """Fixed activation scales: a sentence gets the same scores alone or in any batch (dynamic int8 does not
    promise this: its scales come from each batch; benchmarks/results/batch-answers.md measures by how much)."""
    from runtime.pipeline import TextClassifier

    art, dev = trained_onnx
    q = quantize(art, QuantConfig(method="static-int8", calibrator="minmax"), tmp_path / "q", calibration=calib_feeds(art))
    texts = dev.texts[:24]
    with TextClassifier(q, batch_size=1) as one, TextClassifier(q, batch_size=16, call_overhead_tokens=float("inf")) as many:
        np.testing.assert_allclose(many.logits(texts), one.logits(texts), atol=1e-6)


def test_range_cache_round_trip_reproduces_the_model(trained_onnx, tmp_path):
    art, _ = trained_onnx
    cfg = QuantConfig(method="static-int8", calibrator="minmax")
    a = quantize(art, cfg, tmp_path / "a", calibration=calib_feeds(art))
    b = quantize(art, cfg, tmp_path / "b", calib_cache=a.path / "calibration_cache.json")  # no calibration data
    assert (a.path / "model.onnx").read_bytes() == (b.path / "model.onnx").read_bytes()
    assert json.loads((b.path / "calibration_cache.json").read_text()) == json.loads((a.path / "calibration_cache.json").read_text())


def test_guard_keeps_sensitive_nodes_in_fp32(trained_onnx, tmp_path, monkeypatch):
    import exporter.quantize as qz

    art, dev = trained_onnx
    real = qz.accuracy_of
    fp32_acc = real(art, dev)

    def pessimistic(a, data, batch_sizes=(64,)):
        # a constructed case: each quantized node costs 1 point, so the guard must keep some in fp32
        if a.meta.get("precision") != "int8":
            return fp32_acc
        n = len([n for n in __import__("onnx").load(str(a.model_file)).graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul", "QAttention")])
        return fp32_acc - 0.01 * n

    monkeypatch.setattr(qz, "accuracy_of", pessimistic)
    q = quantize(art, QuantConfig(method="dynamic-int8", max_accuracy_drop=3.0, op_types=("MatMul", "Attention")),
                 tmp_path / "q", eval_data=dev)
    guard = q.lineage[-1].metrics["accuracy_guard"]
    assert guard["drop_points"] <= 3.0 and len(guard["kept_fp32"]) >= 1
    assert [it["excluded"] for it in guard["iterations"]][:2] == [0, 1]
    assert guard["kept_fp32"] == [r["node"] for r in q.lineage[-1].metrics["sensitivity"][:len(guard["kept_fp32"])]]


def test_guard_fails_clearly_when_budget_cannot_be_met(trained_onnx, tmp_path, monkeypatch):
    import exporter.quantize as qz

    art, dev = trained_onnx
    monkeypatch.setattr(qz, "accuracy_of", lambda a, d, *_: 0.9 if a.meta.get("precision") != "int8" else 0.5)
    out = tmp_path / "q"
    with pytest.raises(ValidationError, match=r"accuracy budget not met: the best dynamic-int8 model lost 40.00 points"):
        quantize(art, QuantConfig(method="dynamic-int8", max_accuracy_drop=0.5, max_guard_iterations=2), out, eval_data=dev)
    assert not out.exists()


def test_real_accuracy_guard_passes_with_generous_budget(trained_onnx, tmp_path):
    art, dev = trained_onnx
    q = quantize(art, QuantConfig(method="dynamic-int8", max_accuracy_drop=5.0), tmp_path / "q", eval_data=dev)
    g = q.lineage[-1].metrics["accuracy_guard"]
    assert g["accuracy_fp32"] >= 0.9 and g["drop_points"] <= 5.0
    assert g["batch_sizes"] == [1, 64]  # dynamic int8's accuracy moves with batching: the worse one counts


def test_guard_accuracy_is_the_worst_over_batch_sizes(trained_onnx, monkeypatch):
    import exporter.quantize as qz
    import runtime.tasks.metrics

    art, dev = trained_onnx
    monkeypatch.setattr(runtime.tasks.metrics, "measure_accuracy",
                        lambda clf, data: {"accuracy": {1: 0.91, 64: 0.87}[clf.batch_size]})
    assert qz.accuracy_of(art, dev, (1, 64)) == 0.87 and qz.accuracy_of(art, dev, (1,)) == 0.91


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "int4"}, "unknown method 'int4'; valid: dynamic-int8, static-int8, fp16"),
    ({"calibrator": "mse"}, "unknown calibrator 'mse'; valid: minmax, percentile, entropy"),
    ({"percentile": 120}, r"percentile must be in \(0, 100\], got 120"),
    ({"activation_type": "int4"}, "activation_type must be one of int8, uint8"),
])
def test_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        QuantConfig(**kwargs)


def test_bad_calibration_and_requantizing(trained_onnx, tmp_path):
    art, dev = trained_onnx
    static = QuantConfig(method="static-int8")
    with pytest.raises(InputError, match="calibration data is empty"):
        quantize(art, static, tmp_path / "a", calibration=[])
    wrong = [{"input_ids": np.ones((1, 4), np.int64)}]
    with pytest.raises(InputError, match=r"calibration batch 0: missing input\(s\) \['attention_mask', 'token_type_ids'\]"):
        quantize(art, static, tmp_path / "b", calibration=wrong)
    with pytest.raises(InputError, match="need every batch to share one shape"):
        quantize(art, QuantConfig(method="static-int8", calibrator="percentile"), tmp_path / "c",
                 calibration=list(synthetic_text([s.name for s in art.inputs], 80, shapes=[(1, 5), (1, 9)])))
    with pytest.raises(ConfigError, match="static-int8 needs calibration data"):
        quantize(art, static, tmp_path / "d")
    q = quantize(art, QuantConfig(method="dynamic-int8"), tmp_path / "e")
    with pytest.raises(ConfigError, match="is already quantized"):
        quantize(q, QuantConfig(), tmp_path / "f")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]


def test_synthetic_reader_follows_specs(trained_onnx):
    art, _ = trained_onnx
    feeds = list(synthetic(art.inputs, 3, seed=1, batch=2, seq=5, vocab_size=80))
    assert len(feeds) == 3 and feeds[0]["input_ids"].shape == (2, 5) and feeds[0]["attention_mask"].min() == 1
