"""nncf-int8: NNCF post-training quantization of a standard ONNX graph, for one of two targets.

--target tensorrt (the default): a QDQ ONNX that TensorRT parses; onnxruntime and OpenVINO run it too.
--target openvino: NNCF's OpenVINO backend on the graph OpenVINO reads from the ONNX file, written as an
OpenVINO IR artifact (FakeQuantize ops) that only the openvino backend runs; the preset defaults to
mixed (asymmetric activations, NNCF's own default for transformers), which the OpenVINO CPU plugin runs
as fast as symmetric ones. One method, two targets: the algorithm (SmoothQuant, bias correction, which
ops stay float) is the same, only the graph it rewrites and the file it writes differ.

Why NNCF (benchmarks/results/int8-tensorrt.md has the numbers): its transformer model type applies
SmoothQuant, which moves activation outliers into the weights; that is what keeps BERT-style activations
quantizable (MiniLM token cosine 0.975 without it, 0.996 with it). The PERFORMANCE preset makes
activations symmetric (zero points 0), which TensorRT's parser requires; the MIXED preset (asymmetric
activations) is slightly more accurate on paper but TensorRT rejects it ("Non-zero zero point is not
supported"), so it is for onnxruntime/OpenVINO only. Scales are fixed at calibration, so a sentence
gets the same answer alone or in any batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from itertools import islice
from typing import Any, Iterable

import numpy as np

from calibration.datasets import LabelledTexts
from exporter.compare import compare, tolerance_for
from exporter.stage import Progress, atomic_output, copy_sidecars, finish, quiet
from runtime.artifact import Artifact
from runtime.errors import BackendError, ConfigError, ValidationError
from runtime.session import open_session

INSTALL_HINT = "pip install 'modelkiln[nncf]'"
PRESETS = ("performance", "mixed")  # performance: symmetric activations (TensorRT); mixed: asymmetric
TARGETS = ("tensorrt", "openvino")
DEFAULT_PRESET = {"tensorrt": "performance", "openvino": "mixed"}
# the runtimes each target's file runs on (a mixed-preset QDQ ONNX is not TensorRT-parsable)
RUNS_ON = {"tensorrt": ["tensorrt", "onnxruntime", "openvino"], "openvino": ["openvino"]}
MODEL_TYPES = ("transformer", "generic")  # transformer: SmoothQuant + transformer-aware ignored patterns
TENSORRT_PRESETS = ("performance",)
# the guard measures alone and in batches: answers should not depend on batching (fixed scales), and if a
# kernel's shape-dependent rounding ever made them, the worse accuracy counts
GUARD_BATCH_SIZES = (1, 64)


@dataclass(frozen=True)
class NncfConfig:
    method: str = "nncf-int8"
    target: str = "tensorrt"  # tensorrt: QDQ ONNX; openvino: OpenVINO IR (see the module docstring)
    preset: str = ""  # "": the target's default (DEFAULT_PRESET)
    model_type: str = "transformer"
    subset_size: int = 300  # calibration items NNCF draws (all of them when there are fewer)
    # calibration texts are padded to this many tokens (0: each its own length); applied where texts become
    # feeds (the CLI), recorded here; 64 was measured (benchmarks/results/int8-tensorrt.md)
    calib_pad_length: int = 64
    smooth_quant_alpha: float = 0.95  # NNCF's transformer default for MatMul; -1 switches SmoothQuant off
    fast_bias_correction: bool = True
    max_accuracy_drop: float | None = None  # points
    validate: bool = True
    calib_data: str = ""  # where the calibration texts came from (provenance, set by the CLI)
    calib_data_sha256: str = ""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method != "nncf-int8":
            raise ConfigError(f"NncfConfig is for method 'nncf-int8', got {self.method!r}")
        if self.target not in TARGETS:
            raise ConfigError(f"unknown nncf-int8 target {self.target!r}; valid: {', '.join(TARGETS)} "
                              "(tensorrt: QDQ ONNX, also runs on onnxruntime/OpenVINO; openvino: OpenVINO IR)")
        if not self.preset:
            object.__setattr__(self, "preset", DEFAULT_PRESET[self.target])
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}; valid: {', '.join(PRESETS)} "
                              "(performance: symmetric, TensorRT-parsable; mixed: asymmetric activations, not TensorRT-parsable)")
        if self.model_type not in MODEL_TYPES:
            raise ConfigError(f"unknown model type {self.model_type!r}; valid: {', '.join(MODEL_TYPES)}")
        if self.subset_size < 1:
            raise ConfigError(f"subset_size must be >= 1, got {self.subset_size}")
        if self.calib_pad_length < 0:
            raise ConfigError(f"calib_pad_length must be >= 0 tokens (0 = no padding), got {self.calib_pad_length}")
        if not (self.smooth_quant_alpha == -1 or 0 <= self.smooth_quant_alpha <= 1):
            raise ConfigError(f"smooth_quant_alpha must be in [0, 1] or -1 (off), got {self.smooth_quant_alpha}")
        if self.max_accuracy_drop is not None and self.max_accuracy_drop < 0:
            raise ConfigError(f"max_accuracy_drop must be >= 0 points, got {self.max_accuracy_drop}")

    @property
    def precision(self) -> str:
        return "int8"

    @property
    def tensorrt_parsable(self) -> bool:
        return self.target == "tensorrt" and self.preset in TENSORRT_PRESETS

    @property
    def runs_on(self) -> list[str]:
        return [r for r in RUNS_ON[self.target] if r != "tensorrt" or self.tensorrt_parsable]


def from_quant_config(config: Any) -> NncfConfig:
    """A QuantConfig(method='nncf-int8') carries only the shared fields; NNCF's own take their defaults."""
    if isinstance(config, NncfConfig):
        return config
    return NncfConfig(max_accuracy_drop=config.max_accuracy_drop, validate=config.validate, seed=config.seed)


