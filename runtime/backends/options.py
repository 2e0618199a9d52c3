"""Each backend's options as a small frozen dataclass, validated once; an unknown key is an error.

(onnxruntime's own string-keyed options are the counter-example: a typo is silently ignored.)
Imports nothing heavy: the CLI and ServeConfig validate against these before any backend loads.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Mapping, Sequence

from runtime.errors import ConfigError

TORCH_DTYPES = ("float32", "float16", "bfloat16")
ORT_PROVIDERS = (None, "tensorrt")  # None: the device's own (CPU, or CUDA on cuda); "tensorrt": the TensorRT EP


def _whole(name: str, value: Any, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")


def _flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}")


@dataclass(frozen=True)
class OnnxRuntimeOptions:
    threads: int = 0  # intra-op threads; 0: onnxruntime's choice
    # False: idle worker threads sleep instead of spinning, leaving the CPU to a server's Python threads
    spinning: bool = True
    provider: str | None = None  # "tensorrt": the TensorRT execution provider (device cuda); None: the device's own
    # TensorRT execution provider only: where built engines are cached (reused across sessions), and precisions
    trt_cache_dir: str = ""
    trt_fp16: bool = False
    trt_int8: bool = False  # needs a QDQ model (kiln quantize --method nncf-int8): no calibration table is made

    def __post_init__(self) -> None:
        _whole("threads", self.threads, 0)
        _flag("spinning", self.spinning)
        if self.provider not in ORT_PROVIDERS:
            raise ConfigError(f"provider must be 'tensorrt' (on cuda) or unset, got {self.provider!r}")
        _flag("trt_fp16", self.trt_fp16)
        _flag("trt_int8", self.trt_int8)
        if not isinstance(self.trt_cache_dir, str):
            raise ConfigError(f"trt_cache_dir must be a folder path (str), got {type(self.trt_cache_dir).__name__}")
        if (self.trt_cache_dir or self.trt_fp16 or self.trt_int8) and self.provider != "tensorrt":
            raise ConfigError("trt_cache_dir, trt_fp16 and trt_int8 are options of onnxruntime's TensorRT execution "
                              "provider; add provider='tensorrt' (with device='cuda')")

    def provider_list(self, device: str) -> list[Any]:
        """onnxruntime's providers argument: the chosen provider first (with its options), then its fallbacks
        (which Kiln refuses to run on silently: see OnnxRuntimeSession)."""
        if self.provider != "tensorrt":
            return ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        trt: dict[str, Any] = {"trt_fp16_enable": self.trt_fp16, "trt_int8_enable": self.trt_int8}
        if self.trt_int8:
            trt["trt_int8_use_native_calibration_table"] = False  # explicit QDQ scales, no calibration table
        if self.trt_cache_dir:
            trt |= {"trt_engine_cache_enable": True, "trt_engine_cache_path": self.trt_cache_dir,
                    "trt_timing_cache_enable": True, "trt_timing_cache_path": self.trt_cache_dir}
        return [("TensorrtExecutionProvider", trt), "CUDAExecutionProvider", "CPUExecutionProvider"]


@dataclass(frozen=True)
class TorchOptions:
    dtype: str = "float32"  # weights and compute precision
    threads: int = 0  # torch.set_num_threads; 0: torch's default
    # on cuda: capture one CUDA graph per input shape into pre-allocated buffers, then replay (ignored on cpu)
    cuda_graphs: bool = False
    max_graphs: int = 32  # shapes beyond this many run eagerly
    model: Any = None  # an already-loaded nn.Module to wrap (the exporter's in-memory reference)
    trust_pickle: bool = False  # allow a checkpoint whose only weights are a pickled pytorch_model.bin

    def __post_init__(self) -> None:
        if self.dtype not in TORCH_DTYPES:
            raise ConfigError(f"unknown torch dtype {self.dtype!r}; valid: {', '.join(TORCH_DTYPES)}")
        _whole("threads", self.threads, 0)
        _flag("cuda_graphs", self.cuda_graphs)
        _whole("max_graphs", self.max_graphs, 1)
        _flag("trust_pickle", self.trust_pickle)


# OpenVINO's inference precision: what its CPU plugin computes in. float16 needs AVX512-FP16 or AMX-FP16 (and
# is rarely faster on CPU); whether this CPU has it is checked when the session opens (the plugin's
# OPTIMIZATION_CAPABILITIES), never by silently running something else.
OPENVINO_DTYPES = ("float32", "bfloat16", "float16")
OPENVINO_HINTS = ("latency", "throughput")


@dataclass(frozen=True)
class OpenVinoOptions:
    threads: int = 0  # INFERENCE_NUM_THREADS; 0: OpenVINO's choice (every physical core)
    # NUM_STREAMS; 0: what the hint implies. One synchronous caller uses one stream, so more streams only
    # help when several callers run at once (kiln serve with several workers)
    streams: int = 0
    hint: str = "latency"  # PERFORMANCE_HINT: latency (one stream on all cores) or throughput (many streams)
    # INFERENCE_PRECISION_HINT. Set explicitly: on CPUs with AMX OpenVINO's own default is bfloat16, so an
    # unset hint would silently compute in another precision on another machine
    dtype: str = "float32"
    # Text feeds of at most this many rows run on a copy of the model compiled for their exact shape (0: never;
    # models without a sequence axis, images, always run on the dynamic-shape model: runtime/backends/ov.py).
    # Measured here (2-core AMD EPYC, NNCF int8 MiniLM, real sentences alone): 0.5-1.2 ms of a 3-4 ms call is
    # the dynamic-shape machinery, which a static shape removes; batches gain little from it.
    static_batch: int = 1
    # text: sequence lengths are padded up (masked, the family's way) to a multiple of this before choosing a
    # static copy, so a few copies serve most lengths (8 copies at 8: every sentence up to 64 tokens). 8 was
    # 3-10% faster at batch 1 than 16 here (less padding), in two interleaved runs
    static_multiple: int = 8
    # static copies made, for the first shapes seen (later shapes run on the dynamic-shape model; a copy is
    # never replaced, so no request pays for another's compile twice); each costs about the compiled model's
    # memory (85-110 MB for the int8 MiniLM, measured here)
    static_cache: int = 8

    def __post_init__(self) -> None:
        _whole("threads", self.threads, 0)
        _whole("streams", self.streams, 0)
        _whole("static_batch", self.static_batch, 0)
        _whole("static_multiple", self.static_multiple, 1)
        _whole("static_cache", self.static_cache, 1)
        if self.hint not in OPENVINO_HINTS:
            raise ConfigError(f"unknown openvino hint {self.hint!r}; valid: {', '.join(OPENVINO_HINTS)}")
        if self.dtype not in OPENVINO_DTYPES:
            raise ConfigError(f"unknown openvino dtype {self.dtype!r}; valid: {', '.join(OPENVINO_DTYPES)}")

    def compile_config(self) -> dict[str, str]:
        """The CPU plugin's properties, by their string names (stable across OpenVINO releases)."""
        config = {"PERFORMANCE_HINT": self.hint.upper(),
                  "INFERENCE_PRECISION_HINT": {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}[self.dtype]}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = str(self.threads)
        if self.streams:
            config["NUM_STREAMS"] = str(self.streams)
        return config


