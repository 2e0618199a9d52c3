"""to_onnx_module: any torch.nn.Module image classifier -> a validated ONNX artifact (Python API only).

The path for models that are not on the Hugging Face Hub: the caller gives the module, an example input
(its shape fixes channels, height and width; the batch axis is exported dynamic), the preprocessing the
model was trained with (size, mean/std or scale, channel order) and its labels. The export is validated
against the module on seeded feeds of several batch sizes, like every export.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence


from exporter.compare import compare, tolerance_for
from exporter.onnx_export import EXPORTER_DYNAMO, OnnxConfig, check_graph
from exporter.stage import Progress, atomic_output, quiet
from runtime.artifact import Artifact, Step, TensorSpec, digest_of, hash_files, library_versions
from runtime.errors import ConfigError
from runtime.session import open_session
from runtime.tasks.vision import INPUT, ImagePreprocessing

TASK = "image-classification"


def as_named_output(module: Any) -> Any:
    """Wrap `module` so the torch backend can call it like a transformers model: keyword input, named output."""
    import torch

    class Named(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = module

        def forward(self, pixel_values: Any) -> dict[str, Any]:
            out = self.module(pixel_values)
            return {"logits": out[0] if isinstance(out, (tuple, list)) else out}

    return Named().eval()


def module_artifact(path: Path, prep: ImagePreprocessing, labels: Sequence[str], module: Any) -> Artifact:
    meta = {"model_type": "torch-module", "module_class": f"{type(module).__module__}.{type(module).__qualname__}",
            "model_file": "model.onnx", "labels": {str(i): n for i, n in enumerate(labels)},
            "preprocessing": prep.to_dict()}
    inputs = (TensorSpec(INPUT, "float32", ("batch", *prep.shape)),)
    outputs = (TensorSpec("logits", "float32", ("batch", len(labels))),)
    return Artifact(path, "onnx", TASK, inputs, outputs, meta=meta)


def to_onnx_module(module: Any, example: Any, preprocessing: ImagePreprocessing, labels: Sequence[str],
                   out: str | Path, config: OnnxConfig = OnnxConfig(), force: bool = False,
                   progress: Progress = quiet) -> Artifact:
    """Export `module` (called as module(pixel_values) -> logits [batch, len(labels)]) and validate it."""
    import torch

    from runtime.backends.torch_backend import TorchSession

    if not isinstance(module, torch.nn.Module):
        raise ConfigError(f"to_onnx_module takes a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(preprocessing, ImagePreprocessing):
        raise ConfigError("preprocessing must be an ImagePreprocessing(size=(h, w), channels, mean, std, scale, ...)")
    labels = [str(n) for n in labels]
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise ConfigError(f"labels must be at least two distinct names, got {labels}")
    example = torch.as_tensor(example, dtype=torch.float32)
    if tuple(example.shape[1:]) != preprocessing.shape or example.ndim != 4:
        raise ConfigError(f"the example input has shape {tuple(example.shape)}; the preprocessing says "
                          f"(batch, {', '.join(map(str, preprocessing.shape))})")
    was_training = module.training
    module.eval()  # dropout off, batch norm on its running statistics: the module as it will be served
    started = time.perf_counter()
    try:
        with torch.inference_mode():
            logits = module(example)
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        if tuple(logits.shape) != (example.shape[0], len(labels)):
            raise ConfigError(f"the module returned shape {tuple(logits.shape)} for an input of batch "
                              f"{example.shape[0]}; expected ({example.shape[0]}, {len(labels)}) logits, one per label")
        with atomic_output(out, force) as staged:
            art = module_artifact(staged, preprocessing, labels, module)
            model_path = staged / "model.onnx"
            progress(f"exporting {type(module).__name__} to ONNX (opset {config.opset}, dynamic batch)")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer warnings; validation below is the real check
                torch.onnx.export(module, (example,), str(model_path), input_names=[INPUT], output_names=["logits"],
                                  dynamic_axes={INPUT: {0: "batch"}, "logits": {0: "batch"}},
                                  opset_version=config.opset, dynamo=EXPORTER_DYNAMO, do_constant_folding=True)
            check_graph(model_path)
            metrics: dict[str, Any] = {}
            if config.validate:
                progress("validating onnxruntime against the module on seeded feeds")
                feeds = art.family.validation_feeds(art.inputs, art.model_meta, config.seed)
                with TorchSession(art, model=as_named_output(module)) as ref, open_session(art, backend="onnxruntime") as cand:
                    cmp = compare(ref, cand, feeds, tolerance_for("fp32"))
                metrics["validation"] = cmp.metrics()
                cmp.raise_if_failed("the exported ONNX model")
            files = hash_files(staged)
            step = Step("to_onnx_module", asdict(config) | {"module": art.meta["module_class"]},
                        round(time.perf_counter() - started, 3), metrics, None, digest_of(files), library_versions())
            final = Artifact(staged, "onnx", TASK, art.inputs, art.outputs, (step,), art.meta, files)
            final.write_manifest()
        return Artifact.load(Path(out).absolute())
    finally:
        module.train(was_training)
