"""to_triton: a Triton Inference Server model repository for Kiln artifacts (scale-out serving).

Per artifact NAME the repository holds
    NAME_model/        the model (onnxruntime_onnx for ONNX artifacts, tensorrt_plan for TensorRT engines)
    NAME_preprocess/   Python backend: raw text -> token ids with the artifact's tokenizer.json
    NAME_postprocess/  Python backend: logits -> label + softmax scores (label names in labels.txt)
    NAME/              the ensemble clients call: TEXT in, LABEL and SCORES out, as with `kiln serve`
(text-classification artifacts get all four; other tasks get NAME_model alone). Every config.pbtxt is
built as Triton's own ModelConfig protobuf (shipped in tritonclient) and printed with text_format, so
it is valid by construction.

Defaults and why (benchmarks/results/, 2-core CPU, onnxruntime):
- max_batch_size 32: kiln serve's default; batch-scaling.md measures up to 32 and throughput still rises.
- max_queue_delay_microseconds 0: serve.md, --max-delay-ms 5 gained nothing at 32 clients (416-429 vs
  426 rps) and cost a lone client 3.2 -> 8.7 ms p50: under load the queue fills a batch by itself.
- preferred_batch_sizes none: Triton then forms the largest batch the queue allows, which is what
  batch-scaling.md found fastest.
- bounded queue of 256 with a 10 s timeout, rejected beyond: kiln serve's --max-queue and --timeout, so
  overload is a fast error, never an unbounded backlog.
- sequence_length: by default the artifact's max length when that is at most 128 tokens (every request
  padded to it, so any requests can share a batch), else 0 (each request padded to a multiple of 8 tokens,
  so only requests of one length bucket batch). Triton's dynamic batcher only joins requests of equal shape.
  Measured (benchmarks/results/triton.md, the real core with the stand-in onnxruntime backend, fine-tuned
  int8 MiniLM at max length 64, 32 clients): padding to a multiple of 8 formed batches of 1.3 and served
  75 requests/s; padding to 64 formed batches of 14.6 and served 166/s. Padding to 512 costs a CPU far more
  than the batching gains (batch-scaling.md: a batch of 32 padded to its longest, 273 sentences/s, was
  below batch 1's 387), hence the 128-token limit; on a GPU, where padding is cheap, pass
  --sequence-length 128 or more.
- 1 instance, KIND_CPU: one instance with the cores to itself (batch-scaling.md: 2 threads beat 1);
  more instances multiply memory and contend for the same cores. KIND_GPU for TensorRT engines.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from exporter.stage import atomic_output, quiet
from runtime.artifact import Artifact, TensorSpec
from runtime.errors import ArtifactError, BackendError, ConfigError

# Triton uses the model name as a directory, a URL segment (/v2/models/NAME) and a metric label; it refuses
# names with '/' and skips hidden directories. This is the conservative set every one of those accepts.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
KINDS = ("KIND_CPU", "KIND_GPU")
# Artifact formats Triton can serve, and the platform, backend and file name it expects for each.
PLATFORMS = {"onnx": ("onnxruntime_onnx", "onnxruntime", "model.onnx"),
             "tensorrt": ("tensorrt_plan", "tensorrt", "model.plan")}
DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "float64": "TYPE_FP64",
          "int64": "TYPE_INT64", "int32": "TYPE_INT32", "int16": "TYPE_INT16", "int8": "TYPE_INT8",
          "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL"}
PAD_MULTIPLE = 8  # as runtime.pipeline: few distinct shapes, little padding
TEXT, LABEL, SCORES = "TEXT", "LABEL", "SCORES"  # the ensemble's tensors: what a client sends and reads


@dataclass(frozen=True)
class TritonConfig:
    """Options for every model of the repository; the module docstring says why each default."""

    max_batch_size: int = 32
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_microseconds: int = 0
    max_queue_size: int = 256
    queue_timeout_microseconds: int = 10_000_000
    instance_count: int = 1
    kind: str = "KIND_CPU"
    sequence_length: int | None = None  # None: auto_sequence_length; 0: a multiple of 8 tokens; N: pad to N
    ort_intra_op_threads: int = 0  # onnxruntime backend; 0: its default (all cores)
    ort_graph_optimization: bool = True  # onnxruntime backend: graph optimizations on (level 1) or off (-1)
    names: tuple[str, ...] = field(default=())  # one per artifact; default: each artifact directory's name

    def __post_init__(self) -> None:
        object.__setattr__(self, "preferred_batch_sizes", tuple(self.preferred_batch_sizes))
        object.__setattr__(self, "names", tuple(self.names))
        if not 1 <= self.max_batch_size <= 4096:
            raise ConfigError(f"max_batch_size must be in 1..4096, got {self.max_batch_size}")
        bad = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            raise ConfigError(f"preferred batch sizes must be in 1..max_batch_size ({self.max_batch_size}), "
                              f"got {', '.join(map(str, bad))}")
        for name in ("max_queue_delay_microseconds", "ort_intra_op_threads", "sequence_length"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_queue_size < 1 or self.queue_timeout_microseconds < 1:
            raise ConfigError("the queue must be bounded: max_queue_size and queue_timeout_microseconds must be "
                              f">= 1, got {self.max_queue_size} and {self.queue_timeout_microseconds}")
        if self.instance_count < 1:
            raise ConfigError(f"instance_count must be >= 1, got {self.instance_count}")
        if self.kind not in KINDS:
            raise ConfigError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for name in self.names:
            check_model_name(name)
        if len(set(self.names)) != len(self.names):
            raise ConfigError(f"model names must differ, got {', '.join(self.names)}")


def check_model_name(name: str) -> str:
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
        raise ConfigError(f"model name {name!r} would be rejected or mangled by Triton; use 1-64 letters, digits, "
                          "'_', '-' or '.', starting with a letter or digit")
    return name


def model_config_pb2() -> Any:
    try:
        from tritonclient.grpc import model_config_pb2 as pb
    except ImportError:
        raise BackendError("writing a Triton repository needs Triton's ModelConfig protobuf from tritonclient; "
                           "pip install 'modelkiln[triton]'") from None
    return pb


def spec_dims(spec: TensorSpec, batched: bool) -> list[int]:
    """Triton dims: the batch dimension is left out (max_batch_size covers it); symbolic dims are -1."""
    shape = spec.shape[1:] if batched else spec.shape
    return [d if isinstance(d, int) else -1 for d in shape]


def tensor(pb: Any, cls: Any, name: str, dtype: str, dims: Sequence[int], **extra: Any) -> Any:
    if dtype not in DTYPES and dtype != "string":
        raise ArtifactError(f"tensor {name!r} has dtype {dtype!r}, which Triton has no type for; valid: "
                            f"{', '.join(DTYPES)}")
    return cls(name=name, data_type=pb.DataType.Value(DTYPES.get(dtype, "TYPE_STRING")), dims=list(dims), **extra)


def batching(pb: Any, config: TritonConfig, model: bool) -> Any:
    """dynamic_batching with a bounded queue; preferred sizes and delay apply to the model itself."""
    policy = pb.ModelQueuePolicy(timeout_action=pb.ModelQueuePolicy.REJECT,
                                 default_timeout_microseconds=config.queue_timeout_microseconds,
                                 max_queue_size=config.max_queue_size)
    return pb.ModelDynamicBatching(
        preferred_batch_size=list(config.preferred_batch_sizes) if model else [],
        max_queue_delay_microseconds=config.max_queue_delay_microseconds if model else 0,
        default_queue_policy=policy)


def model_config(art: Artifact, name: str, config: TritonConfig) -> Any:
    """The ModelConfig of the model itself, its specs taken from the artifact."""
    pb = model_config_pb2()
    platform, backend, filename = PLATFORMS[art.format]
    first = [s.shape[0] for s in (*art.inputs, *art.outputs)]
    if any(isinstance(d, int) for d in first):
        raise ArtifactError(f"{art.path}: every input and output needs a dynamic first (batch) dimension for "
                            f"Triton's batching; got first dims {first}")
    for spec in art.inputs:  # a TensorRT engine refuses batches beyond its optimization profile
        if spec.profile and spec.profile[2] and spec.profile[2][0] < config.max_batch_size:
            raise ConfigError(f"max_batch_size {config.max_batch_size} exceeds {art.path}'s profile for input "
                              f"{spec.name!r} (batch up to {spec.profile[2][0]}); pass --max-batch-size "
                              f"{spec.profile[2][0]} or rebuild the engine")
    kind = "KIND_GPU" if art.format == "tensorrt" else config.kind  # an engine only runs on the GPU
    mc = pb.ModelConfig(
        name=name, platform=platform, backend=backend, max_batch_size=config.max_batch_size,
        default_model_filename=filename,
        input=[tensor(pb, pb.ModelInput, s.name, s.dtype, spec_dims(s, True)) for s in art.inputs],
        output=[tensor(pb, pb.ModelOutput, s.name, s.dtype, spec_dims(s, True)) for s in art.outputs],
        dynamic_batching=batching(pb, config, model=True),
        instance_group=[pb.ModelInstanceGroup(count=config.instance_count,
                                              kind=pb.ModelInstanceGroup.Kind.Value(kind))])
    if art.format == "onnx":
        mc.optimization.graph.level = 1 if config.ort_graph_optimization else -1
        if config.ort_intra_op_threads:
            mc.parameters["intra_op_thread_count"].string_value = str(config.ort_intra_op_threads)
    return mc


def python_config(name: str, inputs: list[Any], outputs: list[Any], config: TritonConfig) -> Any:
    """A Python-backend model on the CPU (tokenizing and softmax need no GPU)."""
    pb = model_config_pb2()
    return pb.ModelConfig(name=name, backend="python", max_batch_size=config.max_batch_size, input=inputs,
                          output=outputs, dynamic_batching=batching(pb, config, model=False),
                          instance_group=[pb.ModelInstanceGroup(count=1, kind=pb.ModelInstanceGroup.KIND_CPU)])


def text_models(art: Artifact, name: str, config: TritonConfig) -> dict[str, Any]:
    """{"preprocess", "postprocess", "ensemble"}: the models joining raw text to NAME_model, for a text classifier."""
    pb = model_config_pb2()
    from runtime.pipeline import pad_rows

    produced = set(pad_rows([([0], [0])], 1))  # what the tokenizer model can feed (the runtime's own text feed)
    unknown = [s.name for s in art.inputs if s.name not in produced]
    if unknown:
        raise ArtifactError(f"{art.path}: the text preprocessing model feeds {', '.join(sorted(produced))}; this model "
                            f"also needs {', '.join(unknown)}")
    logits = art.outputs[0]
    num_labels = logits.shape[-1]
    if not isinstance(num_labels, int):
        raise ArtifactError(f"{art.path}: output {logits.name!r} has a symbolic label dimension {num_labels!r}")
    text = tensor(pb, pb.ModelInput, TEXT, "string", [1])
    pre = python_config(f"{name}_preprocess", [text],
                        [tensor(pb, pb.ModelOutput, s.name, s.dtype, [-1]) for s in art.inputs], config)
    post = python_config(
        f"{name}_postprocess", [tensor(pb, pb.ModelInput, logits.name, logits.dtype, [num_labels])],
        [tensor(pb, pb.ModelOutput, LABEL, "string", [1]),
         tensor(pb, pb.ModelOutput, SCORES, "float32", [num_labels], label_filename="labels.txt")], config)
    Step = pb.ModelEnsembling.Step
    steps = [Step(model_name=f"{name}_preprocess", model_version=-1, input_map={TEXT: TEXT},
                  output_map={s.name: f"_{s.name}" for s in art.inputs}),
             Step(model_name=f"{name}_model", model_version=-1, input_map={s.name: f"_{s.name}" for s in art.inputs},
                  output_map={logits.name: f"_{logits.name}"}),
             Step(model_name=f"{name}_postprocess", model_version=-1, input_map={logits.name: f"_{logits.name}"},
                  output_map={LABEL: LABEL, SCORES: SCORES})]
    outputs = [tensor(pb, pb.ModelOutput, LABEL, "string", [1]),
               tensor(pb, pb.ModelOutput, SCORES, "float32", [num_labels])]
    ensemble = pb.ModelConfig(name=name, platform="ensemble", max_batch_size=config.max_batch_size,
                              input=[text], output=outputs, ensemble_scheduling=pb.ModelEnsembling(step=steps))
    return {"preprocess": pre, "postprocess": post, "ensemble": ensemble}


def config_text(mc: Any) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(mc)


def parse_config(text: str) -> Any:
    """config.pbtxt text -> ModelConfig (raises text_format.ParseError on anything Triton would refuse to parse)."""
    from google.protobuf import text_format

    return text_format.Parse(text, model_config_pb2().ModelConfig())


def checked_artifact(path: str | Path) -> Artifact:
    art = path if isinstance(path, Artifact) else Artifact.load(path)
    if art.format not in PLATFORMS:
        raise ArtifactError(f"{art.path}: Triton cannot serve a {art.format!r} artifact; valid formats: "
                            f"{', '.join(PLATFORMS)} (make one with `kiln export` or `kiln build`)")
    if not art.model_file.is_file():
        raise ArtifactError(f"{art.path}: model file {art.meta.get('model_file', '')!r} is missing")
    return art


def write_model(folder: Path, mc: Any, files: dict[str, Path], extra: dict[str, str] | None = None) -> None:
    """NAME/config.pbtxt and NAME/1/<files>: Triton's versioned layout (version 1)."""
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(config_text(mc))
    for dst, src in files.items():
        shutil.copy2(src, folder / "1" / dst)
    for dst, text in (extra or {}).items():
        (folder / dst).write_text(text)


