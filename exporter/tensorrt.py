"""to_tensorrt: ONNX artifact -> TensorRT engine artifact whose manifest says exactly what built it."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.stage import Progress, atomic_output, copy_sidecars, finish, quiet
from runtime.artifact import Artifact, TensorSpec, file_sha256
from runtime.errors import ArtifactError, ConfigError

PRECISIONS = ("fp32", "fp16", "int8", "best")
FLAVOUR_CHOICES = ("auto", "tensorrt", "rtx")
ENGINE_FILE = "model.engine"
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
# numerically fragile ops kept fp32 when a graph is converted to fp16 (TensorRT-RTX, strongly typed);
# Q/DQ stay as they are so their fp32 scales are untouched
FP16_KEEP_FP32 = ["LayerNormalization", "SkipLayerNormalization", "EmbedLayerNormalization", "Softmax",
                  "ReduceMean", "ReduceSum", "Pow", "Sqrt", "Erf", *sorted(QDQ_OPS)]
DEFAULT_BATCH = (1, 8, 32)
DEFAULT_SEQUENCE = (8, 128)
SEQUENCE_CAP = 512  # longest default profile: longer maxima cost builder workspace for inputs rarely seen

Profile = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


def parse_shapes(text: str) -> dict[str, Profile]:
    """'input_ids:1x16,8x128,32x512[;name:...]' -> {name: (min, opt, max)}."""
    out: dict[str, Profile] = {}
    for item in [s.strip() for s in text.replace(" ", ";").split(";") if s.strip()]:
        name, sep, dims = item.partition(":")
        parts = dims.split(",")
        try:
            shapes = tuple(tuple(int(d) for d in p.lower().split("x")) for p in parts)
        except ValueError:
            shapes = ()
        if not sep or not name or len(parts) != 3 or not shapes:
            raise ConfigError(f"--shapes wants NAME:MIN,OPT,MAX with dims joined by x "
                              f"(e.g. input_ids:1x16,8x128,32x512), got {item!r}")
        out[name] = shapes  # type: ignore[assignment]
    return out


@dataclass(frozen=True)
class BuildConfig:
    precision: str = "fp16"
    shapes: dict[str, Profile] | str = field(default_factory=dict)  # overrides of the default profile
    timing_cache: str | None = None  # file: loaded if present, written after the build
    workspace_mb: int | None = None  # builder scratch memory limit (None: TensorRT's default, the GPU's memory)
    sparsity: bool = False  # let the builder use 2:4 sparse kernels for weights already pruned 2:4
    trt: str = "auto"  # auto | tensorrt | rtx

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.trt not in FLAVOUR_CHOICES:
            raise ConfigError(f"--trt must be one of {', '.join(FLAVOUR_CHOICES)}, got {self.trt!r}")
        if self.workspace_mb is not None and (not isinstance(self.workspace_mb, int) or self.workspace_mb < 1):
            raise ConfigError(f"workspace must be a positive number of MB, got {self.workspace_mb!r}")
        shapes = parse_shapes(self.shapes) if isinstance(self.shapes, str) else dict(self.shapes)
        for name, prof in shapes.items():
            if len(prof) != 3 or len({len(p) for p in prof}) != 1:
                raise ConfigError(f"--shapes {name}: want min, opt and max of the same rank, got {prof}")
            lo, opt, hi = (tuple(int(d) for d in p) for p in prof)
            if min(lo) < 1:
                raise ConfigError(f"--shapes {name}: dims must be >= 1, got min {lo}")
            if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
                raise ConfigError(f"--shapes {name}: need min <= opt <= max on every axis, got {lo}, {opt}, {hi}")
            shapes[name] = (lo, opt, hi)
        object.__setattr__(self, "shapes", shapes)
        if self.timing_cache is not None:
            object.__setattr__(self, "timing_cache", str(self.timing_cache))


def resolve_profiles(artifact: Artifact, config: BuildConfig) -> dict[str, Profile]:
    """min/opt/max per input: defaults from the dynamic axes, then --shapes, axis by axis.

    An override binds its symbolic axes (batch, sequence) for every input that shares them, so
    input_ids and attention_mask can never get different sequence ranges.
    """
    shapes: dict[str, Profile] = config.shapes  # type: ignore[assignment]
    names = [s.name for s in artifact.inputs]
    unknown = sorted(set(shapes) - set(names))
    if unknown:
        raise ConfigError(f"--shapes names unknown input(s) {unknown}; the model's inputs are {names}")
    max_len = artifact.model_meta.max_length
    seq_max = min(max_len, SEQUENCE_CAP)
    axes: dict[str, tuple[int, int, int]] = {}
    for dim in {d for s in artifact.inputs for d in s.shape if isinstance(d, str)}:
        if dim == "batch":
            axes[dim] = DEFAULT_BATCH
        else:
            axes[dim] = (min(DEFAULT_SEQUENCE[0], seq_max), min(DEFAULT_SEQUENCE[1], seq_max), seq_max)
    bound: dict[str, tuple[tuple[int, int, int], str]] = {}
    for spec in artifact.inputs:
        if spec.name not in shapes:
            continue
        lo, opt, hi = shapes[spec.name]
        if len(lo) != len(spec.shape):
            raise ConfigError(f"--shapes {spec.name}: got rank {len(lo)}, the input has rank {len(spec.shape)} "
                              f"{tuple(spec.shape)}")
        for i, dim in enumerate(spec.shape):
            r = (lo[i], opt[i], hi[i])
            if isinstance(dim, int):
                if r != (dim, dim, dim):
                    raise ConfigError(f"--shapes {spec.name}: axis {i} is fixed at {dim}, got {r[0]},{r[1]},{r[2]}")
                continue
            if dim != "batch" and hi[i] > max_len:
                raise ConfigError(f"--shapes {spec.name}: {dim} max {hi[i]} exceeds the model's maximum length {max_len}")
            if dim in bound and bound[dim][0] != r:
                raise ConfigError(f"--shapes {spec.name}: {dim} {r} disagrees with {bound[dim][1]}'s {bound[dim][0]}; "
                                  "inputs sharing an axis share its range")
            bound[dim] = (r, spec.name)
            axes[dim] = r
    return {s.name: tuple(tuple(axes[d][k] if isinstance(d, str) else d for d in s.shape)  # type: ignore[misc]
                          for k in range(3)) for s in artifact.inputs}


def graph_ops(model: Any) -> dict[str, list[str]]:
    """op type -> node names (custom domains prefixed), for QDQ detection and unsupported-op reports."""
    ops: dict[str, list[str]] = {}
    for node in model.graph.node:
        key = f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
        ops.setdefault(key, []).append(node.name or f"<unnamed {node.op_type}>")
    return ops


def load_onnx(artifact: Artifact) -> Any:
    import onnx

    if artifact.format != "onnx":
        raise ConfigError(f"kiln build reads an 'onnx' artifact, got {artifact.format!r} ({artifact.path}); "
                          "make one with `kiln export SOURCE --task TASK -o DIR`")
    try:
        return onnx.load(str(artifact.model_file))
    except Exception as e:  # onnx raises DecodeError/OSError variants for a file that is not ONNX
        raise ArtifactError(f"{artifact.model_file} is not a readable ONNX model ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else 'cannot parse'})") from None


def check_precision(config: BuildConfig, ops: dict[str, list[str]], artifact: Artifact) -> bool:
    """Whether the graph carries explicit int8 quantization; refuse precisions that contradict it."""
    qdq = bool(QDQ_OPS & set(ops))
    if config.precision == "int8" and not qdq:
        raise ConfigError(
            f"--precision int8 needs explicit int8 quantization (QuantizeLinear/DequantizeLinear nodes) and "
            f"{artifact.model_file} has none; run `kiln quantize {artifact.path} --method nncf-int8 --calib-data DATA "
            "-o QDQ_DIR` first, then `kiln build QDQ_DIR --precision int8`")
    if qdq and config.precision in ("fp32", "fp16"):
        raise ConfigError(f"{artifact.model_file} is quantized (QuantizeLinear/DequantizeLinear nodes); TensorRT runs "
                          f"those layers in int8, so build it with --precision int8 or best, not {config.precision}")
    return qdq


def to_fp16(model: Any) -> Any:
    """fp32 graph -> fp16 compute with fp32 inputs/outputs and fragile ops (strongly typed flavours)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=True, op_block_list=FP16_KEEP_FP32)


