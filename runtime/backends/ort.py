"""onnxruntime backend: CPU, CUDA and TensorRT execution providers, never a silent fallback."""

from __future__ import annotations

from typing import Any

import numpy as np

from runtime.errors import BackendError, ConfigError, InputError
from runtime.session import Session


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise BackendError(
            "onnxruntime is not installed; pip install 'modelkiln[cpu]' (or 'modelkiln[gpu]' for CUDA), "
            "or use --backend torch") from None
    return onnxruntime


class OnnxRuntimeSession(Session):
    """Options: runtime.backends.options.OnnxRuntimeOptions (threads, spinning, provider)."""

    backend = "onnxruntime"

    def _open(self) -> None:
        ort = import_onnxruntime()
        if self.options.provider == "tensorrt" and self.device != "cuda":
            raise ConfigError("the TensorRT execution provider runs on a GPU: use device='cuda' (--device cuda)")
        providers = self.options.provider_list(self.device)
        wanted = [p if isinstance(p, str) else p[0] for p in providers]
        available = ort.get_available_providers()
        if wanted[0] not in available:
            raise BackendError(
                f"{self.device} requested but this onnxruntime has only {available}; "
                "install onnxruntime-gpu with pip install 'modelkiln[gpu]' (never beside plain onnxruntime), "
                "or use --device cpu")
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.options.threads
        so.log_severity_level = 3
        if not self.options.spinning:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._sess = ort.InferenceSession(str(self.artifact.model_file), so, providers=providers)
        except Exception as e:  # onnxruntime raises its own untyped errors for corrupt models
            raise BackendError(f"onnxruntime could not load {self.artifact.model_file}: {e}".splitlines()[0]) from None
        active = self._sess.get_providers()
        if active[0] != wanted[0]:
            # onnxruntime quietly drops a provider whose libraries (CUDA, cuDNN) fail to load
            raise BackendError(f"{wanted[0]} was requested but the session runs on {active}; "
                               "check the CUDA/cuDNN installation (kiln doctor)")
        self._output_names = [o.name for o in self.outputs]

    def _close(self) -> None:
        self._sess = None

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            if self.device == "cuda":
                # IO binding: inputs go to the device once, outputs are allocated there and copied back once
                io = self._sess.io_binding()
                for name, value in feed.items():
                    io.bind_cpu_input(name, value)
                for name in self._output_names:
                    io.bind_output(name, "cuda")
                self._sess.run_with_iobinding(io)
                values = io.copy_outputs_to_cpu()
            else:
                values = self._sess.run(self._output_names, feed)
        except Exception as e:  # e.g. a token id outside the vocabulary; onnxruntime's errors are untyped
            raise InputError(f"onnxruntime rejected the feed: {str(e).splitlines()[0][-300:]}") from None
        return dict(zip(self._output_names, values))

    def describe(self) -> str:
        if self._opened:
            return f"onnxruntime {self._sess.get_providers()[0]}"
        return super().describe()
