"""Static int8 for vision (exporter/qdq_plan.py): int8 flows from kernel to kernel, so onnxruntime's optimized
graph has no DequantizeLinear -> QuantizeLinear round trips between convolutions and no quantized
activation x activation products in a ViT. Checked on the graphs onnxruntime actually runs."""

from __future__ import annotations

from collections import Counter

import pytest

from runtime.errors import ConfigError
from tests.test_vision import PREP, build_hf_vision, shapes, tiny_cnn


def optimized_ops(model_path, tmp_path) -> tuple[Counter, list]:
    """The nodes onnxruntime's CPU session runs after its own graph optimizations."""
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    nodes = list(onnx.load(so.optimized_model_filepath).graph.node)
    return Counter(n.op_type for n in nodes), nodes


def static_int8(art, out):
    from exporter.quantize import QuantConfig, quantize

    imgs, _ = shapes(32, seed=2)
    calib = art.family.calibration_feeds(art, list(imgs), n=32, batch_size=16)
    return quantize(art, QuantConfig(method="static-int8"), out, calibration=calib)


def test_cnn_int8_has_no_dequantize_quantize_round_trips(tmp_path):
    import torch

    from exporter.module_export import to_onnx_module

    torch.manual_seed(0)
    art = to_onnx_module(tiny_cnn().eval(), torch.zeros(2, *PREP.shape), PREP, ["a", "b", "c"], tmp_path / "onnx")
    q = static_int8(art, tmp_path / "int8")
    ops, nodes = optimized_ops(q.model_file, tmp_path)
    producer = {o: n.op_type for n in nodes for o in n.output}
    round_trips = [n.name for n in nodes if n.op_type == "QuantizeLinear" and producer.get(n.input[0]) == "DequantizeLinear"]
    assert round_trips == []
    assert ops["QLinearConv"] == 2 and "Relu" not in ops  # each ReLU folded into its conv's output range
    plan = q.lineage[-1].metrics["qdq_plan"]
    assert "Relu" in plan["op_types"] and q.lineage[-1].config["qdq_plan"] == "int8-flow"


def test_vit_int8_quantizes_weights_only_and_keeps_linear_outputs_float(tmp_path):
    from exporter.load import load_checkpoint
    from exporter.onnx_export import OnnxConfig, to_onnx

    art = to_onnx(load_checkpoint(build_hf_vision(tmp_path / "vit", "vit"), "image-classification"), OnnxConfig(),
                  tmp_path / "onnx")
    q = static_int8(art, tmp_path / "int8")
    ops, nodes = optimized_ops(q.model_file, tmp_path)
    assert ops["MatMulIntegerToFloat"] > 0 and "QLinearMatMul" not in ops  # DQ -> MatMul with a float output
    assert q.lineage[-1].metrics["qdq_plan"]["exclude_nodes"] > 0  # attention's QK^T and AV stay float
    producer = {o: n.op_type for n in nodes for o in n.output}
    assert [n.name for n in nodes if n.op_type == "Shape" and producer.get(n.input[0]) == "DequantizeLinear"] == []


def test_text_static_int8_keeps_the_listed_ops_plan(tiny_onnx, tmp_path):
    from exporter.quantize import QuantConfig, quantize
    from tests.test_quantize import calib_feeds

    q = quantize(tiny_onnx, QuantConfig(method="static-int8"), tmp_path / "q", calibration=calib_feeds(tiny_onnx))
    assert q.lineage[-1].config["qdq_plan"] == "listed-ops"


def test_unknown_qdq_plan_is_refused():
    from exporter.quantize import QuantConfig

    with pytest.raises(ConfigError, match="unknown qdq_plan 'fast'; valid: listed-ops, int8-flow"):
        QuantConfig(method="static-int8", qdq_plan="fast")
