"""optimize: onnxruntime's transformer fusions on an fp32 ONNX artifact, validated like an export."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from exporter.compare import compare, tolerance_for
from exporter.onnx_export import fuse_graph
from exporter.stage import Progress, atomic_output, copy_sidecars, finish, quiet
from runtime.artifact import Artifact
from runtime.errors import ConfigError
from runtime.session import open_session


def optimize(artifact: Artifact, out: str | Path, force: bool = False, progress: Progress = quiet) -> Artifact:
    if artifact.format != "onnx" or artifact.meta.get("precision") in ("int8", "fp16"):
        raise ConfigError(f"optimize reads an fp32 'onnx' artifact; {artifact.path} is "
                          f"{artifact.meta.get('precision') or artifact.format}")
    started = time.perf_counter()
    with atomic_output(out, force, source=artifact.path) as staged:
        copy_sidecars(artifact, staged)
        shutil.copy2(artifact.model_file, staged / artifact.model_file.name)
        progress("fusing with onnxruntime's transformer optimizer")
        fused = fuse_graph(staged / artifact.model_file.name, artifact.meta)
        new = Artifact(staged, "onnx", artifact.task, artifact.inputs, artifact.outputs, artifact.lineage, artifact.meta)
        feeds = artifact.family.validation_feeds(artifact.inputs, artifact.model_meta)
        with open_session(artifact) as ref, open_session(new) as cand:
            cmp = compare(ref, cand, feeds, tolerance_for("fp32"))
        cmp.raise_if_failed("the fused graph")
        return finish(staged, out, new, artifact, "optimize", {"opt_level": 1}, started,
                      {"fused_ops": fused, "validation": cmp.metrics()})
