"""quantize: dynamic int8, static int8 (QDQ, calibrated) and fp16, on the fused graph, validated,
optionally guarded by task accuracy (sensitive nodes fall back to fp32 until the drop fits the budget)."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from calibration.datasets import LabelledTexts
from exporter.compare import compare, tolerance_for
from exporter.onnx_export import fuse_graph
from exporter.qdq_plan import PLANS, QdqPlan, plan_static, shapes_from_quantized
from exporter.stage import Progress, atomic_output, copy_sidecars, finish, quiet, temp_files_in
from runtime.artifact import Artifact
from runtime.errors import ConfigError, InputError, ValidationError
from runtime.session import open_session, validate_feed

METHODS = ("dynamic-int8", "static-int8", "fp16", "nncf-int8")  # nncf-int8: exporter/quantize_nncf.py
CALIBRATORS = ("minmax", "percentile", "entropy")
QUANT_TYPES = ("int8", "uint8")
# ops whose presence means a graph was already quantized (or converted to fp16 by Kiln)
QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "QAttention",
                 "QLinearMatMul", "DynamicQuantizeMatMul", "QGemm", "QEmbedLayerNormalization"}
# numerically fragile ops that stay fp32 in an fp16 model (keep_io_types keeps inputs/outputs fp32 too)
FP16_KEEP_FP32 = ["LayerNormalization", "SkipLayerNormalization", "EmbedLayerNormalization", "Softmax",
                  "ReduceMean", "ReduceSum", "Pow", "Sqrt", "Erf"]
CALIBRATION_CACHE = "calibration_cache.json"
# QDQ around these; fused contrib ops (Attention) stay float in QDQ graphs. Conv/Gemm: vision models
STATIC_OPS = ("MatMul", "Gather", "Conv", "Gemm")

# The methods that use each `kiln quantize` setting (by parameter name; settings every method uses are not
# listed). A setting given for a method that ignores it is refused: silently ignored, it reads as applied.
# fp16 takes the op-type and node settings because its --report and accuracy guard pick nodes by them.
_ORT_INT8 = ("dynamic-int8", "static-int8")
_ORT = (*_ORT_INT8, "fp16")
_STATIC, _NNCF = ("static-int8",), ("nncf-int8",)
USED_BY: dict[str, tuple[str, ...]] = {
    "optimize": _ORT, "per_channel": _ORT_INT8, "reduce_range": _ORT_INT8, "weight_type": _ORT_INT8,
    "op_types": _ORT, "exclude_op_types": _ORT, "exclude_nodes": _ORT, "report": _ORT,
    "calib_data": ("static-int8", "nncf-int8"), "calib_samples": ("static-int8", "nncf-int8"),
    "calib_cache": _STATIC, "calibrator": _STATIC, "percentile": _STATIC, "activation_type": _STATIC,
    "target": _NNCF, "preset": _NNCF, "subset_size": _NNCF, "calib_pad_length": _NNCF, "smooth_quant_alpha": _NNCF,
}


def check_options_for(method: str, given: dict[str, str], calibrator: str) -> None:
    """Refuse a setting `method` would ignore. `given`: the settings the user set, name -> the spelling to
    name it by (e.g. {"per_channel": "--per-tensor"}); defaults are not given."""
    for name, spelling in given.items():
        users = USED_BY.get(name, (method,))
        if method not in users:
            raise ConfigError(f"{spelling} is not used by --method {method}; it is an option of --method "
                              f"{' or '.join(users)}")
    if "percentile" in given and calibrator != "percentile":
        raise ConfigError(f"{given['percentile']} is used by --calibrator percentile only, got --calibrator {calibrator}")


@dataclass(frozen=True)
class QuantConfig:
    method: str = "dynamic-int8"
    optimize: bool = True  # quantize the fused graph (Attention, SkipLayerNorm, BiasGelu)
    per_channel: bool = True
    reduce_range: bool = False
    calibrator: str = "minmax"
    percentile: float = 99.999
    calib_samples: int = 256
    # Gather/EmbedLayerNormalization: int8 embeddings shrink MiniLM from 59 to 23 MB (test accuracy unchanged)
    # () = the model family's (runtime/tasks: text MatMul/Attention/Gather/EmbedLayerNormalization, vision Conv/MatMul/Gemm)
    op_types: tuple[str, ...] = ()
    exclude_op_types: tuple[str, ...] = ()
    exclude_nodes: tuple[str, ...] = ()
    activation_type: str = "uint8"
    weight_type: str = "int8"
    max_accuracy_drop: float | None = None  # points (0.5 = half a percentage point)
    max_guard_iterations: int = 6
    validate: bool = True  # False only to measure a model that fails (benchmarks); recorded in the lineage
    seed: int = 0
    # static int8: which nodes and outputs get Q/DQ (exporter/qdq_plan.py); "" = the model family's
    qdq_plan: str = ""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; valid: {', '.join(METHODS)}")
        if self.calibrator not in CALIBRATORS:
            raise ConfigError(f"unknown calibrator {self.calibrator!r}; valid: {', '.join(CALIBRATORS)}")
        if not 0 < self.percentile <= 100:
            raise ConfigError(f"percentile must be in (0, 100], got {self.percentile}")
        for name in ("activation_type", "weight_type"):
            if getattr(self, name) not in QUANT_TYPES:
                raise ConfigError(f"{name} must be one of {', '.join(QUANT_TYPES)}, got {getattr(self, name)!r}")
        if self.calib_samples < 1:
            raise ConfigError(f"calib_samples must be >= 1, got {self.calib_samples}")
        if self.qdq_plan and self.qdq_plan not in PLANS:
            raise ConfigError(f"unknown qdq_plan {self.qdq_plan!r}; valid: {', '.join(PLANS)} (or empty: the family's)")
        if self.max_accuracy_drop is not None and not self.max_accuracy_drop >= 0:  # also refuses NaN
            raise ConfigError(f"max_accuracy_drop must be >= 0 points, got {self.max_accuracy_drop}")

    @property
    def precision(self) -> str:
        return "fp16" if self.method == "fp16" else "int8"


class FeedReader:
    """Adapter: any iterable of feeds -> onnxruntime's CalibrationDataReader protocol."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds = feeds
        self._it: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def check_calibration(artifact: Artifact, feeds: Iterable[dict[str, np.ndarray]], fixed_shape: bool) -> list[dict[str, np.ndarray]]:
    out = []
    for i, feed in enumerate(feeds):
        try:
            validate_feed(artifact.inputs, feed)
        except InputError as e:
            raise InputError(f"calibration batch {i}: {e}") from None
        out.append(feed)
    if not out:
        raise InputError("calibration data is empty; give at least one batch (--calib-data)")
    shapes = {tuple(next(iter(f.values())).shape) for f in out}
    if fixed_shape and len(shapes) > 1:
        raise InputError(f"the percentile/entropy calibrators need every batch to share one shape, got {sorted(shapes)}; "
                         "pad the calibration texts to one length")
    return out


