"""to_openvino: an ONNX artifact as an OpenVINO IR artifact (model.xml + model.bin), validated against it.

The openvino backend reads ONNX directly, so IR is not needed to run on OpenVINO; it is what NNCF's
OpenVINO path writes (exporter/quantize_nncf.py, --target openvino), and an IR loads without the ONNX
frontend's conversion at every start.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from exporter.compare import compare, tolerance_for
from exporter.stage import Progress, atomic_output, copy_sidecars, finish, quiet
from runtime.artifact import Artifact
from runtime.errors import ConfigError
from runtime.session import open_session

IR_FILE = "model.xml"  # its weights: model.bin beside it (OpenVINO finds it by name)


def ir_artifact(staged: Path, source: Artifact, **meta: Any) -> Artifact:
    """The (not yet finished) IR artifact in `staged`, with the source's specs and tokenizer meta."""
    return Artifact(staged, "openvino", source.task, source.inputs, source.outputs, source.lineage,
                    {**source.meta, "model_file": IR_FILE, **meta})


def save_ir(model: Any, staged: Path) -> None:
    import openvino

    # compress_to_fp16=False: save_model halves float weights by default, which would make "fp32 IR" a lie
    openvino.save_model(model, str(staged / IR_FILE), compress_to_fp16=False)


def to_openvino(artifact: Artifact, out: str | Path, force: bool = False, progress: Progress = quiet) -> Artifact:
    """Convert an fp32 ONNX artifact to OpenVINO IR; validate against onnxruntime with fp32 tolerances."""
    from runtime.backends.ov import import_openvino, read_model

    if artifact.format != "onnx":
        raise ConfigError(f"to_openvino reads an 'onnx' artifact (run `kiln export` first), got {artifact.format!r}")
    ov = import_openvino()
    started = time.perf_counter()
    with atomic_output(out, force, source=artifact.path) as staged:
        copy_sidecars(artifact, staged)
        progress(f"converting {artifact.model_file.name} to OpenVINO IR")
        save_ir(read_model(ov.Core(), artifact.model_file), staged)
        ir = ir_artifact(staged, artifact)
        feeds = artifact.family.validation_feeds(artifact.inputs, artifact.model_meta, 0)
        precision = "int8" if artifact.meta.get("precision") == "int8" else "fp32"
        with open_session(artifact) as ref, open_session(ir) as cand:
            cmp = compare(ref, cand, feeds, tolerance_for(precision))
        cmp.raise_if_failed("the OpenVINO IR")
        metrics = {"validation": cmp.metrics() | {"feeds": "synthetic", "reference": "onnxruntime", "enforced": True}}
        return finish(staged, out, ir, artifact, "to_openvino", {"compress_to_fp16": False}, started, metrics)
