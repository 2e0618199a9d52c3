"""The peer recipe, run in its own environment (benchmarks/peer/requirements.txt):
Hugging Face optimum ORTOptimizer O2 + ORTQuantizer with AutoQuantizationConfig.avx512_vnni(is_static=False).

    PEER_PY benchmarks/peer/optimum_peer.py MODEL_DIR OUT_DIR
writes OUT_DIR/model_optimized_quantized.onnx (and the fp32/optimized files optimum makes on the way).
"""

import sys
import time
from pathlib import Path

from optimum.onnxruntime import ORTModelForSequenceClassification, ORTOptimizer, ORTQuantizer
from optimum.onnxruntime.configuration import AutoOptimizationConfig, AutoQuantizationConfig


def main() -> None:
    src, out = sys.argv[1], Path(sys.argv[2])
    t0 = time.time()
    model = ORTModelForSequenceClassification.from_pretrained(src, export=True)
    model.save_pretrained(out / "exported")
    ORTOptimizer.from_pretrained(model).optimize(save_dir=out / "optimized", optimization_config=AutoOptimizationConfig.O2())
    # As shipped, ORTQuantizer fails on the O2 graph ("Unable to find data type for ... MatMul_output_0"):
    # the fused ops carry no inferred types. The minimal fix: onnxruntime's symbolic shape inference
    # on the optimized model, nothing else changed in the recipe.
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    opt_path = out / "optimized" / "model_optimized.onnx"
    onnx.save(SymbolicShapeInference.infer_shapes(onnx.load(str(opt_path)), auto_merge=True), str(opt_path))
    quantizer = ORTQuantizer.from_pretrained(out / "optimized", file_name="model_optimized.onnx")
    quantizer.quantize(save_dir=out, quantization_config=AutoQuantizationConfig.avx512_vnni(is_static=False))
    print(f"peer done in {time.time() - t0:.1f}s: {sorted(p.name for p in out.iterdir())}")


if __name__ == "__main__":
    main()
