import subprocess
import sys


def test_import_runtime_does_not_import_heavy_libraries():
    code = ("import sys, runtime, calibration, benchmarks; "
            "heavy = [m for m in ('torch', 'transformers', 'onnxruntime', 'onnx', 'tensorrt') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, f"import pulled in heavy modules: {proc.stdout}{proc.stderr}"