def parse_failure(parser: Any, trt: Any, ops: dict[str, list[str]], display: str, path: Path) -> ArtifactError:
    """Every parser error (node, op type, reason) and every op type the parser does not support, in one line."""
    errors, named = [], set()
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        desc = e.desc().strip()
        if "Plugin not found" in desc:
            desc = "no TensorRT importer or plugin for this op"
        elif desc in ("false", ""):
            desc = e.code().name.lower().replace("_", " ")
        node = e.node_name() or (f"node {e.node()}" if e.node() >= 0 else "graph")
        errors.append(f"{node} ({e.node_operator() or '?'}): {desc}")
        named.add(e.node_operator())
    unsupported = sorted(op for op in ops if not parser.supports_operator(op.split("::")[-1]))
    missed = [f"{ops[op][0]} ({op}): unsupported op" for op in unsupported if op.split("::")[-1] not in named]
    summary = f"; unsupported op types: {', '.join(unsupported)}" if unsupported else ""
    if any(op.startswith("com.microsoft::") for op in unsupported):
        summary += " (onnxruntime's fused ops: build from an ONNX exported without --optimize)"
    return ArtifactError(f"{display} cannot parse {path}: {len(errors) + len(missed)} error(s): "
                         f"{'; '.join(errors + missed)}{summary}")