def graph_ops(path: Path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}


def quantizable_nodes(path: Path, op_types: tuple[str, ...]) -> list[str]:
    import onnx

    return [n.name for n in onnx.load(str(path), load_external_data=False).graph.node if n.op_type in op_types]


def prepare(src: Path, dst: Path, meta: dict[str, Any], optimize: bool) -> dict[str, int]:
    """Fuse (optional), then symbolic shape inference: quantizing a fused graph needs the types it adds."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fused: dict[str, int] = {}
    work = dst.with_suffix(".fused.onnx")
    shutil.copy2(src, work)
    if optimize and not (graph_ops(work) & {"Attention", "SkipLayerNormalization"}):
        fused = fuse_graph(work, meta)
    quant_pre_process(str(work), str(dst), skip_optimization=True, auto_merge=True)
    work.unlink()
    return fused


def static_plan(pre: Path, cfg: QuantConfig) -> QdqPlan:
    """The QDQ plan for the prepared graph: the compute ops static int8 quantizes (STATIC_OPS), what the
    family's plan adds or keeps float, minus --exclude-op-types."""
    compute = tuple(o for o in cfg.op_types if o in STATIC_OPS and o not in cfg.exclude_op_types) or ("MatMul",)
    plan = plan_static(pre, cfg.qdq_plan or "listed-ops", compute)
    return dataclasses.replace(plan, op_types=tuple(o for o in plan.op_types if o not in cfg.exclude_op_types))


