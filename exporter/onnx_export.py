"""to_onnx: torch model -> ONNX artifact with dynamic axes, checked and validated against torch."""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from exporter.architectures import fusion_type
from exporter.compare import compare, tolerance_for
from exporter.load import TOKENIZER_FILES, check_finite_weights, load_torch_model, untrained_parameters
from exporter.stage import Progress, atomic_output, finish, quiet
from runtime.artifact import Artifact
from runtime.errors import ConfigError, SourceError, ValidationError
from runtime.session import open_session

# The TorchScript exporter (dynamo=False), with eager attention, gives graphs onnxruntime's
# transformer optimizer can fuse (6 Attention + 12 SkipLayerNormalization on MiniLM); the dynamo
# exporter's graph did not fuse attention and ran ~15% slower at batch 32 x 128. Measured on torch 2.13.
EXPORTER_DYNAMO = False
EXPORT_ATTENTION = "eager"
OPSETS = range(14, 21)  # 14: first with the ops BERT needs; 20: newest the TorchScript exporter writes


@dataclass(frozen=True)
class OnnxConfig:
    opset: int = 17
    optimize: bool = False  # run onnxruntime's transformer fusions (Attention, SkipLayerNorm, Gelu)
    validate: bool = True
    seed: int = 0
    # export parameters the checkpoint lacks (transformers initialises them at random): timing only
    allow_untrained: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.opset, int) or self.opset not in OPSETS:
            raise ConfigError(f"opset must be in {OPSETS.start}..{OPSETS.stop - 1}, got {self.opset!r}")


def positional_wrapper(model: Any, input_names: tuple[str, ...], output_names: tuple[str, ...]) -> Any:
    """Wrap a transformers model so forward takes positional inputs and returns a tuple of tensors."""
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *args: Any) -> tuple[Any, ...]:
            out = self.model(**dict(zip(input_names, args)))
            return tuple(out[n] for n in output_names)

    # The TorchScript exporter restores the wrapper's training flag onto the whole model after
    # export; a fresh Module is in training mode, which would leave dropout on in the reference.
    return Wrapped().eval()


@contextlib.contextmanager
def patched_for_export(model: Any) -> Iterator[Any]:
    """Every export workaround in one place; restores the model afterwards."""
    was_training = model.training
    return_dict = getattr(model.config, "return_dict", True)
    model.config.return_dict = True
    model.eval()
    try:
        yield model
    finally:
        model.config.return_dict = return_dict
        model.train(was_training)


def export_graph(model: Any, artifact: Artifact, path: Path, opset: int) -> None:
    import torch

    names = tuple(s.name for s in artifact.inputs)
    outs = tuple(s.name for s in artifact.outputs)
    # batch 2: a batch-1 trace can freeze the batch axis
    sample = artifact.family.example_feed(artifact.inputs, artifact.model_meta, batch=2, size=16, seed=0)
    args = tuple(torch.from_numpy(sample[n]) for n in names)
    axes = {s.name: {i: d for i, d in enumerate(s.shape) if isinstance(d, str)} for s in (*artifact.inputs, *artifact.outputs)}
    with patched_for_export(model), warnings.catch_warnings():
        # the TorchScript exporter warns about every traced Python branch; validation below is the real check
        warnings.simplefilter("ignore")
        torch.onnx.export(positional_wrapper(model, names, outs), args, str(path), input_names=list(names),
                          output_names=list(outs), dynamic_axes=axes, opset_version=opset,
                          dynamo=EXPORTER_DYNAMO, do_constant_folding=True)


