"""prune for ViT image classifiers: attention heads and FFN neurons scored (first-order Taylor importance on
training images) and physically removed by the same code as for text encoders (exporter/prune.py,
runtime/backends/torch_structure.py); unstructured and 2:4 magnitude pruning of the encoder's linear layers.

CNNs are refused: removing a channel from a convolution means removing it from every layer that reads it,
and in a ResNet the channels of a stage are tied together by the residual additions, so channel pruning
needs a dependency graph of the network that Kiln does not build. Quantize CNNs with static int8 instead.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from exporter.stage import Progress, atomic_output, finish, quiet
from runtime.artifact import Artifact
from runtime.errors import ConfigError, TaskError

if TYPE_CHECKING:
    from calibration.images import LabelledImages
    from exporter.prune import PruneConfig

PRUNABLE = ("vit",)  # image model types whose encoder layers runtime/backends/torch_structure.py knows
PRUNE_CNN = ("kiln prune prunes ViT attention heads and FFN neurons; {model_type!r} is not a ViT, and CNN channel "
             "pruning is not implemented (a channel must go from every layer that reads it, and residual additions "
             "tie a stage's channels together); quantize it with static int8 instead")


def check_prunable(model_type: str) -> None:
    if model_type not in PRUNABLE:
        raise TaskError(PRUNE_CNN.format(model_type=model_type))


def prune_vit(artifact: Artifact, config: PruneConfig, out: str | Path, train: LabelledImages | None = None,
              dev: LabelledImages | None = None, force: bool = False, progress: Progress = quiet) -> Artifact:
    """Prune an `hf` ViT image classifier; the manifest records what was removed per layer and the accuracy."""
    import torch

    from exporter.load import load_torch_model
    from exporter.prune import choose_removed, count_parameters, magnitude_prune_, remove_units_, taylor_scores
    from exporter.vision_finetune import evaluate, tensors
    from runtime.tasks.images import preprocessing_of

    check_prunable(str(artifact.meta.get("model_type")))
    if artifact.format != "hf":
        raise ConfigError(f"prune reads an 'hf' image-classification artifact, got {artifact.format!r}")
    if config.layers:
        raise ConfigError("--layers (removing whole layers) is implemented for text encoders; for a ViT use --heads/--ffn")
    if config.recover_steps:
        raise ConfigError("--recover-steps is implemented for text encoders; recover a pruned ViT with kiln finetune "
                          "on its output")
    if config.kind == "structured" and train is None:
        raise ConfigError("structured pruning scores heads and neurons on data: pass --data IMAGE_FOLDER (or mnist-5k:train)")
    labels = [artifact.labels[i] for i in sorted(artifact.labels)]
    for name, data in (("--data", train), ("--eval", dev)):
        if data is not None and list(data.label_names) != labels:
            raise ConfigError(f"{name} has labels {list(data.label_names)}; the model's are {labels}")
    prep = preprocessing_of(artifact.meta)
    started = time.perf_counter()
    with atomic_output(out, force, source=artifact.path) as staged:
        model = load_torch_model(artifact)
        dv = tensors(dev, prep) if dev is not None else None
        metrics: dict[str, Any] = {"parameters_before": count_parameters(model)}
        if dv is not None:
            metrics["eval_before"] = evaluate(model, *dv, len(labels), "cpu")
        if config.kind == "structured":
            assert train is not None
            # a seeded random sample: image folders are sorted by label, so the first n would be one or two digits
            pick = np.random.default_rng(config.seed).permutation(len(train))[:config.samples]
            x, y = tensors(dataclasses.replace(train, inputs=[train.inputs[i] for i in pick],
                                               labels=[train.labels[i] for i in pick]), prep)
            progress(f"scoring heads and FFN neurons on {len(x)} training images (Taylor importance)")
            batches = (({"pixel_values": torch.from_numpy(x[s:s + config.batch_size])},
                        torch.from_numpy(y[s:s + config.batch_size])) for s in range(0, len(x), config.batch_size))
            head_scores, ffn_scores = taylor_scores(model, batches)
            rh = choose_removed(head_scores, config.heads, min_keep=1) if config.heads else [[] for _ in head_scores]
            rn = choose_removed(ffn_scores, config.ffn, min_keep=1) if config.ffn else [[] for _ in ffn_scores]
            metrics["structure"] = remove_units_(model, rh, rn)
            progress(f"kept heads per layer {metrics['structure']['heads']}, FFN neurons per layer {metrics['structure']['ffn']}")
        else:
            per = magnitude_prune_(model, config)
            metrics["sparsity"] = per.pop("total")
            metrics["sparsity_per_matrix"] = per
            progress(f"{config.kind}: {metrics['sparsity']:.3f} of encoder weights are zero ({len(per)} matrices)")
        if dv is not None:
            metrics["eval"] = evaluate(model, *dv, len(labels), "cpu")
        metrics["parameters_after"] = count_parameters(model)
        model.eval().save_pretrained(str(staged), safe_serialization=True)
        # transformers 5 saves ViT weights under its legacy names (vit.encoder.layer.N.attention.attention.query)
        # and renames them only inside from_pretrained, which cannot build per-layer sizes; the structured
        # loader (torch_structure.build_structured) loads by the module's own names, so store those
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(staged / "model.safetensors"),
                  metadata={"format": "pt"})
        shutil.copy2(artifact.path / "preprocessor_config.json", staged / "preprocessor_config.json")
        meta = {**artifact.meta, "weights_file": "model.safetensors"}
        if config.kind == "structured":
            s = metrics["structure"]
            meta["structure"] = {"heads": s["heads"], "ffn": s["ffn"], "layers": len(s["heads"])}
        tmpl = Artifact(staged, "hf", artifact.task, artifact.inputs, artifact.outputs, artifact.lineage, meta)
        return finish(staged, out, tmpl, artifact, "prune", asdict(config), started, metrics)


def prune_task(source: str) -> str:
    """Before loading: the task `kiln prune` loads SOURCE as (a ViT is pruned as an image classifier); a CNN
    (by its Kiln manifest's or its config's model_type) gets one clear line."""
    import json

    from runtime.tasks.vision import FAMILY

    path = Path(source)
    folder = path if path.is_dir() else path.parent
    for name in ("manifest.json", "config.json"):
        try:
            d = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(d, dict):
            continue
        model_type = d.get("model_type") or (d.get("meta") or {}).get("model_type")
        if d.get("task") in FAMILY.tasks or model_type in FAMILY.model_types:
            check_prunable(str(model_type))
            return "image-classification"
    return "text-classification"
