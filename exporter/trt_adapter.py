"""The one place the two TensorRT flavours differ at build time: datacenter `tensorrt` and TensorRT-RTX.

Both expose the TensorRT 10 Python API (Builder, OnnxParser, IBuilderConfig, IProgressMonitor). They differ in
- typing: TensorRT-RTX networks are always strongly typed (no FP16/INT8 builder flags), so fp16 has to be
  in the graph; TensorRT 10 still has weakly typed networks with FP16/INT8 flags, used when present;
- target: TensorRT builds for the GPU it runs on (a GPU is required) unless a hardware-compatibility
  level widens it; TensorRT-RTX builds ahead of time on a CPU for a list of compute capabilities;
- timing caches: TensorRT reuses them; TensorRT-RTX accepts the calls but ignores them (no-ops since 1.2).

The TensorRT-RTX path is exercised by the tests here; the datacenter path is written against TensorRT 10's
documented API and is untested (TensorRT cannot be installed on these machines).
"""

from __future__ import annotations

import warnings
from typing import Any

from runtime.backends.trt import FLAVOURS, Gpu, detect_gpu, import_flavour
from runtime.errors import BackendError


class Adapter:
    def __init__(self, key: str, gpu: Gpu | None) -> None:
        self.key = key
        self.flavour = FLAVOURS[key]
        self.trt = import_flavour(key, "or build ahead of time with --trt rtx" if key == "tensorrt" else "or --trt tensorrt on a GPU machine")
        self.version = str(self.trt.__version__)
        self.gpu = gpu
        self.logger = collecting_logger(self.trt)
        if key == "tensorrt" and gpu is None:
            raise BackendError("TensorRT builds an engine on the GPU it will run on, and this machine has none; "
                               "build on a GPU machine, or build ahead of time with --trt rtx (pip install tensorrt-rtx)")

    # -- typing --------------------------------------------------------------------------------------
    @property
    def strongly_typed(self) -> bool:
        """No FP16 flag means precision lives in the graph (TensorRT-RTX, and TensorRT once weak typing goes)."""
        return not hasattr(self.trt.BuilderFlag, "FP16")

    def network_flags(self) -> int:
        if self.strongly_typed:
            return 1 << int(self.trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        return 0

    def precision_flags(self, precision: str, qdq: bool) -> list[str]:
        """Weakly typed only: the kernel precisions the builder may choose besides fp32."""
        if self.strongly_typed:
            return []
        wanted = {"fp32": [], "fp16": ["FP16"], "int8": ["INT8"], "best": ["FP16", "INT8"] if qdq else ["FP16"]}[precision]
        return [f for f in wanted if hasattr(self.trt.BuilderFlag, f)]

    # -- target --------------------------------------------------------------------------------------
    def target(self, config: Any) -> dict[str, Any]:
        """What the built engine runs on, as the builder config states it."""
        if self.key == "rtx":
            n = config.num_compute_capabilities
            chosen = [config.get_compute_capability(i) for i in range(n)]
            if chosen:
                sms = [sm_text(c) for c in chosen]
                source = "compute capabilities set in the builder config"
            else:
                # none set: TensorRT-RTX's documented default, every architecture it knows but Turing (SM 7.5)
                sms = [sm_text(c) for c in self.trt.ComputeCapability.__members__.values()
                       if c.name.startswith("SM") and c.name != "SM75"]
                source = "TensorRT-RTX default (no compute capability set): every SM it knows except 7.5"
            return {"compute_capabilities": sms, "hardware_compatibility_level": None, "source": source}
        level = config.hardware_compatibility_level.name
        assert self.gpu is not None  # checked in __init__
        return {"compute_capabilities": [self.gpu.sm], "hardware_compatibility_level": level,
                "source": f"the building GPU ({self.gpu.name}), hardware compatibility {level}"}

    # -- timing cache --------------------------------------------------------------------------------
    @property
    def timing_cache_effective(self) -> bool:
        return self.key == "tensorrt"

    def load_timing_cache(self, config: Any, data: bytes) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TensorRT-RTX: deprecated no-ops
            cache = config.create_timing_cache(data)
            if cache is None:
                raise ValueError("not a timing cache")
            config.set_timing_cache(cache, False)

    def save_timing_cache(self, config: Any) -> bytes:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            cache = config.get_timing_cache()
            return bytes(cache.serialize()) if cache is not None else b""

    # -- flags ---------------------------------------------------------------------------------------
    def set_flag(self, config: Any, name: str) -> None:
        flag = getattr(self.trt.BuilderFlag, name, None)
        if flag is None:
            raise BackendError(f"{self.flavour.display} {self.version} has no builder flag {name}")
        config.set_flag(flag)

    def flags_set(self, config: Any) -> list[str]:
        return [name for name, flag in self.trt.BuilderFlag.__members__.items() if config.get_flag(flag)]

    def progress_monitor(self, report: Any) -> Any | None:
        """An IProgressMonitor that reports the builder's top-level phases, or None if the flavour has none."""
        base = getattr(self.trt, "IProgressMonitor", None)
        if base is None:
            return None

        class Monitor(base):  # type: ignore[misc, valid-type]
            def __init__(self) -> None:
                base.__init__(self)
                self.depth: dict[str, int] = {}

            def phase_start(self, phase: str, parent: str | None, steps: int) -> None:
                self.depth[phase] = self.depth.get(parent, -1) + 1 if parent else 0
                if self.depth[phase] <= 1:  # deeper phases repeat per layer and would flood the terminal
                    report(f"builder: {phase}" + (f" ({steps} steps)" if steps > 1 else ""))

            def step_complete(self, phase: str, step: int) -> bool:
                return True  # False would cancel the build

            def phase_finish(self, phase: str) -> None:
                pass

        return Monitor()


def collecting_logger(trt: Any) -> Any:
    """An ILogger that keeps errors for Kiln's one-line message instead of printing TensorRT's multi-line log."""

    class Collecting(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity <= trt.ILogger.Severity.ERROR:
                self.errors.append(" ".join(str(msg).split()))

    return Collecting()


def sm_text(capability: Any) -> str:
    value = int(capability)  # SM89 -> 89, SM120 -> 120
    return f"{value // 10}.{value % 10}"


def choose_flavour(wanted: str) -> tuple[str, Gpu | None]:
    """--trt auto: TensorRT on a GPU machine that has it, else TensorRT-RTX (builds without a GPU)."""
    import importlib.util

    gpu = detect_gpu()
    present = [k for k, f in FLAVOURS.items() if importlib.util.find_spec(f.module) is not None]
    if wanted != "auto":
        return wanted, gpu
    if "tensorrt" in present and gpu is not None:
        return "tensorrt", gpu
    if "rtx" in present:
        return "rtx", gpu
    if "tensorrt" in present:
        return "tensorrt", gpu  # Adapter says a GPU is needed
    raise BackendError("no TensorRT is installed; pip install tensorrt-rtx (builds engines on any machine, "
                       "for RTX-class GPUs) or tensorrt (on the GPU machine the engine will run on)")
