"""The optimum-intel peer recipe, run in its own environment (benchmarks/peer/requirements-intel.txt):
OVModelForSequenceClassification export (fp32 IR), then OVQuantizer with OVQuantizationConfig (NNCF
post-training int8, optimum-intel's defaults: transformer model type, asymmetric activations) calibrated
on the given texts, tokenized as optimum-intel's own examples do (padding to max_length 128).

    PEER_PY benchmarks/peer/optimum_intel_peer.py MODEL_DIR OUT_DIR CALIB_TEXTS_JSON
writes OUT_DIR/ov-fp32 and OUT_DIR/ov-int8 (each an optimum-intel model directory with openvino_model.xml).
"""

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("NNCF_CI", "1")  # no usage telemetry from a benchmark


def main() -> None:
    import nncf
    from optimum.intel import OVConfig, OVModelForSequenceClassification, OVQuantizationConfig, OVQuantizer
    from transformers import AutoTokenizer

    src, out, calib = sys.argv[1], Path(sys.argv[2]), json.loads(Path(sys.argv[3]).read_text())
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(src)
    model = OVModelForSequenceClassification.from_pretrained(src, export=True, compile=False)
    model.save_pretrained(out / "ov-fp32")
    tok.save_pretrained(out / "ov-fp32")
    items = [dict(tok(t, padding="max_length", max_length=128, truncation=True, return_tensors="np")) for t in calib]
    quantizer = OVQuantizer.from_pretrained(model)
    quantizer.quantize(calibration_dataset=nncf.Dataset(items), save_directory=out / "ov-int8",
                       ov_config=OVConfig(quantization_config=OVQuantizationConfig(num_samples=len(items))))
    tok.save_pretrained(out / "ov-int8")
    print(f"optimum-intel peer done in {time.time() - t0:.1f}s: {sorted(p.name for p in out.iterdir())}")


if __name__ == "__main__":
    main()
