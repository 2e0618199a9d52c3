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


def padded_feed(seed, batch=4, seq=11):
    """Varied ids with padding at the end of some rows (a replay must not reuse the captured mask)."""
    rng = np.random.default_rng(seed)
    f = feed(batch, seq)
    f["input_ids"] = rng.integers(5, 30, size=(batch, seq)).astype(np.int64)
    for row, real in enumerate(rng.integers(3, seq + 1, size=batch)):
        f["attention_mask"][row, real:] = 0
        f["input_ids"][row, real:] = 0
    return f


@pytest.mark.gpu
def test_torch_cuda_graphs_match_eager(tiny_onnx):
    with open_session(tiny_onnx, backend="torch", device="cuda") as s:
        eager = [s.run(feed(4, 11))["logits"], s.run(padded_feed(1))["logits"]]
    with open_session(tiny_onnx, backend="torch", device="cuda", cuda_graphs=True) as s:
        first = s.run(feed(4, 11))["logits"]  # captures the graph for this shape
        replay = s.run(padded_feed(1))["logits"]  # same shape, other ids and padding: replayed
        assert len(s._graphs) == 1
    np.testing.assert_allclose(first, eager[0], atol=1e-4)
    np.testing.assert_allclose(replay, eager[1], atol=1e-4)


@pytest.mark.parametrize("model_type", ["bert", "distilbert", "roberta"])
def test_cpu_twin_graphable_forward_matches_the_model(model_type, tmp_path):
    """What a CUDA graph captures (the mask built on device) gives the model's own answers, padding included."""
    import torch
    import transformers

    from exporter.load import load_checkpoint
    from runtime import BackendError
    from runtime.backends.torch_backend import graphable_forward
    from tests.conftest import build_tiny

    art = load_checkpoint(build_tiny(tmp_path / model_type, model_type), "text-classification")
    f = padded_feed(2)
    if model_type != "bert":
        del f["token_type_ids"]
    with open_session(art, backend="torch") as s, torch.no_grad():
        tensors = {k: torch.from_numpy(v) for k, v in f.items()}
        if model_type == "distilbert" and int(transformers.__version__.split(".")[0]) < 5:
            with pytest.raises(BackendError, match="CUDA graphs for distilbert need transformers >= 5"):
                graphable_forward(s._model, tensors)
            return
        np.testing.assert_allclose(graphable_forward(s._model, tensors)["logits"].numpy(),
                                   s._model(**tensors)["logits"].numpy(), atol=1e-5)


def test_cpu_twin_graphable_forward_reads_no_tensor_on_the_host(tiny_bert):
    """On the meta device any host read of a tensor value fails, as it fails inside CUDA graph capture."""
    import torch
    import transformers

    from runtime.backends.torch_backend import graphable_forward
    from runtime.backends.torch_structure import from_pretrained_any

    model = from_pretrained_any(transformers.AutoModelForSequenceClassification, str(tiny_bert)).eval().to("meta")
    ids = torch.ones(4, 11, dtype=torch.long, device="meta")
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    with torch.no_grad():
        assert graphable_forward(model, inputs)["logits"].shape == (4, 2)
        if int(transformers.__version__.split(".")[0]) >= 5:  # the problem it avoids is real
            with pytest.raises(RuntimeError, match="meta"):
                model(**inputs)


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
                           "--iters", "2", "--seq-len", "16", "--serve-seconds", "0.5"],
                          cwd=root, capture_output=True, text=True, timeout=300)
    out = proc.stdout
    assert proc.returncode == 0, out[-2000:] + proc.stderr[-2000:]
    assert "model: random weights in all-MiniLM-L6-v2's shape" in out
    latency, batching = out.split("micro-batching: 32 closed-loop callers")
    rows = {line.split("  ")[0]: line for line in latency.splitlines() if line.startswith(("torch ", "onnxruntime "))}
    assert {"torch cuda fp16", "onnxruntime cuda", "onnxruntime cpu", "torch cpu fp32"} <= set(rows)
    assert "CPUExecutionProvider" in rows["onnxruntime cpu"] and "unavailable" not in rows["onnxruntime cpu"]
    try:
        import torch
        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if not cuda:
        assert "unavailable: cuda requested" in rows["torch cuda fp16"]
    cpu = [line.split() for line in batching.splitlines() if line.startswith("onnxruntime cpu")]
    assert [r[2] for r in cpu] == ["32", "1"] and float(cpu[0][3]) > 0 and float(cpu[1][-1]) > 0  # on/off ratio
