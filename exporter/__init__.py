"""Kiln's toolchain: stages that each read one artifact and write a new, validated one."""

from exporter.compare import TOLERANCES, Comparison, Tolerance, compare
from exporter.load import load_checkpoint
from exporter.onnx_export import OnnxConfig, to_onnx

__all__ = ["load_checkpoint", "to_onnx", "OnnxConfig", "compare", "Comparison", "Tolerance", "TOLERANCES"]