def run_method(pre: Path, out: Path, cfg: QuantConfig, excluded: list[str], calib: list[dict[str, np.ndarray]] | None,
               cache: Path | None) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    qtype = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    excluded_nodes = [*cfg.exclude_nodes, *excluded]
    op_types = [o for o in cfg.op_types if o not in cfg.exclude_op_types]
    if cfg.method == "dynamic-int8":
        quantize_dynamic(str(pre), str(out), op_types_to_quantize=op_types, per_channel=cfg.per_channel,
                         reduce_range=cfg.reduce_range, weight_type=qtype[cfg.weight_type],
                         nodes_to_exclude=excluded_nodes, extra_options={"MatMulConstBOnly": True})
    elif cfg.method == "static-int8":
        method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                  "entropy": CalibrationMethod.Entropy}[cfg.calibrator]
        # TensorRT rejects int32 bias quantization: biases stay float in the QDQ graph
        plan = static_plan(pre, cfg)
        extra = {"QuantizeBias": False, "CalibPercentile": cfg.percentile, "MatMulConstBOnly": True,
                 "ActivationSymmetric": cfg.activation_type == "int8", **plan.extra_options()}
        if cfg.calibrator == "entropy":
            extra["CalibNumBins"] = 128  # 2048 bins collapsed accuracy on MiniLM
        quantize_static(str(pre), str(out), FeedReader(calib or []), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(plan.op_types), per_channel=cfg.per_channel,
                        reduce_range=cfg.reduce_range, activation_type=qtype[cfg.activation_type],
                        weight_type=qtype[cfg.weight_type], nodes_to_exclude=[*excluded_nodes, *plan.exclude_nodes],
                        calibrate_method=method, extra_options=extra,
                        calibration_cache_path=str(cache) if cache else None)
        if cfg.qdq_plan == "int8-flow":
            shapes_from_quantized(out)
    else:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = onnx.load(str(pre))
        blocked = [n.name for n in model.graph.node if n.name in excluded_nodes]
        onnx.save(convert_float_to_float16(model, keep_io_types=True, op_block_list=FP16_KEEP_FP32,
                                           node_block_list=blocked), str(out))


def check_range_cache(path: Path, calibrator: str) -> None:
    """A --calib-cache must be a range cache onnxruntime wrote, for the same calibrator: checked with its own reader
    (valid JSON of another shape otherwise fails deep inside onnxruntime with AttributeError or KeyError)."""
    from onnxruntime.quantization.calibrate import load_tensors_data

    try:
        ranges = load_tensors_data(path)
    except Exception as e:  # noqa: BLE001 - whatever the reader trips on, the file is not a range cache
        raise ConfigError(f"--calib-cache {path} is not a range cache written by kiln quantize "
                          f"({type(e).__name__}: {e}); make one with --method static-int8 --calib-data DATA") from None
    made_with = str(getattr(ranges, "calibration_method", "")).rsplit(".", 1)[-1].lower()
    if made_with and made_with != calibrator:
        raise ConfigError(f"--calib-cache {path} holds {made_with} ranges; this run asks for --calibrator {calibrator}")


