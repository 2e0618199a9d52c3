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
