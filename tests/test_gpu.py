"""GPU paths (marker `gpu`, skipped in conftest without CUDA); each has a CPU twin that always runs."""

import numpy as np
import pytest

from runtime import open_session
from tests.test_session import feed


def run_torch(art, device, dtype="float32"):
    with open_session(art, backend="torch", device=device, dtype=dtype) as s:
        return s.run(feed(4, 11))["logits"]


def test_cpu_twin_torch_dtypes(tiny_onnx):
    ref = run_torch(tiny_onnx, "cpu")
    bf16 = run_torch(tiny_onnx, "cpu", "bfloat16")
    assert np.abs(ref - bf16).max() < 0.1 and (ref.argmax(-1) == bf16.argmax(-1)).mean() >= 0.75


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, tol", [("float32", 1e-4), ("float16", 2e-2), ("bfloat16", 1e-1)])
def test_torch_cuda_matches_cpu(tiny_onnx, dtype, tol):
    assert np.abs(run_torch(tiny_onnx, "cpu") - run_torch(tiny_onnx, "cuda", dtype)).max() < tol


@pytest.mark.gpu
def test_onnxruntime_cuda_or_clear_error(tiny_onnx):
    import onnxruntime

    from runtime import BackendError

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(BackendError, match="cuda requested but this onnxruntime has only"):
            open_session(tiny_onnx, device="cuda").open()
        return
    with open_session(tiny_onnx, device="cuda") as gpu, open_session(tiny_onnx) as cpu:
        np.testing.assert_allclose(gpu.run(feed())["logits"], cpu.run(feed())["logits"], atol=1e-4)


@pytest.mark.gpu
def test_torch_cuda_graphs_match_eager(tiny_onnx):
    eager = run_torch(tiny_onnx, "cuda")
    with open_session(tiny_onnx, backend="torch", device="cuda", cuda_graphs=True) as s:
        first = s.run(feed(4, 11))["logits"]
        replay = s.run(feed(4, 11))["logits"]  # the captured graph, replayed with new copies of the inputs
    np.testing.assert_allclose(first, eager, atol=1e-4)
    np.testing.assert_allclose(replay, eager, atol=1e-4)


def test_cpu_twin_cuda_graphs_option_is_ignored_on_cpu(tiny_onnx):
    with open_session(tiny_onnx, backend="torch", device="cpu", cuda_graphs=True) as s:
        np.testing.assert_allclose(s.run(feed(4, 11))["logits"], run_torch(tiny_onnx, "cpu"), atol=1e-6)


def test_gpu_check_runs_without_the_packaged_model():
    """The prepared device script: on a machine without CUDA every cuda row says why, the CPU rows are
    timed, and the MiniLM-shaped stand-in is named (what it does where the weights cannot be carried)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--model", "random", "--batch-sizes", "1",
                           "--iters", "2", "--seq-len", "16"], cwd=root, capture_output=True, text=True, timeout=300)
    out = proc.stdout
    assert proc.returncode == 0, out[-2000:] + proc.stderr[-2000:]
    assert "model: random weights in all-MiniLM-L6-v2's shape" in out
    rows = {line.split("  ")[0]: line for line in out.splitlines() if line.startswith(("torch ", "onnxruntime "))}
    assert {"torch cuda fp16", "onnxruntime cuda", "onnxruntime cpu", "torch cpu fp32"} <= set(rows)
    assert "CPUExecutionProvider" in rows["onnxruntime cpu"] and "unavailable" not in rows["onnxruntime cpu"]
    try:
        import torch
        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if not cuda:
        assert "unavailable: cuda requested" in rows["torch cuda fp16"]