OPTIONS: dict[str, type] = {"onnxruntime": OnnxRuntimeOptions, "torch": TorchOptions, "openvino": OpenVinoOptions}
# backends whose options have a `dtype` (the CLI's --dtype goes to these)
DTYPE_BACKENDS = ("torch", "openvino")


def valid_keys(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


def options_for(backend: str, options: Any = None, **values: Any) -> Any:
    """`backend`'s options from its dataclass, a dict, keyword values, or a mix (keywords win);
    an unknown key is a ConfigError naming the valid ones (and the backend that takes it, if one does)."""
    cls = OPTIONS.get(backend)
    if cls is None:
        if options or values:
            given = sorted({**(options or {}), **values}) if options is None or isinstance(options, Mapping) \
                else [type(options).__name__]
            raise ConfigError(f"the {backend} backend takes no options, got {given}")
        return None
    if isinstance(options, cls):
        base, extra = options, values
    elif options is None or isinstance(options, Mapping):
        base, extra = cls(), {**(options or {}), **values}
    else:
        raise ConfigError(f"options for the {backend} backend must be {cls.__name__} or a dict, "
                          f"got {type(options).__name__}")
    unknown = sorted(set(extra) - set(valid_keys(cls)))
    if unknown:
        elsewhere = [f"{k} is an option of the {name} backend" for k in unknown
                     for name, other in OPTIONS.items() if other is not cls and k in valid_keys(other)]
        raise ConfigError(f"unknown {backend} option(s) {', '.join(unknown)}; valid: {', '.join(valid_keys(cls))}"
                          + (f" ({'; '.join(elsewhere)})" if elsewhere else ""))
    return replace(base, **extra) if extra else base


def torch_only(backends: Sequence[str], device: str, dtype: str | None = None, cuda_graphs: bool = False) -> dict[str, Any]:
    """The CLI's --dtype / --cuda-graphs (and kiln serve's): checked once, the same way for every command.
    Returns the torch options that were given. --dtype is also the openvino backend's inference precision
    (see dtype_options)."""
    given: dict[str, Any] = {k: v for k, v in (("dtype", dtype), ("cuda_graphs", cuda_graphs)) if v}
    if cuda_graphs and "torch" not in backends:
        raise ConfigError("dtype and cuda_graphs are options of the torch backend; add --backend torch")
    if dtype and not set(backends) & set(DTYPE_BACKENDS):
        raise ConfigError("dtype and cuda_graphs are options of the torch backend; add --backend torch "
                          "(dtype is also the openvino backend's inference precision: --backend openvino)")
    if cuda_graphs and device != "cuda":
        raise ConfigError("cuda_graphs needs --device cuda")
    if "torch" in backends:
        TorchOptions(**given)  # validates the values
    if dtype and "openvino" in backends:
        OpenVinoOptions(dtype=dtype)
    return given


def session_dtype(backend: str, device: str, dtype: str | None, artifact_format: str = "") -> dict[str, Any]:
    """A one-backend command's --dtype (kiln predict, kiln eval), checked like kiln bench's: the session options
    for `backend` ({} when no dtype was given). `auto` is the backend the artifact's format opens on (an
    OpenVINO IR: openvino, an hf folder: torch), so --dtype needs no --backend there."""
    if artifact_format:
        from runtime.session import resolve_backend

        backend = resolve_backend(backend, artifact_format)
    return dtype_options(backend, torch_only([backend], device, dtype))


def dtype_options(backend: str, torch_options: dict[str, Any]) -> dict[str, Any]:
    """The part of torch_only's result that `backend` takes (openvino: only dtype)."""
    if backend == "torch":
        return torch_options
    if backend == "openvino":
        return {k: v for k, v in torch_options.items() if k == "dtype"}
    return {}