def import_nncf() -> Any:
    # NNCF sends usage telemetry by default unless one of its own variables is set; a build tool should
    # not phone home, so it is switched off here (NNCF_CI only switches telemetry off, nothing else)
    os.environ.setdefault("NNCF_CI", "1")
    try:
        import nncf
    except ImportError:
        raise ConfigError(f"--method nncf-int8 needs NNCF; {INSTALL_HINT}, or use --method static-int8") from None
    return nncf


def feeds_sha256(feeds: list[dict[str, np.ndarray]]) -> str:
    """Digest of exactly what was calibrated on (names, shapes, dtypes and values of every feed)."""
    h = hashlib.sha256()
    for feed in feeds:
        for name in sorted(feed):
            a = np.ascontiguousarray(feed[name])
            h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def qdq_summary(model: Any) -> dict[str, Any]:
    """What TensorRT's parser checks: zero points of every Q/DQ node (must be 0) and int32 DequantizeLinear."""
    from onnx import numpy_helper

    consts = {i.name: i for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = n.attribute[0].t
    quantize = dequantize = nonzero = int32 = 0
    for n in model.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        quantize += n.op_type == "QuantizeLinear"
        dequantize += n.op_type == "DequantizeLinear"
        zp = consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if zp is not None:
            z = numpy_helper.to_array(zp)
            nonzero += int(np.any(z != 0))
        if n.op_type == "DequantizeLinear" and n.input[0] in consts:
            int32 += numpy_helper.to_array(consts[n.input[0]]).dtype == np.int32
    return {"quantize_linear": quantize, "dequantize_linear": dequantize, "nonzero_zero_points": nonzero,
            "int32_dequantize": int32, "symmetric": nonzero == 0,
            "tensorrt_parsable": nonzero == 0 and int32 == 0 and quantize > 0}


def check_standard_graph(model: Any, path: Path) -> None:
    custom = sorted({n.op_type for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    if custom:
        raise ConfigError(f"{path} has onnxruntime-only fused ops ({', '.join(custom)}); nncf-int8 quantizes a "
                          "standard ONNX graph (NNCF's transformer patterns match unfused attention; TensorRT "
                          "and OpenVINO read it): quantize the unfused `kiln export` output")


def fake_quantize_count(model: Any) -> int:
    """FakeQuantize ops NNCF inserted into an OpenVINO model (0: nothing was quantized)."""
    return sum(op.get_type_name() == "FakeQuantize" for op in model.get_ops())


def load_for_target(artifact: Artifact, config: NncfConfig) -> Any:
    """The model NNCF rewrites: the ONNX graph (tensorrt), or the OpenVINO model read from it (openvino)."""
    import onnx

    model = onnx.load(str(artifact.model_file))
    check_standard_graph(model, artifact.model_file)
    if config.target == "tensorrt":
        return model
    from runtime.backends.ov import import_openvino, read_model

    return read_model(import_openvino().Core(), artifact.model_file)


def save_for_target(q: Any, staged: Path, artifact: Artifact, config: NncfConfig) -> tuple[Artifact, dict[str, Any]]:
    """Write the quantized model; return its (unfinished) artifact and what it holds, for the lineage."""
    meta = {"precision": "int8", "method": config.method, "target": config.target, "runs_on": config.runs_on,
            # fixed activation scales: the quantization does not look at the batch (the openvino backend's
            # static batch-1 compile can still differ from its dynamic one in the last bits: README)
            "answers_depend_on_batching": False}
    if config.target == "openvino":
        from exporter.openvino_convert import ir_artifact, save_ir

        save_ir(q, staged)
        return ir_artifact(staged, artifact, **meta), {"fake_quantize": fake_quantize_count(q)}
    import onnx

    onnx.save(q, str(staged / "model.onnx"))
    q_art = Artifact(staged, "onnx", artifact.task, artifact.inputs, artifact.outputs, artifact.lineage,
                     {**artifact.meta, "model_file": "model.onnx", **meta})
    return q_art, {"qdq": qdq_summary(q)}


def run_nncf(model: Any, feeds: list[dict[str, np.ndarray]], config: NncfConfig, silent: bool = False) -> Any:
    nncf = import_nncf()
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    preset = {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}[config.preset]
    model_type = nncf.ModelType.TRANSFORMER if config.model_type == "transformer" else None
    advanced = AdvancedQuantizationParameters(
        smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=config.smooth_quant_alpha))
    try:
        # NNCF draws its progress bars on stdout; they go to stderr so `kiln quantize --json` stdout stays JSON,
        # and nowhere under `kiln --quiet` (or a caller's silent progress)
        sink = open(os.devnull, "w") if silent else sys.stderr
        with sink if silent else contextlib.nullcontext(), contextlib.redirect_stdout(sink), \
                contextlib.redirect_stderr(sink if silent else sys.stderr):
            return nncf.quantize(model, nncf.Dataset(feeds), preset=preset, model_type=model_type,
                                 subset_size=min(config.subset_size, len(feeds)),
                                 fast_bias_correction=config.fast_bias_correction, advanced_parameters=advanced)
    except Exception as e:  # NNCF's own failures (unsupported graph, ...) become one line, cause chained
        raise BackendError(f"NNCF could not quantize the model: {type(e).__name__}: {e}") from e


def check_nncf_family(artifact: Artifact) -> None:
    """nncf-int8 is Kiln's text-transformer recipe (NNCF's transformer preset, token calibration feeds)."""
    if artifact.family.name != "text":
        raise ConfigError(f"--method nncf-int8 is for text transformers; {artifact.path} is a {artifact.task} model: "
                          "use --method static-int8 (per-channel QDQ, the vision int8 plan) or dynamic-int8")


def quantize_nncf(artifact: Artifact, config: Any, out: str | Path, calibration: Iterable[dict[str, np.ndarray]] | None,
                  eval_data: LabelledTexts | None = None, force: bool = False, progress: Progress = quiet) -> Artifact:
    """NNCF post-training int8 of an fp32 ONNX artifact (QDQ ONNX or OpenVINO IR, by config.target); validated
    against it; optional accuracy guard."""
    from exporter.quantize import GuardResult, accuracy_of, check_calibration

    config = from_quant_config(config)
    check_nncf_family(artifact)
    if calibration is None:
        raise ConfigError("nncf-int8 needs calibration data (--calib-data: texts like the ones the model will see)")
    if config.max_accuracy_drop is not None and eval_data is None:
        raise ConfigError("--max-accuracy-drop needs --eval-data (labelled texts to measure accuracy on)")
    feeds = check_calibration(artifact, calibration, fixed_shape=False)
    import_nncf()  # a missing NNCF (or OpenVINO, for --target openvino) is reported before any work
    model = load_for_target(artifact, config)
    started = time.perf_counter()
    with atomic_output(out, force) as staged:
        copy_sidecars(artifact, staged)
        used = min(config.subset_size, len(feeds))
        progress(f"quantizing: nncf-int8 for {config.target} ({config.preset} preset, {config.model_type}, SmoothQuant alpha "
                 f"{config.smooth_quant_alpha}, {used} of {len(feeds)} calibration items)")
        if config.target == "tensorrt" and not config.tensorrt_parsable:
            progress(f"preset {config.preset!r}: asymmetric activations; TensorRT's parser rejects non-zero zero points, "
                     "so this file is for onnxruntime / OpenVINO")
        q = run_nncf(model, feeds, config, silent=progress is quiet or bool(getattr(progress, "quiet", False)))
        q_art, holds = save_for_target(q, staged, artifact, config)
        nncf = import_nncf()
        metrics: dict[str, Any] = {
            "nncf_version": nncf.__version__, **holds,
            "calibration": {"items": len(feeds), "used": used, "feeds_sha256": feeds_sha256(feeds),
                            "sequence_lengths": sorted({int(next(iter(f.values())).shape[-1]) for f in feeds}),
                            "data": config.calib_data, "data_sha256": config.calib_data_sha256}}
        if config.max_accuracy_drop is not None:
            assert eval_data is not None
            guard = GuardResult(accuracy_of(artifact, eval_data), accuracy_of(q_art, eval_data, GUARD_BATCH_SIZES))
            guard.iterations.append({"excluded": 0, "accuracy": guard.accuracy, "drop_points": guard.drop_points})
            progress(f"accuracy fp32 {guard.accuracy_fp32:.4f}, nncf-int8 {guard.accuracy:.4f} "
                     f"(drop {guard.drop_points:.2f} points, budget {config.max_accuracy_drop})")
            metrics["accuracy_guard"] = guard.record(config.max_accuracy_drop, eval_data, GUARD_BATCH_SIZES)
            if guard.drop_points > config.max_accuracy_drop:
                # NNCF's scales are global, so there is no per-node fallback here (static-int8's guard has one)
                raise ValidationError(
                    f"accuracy budget not met: nncf-int8 lost {guard.drop_points:.2f} points "
                    f"({guard.accuracy_fp32:.4f} -> {guard.accuracy:.4f}); budget {config.max_accuracy_drop} points. "
                    "Calibrate on texts closer to the evaluation data, raise --subset-size, or raise --max-accuracy-drop")
        # real calibration texts (random tokens sit at the decision boundary), padding cut off: outputs at
        # padding positions mean nothing, and int8 moves them far more than real tokens' (Family.unpadded)
        check = list(islice(artifact.family.unpadded(feeds), 16))
        progress(f"validating against the fp32 model on {len(check)} calibration texts, padding removed (int8 tolerances)")
        with open_session(artifact) as ref, open_session(q_art) as cand:
            cmp = compare(ref, cand, check, tolerance_for("int8"))
        metrics["validation"] = cmp.metrics() | {"feeds": "calibration, unpadded", "enforced": config.validate}
        if config.validate:
            cmp.raise_if_failed("the nncf-int8 model")
        weights = staged / ("model.bin" if config.target == "openvino" else "model.onnx")
        metrics["size_mb"] = {"fp32": round(artifact.model_file.stat().st_size / 1e6, 2),
                              "quantized": round(weights.stat().st_size / 1e6, 2)}
        return finish(staged, out, q_art, artifact, "quantize", asdict(config), started, metrics)


def nncf_config_for(calib_data: str | None = None, **settings: Any) -> NncfConfig:
    """An NncfConfig that records the calibration data's name and sha256 (a file's; a named dataset's split) for
    the lineage."""
    import hashlib

    from calibration.datasets import resolve

    digest = ""
    if calib_data:
        path, _ = resolve(calib_data)
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
    return NncfConfig(calib_data=calib_data or "", calib_data_sha256=digest, **settings)