@dataclass
class GuardResult:
    accuracy_fp32: float
    accuracy: float
    excluded: list[str] = field(default_factory=list)
    iterations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def drop_points(self) -> float:
        return round((self.accuracy_fp32 - self.accuracy) * 100, 3)

    def record(self, budget: float, data: Any, batch_sizes: Sequence[int]) -> dict[str, Any]:
        """The lineage's accuracy_guard entry (static/dynamic int8 and nncf-int8 write the same one)."""
        return {"accuracy_fp32": self.accuracy_fp32, "accuracy": self.accuracy, "drop_points": self.drop_points,
                "budget_points": budget, "kept_fp32": self.excluded, "iterations": self.iterations,
                "data": data.source, "data_sha256": data.sha256, "batch_sizes": list(batch_sizes)}


# Dynamic int8 takes activation scales from each batch, so its accuracy moves with the batching
# (benchmarks/results/batch-answers.md); the guard counts the worse of one-at-a-time and batches of 64.
GUARD_BATCH_SIZES = {"dynamic-int8": (1, 64)}


def accuracy_of(artifact: Artifact, data: LabelledTexts, batch_sizes: tuple[int, ...] = (64,)) -> float:
    """Task accuracy; with several batch sizes, the lowest."""
    from runtime.pipeline import pipeline_for
    from runtime.tasks.metrics import measure_accuracy

    accuracies = []
    for batch_size in batch_sizes:
        with pipeline_for(artifact, batch_size=batch_size) as clf:
            accuracies.append(float(measure_accuracy(clf, data)["accuracy"]))
    return min(accuracies)


def output_error(ref: Any, cand: Any, feeds: list[dict[str, np.ndarray]]) -> float:
    """Mean over feeds of 1 - cosine between the reference and candidate outputs (0 = identical)."""
    from exporter.compare import row_cosines

    errs = []
    for f in feeds:
        a, b = ref.run(f), cand.run(f)
        errs += [float((1 - row_cosines(a[k], b[k])).mean()) for k in a]
    return float(np.mean(errs))


def sensitivity(pre: Path, staged: Artifact, cfg: QuantConfig, calib: list[dict[str, np.ndarray]] | None,
                feeds: list[dict[str, np.ndarray]], progress: Progress, cache: Path | None = None) -> list[dict[str, Any]]:
    """Per quantizable node: the output error when only that node is quantized, worst first.

    `cache`: the range cache the full quantization wrote (or --calib-cache gave): every node's run reads its
    ranges there instead of calibrating again (and without calibration texts there is nothing else to read)."""
    from exporter.progress import ticker

    nodes = quantizable_nodes(pre, tuple(o for o in cfg.op_types if o not in cfg.exclude_op_types))
    if cfg.method == "static-int8":  # nodes the plan keeps float are not candidates
        kept_float = set(static_plan(pre, cfg).exclude_nodes)
        nodes = [n for n in nodes if n not in kept_float]
    progress(f"sensitivity analysis over {len(nodes)} nodes (each quantized alone)")
    rows = []
    # inside the staging folder, so an interrupted run leaves nothing in the system temp folder
    tmp = Path(tempfile.mkdtemp(prefix=".sensitivity-", dir=staged.path))
    try:
        one = tmp / "one.onnx"
        fp32 = Artifact(tmp, "onnx", staged.task, staged.inputs, staged.outputs, meta={"model_file": pre.name})
        shutil.copy2(pre, tmp / pre.name)
        tick = ticker(progress, "sensitivity analysis", len(nodes))
        with open_session(fp32) as ref:
            for i, node in enumerate(nodes):
                tick.update(i)
                others = [n for n in nodes if n != node]
                run_method(pre, one, cfg, others, calib, cache if cache is not None and cache.is_file() else None)
                cand_art = Artifact(tmp, "onnx", staged.task, staged.inputs, staged.outputs, meta={"model_file": one.name})
                with open_session(cand_art) as cand:
                    rows.append({"node": node, "error": output_error(ref, cand, feeds)})
            tick.update(len(nodes))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return sorted(rows, key=lambda r: -r["error"])


