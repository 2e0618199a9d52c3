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
        self._core = core = ov.Core()
        check_precision(self.options.dtype, cpu_capabilities(core))
        compiled = self._compile(read_model(core, self.artifact.model_file))
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")  # an openvino.Type
        got = PRECISION_NAMES.get(getattr(hint, "get_type_name", lambda: str(hint))(), str(hint))
        if got != self.options.dtype:
            raise BackendError(f"OpenVINO was asked for {self.options.dtype} but compiled for {got}")
        self._streams = int(compiled.get_property("NUM_STREAMS"))
        self._dynamic = self._request_for(compiled)
        # static-shape copies: shapes -> (request, ports), the first static_cache shapes seen
        self._static: dict[tuple[Any, ...], tuple[Any, dict[str, Any]]] = {}
        self._failed: set[tuple[Any, ...]] = set()  # shapes whose static compile failed (served dynamically)
        # inputs and outputs whose axis 1 is the sequence (text): padded, and cut back after
        self._seq_inputs = [s.name for s in self.artifact.inputs if s.shape[1:2] == ("sequence",)]
        self._seq_outputs = {s.name for s in self.outputs if s.shape[1:2] == ("sequence",)}
        self._meta = self.artifact.model_meta
        self._lock = threading.Lock()  # an infer request is not thread-safe; onnxruntime sessions are

    def _compile(self, model: Any) -> Any:
        try:
            return self._core.compile_model(model, "CPU", self.options.compile_config())
        except Exception as e:
            raise BackendError(f"OpenVINO could not compile {self.artifact.model_file}: "
                               f"{' '.join(str(e).split())[-300:]}") from None

    def _request_for(self, compiled: Any) -> tuple[Any, dict[str, Any]]:
        ports = {}
        for spec in self.outputs:
            try:
                ports[spec.name] = compiled.output(spec.name)
            except Exception:  # the manifest names an output the model does not have: the artifact is wrong
                raise ArtifactError(f"{self.artifact.model_file} has no output {spec.name!r} "
                                    f"(it has {[o.get_any_name() for o in compiled.outputs]})") from None
        return compiled.create_infer_request(), ports

    def _close(self) -> None:
        self._dynamic = None
        self._static = {}

    def _static_copy(self, shapes: dict[str, tuple[int, ...]]) -> tuple[Any, dict[str, Any]] | None:
        """The model compiled for exactly these input shapes (None: it cannot be, or the copies are all made;
        the dynamic-shape model serves). Copies are never replaced: a client cycling through lengths could
        otherwise make every request pay a compile (~0.5 s here) while holding the session. A shape that
        fails to compile is remembered and served dynamically; other shapes keep their copies."""
        key = tuple(sorted(shapes.items()))
        if key in self._static:
            return self._static[key]
        if len(self._static) >= self.options.static_cache or key in self._failed:
            return None
        try:
            model = read_model(self._core, self.artifact.model_file)
            model.reshape({name: list(shape) for name, shape in shapes.items()})
            entry = self._request_for(self._compile(model))
        except Exception:  # this shape cannot be fixed: the dynamic model serves it (and says what is wrong)
            if len(self._failed) < 64:
                self._failed.add(key)
            return None
        self._static[key] = entry
        return entry

    def _plan(self, feed: dict[str, np.ndarray]) -> tuple[tuple[Any, dict[str, Any]], dict[str, np.ndarray], int | None]:
        """(request and ports, the feed to give it, the real sequence length to cut outputs back to).

        Only sequence models (text) get static copies: a feed of at most static_batch rows, within the
        artifact's max_length, padded the family's way. Models without a sequence axis (images) always run
        on the dynamic-shape model: OpenVINO's static and dynamic compiles of the int8 ViT differ by up to
        1.2 logits, so copies for single images would make an answer depend on the batch it came in."""
        opts = self.options
        rows = next(iter(feed.values())).shape[0]
        if not opts.static_batch or rows > opts.static_batch or not self._seq_inputs:
            return self._dynamic, feed, None
        length = int(feed[self._seq_inputs[0]].shape[1])
        if length > self._meta.max_length:
            return self._dynamic, feed, None
        padded_to = min(-(-length // opts.static_multiple) * opts.static_multiple, self._meta.max_length)
        padded = self.artifact.family.pad_feed(feed, padded_to, self._meta) if padded_to != length else None
        entry = self._static_copy({name: value.shape for name, value in (padded or feed).items()})
        if entry is None:
            return self._dynamic, feed, None
        return (entry, padded, length) if padded is not None else (entry, feed, None)

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            with self._lock:
                (request, ports), feed, real = self._plan(feed)
                # share_inputs: the request reads the caller's arrays in place (the call is synchronous);
                # share_outputs=False (the default): results are copies, not views of the request's buffers
                result = request.infer(feed, share_inputs=True)
                out = {name: np.array(result[port]) for name, port in ports.items()}
        except Exception as e:
            shapes = ", ".join(f"{k} {'x'.join(map(str, v.shape))}" for k, v in feed.items())
            limit = f"; the artifact's max_length is {self._meta.max_length}" if self._seq_inputs else ""
            text = " ".join(str(e).split())
            tail = text if len(text) <= 200 else "..." + text[-200:].split(" ", 1)[-1]  # whole words
            raise InputError(f"OpenVINO rejected the feed ({shapes}{limit}): {tail}") from None
        if real is not None:  # back to the caller's length: padding is not part of the answer
            out = {name: value[:, :real] if name in self._seq_outputs else value for name, value in out.items()}
        return out

    def describe(self) -> str:
        if self._opened:
            static = (f", static shapes for batches <= {self.options.static_batch}"
                      if self.options.static_batch and self._seq_inputs else "")
            return f"openvino CPU ({self.options.dtype}, {self.options.hint}, {self._streams} stream(s){static})"
        return super().describe()
