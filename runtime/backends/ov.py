"""OpenVINO backend (CPU): Kiln's ONNX artifacts read directly, and OpenVINO IR artifacts (model.xml + .bin).

Never silently something else: the device is the CPU only, the inference precision is set explicitly and
read back from the compiled model, and a precision this CPU lacks is refused before compiling.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from runtime.errors import ArtifactError, BackendError, ConfigError, InputError
from runtime.session import Session

INSTALL_HINT = "pip install 'modelkiln[openvino]'"
# what OPTIMIZATION_CAPABILITIES must list for each inference precision
CAPABILITY = {"float32": "FP32", "bfloat16": "BF16", "float16": "FP16"}
PRECISION_NAMES = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}


def import_openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise BackendError(f"openvino is not installed; {INSTALL_HINT}, or use --backend onnxruntime") from None
    return openvino


def cpu_capabilities(core: Any) -> list[str]:
    """The CPU plugin's OPTIMIZATION_CAPABILITIES (FP32, BF16, FP16, INT8, ...): what it can compute in here."""
    return [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def check_precision(dtype: str, capabilities: list[str]) -> None:
    if CAPABILITY[dtype] not in capabilities:
        have = [name for name, cap in CAPABILITY.items() if cap in capabilities]
        raise ConfigError(f"this CPU has no {dtype} support in OpenVINO (its CPU plugin lists {capabilities}); "
                          f"valid here: {', '.join(have)}")


def read_model(core: Any, path: Any) -> Any:
    """core.read_model with its multi-line conversion report cut to one line that says what to do."""
    try:
        return core.read_model(str(path))
    except Exception as e:  # OpenVINO raises plain Exception/RuntimeError with a C++ trace in the text
        text = " ".join(str(e).split())
        missing = text.split("No conversion rule found for operations:", 1)
        if len(missing) == 2:
            ops = missing[1].split("--")[0].strip().rstrip(",")
            raise ArtifactError(
                f"OpenVINO cannot read {path}: no conversion for {ops[:200]} (onnxruntime-only fused or quantized ops); "
                "run it with --backend onnxruntime, or give OpenVINO the unfused fp32 export or an nncf-int8 "
                "artifact") from None
        raise ArtifactError(f"OpenVINO cannot read {path}: {text[-300:]}") from None


class OpenVinoSession(Session):
    """Options: runtime.backends.options.OpenVinoOptions (threads, streams, hint, dtype)."""

    backend = "openvino"

    def _open(self) -> None:
        if self.device != "cpu":
            raise ConfigError(f"the openvino backend runs on the CPU here, got device {self.device!r}; use --device cpu")
        ov = import_openvino()
        core = ov.Core()
        check_precision(self.options.dtype, cpu_capabilities(core))
        model = read_model(core, self.artifact.model_file)
        try:
            self._compiled = core.compile_model(model, "CPU", self.options.compile_config())
        except Exception as e:
            raise BackendError(f"OpenVINO could not compile {self.artifact.model_file}: "
                               f"{' '.join(str(e).split())[-300:]}") from None
        hint = self._compiled.get_property("INFERENCE_PRECISION_HINT")  # an openvino.Type
        got = PRECISION_NAMES.get(getattr(hint, "get_type_name", lambda: str(hint))(), str(hint))
        if got != self.options.dtype:
            raise BackendError(f"OpenVINO was asked for {self.options.dtype} but compiled for {got}")
        self._streams = int(self._compiled.get_property("NUM_STREAMS"))
        self._request = self._compiled.create_infer_request()
        self._ports = {}
        for spec in self.outputs:
            try:
                self._ports[spec.name] = self._compiled.output(spec.name)
            except Exception:  # the manifest names an output the model does not have: the artifact is wrong
                raise ArtifactError(f"{self.artifact.model_file} has no output {spec.name!r} "
                                    f"(it has {[o.get_any_name() for o in self._compiled.outputs]})") from None
        self._lock = threading.Lock()  # an infer request is not thread-safe; onnxruntime sessions are

    def _close(self) -> None:
        self._request = self._compiled = None

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            with self._lock:
                # share_outputs=False (the default): results are copies, not views of the request's buffers
                result = self._request.infer(feed)
                return {name: np.array(result[port]) for name, port in self._ports.items()}
        except Exception as e:
            raise InputError(f"OpenVINO rejected the feed: {' '.join(str(e).split())[-300:]}") from None

    def describe(self) -> str:
        if self._opened:
            return f"openvino CPU ({self.options.dtype}, {self.options.hint}, {self._streams} stream(s))"
        return super().describe()