def quantize(artifact: Artifact, config: QuantConfig, out: str | Path, calibration: Iterable[dict[str, np.ndarray]] | None = None,
             eval_data: LabelledTexts | None = None, calib_cache: str | Path | None = None, report: bool = False,
             force: bool = False, progress: Progress = quiet) -> Artifact:
    """Quantize an ONNX artifact; validate against it; with max_accuracy_drop, guard task accuracy."""
    if artifact.format != "onnx":
        raise ConfigError(f"quantize reads an 'onnx' artifact (run `kiln export` first), got {artifact.format!r}")
    present = graph_ops(artifact.model_file)
    if present & QUANTIZED_OPS or artifact.meta.get("precision") in ("int8", "fp16"):
        raise ConfigError(f"{artifact.path} is already quantized ({artifact.meta.get('precision') or sorted(present & QUANTIZED_OPS)}); "
                          "quantize the fp32 artifact it was made from")
    if config.max_accuracy_drop is not None and eval_data is None:
        raise ConfigError("--max-accuracy-drop needs --eval-data (labelled texts to measure accuracy on)")
    if config.method == "nncf-int8":  # QuantConfig or an exporter.quantize_nncf.NncfConfig
        from exporter.quantize_nncf import quantize_nncf

        return quantize_nncf(artifact, config, out, calibration, eval_data, force, progress)
    if config.method == "static-int8" and calibration is None and calib_cache is None:
        raise ConfigError("static-int8 needs calibration data (--calib-data) or a range cache (--calib-cache)")
    if not config.op_types:  # the family knows which ops its models are made of (Conv for CNNs)
        config = dataclasses.replace(config, op_types=artifact.family.quantize_op_types(config.method))
    if config.method == "static-int8" and not config.qdq_plan:  # and where Q/DQ pays (exporter/qdq_plan.py)
        config = dataclasses.replace(config, qdq_plan=artifact.family.static_int8_plan)
    calib = None
    if calibration is not None and config.method == "static-int8":
        calib = check_calibration(artifact, calibration, fixed_shape=config.calibrator != "minmax")
    started = time.perf_counter()
    # onnxruntime's quantizer writes model-sized temp files: keep them inside the staging folder
    with atomic_output(out, force, source=artifact.path) as staged, temp_files_in(staged / ".tmp"):
        copy_sidecars(artifact, staged)
        pre = staged / "model.fp32.onnx"
        progress("preparing the graph" + (" (fusing attention/LayerNorm/Gelu)" if config.optimize else ""))
        fused = prepare(artifact.model_file, pre, artifact.meta, config.optimize)
        cache = staged / CALIBRATION_CACHE if config.method == "static-int8" else None
        if cache is not None and calib_cache is not None:
            check_range_cache(Path(calib_cache), config.calibrator)
            shutil.copy2(calib_cache, cache)
        model = staged / "model.onnx"
        meta = {**artifact.meta, "model_file": "model.onnx", "precision": config.precision, "method": config.method}
        q_art = Artifact(staged, "onnx", artifact.task, artifact.inputs, artifact.outputs, artifact.lineage, meta)
        val_feeds = artifact.family.validation_feeds(artifact.inputs, artifact.model_meta, config.seed)
        progress(f"quantizing: {config.method}" + (f" ({config.calibrator} calibration, {len(calib)} batches)" if calib else ""))
        run_method(pre, model, config, [], calib, cache)
        metrics: dict[str, Any] = {"fused_ops": fused}
        if config.method == "static-int8":
            metrics["qdq_plan"] = static_plan(pre, config).describe()
        ranking: list[dict[str, Any]] | None = None
        if report:
            ranking = sensitivity(pre, q_art, config, calib, (calib or val_feeds)[:8], progress, cache)
            metrics["sensitivity"] = ranking
        if config.max_accuracy_drop is not None:
            assert eval_data is not None
            guard_batches = GUARD_BATCH_SIZES.get(config.method, (64,))
            progress(f"measuring accuracy of the fp32 and {config.method} models on {len(eval_data)} examples"
                     + (f" (batches of {' and '.join(map(str, guard_batches))})" if len(guard_batches) > 1 else ""))
            guard = GuardResult(accuracy_of(artifact, eval_data), accuracy_of(q_art, eval_data, guard_batches))
            guard.iterations.append({"excluded": 0, "accuracy": guard.accuracy, "drop_points": guard.drop_points})
            progress(f"accuracy fp32 {guard.accuracy_fp32:.4f}, {config.method} {guard.accuracy:.4f} "
                     f"(drop {guard.drop_points:.2f} points, budget {config.max_accuracy_drop})")
            k = 1
            while guard.drop_points > config.max_accuracy_drop and len(guard.iterations) <= config.max_guard_iterations:
                if ranking is None:
                    ranking = sensitivity(pre, q_art, config, calib, (calib or val_feeds)[:8], progress, cache)
                    metrics["sensitivity"] = ranking
                if k > len(ranking):
                    break
                excluded = [r["node"] for r in ranking[:k]]
                run_method(pre, model, config, excluded, calib, cache)
                acc = accuracy_of(q_art, eval_data, guard_batches)
                guard.iterations.append({"excluded": k, "accuracy": acc, "drop_points": round((guard.accuracy_fp32 - acc) * 100, 3)})
                progress(f"kept {k} most sensitive node(s) in fp32: accuracy {acc:.4f}")
                guard.accuracy, guard.excluded = acc, excluded
                k *= 2
            metrics["accuracy_guard"] = guard.record(config.max_accuracy_drop, eval_data, guard_batches)
            if guard.drop_points > config.max_accuracy_drop:
                raise ValidationError(
                    f"accuracy budget not met: the best {config.method} model lost {guard.drop_points:.2f} points "
                    f"({guard.accuracy_fp32:.4f} -> {guard.accuracy:.4f}) with {len(guard.excluded)} node(s) kept in fp32; "
                    f"budget {config.max_accuracy_drop} points. Try static-int8 with another calibrator, exclude op types, "
                    "or raise --max-accuracy-drop")
        # real calibration texts when there are some: random tokens sit at the decision boundary
        feeds = (calib or [])[:16] or val_feeds
        progress(f"validating against the fp32 model on {len(feeds)} {'calibration' if calib else 'synthetic'} "
                 f"batches ({config.precision} tolerances)")
        with open_session(artifact) as ref, open_session(q_art) as cand:
            cmp = compare(ref, cand, feeds, tolerance_for(config.precision))
        metrics["validation"] = cmp.metrics() | {"feeds": "calibration" if calib else "synthetic", "enforced": config.validate}
        if config.validate:
            cmp.raise_if_failed(f"the {config.method} model")
        pre.unlink()
        metrics["size_mb"] = {"fp32": round(artifact.model_file.stat().st_size / 1e6, 2),
                              "quantized": round(model.stat().st_size / 1e6, 2)}
        return finish(staged, out, q_art, artifact, "quantize", asdict(config), started, metrics)


def calibration_set(artifact: Artifact, source: str | Path, config: Any, text_column: str = "text",
                    samples: int | None = None) -> list[dict[str, np.ndarray]]:
    """The calibration feeds `quantize` takes, from a dataset name or file (texts, or images for a vision model),
    shaped the way `config`'s method needs them: nncf-int8 one item per feed padded to config.calib_pad_length;
    percentile/entropy one shape for every batch; minmax batches of each length."""
    from calibration.sources import raw_for

    if config.method == "nncf-int8":  # before reading any data
        from exporter.quantize_nncf import check_nncf_family

        check_nncf_family(artifact)
    raw = raw_for(artifact.task, source, text_column)
    n = samples if samples is not None else getattr(config, "calib_samples", 256)
    if config.method == "nncf-int8":
        return artifact.family.calibration_feeds(artifact, raw, n, batch_size=1,
                                                 pad_to=getattr(config, "calib_pad_length", 0) or None)
    return artifact.family.calibration_feeds(artifact, raw, n, fixed_shape=getattr(config, "calibrator", "minmax") != "minmax")
