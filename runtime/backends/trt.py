"""Native TensorRT backend (the `tensorrt` or `tensorrt_rtx` module): an engine is checked against this
machine before it is ever deserialized, because deserializing without a GPU, or on the wrong TensorRT,
crashes or corrupts the process instead of raising.

What runs where: the compatibility check, the shape-range check and GPU detection are plain Python (tested
on CPU). Deserializing, device buffers and execution need an NVIDIA GPU and TensorRT; they are written
against the TensorRT 10 Python API that both flavours share.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib
import importlib.util
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.artifact import TensorSpec
from runtime.errors import ArtifactError, BackendError, ConfigError, InputError
from runtime.session import Session


@dataclass(frozen=True)
class Flavour:
    key: str  # what --trt and the manifest say
    module: str
    display: str  # what error sentences say
    pip: str


FLAVOURS = {
    "tensorrt": Flavour("tensorrt", "tensorrt", "TensorRT", "tensorrt"),
    "rtx": Flavour("rtx", "tensorrt_rtx", "TensorRT-RTX", "tensorrt-rtx"),
}


def import_flavour(key: str, alternative: str) -> Any:
    """The flavour's Python module; a clear error naming the package (and `alternative`) when it is absent."""
    flavour = FLAVOURS[key]
    try:
        return importlib.import_module(flavour.module)
    except ImportError:
        raise BackendError(f"{flavour.display} is not installed; pip install {flavour.pip} ({alternative})") from None


def installed_flavours() -> dict[str, str]:
    """{flavour key: version} of the TensorRT modules importable here (imports them; no CUDA context)."""
    found = {}
    for key, flavour in FLAVOURS.items():
        if importlib.util.find_spec(flavour.module) is not None:
            try:
                found[key] = str(importlib.import_module(flavour.module).__version__)
            except Exception:  # a broken install (missing libnvinfer) counts as absent
                continue
    return found


def short_version(version: str, parts: int = 3) -> str:
    return ".".join(str(version).split(".")[:parts])


# -- GPU detection ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Gpu:
    name: str
    sm: str  # compute capability, "9.0"


def detect_gpu() -> Gpu | None:
    """The first visible NVIDIA GPU, through NVML (libnvidia-ml, shipped with the driver), or None.

    NVML is the management library nvidia-smi uses: it reads the device without creating a CUDA context,
    so it cannot crash or claim GPU memory the way initialising CUDA (or deserializing an engine) can,
    and it needs neither torch nor cuda-python. No driver library -> no usable GPU.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return None  # CUDA will see no device, whatever NVML says
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return None
    if nvml.nvmlInit_v2() != 0:
        return None
    try:
        count = ctypes.c_uint(0)
        if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0 or count.value == 0:
            return None
        first = visible.split(",")[0].strip() if visible else "0"
        index = int(first) if first.isdigit() else 0  # UUID lists: the first device stands in
        handle = ctypes.c_void_p()
        if nvml.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(index), ctypes.byref(handle)) != 0:
            return None
        major, minor = ctypes.c_int(0), ctypes.c_int(0)
        if nvml.nvmlDeviceGetCudaComputeCapability(handle, ctypes.byref(major), ctypes.byref(minor)) != 0:
            return None
        name = ctypes.create_string_buffer(96)
        nvml.nvmlDeviceGetName(handle, name, ctypes.c_uint(96))
        return Gpu(name.value.decode(errors="replace") or "NVIDIA GPU", f"{major.value}.{minor.value}")
    finally:
        nvml.nvmlShutdown()


# -- compatibility: the manifest against this machine -------------------------------------------------

def sm_key(sm: str) -> tuple[int, int]:
    major, _, minor = str(sm).partition(".")
    return int(major), int(minor or 0)


def target_text(target: dict[str, Any]) -> str:
    sms = target.get("compute_capabilities") or []
    if target.get("hardware_compatibility_level") == "AMPERE_PLUS":
        return "SM 8.0 and newer (hardware compatibility AMPERE_PLUS)"
    return "SM " + "/".join(sms) if sms else "an unrecorded GPU"


def gpu_fits(target: dict[str, Any], sm: str) -> bool:
    if target.get("hardware_compatibility_level") == "AMPERE_PLUS":
        return sm_key(sm) >= (8, 0)
    return sm in (target.get("compute_capabilities") or [])


def compatibility_problem(record: dict[str, Any], installed: dict[str, str], gpu: Gpu | None,
                          rebuild: str) -> str | None:
    """None when this machine can deserialize the engine; else the one sentence that says why not and what to do.

    TensorRT engines are only guaranteed to load on the TensorRT version that built them (and the same
    flavour), on a GPU whose compute capability the engine was built for.
    """
    flavour = FLAVOURS.get(record.get("flavour", ""))
    if flavour is None:
        return (f"the engine's manifest names an unknown TensorRT flavour {record.get('flavour')!r} "
                f"(valid: {', '.join(FLAVOURS)}): rebuild with `{rebuild}`")
    version = short_version(record.get("version", "?"))
    target = record.get("target", {})
    built = f"engine built by {flavour.display} {version} for {target_text(target)}"
    if installed:
        have = " and ".join(f"{FLAVOURS[k].display} {short_version(v)}" for k, v in sorted(installed.items()))
    else:
        have = "no TensorRT"
    if gpu is None:
        return (f"{built}; this machine has {have} and no CUDA GPU, and a TensorRT engine runs only on an NVIDIA GPU: "
                f"run it on a GPU machine (rebuilding there with `{rebuild}` if it does not match), "
                "or use the source ONNX artifact with --backend onnxruntime here")
    fits_gpu = gpu_fits(target, gpu.sm)
    fits_trt = short_version(installed.get(flavour.key, "")) == version
    if fits_gpu and fits_trt:
        return None
    hint = f"rebuild with `{rebuild}` on this machine"
    if not installed:
        hint = f"pip install {flavour.pip} (or TensorRT) and {hint}"
    return f"{built}; this machine has {have} and SM {gpu.sm} ({gpu.name}): {hint}"


def rebuild_command(artifact: Any, record: dict[str, Any], installed: dict[str, str]) -> str:
    source = record.get("source_path") or (str(artifact.source_path()) if artifact.source_path() else "SOURCE_ONNX")
    trt = f" --trt {sorted(installed)[0]}" if len(installed) == 1 else ""
    precision = record.get("precision", "fp32")
    return f"kiln build {source} -o {artifact.path} --precision {precision}{trt} --force"


# -- shapes -------------------------------------------------------------------------------------------

def profile_problem(specs: tuple[TensorSpec, ...], feed: dict[str, np.ndarray]) -> str | None:
    """A feed shape outside the engine's optimization profile, said with the allowed range; else None."""
    for spec in specs:
        if spec.profile is None or spec.name not in feed:
            continue
        lo, _, hi = spec.profile
        shape = tuple(feed[spec.name].shape)
        if len(shape) != len(lo) or any(not (a <= s <= b) for s, a, b in zip(shape, lo, hi)):
            ranges = ", ".join(f"{d if isinstance(d, str) else f'axis {i}'} {a}..{b}"
                               for i, (d, a, b) in enumerate(zip(spec.shape, lo, hi)))
            return (f"input {spec.name!r}: got shape {shape}; the engine's profile allows {ranges} "
                    f"(rebuild with --shapes {spec.name}:MINxMIN,OPTxOPT,MAXxMAX for other shapes)")
    return None


