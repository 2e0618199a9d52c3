"""The Session interface every backend implements, feed validation, and `open_session`."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from runtime.artifact import Artifact, TensorSpec
from runtime.errors import BackendError, ConfigError, InputError, KilnError

DEVICES = ("cpu", "cuda")

# backend name -> (module, class, artifact formats it opens). Modules are imported only when asked for.
BACKENDS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "onnxruntime": ("runtime.backends.ort", "OnnxRuntimeSession", ("onnx",)),
    "torch": ("runtime.backends.torch_backend", "TorchSession", ("hf", "torch", "onnx")),
    "tensorrt": ("runtime.backends.trt", "TensorRTSession", ("tensorrt",)),
    "openvino": ("runtime.backends.ov", "OpenVinoSession", ("onnx", "openvino")),
}
AUTO_BACKEND = {"onnx": "onnxruntime", "hf": "torch", "torch": "torch", "tensorrt": "tensorrt", "openvino": "openvino"}


class Session:
    """One model ready to run: `inputs`, `outputs`, `run(feed)`, `close()`, and a context manager.

    Construction only records what to open; `open()` / `__enter__` acquires the engine or provider.
    """

    backend = "base"

    def __init__(self, artifact: Artifact, device: str = "cpu", options: Any = None, **values: Any) -> None:
        from runtime.backends.options import options_for

        if device not in DEVICES:
            raise ConfigError(f"unknown device {device!r}; valid: {', '.join(DEVICES)}")
        self.artifact = artifact
        self.device = device
        # the backend's options dataclass (runtime/backends/options.py): an unknown key is refused here
        self.options = options_for(self.backend, options, **values)
        self.inputs: tuple[TensorSpec, ...] = artifact.inputs
        self.outputs: tuple[TensorSpec, ...] = artifact.outputs
        self._opened = False
        self._limits: dict[str, int] | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def open(self) -> Session:
        if not self._opened:
            self._open()
            self._opened = True
        return self

    def close(self) -> None:
        if self._opened:
            self._close()
            self._opened = False

    def __enter__(self) -> Session:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inference -------------------------------------------------------------------------------
    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self._opened:
            raise BackendError(f"{self.backend} session is not open; use `with open_session(...) as s:` or s.open()")
        if self._limits is None:  # once per session: the artifact does not change
            self._limits = index_limits(self.artifact)
        return self._run(validate_feed(self.inputs, feed, self._limits))

    def describe(self) -> str:
        return f"{self.backend} on {self.device}"

    # -- for backends ----------------------------------------------------------------------------
    def _open(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        pass

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError


def index_limits(artifact: Artifact) -> dict[str, int]:
    """input name -> exclusive upper bound of its values, for the inputs that index a table inside the
    model (token ids: the vocabulary), as the artifact's family says. onnxruntime's Gather wraps a
    negative index around (-1 reads the last row), so an out-of-range id would be an answer, not an error."""
    from runtime.tasks import family_for

    try:
        family = family_for(artifact.task)
        meta = artifact.model_meta
    except KilnError:  # no family knows the task, or the meta is malformed: no limits to check here
        return {}
    return family.index_limits(artifact.inputs, meta)


def check_values(name: str, value: np.ndarray, limit: int | None) -> None:
    """Integer inputs (ids, masks, types) are never negative; index inputs stay below their table size."""
    if value.size == 0 or value.dtype.kind not in "iu":
        return
    bad = value < 0 if limit is None else (value < 0) | (value >= limit)
    if bad.any():
        at = tuple(int(i) for i in np.argwhere(bad)[0])
        valid = f"0..{limit - 1} (the vocabulary has {limit} ids)" if limit else ">= 0"
        raise InputError(f"input {name!r}: got {int(value[at])} at {at}; values must be {valid}")


def validate_feed(specs: tuple[TensorSpec, ...], feed: dict[str, np.ndarray],
                  limits: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Check names, types, dtypes, ranks, dims and integer ranges (limits: see index_limits); the error
    says received vs expected."""
    if not isinstance(feed, dict):
        raise InputError(f"feed must be a dict of name -> numpy array, got {type(feed).__name__}")
    expected = {s.name: s for s in specs}
    unknown = sorted(set(feed) - set(expected))
    missing = sorted(set(expected) - set(feed))
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"unknown input(s) {unknown}")
        if missing:
            parts.append(f"missing input(s) {missing}")
        raise InputError(f"{'; '.join(parts)}; the model's inputs are {[s.describe() for s in specs]}")
    bound: dict[str, tuple[int, str]] = {}  # symbolic dim -> (size, first input that set it)
    for name, spec in expected.items():
        value = feed[name]
        if not isinstance(value, np.ndarray):
            raise InputError(f"input {name!r}: got {type(value).__name__}, expected a numpy array of {spec.dtype}")
        if value.dtype != np.dtype(spec.dtype):
            raise InputError(f"input {name!r}: got dtype {value.dtype}, expected {spec.dtype}")
        if value.ndim != len(spec.shape):
            raise InputError(
                f"input {name!r}: got shape {value.shape} (rank {value.ndim}), "
                f"expected rank {len(spec.shape)} {tuple(spec.shape)}")
        for axis, (size, dim) in enumerate(zip(value.shape, spec.shape)):
            if isinstance(dim, int):
                if size != dim:
                    raise InputError(f"input {name!r}: got shape {value.shape}, axis {axis} must be {dim}")
            elif dim in bound and bound[dim][0] != size:
                raise InputError(
                    f"input {name!r}: got {dim}={size} but input {bound[dim][1]!r} has {dim}={bound[dim][0]}; "
                    "all inputs must agree")
            else:
                bound.setdefault(dim, (size, name))
            if size == 0:
                raise InputError(f"input {name!r}: got shape {value.shape}; empty axes are not allowed")
        check_values(name, value, (limits or {}).get(name))
    return feed


def resolve_backend(backend: str, artifact_format: str) -> str:
    """The backend `backend` means for an artifact of this format: `auto` is the one its format opens on
    ("" for a format no backend opens); any other name is itself."""
    return AUTO_BACKEND.get(artifact_format, "") if backend == "auto" else backend


def open_session(artifact: Artifact | str | Path, backend: str = "auto", device: str = "cpu",
                 options: Any = None, **values: Any) -> Session:
    """Pick the backend for the artifact's format (or the one asked for) and construct its Session.

    options: the backend's options dataclass (OnnxRuntimeOptions, TorchOptions, OpenVinoOptions) or a dict; keyword
    values are added to it. Either way an unknown key is a ConfigError naming the valid ones."""
    art = artifact if isinstance(artifact, Artifact) else Artifact.load(artifact)
    name = resolve_backend(backend, art.format)
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; valid: auto, {', '.join(BACKENDS)}")
    module, cls, formats = BACKENDS[name]
    if art.format not in formats:
        raise ConfigError(
            f"backend {name!r} cannot open a {art.format!r} artifact; it opens {', '.join(formats)}")
    try:
        backend_module = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        raise BackendError(f"the {name} backend is not part of this Kiln version; use --backend onnxruntime") from None
    return getattr(backend_module, cls)(art, device=device, options=options, **values)
