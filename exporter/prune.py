"""prune: structured (attention heads, FFN neurons — physically removed), unstructured magnitude, 2:4.

Structured pruning is the only kind that makes a dense runtime faster; unstructured and 2:4 sparsity
only make weights compressible or fast on sparse kernels (2:4 sparse tensor cores), never on onnxruntime CPU.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from calibration.datasets import LabelledTexts
from exporter.load import load_torch_model
from exporter.progress import ticker
from exporter.stage import Progress, atomic_output, finish, quiet
from exporter.training import LoopConfig, check_cuda, collate, encode, evaluate, train_
from runtime.artifact import Artifact
from runtime.backends.torch_structure import STRUCTURE_KEY, encoder_layers, head_size, part, shrink_layer_
from runtime.errors import ConfigError, TaskError
from runtime.session import DEVICES

KINDS = ("structured", "unstructured", "2:4")
SCOPES = ("global", "layer")


def kind_of(layers: int = 0, heads: float = 0.0, ffn: float = 0.0, sparsity: float | None = None,
            pattern: str | None = None) -> str:
    """The one kind of pruning asked for by these amounts (the CLI's --layers/--heads/--ffn, --sparsity, --pattern)."""
    chosen = [k for k, on in (("structured", heads or ffn or layers), ("unstructured", sparsity is not None),
                              ("2:4", pattern)) if on]
    if len(chosen) != 1:
        raise ConfigError("choose one kind: --layers/--heads/--ffn (structured), --sparsity (unstructured) "
                          "or --pattern 2:4")
    return chosen[0]


# the CLI flags that ask for each kind, and the kinds that use each `kiln prune` setting (by parameter name; the
# others apply to every kind). A setting given for a kind that ignores it is refused: silently ignored, it
# reads as applied (unstructured and 2:4 zero weights in place: no data, no recovery)
KIND_FLAGS = {"structured": "--heads/--ffn/--layers", "unstructured": "--sparsity", "2:4": "--pattern 2:4"}
_STRUCTURED = ("structured",)
USED_BY: dict[str, tuple[str, ...]] = {
    "data": _STRUCTURED, "samples": _STRUCTURED, "recover_steps": _STRUCTURED, "recover_lr": _STRUCTURED,
    "eval_every": _STRUCTURED, "distill": _STRUCTURED, "scope": ("unstructured",), "device": _STRUCTURED,
}
RECOVERY = ("recover_steps", "recover_lr", "eval_every", "distill", "device")  # --device moves the recovery


def check_options_for(kind: str, given: dict[str, str], family: str) -> None:
    """Refuse a setting that pruning of `kind` (on a model of `family`) would ignore. `given`: the settings
    the user set, name -> the spelling to name it by; defaults are not given."""
    for name, spelling in given.items():
        users = USED_BY.get(name, (kind,))
        if kind not in users:
            raise ConfigError(f"{spelling} is not used by {kind} pruning ({KIND_FLAGS[kind]}); it is an option of "
                              + " or ".join(f"{k} pruning ({KIND_FLAGS[k]})" for k in users))
        if family == "vision" and name in RECOVERY:
            raise ConfigError(f"{spelling}: recovery after pruning is implemented for text encoders; recover a "
                              "pruned ViT with kiln finetune on its output")


@dataclass(frozen=True)
class PruneConfig:
    kind: str = "structured"
    layers: int = 0  # structured: whole encoder layers to remove (the least important, by loss when skipped)
    heads: float = 0.25  # structured: fraction of attention heads to remove
    ffn: float = 0.3  # structured: fraction of FFN neurons to remove
    sparsity: float = 0.5  # unstructured: fraction of encoder weights set to zero
    scope: str = "global"  # unstructured: one threshold for all matrices, or one per matrix
    samples: int = 512  # structured: training examples used to score importance
    recover_steps: int = 0  # structured: fine-tuning steps after removal
    recover_lr: float = 5e-5
    # recovery: steps between evaluations on the dev data (None: four over the run); each one reads the whole set
    recover_eval_every: int | None = None
    distill: bool = False  # recovery learns from the unpruned model's logits as well as the labels
    batch_size: int = 32
    max_length: int | None = None  # default: the model's own (from its manifest)
    seed: int = 0
    device: str = "cpu"  # structured: where the recovery fine-tuning runs (scoring stays on the CPU)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown prune kind {self.kind!r}; valid: {', '.join(KINDS)}")
        if self.scope not in SCOPES:
            raise ConfigError(f"unknown scope {self.scope!r}; valid: {', '.join(SCOPES)}")
        for name in ("heads", "ffn"):
            v = getattr(self, name)
            if not 0 <= v < 1:
                raise ConfigError(f"--{name} must be in [0, 1) (a fraction to remove), got {v}")
        if not 0 < self.sparsity < 1:
            raise ConfigError(f"--sparsity must be in (0, 1), got {self.sparsity}")
        if not isinstance(self.layers, int) or self.layers < 0:
            raise ConfigError(f"--layers must be a whole number >= 0, got {self.layers!r}")
        if self.kind == "structured" and self.heads == 0 and self.ffn == 0 and self.layers == 0:
            raise ConfigError("structured pruning needs --layers, --heads or --ffn above 0")
        for name in ("samples", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.recover_eval_every is not None and self.recover_eval_every < 1:
            raise ConfigError(f"--eval-every must be >= 1, got {self.recover_eval_every}")
        if self.recover_steps < 0:
            raise ConfigError(f"--recover-steps must be >= 0, got {self.recover_steps}")
        if self.distill and self.recover_steps == 0:
            raise ConfigError("--distill needs --recover-steps > 0")
        if self.device not in DEVICES:
            raise ConfigError(f"unknown device {self.device!r}; valid: {', '.join(DEVICES)}")
        if self.device != "cpu" and self.kind != "structured":
            raise ConfigError(f"--device {self.device} moves structured pruning's recovery fine-tuning; {self.kind} "
                              "pruning trains nothing, so it runs where it is")
        if self.device != "cpu" and self.recover_steps == 0:
            raise ConfigError(f"--device {self.device} moves the recovery fine-tuning; it needs --recover-steps > 0")


# -- structured ------------------------------------------------------------------------------------

def taylor_importance(model: Any, enc: Any, input_names: list[str], batch_size: int,
                      progress: Progress = quiet) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """taylor_scores over a text sample (encoded texts, batch_size at a time), with progress."""
    import torch

    labels = torch.tensor(enc.labels)
    tick = ticker(progress, "scoring heads and FFN neurons", len(enc.ids))

    def batches() -> Iterator[tuple[dict[str, Any], Any]]:
        for start in range(0, len(enc.ids), batch_size):
            tick.update(start)
            idx = list(range(start, min(start + batch_size, len(enc.ids))))
            yield collate(enc, idx, input_names), labels[idx]
        tick.update(len(enc.ids))

    return taylor_scores(model, batches())


def taylor_scores(model: Any, batches: Iterable[tuple[dict[str, Any], Any]]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per head and per FFN neuron: sum over batches of |sum of w * dL/dw| over the unit's weights.

    The first-order Taylor estimate of how much the loss changes if the unit is removed
    (Molchanov et al. 2019); units whose output weights are zero score exactly 0. `batches` are
    (model inputs, labels) pairs: token ids for text, pixel_values for ViT.
    """
    import torch
    import torch.nn.functional as F

    layers = encoder_layers(model)
    d = head_size(model)
    n_heads = [part(layer, "q").out_features // d for layer in layers]
    heads = [np.zeros(n) for n in n_heads]
    neurons = [np.zeros(part(layer, "ffn_in").out_features) for layer in layers]
    model.eval()  # dropout off: scores reflect the model as it will run
    for inputs, labels in batches:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(**inputs).logits, labels).backward()
        with torch.no_grad():
            for li, layer in enumerate(layers):
                q, k, v, out = (part(layer, n) for n in ("q", "k", "v", "o"))
                per_row = sum((m.weight * m.weight.grad).sum(1) + m.bias * m.bias.grad for m in (q, k, v))
                per_col = (out.weight * out.weight.grad).sum(0)
                heads[li] += (per_row + per_col).view(n_heads[li], d).sum(1).abs().numpy()
                inter, ffn_out = part(layer, "ffn_in"), part(layer, "ffn_out")
                contrib = (inter.weight * inter.weight.grad).sum(1) + inter.bias * inter.bias.grad
                contrib = contrib + (ffn_out.weight * ffn_out.weight.grad).sum(0)
                neurons[li] += contrib.abs().numpy()
    model.zero_grad(set_to_none=True)
    return heads, neurons


def mean_loss(model: Any, enc: Any, input_names: list[str], batch_size: int) -> float:
    import torch
    import torch.nn.functional as F

    labels = torch.tensor(enc.labels)
    total = 0.0
    with torch.inference_mode():
        for start in range(0, len(enc.ids), batch_size):
            idx = list(range(start, min(start + batch_size, len(enc.ids))))
            logits = model(**collate(enc, idx, input_names)).logits
            total += float(F.cross_entropy(logits, labels[idx], reduction="sum"))
    return total / len(enc.ids)


def layer_importance(model: Any, enc: Any, input_names: list[str], batch_size: int,
                     progress: Progress = quiet) -> list[float]:
    """Per encoder layer: how much the loss on the sample rises when that layer alone is skipped."""
    import torch

    encoder = getattr(model, model.base_model_prefix).encoder
    layers = list(encoder.layer)
    model.eval()
    base = mean_loss(model, enc, input_names, batch_size)
    scores = []
    tick = ticker(progress, "scoring encoder layers", len(layers))
    try:
        for i in range(len(layers)):
            tick.update(i)
            encoder.layer = torch.nn.ModuleList(layers[:i] + layers[i + 1:])
            scores.append(mean_loss(model, enc, input_names, batch_size) - base)
    finally:
        encoder.layer = torch.nn.ModuleList(layers)
    tick.update(len(layers))
    return scores


def remove_layers_(model: Any, drop: list[int]) -> list[int]:
    """Physically remove whole encoder layers; the config's layer count follows."""
    import torch

    encoder = getattr(model, model.base_model_prefix).encoder
    kept = [i for i in range(len(encoder.layer)) if i not in set(drop)]
    encoder.layer = torch.nn.ModuleList([encoder.layer[i] for i in kept])
    model.config.num_hidden_layers = len(kept)
    return kept


def choose_removed(scores: list[np.ndarray], fraction: float, min_keep: int) -> list[list[int]]:
    """Globally remove the lowest-scoring fraction of units (scores normalised per layer), keeping >= min_keep per layer."""
    normed = [s / (np.linalg.norm(s) or 1.0) for s in scores]
    ranked = sorted((float(v), li, ui) for li, s in enumerate(normed) for ui, v in enumerate(s))
    budget = int(round(fraction * sum(len(s) for s in scores)))
    removed: list[list[int]] = [[] for _ in scores]
    for _, li, ui in ranked:
        if budget == 0:
            break
        if len(scores[li]) - len(removed[li]) > min_keep:
            removed[li].append(ui)
            budget -= 1
    return [sorted(r) for r in removed]


def remove_units_(model: Any, removed_heads: list[list[int]], removed_neurons: list[list[int]]) -> dict[str, list[Any]]:
    """Physically shrink each layer; record per-layer kept counts in the config for loading later."""
    d = head_size(model)
    kept: dict[str, list[Any]] = {"heads": [], "ffn": [], "kept_head_indices": []}
    for layer, rh, rn in zip(encoder_layers(model), removed_heads, removed_neurons):
        n_heads = part(layer, "q").out_features // d
        n_ffn = part(layer, "ffn_in").out_features
        keep_h = [h for h in range(n_heads) if h not in set(rh)]
        keep_n = [i for i in range(n_ffn) if i not in set(rn)]
        shrink_layer_(layer, d, keep_h, keep_n)
        kept["heads"].append(len(keep_h))
        kept["ffn"].append(len(keep_n))
        kept["kept_head_indices"].append(keep_h)
    setattr(model.config, STRUCTURE_KEY, {"heads": kept["heads"], "ffn": kept["ffn"]})
    return kept


# -- unstructured / 2:4 ----------------------------------------------------------------------------

def prunable_linears(model: Any) -> list[tuple[str, Any]]:
    return [(f"layer.{i}.{name}", m) for i, layer in enumerate(encoder_layers(model))
            for name, m in layer.named_modules() if m.__class__.__name__ == "Linear"]


def magnitude_prune_(model: Any, cfg: PruneConfig) -> dict[str, float]:
    """Zero weights in place (the mask is permanent: the zeros are the weights); return sparsity per matrix."""
    import torch

    mats = prunable_linears(model)
    with torch.no_grad():
        if cfg.kind == "2:4":
            for _, m in mats:
                w = m.weight  # groups of 4 consecutive inputs: keep the 2 largest magnitudes
                groups = w.view(w.shape[0], -1, 4)
                drop = groups.abs().argsort(dim=-1)[..., :2]
                groups.scatter_(-1, drop, 0.0)
        elif cfg.scope == "global":
            all_w = torch.cat([m.weight.abs().flatten() for _, m in mats])
            k = int(cfg.sparsity * all_w.numel())
            threshold = all_w.kthvalue(k).values if k > 0 else -1
            for _, m in mats:
                m.weight[m.weight.abs() <= threshold] = 0.0
        else:
            for _, m in mats:
                k = int(cfg.sparsity * m.weight.numel())
                if k:
                    m.weight[m.weight.abs() <= m.weight.abs().flatten().kthvalue(k).values] = 0.0
    per = {name: round(float((m.weight == 0).float().mean()), 4) for name, m in mats}
    zeros = sum(int((m.weight == 0).sum()) for _, m in mats)
    per["total"] = round(zeros / sum(m.weight.numel() for _, m in mats), 4)
    return per


# -- the stage -------------------------------------------------------------------------------------

def count_parameters(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def prune(artifact: Artifact, config: PruneConfig, out: str | Path, train: LabelledTexts | None = None,
          dev: LabelledTexts | None = None, force: bool = False, progress: Progress = quiet,
          show_bar: bool = True) -> Artifact:
    """Prune an `hf` classifier; the manifest records what was removed/zeroed per layer and the accuracy."""
    import transformers

    if artifact.family.name == "vision":  # ViT heads/FFN on images; CNNs refused (exporter/prune_vision.py)
        from exporter.prune_vision import prune_vit

        return prune_vit(artifact, config, out, train, dev, force, progress)  # type: ignore[arg-type]
    if artifact.format != "hf" or artifact.task != "text-classification":
        raise ConfigError(f"prune reads an 'hf' text-classification artifact, got {artifact.format!r} {artifact.task!r}")
    if config.kind == "structured" and train is None:
        raise ConfigError("structured pruning scores heads and neurons on data: pass --data train.csv")
    check_cuda(config.device)  # now, not after minutes of scoring on the CPU
    started = time.perf_counter()
    max_length = config.max_length or artifact.model_meta.max_length
    with atomic_output(out, force, source=artifact.path) as staged:
        model = load_torch_model(artifact)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(artifact.path))
        input_names = [s.name for s in artifact.inputs]
        dv = encode(tokenizer, dev, max_length) if dev is not None else None
        before = count_parameters(model)
        metrics: dict[str, Any] = {"parameters_before": before}
        if dv is not None:
            metrics["eval_before"] = evaluate(model, dv, input_names, progress=progress)
        if config.kind == "structured":
            assert train is not None
            tr = encode(tokenizer, train, max_length)
            sample = encode(tokenizer, train.subset(config.samples), max_length)
            progress(f"scoring heads and FFN neurons on {len(sample.ids)} training examples (Taylor importance)")
            teacher = copy.deepcopy(model) if config.distill else None
            if config.layers:
                n_layers = len(encoder_layers(model))
                if config.layers >= n_layers:
                    raise ConfigError(f"--layers {config.layers} would remove every layer; the model has {n_layers}")
                scores = layer_importance(model, sample, input_names, config.batch_size, progress)
                drop = sorted(sorted(range(n_layers), key=lambda i: scores[i])[:config.layers])
                metrics["layers"] = {"loss_increase_when_skipped": [round(x, 5) for x in scores], "removed": drop,
                                     "kept": remove_layers_(model, drop)}
                progress(f"removed encoder layers {drop} (loss increase when skipped: {[round(x, 4) for x in scores]})")
            head_scores, ffn_scores = taylor_importance(model, sample, input_names, config.batch_size, progress)
            rh = choose_removed(head_scores, config.heads, min_keep=1) if config.heads else [[] for _ in head_scores]
            rn = choose_removed(ffn_scores, config.ffn, min_keep=1) if config.ffn else [[] for _ in ffn_scores]
            kept = remove_units_(model, rh, rn)
            metrics["structure"] = kept
            progress(f"kept heads per layer {kept['heads']}, FFN neurons per layer {kept['ffn']}")
            if dv is not None:
                metrics["eval_after_removal"] = evaluate(model, dv, input_names, progress=progress)
            if config.recover_steps:
                progress(f"recovering with {config.recover_steps} fine-tuning steps" + (" + distillation" if teacher else ""))
                loop = LoopConfig(epochs=1, max_steps=config.recover_steps, lr=config.recover_lr,
                                  batch_size=config.batch_size, warmup_ratio=0.06, weight_decay=0.01, grad_clip=1.0,
                                  seed=config.seed, patience=None, eval_every=config.recover_eval_every or max(config.recover_steps // 4, 1),
                                  device=config.device)
                result = train_(model, tr, dv, input_names, loop, teacher=teacher, progress=progress, show_bar=show_bar)
                metrics["recovery"] = {"steps": result.steps, "seconds": result.seconds, "history": result.history}
        else:
            metrics["sparsity_per_matrix"] = magnitude_prune_(model, config)
            per = metrics["sparsity_per_matrix"]
            metrics["sparsity"] = per.pop("total")
            progress(f"{config.kind}: {metrics['sparsity']:.3f} of encoder weights are zero ({len(per)} matrices)")
        if dv is not None:
            metrics["eval"] = evaluate(model, dv, input_names, progress=progress)
        metrics["parameters_after"] = count_parameters(model)
        model.save_pretrained(str(staged), safe_serialization=True)
        tokenizer.save_pretrained(str(staged))
        meta = {**artifact.meta, "max_length": max_length, "weights_file": "model.safetensors", "tokenizer": "tokenizer.json"}
        if config.kind == "structured":
            meta["structure"] = {"heads": metrics["structure"]["heads"], "ffn": metrics["structure"]["ffn"],
                                 "layers": len(metrics["structure"]["heads"])}
        tmpl = Artifact(staged, "hf", artifact.task, artifact.inputs, artifact.outputs, artifact.lineage, meta)
        return finish(staged, out, tmpl, artifact, "prune", asdict(config), started, metrics)
