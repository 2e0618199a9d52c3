"""The ci suite's tiny artifacts, built on first use (model files are built, never committed).

A 2-layer BERT of width 32 with random weights over a tiny vocabulary (benchmarks/harness/tiny_model.py), exported to
ONNX and dynamically quantized to int8. Its numbers say nothing about any real model: the suite checks that the
harness runs end to end and writes a well-formed report, in well under a minute on 2 cores. Building takes a
few seconds; two runs building at once both end with the same artifacts (each stage writes atomically)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from runtime.errors import KilnError


def ensure_ci_model(dest: Path) -> None:
    """tiny-fp32 and tiny-int8 under `dest`, built unless already there."""
    from exporter.load import load_checkpoint
    from exporter.onnx_export import OnnxConfig, to_onnx
    from exporter.quantize import QuantConfig, quantize
    from runtime.artifact import Artifact
    from benchmarks.harness.tiny_model import build_tiny

    fp32, int8 = dest / "tiny-fp32", dest / "tiny-int8"
    if (int8 / "manifest.json").is_file():
        return
    try:
        if not (fp32 / "manifest.json").is_file():
            with tempfile.TemporaryDirectory() as tmp:
                to_onnx(load_checkpoint(build_tiny(Path(tmp) / "hf"), "text-classification"), OnnxConfig(), fp32)
        quantize(Artifact.load(fp32), QuantConfig(method="dynamic-int8"), int8)
    except KilnError:
        if not (int8 / "manifest.json").is_file():  # not a concurrent run that finished first
            raise


PREPARE = {"ci-model": ensure_ci_model}  # a suite's `prepare = {NAME = "folder"}` runs one of these first
