"""Rebuild the ci suite's tiny artifacts (committed, so CI's benchmark needs no export step):

    python benchmarks/suites/ci/make_ci_model.py

a 2-layer BERT of width 32 with random weights over the tests' tiny vocabulary (tests/conftest.py),
exported to ONNX and dynamically quantized to int8, plus 64 labelled sentences in that vocabulary.
Its numbers say nothing about any real model: the suite checks that the harness runs end to end and
writes a well-formed report, in well under a minute on 2 cores."""

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from exporter.load import load_checkpoint  # noqa: E402
from exporter.onnx_export import OnnxConfig, to_onnx  # noqa: E402
from exporter.quantize import QuantConfig, quantize  # noqa: E402
from tests.conftest import build_tiny, sentiment_rows, write_csv  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        hf = build_tiny(Path(tmp) / "hf")
        fp32 = to_onnx(load_checkpoint(hf, "text-classification"), OnnxConfig(), HERE / "tiny-fp32", force=True)
    quantize(fp32, QuantConfig(method="dynamic-int8"), HERE / "tiny-int8", force=True)
    write_csv(HERE / "tiny-data.csv", sentiment_rows(64))


if __name__ == "__main__":
    main()