# -- the session --------------------------------------------------------------------------------------

class TensorRTSession(Session):
    """Runs a `tensorrt` artifact on the GPU. Options: none (the engine fixes precision and profiles)."""

    backend = "tensorrt"

    def __init__(self, artifact: Any, device: str = "cuda", options: Any = None, **values: Any) -> None:
        # Session refuses any option for a backend without an options class (runtime/backends/options.py)
        super().__init__(artifact, device=device, options=options, **values)

    def check(self) -> dict[str, Any]:
        """Everything that must hold before deserializing: the record, the file, TensorRT and the GPU."""
        art = self.artifact
        record = art.meta.get("tensorrt")
        if not isinstance(record, dict):
            raise ArtifactError(f"{art.path}: the manifest has no 'tensorrt' record of what built the engine; "
                                "rebuild it with `kiln build ONNX_ARTIFACT -o OUT`")
        engine = art.model_file
        expected = art.files.get(art.meta.get("model_file", ""))
        if not engine.is_file() or not expected:
            raise ArtifactError(f"{art.path}: engine file {art.meta.get('model_file')!r} is missing or not in the "
                                "manifest; rebuild it with `kiln build`")
        if sha256_of(engine) != expected:
            # a truncated or replaced engine can crash TensorRT's deserializer, so never hand it over
            raise ArtifactError(f"{engine} does not match the sha256 in the manifest (corrupt or replaced); "
                                f"rebuild with `{rebuild_command(art, record, {})}`")
        installed = installed_flavours()
        problem = compatibility_problem(record, installed, detect_gpu(), rebuild_command(art, record, installed))
        if problem:
            raise BackendError(problem)
        if self.device != "cuda":
            raise ConfigError("a TensorRT engine runs on the GPU; pass --device cuda "
                              "(or run the source ONNX artifact with --backend onnxruntime on the CPU)")
        return record

    def _open(self) -> None:
        record = self.check()
        trt = import_flavour(record["flavour"], "or run the ONNX artifact with --backend onnxruntime")
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(self.artifact.model_file.read_bytes())
        if engine is None:
            raise BackendError(f"{FLAVOURS[record['flavour']].display} could not deserialize {self.artifact.model_file} "
                               "(see the log above); rebuild it on this machine with `kiln build`")
        self._engine = engine
        self._context = engine.create_execution_context()
        self._buffers = DeviceBuffers.create()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._input_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._output_names = [o.name for o in self.outputs]
        # one profile (index 0): allocate every tensor at its largest shape once, so calls never allocate
        for name in self._input_names:
            self._context.set_input_shape(name, tuple(engine.get_tensor_profile_shape(name, 0)[2]))
        for name in names:
            shape = tuple(self._context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            ptr = self._buffers.allocate(name, int(np.prod(shape)), dtype)
            self._context.set_tensor_address(name, ptr)

    def _close(self) -> None:
        self._context = self._engine = self._runtime = None
        self._buffers.free()

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        problem = profile_problem(self.inputs, feed)
        if problem:
            raise InputError(problem)
        for name in self._input_names:
            value = np.ascontiguousarray(feed[name])
            self._context.set_input_shape(name, value.shape)
            self._buffers.upload(name, value)
        shapes = {n: tuple(self._context.get_tensor_shape(n)) for n in self._output_names}
        if not self._context.execute_async_v3(self._buffers.stream_handle):
            raise BackendError("TensorRT failed to enqueue the engine (see the log above)")
        return {n: self._buffers.download(n, shapes[n]) for n in self._output_names}

    def describe(self) -> str:
        record = self.artifact.meta.get("tensorrt", {})
        flavour = FLAVOURS.get(record.get("flavour", ""))
        return f"{flavour.display if flavour else 'TensorRT'} {short_version(record.get('version', '?'))} on cuda"


def sha256_of(path: Any) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


class DeviceBuffers:
    """Device memory and one CUDA stream: torch tensors where torch with CUDA is installed, else cuda-python."""

    stream_handle: int

    @staticmethod
    def create() -> DeviceBuffers:
        if importlib.util.find_spec("torch") is not None:
            return TorchBuffers()
        return CudaPythonBuffers()

    def allocate(self, name: str, count: int, dtype: np.dtype) -> int:
        raise NotImplementedError

    def upload(self, name: str, value: np.ndarray) -> None:
        raise NotImplementedError

    def download(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        raise NotImplementedError

    def free(self) -> None:
        pass


class TorchBuffers(DeviceBuffers):
    def __init__(self) -> None:
        import torch

        self.torch = torch
        self.stream = torch.cuda.Stream()
        self.stream_handle = self.stream.cuda_stream
        self.tensors: dict[str, Any] = {}

    def allocate(self, name: str, count: int, dtype: np.dtype) -> int:
        torch_dtype = self.torch.from_numpy(np.zeros(0, dtype)).dtype
        self.tensors[name] = self.torch.empty(max(count, 1), dtype=torch_dtype, device="cuda")
        return int(self.tensors[name].data_ptr())

    def upload(self, name: str, value: np.ndarray) -> None:
        with self.torch.cuda.stream(self.stream):
            self.tensors[name][:value.size].copy_(self.torch.from_numpy(value).reshape(-1), non_blocking=False)

    def download(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        self.stream.synchronize()  # the engine ran on this stream; its outputs are ready after this
        return self.tensors[name][:int(np.prod(shape))].reshape(shape).cpu().numpy()

    def free(self) -> None:
        self.tensors.clear()


class CudaPythonBuffers(DeviceBuffers):
    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
        except ImportError:
            try:
                from cuda import cudart  # type: ignore[no-redef]  # older cuda-python
            except ImportError:
                raise BackendError("the tensorrt backend needs torch with CUDA or cuda-python for device memory; "
                                   "pip install cuda-python") from None
        self.cudart = cudart
        self.stream_handle = int(self.call(cudart.cudaStreamCreate()))
        self.pointers: dict[str, tuple[int, np.dtype]] = {}
        self.staged: dict[str, np.ndarray] = {}

    def call(self, result: Any) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise BackendError(f"CUDA call failed: {err}")
        return rest[0] if rest else None

    def allocate(self, name: str, count: int, dtype: np.dtype) -> int:
        ptr = int(self.call(self.cudart.cudaMalloc(max(count, 1) * dtype.itemsize)))
        self.pointers[name] = (ptr, dtype)
        return ptr

    def upload(self, name: str, value: np.ndarray) -> None:
        ptr, dtype = self.pointers[name]
        value = np.ascontiguousarray(value, dtype=dtype)  # e.g. int64 ids into an int32 binding
        self.staged[name] = value  # the async copy reads it after this returns: keep it alive until the next call
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self.call(self.cudart.cudaMemcpyAsync(ptr, value.ctypes.data, value.nbytes, kind, self.stream_handle))

    def download(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        ptr, dtype = self.pointers[name]
        out = np.empty(shape, dtype)
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.call(self.cudart.cudaMemcpyAsync(out.ctypes.data, ptr, out.nbytes, kind, self.stream_handle))
        self.call(self.cudart.cudaStreamSynchronize(self.stream_handle))
        return out

    def free(self) -> None:
        for ptr, _ in self.pointers.values():
            self.cudart.cudaFree(ptr)
        self.pointers.clear()
        self.cudart.cudaStreamDestroy(self.stream_handle)