def to_triton(artifacts: Sequence[Artifact | str | Path], config: TritonConfig, out: str | Path, force: bool = False,
              progress: Callable[[str], None] = quiet) -> dict[str, Any]:
    """Write a model repository at `out` (atomically: nothing half-written is left); return a summary."""
    started = time.perf_counter()
    if not artifacts:
        raise ConfigError("give at least one artifact")
    arts = [checked_artifact(a) for a in artifacts]
    if config.names and len(config.names) != len(arts):
        raise ConfigError(f"give one name per artifact: {len(arts)} artifact(s), {len(config.names)} name(s)")
    names = list(config.names) or [check_model_name(a.path.absolute().name) for a in arts]
    if len(set(names)) != len(names):
        raise ConfigError(f"two artifacts would get the same model name ({', '.join(names)}); give --name per artifact")
    model_config_pb2()  # a missing tritonclient fails before anything is written
    models: dict[str, str] = {}
    with atomic_output(out, force) as staged:
        for art, name in zip(arts, names):
            progress(f"writing {name} ({art.format}, {art.task}) from {art.path}")
            mc = model_config(art, f"{name}_model", config)
            _, _, filename = PLATFORMS[art.format]
            write_model(staged / f"{name}_model", mc, {filename: art.model_file, **external_data(art)})
            models[f"{name}_model"] = art.format
            if art.task != "text-classification":
                continue
            for role, cfg in text_models(art, name, config).items():
                write_text_model(staged, role, cfg, art, config)
                models[cfg.name] = cfg.backend or cfg.platform
        summary = {"repository": str(Path(out).absolute()), "models": models,
                   "endpoints": [n for n in names if n in models], "config": asdict(config),
                   "seconds": round(time.perf_counter() - started, 3)}
        (staged / "kiln-repository.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def external_data(art: Artifact) -> dict[str, Path]:
    """ONNX external-data files beside the model (large models keep weights outside the .onnx file)."""
    return {f.name: f for f in art.path.iterdir() if f.is_file() and f.name.endswith((".onnx.data", ".onnx_data"))}


AUTO_FIXED_MAX = 128  # pad every request to the max length only up to this many tokens (module docstring)


def auto_sequence_length(art: Artifact, config: TritonConfig) -> int:
    """The fixed length every request of this model is padded to (0: a multiple of PAD_MULTIPLE)."""
    max_length = int(art.meta.get("max_length", 512))
    if config.sequence_length is not None:
        if config.sequence_length > max_length:  # the model's position embeddings end there: every request would fail
            raise ConfigError(f"--sequence-length {config.sequence_length} exceeds {art.path.name}'s maximum length "
                              f"{max_length}; give 1..{max_length}, or 0 to pad each request to a multiple of 8")
        return config.sequence_length
    return max_length if max_length <= AUTO_FIXED_MAX else 0


def write_text_model(staged: Path, role: str, mc: Any, art: Artifact, config: TritonConfig) -> None:
    here = Path(__file__).parent
    if role == "ensemble":
        write_model(staged / mc.name, mc, {})
    elif role == "preprocess":
        # the model's own input dtypes: a TensorRT engine may take int32 ids where ONNX takes int64
        settings = {"inputs": {s.name: s.dtype for s in art.inputs}, "max_length": int(art.meta.get("max_length", 512)),
                    "pad_token_id": int(art.meta.get("pad_token_id", 0)), "pad_multiple": PAD_MULTIPLE,
                    "sequence_length": auto_sequence_length(art, config)}
        tokenizer = art.path / art.meta.get("tokenizer", "tokenizer.json")
        if not tokenizer.is_file() or not tokenizer.resolve().is_relative_to(art.path.resolve()):
            raise ArtifactError(f"{art.path}: no tokenizer ({tokenizer.name}) inside the artifact; re-export it")
        write_model(staged / mc.name, mc, {"model.py": here / "triton_preprocess.py", "tokenizer.json": tokenizer})
        (staged / mc.name / "1" / "kiln-preprocess.json").write_text(json.dumps(settings) + "\n")
    else:
        labels = art.labels
        num = mc.output[1].dims[0]
        bad = [v for v in labels.values() if not isinstance(v, str) or not v.strip() or "\n" in v or "\r" in v]
        if bad:  # labels.txt holds one name per line
            raise ArtifactError(f"{art.path}: label names must be non-empty single lines, got {bad!r}")
        write_model(staged / mc.name, mc, {"model.py": here / "triton_postprocess.py"},
                    {"labels.txt": "".join(f"{labels.get(i, str(i))}\n" for i in range(num))})