@contextlib.contextmanager
def transformers_log_level() -> Iterator[None]:
    """onnxruntime.transformers puts its own folder on sys.path, so its modules log under bare names
    (`fusion_embedlayer`), outside the `onnxruntime.transformers` logger: a level set on that logger (`kiln -q`,
    exporter/cli/common.py) is applied to them for the duration."""
    import os
    import sys

    import onnxruntime.transformers as package

    level = logging.getLogger("onnxruntime.transformers").level
    if not level:  # nobody asked: the root logger's level, as usual
        yield
        return
    where = os.path.dirname(os.path.abspath(package.__file__))
    loggers = [logging.getLogger(name) for name, module in list(sys.modules.items())
               if os.path.dirname(os.path.abspath(getattr(module, "__file__", None) or "/")) == where]
    before = [(lg, lg.level) for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, old in before:
            lg.setLevel(old)


def fuse_graph(path: Path, meta: dict[str, Any]) -> dict[str, int]:
    """onnxruntime's transformer optimizer, offline (opt_level 1 keeps the graph provider-neutral)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    arch_type = fusion_type(meta["model_type"])
    if arch_type is None:  # a model type onnxruntime's transformer optimizer does not know
        return {}
    options = FusionOptions(arch_type)
    if meta.get("structure"):
        # Attention fusion takes one head count for every layer; a structurally pruned model has
        # its own per layer, and a fused graph would be silently wrong (validation caught exactly this).
        options.enable_attention = False
    # the optimizer print()s some notes ("Removed N initializers ..."): stdout is for results (--json), so they
    # go to its logger instead, like its other warnings (shown on stderr; `kiln -q` silences that logger)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), transformers_log_level():
        opt = optimize_model(str(path), model_type=arch_type, num_heads=int(meta.get("num_heads", 0)),
                             hidden_size=int(meta.get("hidden_size", 0)), opt_level=1, optimization_options=options)
        opt.save_model_to_file(str(path))
    for line in filter(str.strip, printed.getvalue().splitlines()):
        logging.getLogger("onnxruntime.transformers.optimizer").warning(line)
    return {k: v for k, v in opt.get_fused_operator_statistics().items() if v}


def copy_preprocessing(src: Path, dst: Path) -> list[str]:
    """Copy tokenizer files; make tokenizer.json with transformers when only a slow tokenizer exists."""
    copied = [n for n in TOKENIZER_FILES if (src / n).is_file()]
    for n in copied:
        shutil.copy2(src / n, dst / n)
    if "tokenizer.json" not in copied and copied:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(src)).save_pretrained(str(dst))
    return copied


def check_graph(model_path: Path) -> None:
    """onnx.checker with full shape inference; its first line is the error."""
    import onnx

    try:
        onnx.checker.check_model(str(model_path), full_check=True)
    except onnx.checker.ValidationError as e:
        raise ValidationError(f"onnx.checker rejected the exported graph: {str(e).splitlines()[0]}") from None


def to_onnx(artifact: Artifact, config: OnnxConfig, out: str | Path, force: bool = False,
            progress: Progress = quiet) -> Artifact:
    """Export, check with onnx.checker, validate vs torch on seeded feeds; write the artifact atomically."""
    if artifact.format != "hf":
        raise ConfigError(f"to_onnx reads an 'hf' artifact, got {artifact.format!r} ({artifact.path})")
    started = time.perf_counter()
    out = Path(out)
    with atomic_output(out, force, source=artifact.path) as staged:
        progress(f"loading {artifact.meta.get('model_type', '')} model from {artifact.path}")
        model = load_torch_model(artifact, attn_implementation=EXPORT_ATTENTION)
        check_finite_weights(model, artifact.path)
        untrained = untrained_parameters(model)
        if untrained and not config.allow_untrained:
            raise SourceError(
                f"{artifact.path} holds no trained weights for {', '.join(untrained[:4])}"
                f"{f' (+{len(untrained) - 4} more)' if len(untrained) > 4 else ''}: as a {artifact.task} model its "
                f"answers would be random. Fine-tune it first (kiln finetune), export the task it was trained for"
                f"{' (--task feature-extraction)' if artifact.task != 'feature-extraction' else ''}, "
                "or pass --allow-untrained to export it anyway (for timing only)")
        model_path = staged / "model.onnx"
        progress(f"exporting to ONNX (opset {config.opset}, dynamic batch and sequence)")
        export_graph(model, artifact, model_path, config.opset)
        check_graph(model_path)
        metrics: dict[str, Any] = {"untrained_parameters": untrained} if untrained else {}
        if config.optimize:
            progress("fusing the graph with onnxruntime's transformer optimizer")
            metrics["fused_ops"] = fuse_graph(model_path, artifact.meta)
        cfg = model.config  # the fusions need these; older manifests may lack them
        meta = {**artifact.meta, "model_file": "model.onnx", "tokenizer": "tokenizer.json",
                "num_heads": int(getattr(cfg, "num_attention_heads", getattr(cfg, "n_heads", 0))),
                "hidden_size": int(getattr(cfg, "hidden_size", getattr(cfg, "dim", 0)))}
        meta.pop("weights_file", None)
        meta["tokenizer_files"] = copy_preprocessing(artifact.path, staged)
        onnx_art = Artifact(staged, "onnx", artifact.task, artifact.inputs, artifact.outputs, artifact.lineage, meta)
        if config.validate:
            progress("validating onnxruntime against torch on seeded feeds")
            cmp = validate_against(artifact, onnx_art, model, config.seed)
            metrics["validation"] = cmp.metrics()
            cmp.raise_if_failed("the exported ONNX model", "the source model's weights give NaN/inf (the torch "
                                "reference does)")
        del model
        return finish(staged, out, onnx_art, artifact, "to_onnx", asdict(config), started, metrics)


def validate_against(reference: Artifact, candidate: Artifact, model: Any, seed: int, precision: str = "fp32") -> Any:
    """compare() the candidate with the in-memory torch model on seeded feeds of several shapes."""
    from runtime.backends.torch_backend import TorchSession

    feeds = reference.family.validation_feeds(reference.inputs, reference.model_meta, seed)
    with TorchSession(reference, model=model) as ref, open_session(candidate, backend="onnxruntime") as cand:
        return compare(ref, cand, feeds, tolerance_for(precision))