def read_timing_cache(path: str | None) -> tuple[bytes, str | None]:
    if path is None or not Path(path).is_file():
        return b"", None
    data = Path(path).read_bytes()
    return data, file_sha256(Path(path))


def write_timing_cache(path: str, data: bytes) -> str:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.kiln-tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)  # a concurrent build never reads half a cache
    return file_sha256(target)


class Heartbeat:
    """Periodic 'still building' lines for flavours without IProgressMonitor."""

    def __init__(self, report: Progress, every: float = 10.0) -> None:
        self.report, self.every, self.stop = report, every, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        started = time.perf_counter()
        while not self.stop.wait(self.every):
            self.report(f"builder running ({time.perf_counter() - started:.0f}s)")

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()


def to_tensorrt(artifact: Artifact, config: BuildConfig, out: str | Path, force: bool = False,
                progress: Progress = quiet) -> Artifact:
    """Parse the ONNX, build one optimization profile, serialize the engine; record what built it."""
    from exporter.trt_adapter import Adapter, choose_flavour

    model = load_onnx(artifact)
    profiles = resolve_profiles(artifact, config)
    ops = graph_ops(model)
    qdq = check_precision(config, ops, artifact)
    key, gpu = choose_flavour(config.trt)
    adapter = Adapter(key, gpu)
    trt, display = adapter.trt, f"{adapter.flavour.display} {adapter.version}"
    started = time.perf_counter()
    with atomic_output(Path(out), force) as staged:
        graph_fp16 = adapter.strongly_typed and config.precision in ("fp16", "best")
        if graph_fp16:
            progress("converting the graph to fp16 (strongly typed network; LayerNorm/Softmax stay fp32)")
            model = to_fp16(model)
        builder = trt.Builder(adapter.logger)
        network = builder.create_network(adapter.network_flags())
        parser = trt.OnnxParser(network, adapter.logger)
        progress(f"parsing {artifact.model_file.name} with {display}")
        if not parser.parse(model.SerializeToString(), str(artifact.model_file)):
            raise parse_failure(parser, trt, ops, display, artifact.model_file)
        del model
        bcfg = builder.create_builder_config()
        for flag in adapter.precision_flags(config.precision, qdq):
            adapter.set_flag(bcfg, flag)
        if config.sparsity:
            adapter.set_flag(bcfg, "SPARSE_WEIGHTS")
        if config.workspace_mb:
            bcfg.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_mb << 20)
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profiles.items():
            profile.set_shape(name, lo, opt, hi)
        bcfg.add_optimization_profile(profile)
        cache_data, cache_before = read_timing_cache(config.timing_cache)
        if config.timing_cache:
            try:
                adapter.load_timing_cache(bcfg, cache_data)
            except Exception as e:
                raise ConfigError(f"--timing-cache {config.timing_cache} is not a {display} timing cache ({e})") from None
        monitor = adapter.progress_monitor(progress)
        if monitor is not None:
            bcfg.progress_monitor = monitor
        progress(f"building a {config.precision} engine for {', '.join(f'{n} {p[0]}..{p[2]}' for n, p in profiles.items())}")
        build_started = time.perf_counter()
        with Heartbeat(progress) if monitor is None else contextlib.nullcontext():
            serialized = builder.build_serialized_network(network, bcfg)
        build_seconds = round(time.perf_counter() - build_started, 3)
        if serialized is None:
            said = adapter.logger.errors[-1][-300:] if adapter.logger.errors else "no reason logged"
            raise ArtifactError(f"{display} could not build an engine from {artifact.model_file} "
                                f"(precision {config.precision}): {said}")
        engine_bytes = memoryview(serialized).nbytes
        (staged / ENGINE_FILE).write_bytes(memoryview(serialized))
        cache_after = write_timing_cache(config.timing_cache, adapter.save_timing_cache(bcfg)) if config.timing_cache else None
        copy_sidecars(artifact, staged)
        for leftover in ("model.fp32.onnx",):  # a quantize stage's scratch file is not a sidecar of an engine
            (staged / leftover).unlink(missing_ok=True)
        record = {
            "flavour": key, "module": adapter.flavour.module, "version": adapter.version,
            "target": adapter.target(bcfg),
            "built_on_gpu": f"{gpu.name} (SM {gpu.sm})" if gpu else None,
            "profiles": [{n: {"min": list(p[0]), "opt": list(p[1]), "max": list(p[2])} for n, p in profiles.items()}],
            "precision": config.precision,
            "precisions": precisions_of(config.precision, qdq),
            "strongly_typed": adapter.strongly_typed, "graph_fp16": graph_fp16, "qdq": qdq,
            "builder_flags": adapter.flags_set(bcfg),
            "workspace_mb": config.workspace_mb,
            "source_onnx_sha256": file_sha256(artifact.model_file),
            "source_path": str(Path(artifact.path).absolute()),
            "timing_cache": None if not config.timing_cache else {
                "path": str(Path(config.timing_cache).absolute()), "sha256_before": cache_before,
                "sha256_after": cache_after, "effective": adapter.timing_cache_effective},
            "build_seconds": build_seconds,
        }
        meta = {**artifact.meta, "model_file": ENGINE_FILE, "precision": config.precision, "tensorrt": record}
        inputs = tuple(dataclasses.replace(s, profile=profiles[s.name]) for s in artifact.inputs)
        engine_art = Artifact(staged, "tensorrt", artifact.task, inputs, artifact.outputs, artifact.lineage, meta)
        metrics = {"build_seconds": build_seconds, "engine_mb": round(engine_bytes / 1e6, 2)}
        progress(f"engine built in {build_seconds:.1f}s ({metrics['engine_mb']} MB)")
        return finish(staged, Path(out), engine_art, artifact, "to_tensorrt",
                      dataclasses.asdict(config) | {"flavour": key}, started, metrics)


def precisions_of(precision: str, qdq: bool) -> list[str]:
    """Kernel precisions the engine may contain."""
    base = {"fp32": ["fp32"], "fp16": ["fp16", "fp32"], "int8": ["int8", "fp32"], "best": ["fp16", "fp32"]}[precision]
    return (["int8"] if qdq and "int8" not in base else []) + base

