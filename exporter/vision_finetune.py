"""finetune_images: train a Hugging Face image classifier (from a packaged config, a config.json or a
checkpoint) on an image folder / mnist-5k; the output is an `hf` artifact `kiln export` reads.

Images are decoded and preprocessed once (the artifact's own preprocessing, so training sees exactly what
the runtime will feed), then trained with AdamW, linear warm-up/decay, per-epoch evaluation on dev,
best-state tracking and early stopping, like the text loop in exporter/training.py.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from calibration.images import LabelledImages
from exporter.stage import Progress, atomic_output, finish, quiet
from exporter.training import check_cuda
from runtime.artifact import Artifact, Step, hash_files, library_versions
from runtime.errors import ConfigError, DataError, SourceError
from runtime.tasks.metrics import classification_metrics
from runtime.tasks.vision import FAMILY, ImagePreprocessing, hf_preprocessing, preprocess_images

TASK = "image-classification"


@dataclass(frozen=True)
class ImageFinetuneConfig:
    epochs: int = 10
    lr: float = 2e-3
    batch_size: int = 64
    warmup_ratio: float = 0.05
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0
    patience: int | None = 3  # evaluations (epochs) without improvement before stopping; None: never
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"device must be cpu or cuda, got {self.device!r}")
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if self.patience is not None and (not isinstance(self.patience, int) or self.patience < 1):
            raise ConfigError(f"patience must be a positive integer or unset, got {self.patience!r}")
        if not 0 < self.lr < 1:
            raise ConfigError(f"lr must be in (0, 1), got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


def hf_processor_config(prep: ImagePreprocessing) -> dict[str, Any]:
    """A preprocessor_config.json transformers and `kiln export` both read (ImagePreprocessing.from_hf)."""
    if prep.resize_shortest is not None or prep.channel_order != "RGB":
        raise ConfigError("training writes plain resize preprocessing (no crop, RGB order)")
    return {"image_processor_type": "ViTImageProcessor", "do_resize": True,
            "size": {"height": prep.size[0], "width": prep.size[1]}, "resample": {"nearest": 0, "bilinear": 2,
                                                                                  "bicubic": 3}[prep.resample],
            "do_rescale": True, "rescale_factor": prep.scale, "do_normalize": True,
            "image_mean": list(prep.mean), "image_std": list(prep.std)}


def start_model(source: str, label_names: list[str]) -> tuple[Any, ImagePreprocessing, str]:
    """(model with a fresh head for label_names, its preprocessing, a description): from a packaged config
    name, a config.json (random init), or a Hugging Face checkpoint directory (its weights)."""
    import transformers

    from exporter.vision_configs import VISION_CONFIGS

    transformers.utils.logging.disable_progress_bar()
    labels = {"num_labels": len(label_names), "id2label": dict(enumerate(label_names)),
              "label2id": {n: i for i, n in enumerate(label_names)}}
    if source in VISION_CONFIGS:
        entry = VISION_CONFIGS[source]
        cfg = dict(entry["config"])
        config = transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg, **labels)
        prep = ImagePreprocessing(**entry["preprocessing"])
        return transformers.AutoModelForImageClassification.from_config(config), prep, f"packaged config {source}"
    path = Path(source)
    if path.is_file() and path.suffix == ".json":
        try:
            raw = json.loads(path.read_text())
            config = transformers.AutoConfig.for_model(raw.pop("model_type"), **raw | labels)
        except (ValueError, KeyError, TypeError) as e:
            raise SourceError(f"{path} is not a Hugging Face model config ({e})") from None
        FAMILY.input_specs(config.model_type, config.to_dict())  # an unsupported type fails here, listing the valid ones
        prep = hf_preprocessing(path.parent, config.to_dict())  # preprocessor_config.json beside it
        return transformers.AutoModelForImageClassification.from_config(config), prep, f"config {path}"
    from exporter.load import load_checkpoint, load_torch_model

    art = load_checkpoint(source, TASK)
    model = load_torch_model(art, num_labels=len(label_names))
    model.config.id2label, model.config.label2id = labels["id2label"], labels["label2id"]
    return model, ImagePreprocessing.from_dict(art.meta["preprocessing"]), f"checkpoint {source}"


def tensors(data: LabelledImages, prep: ImagePreprocessing) -> tuple[np.ndarray, np.ndarray]:
    return np.stack(preprocess_images(data.paths, prep)), np.asarray(data.labels, dtype=np.int64)


def evaluate(model: Any, x: np.ndarray, y: np.ndarray, n_labels: int, device: str, batch: int = 256) -> dict[str, Any]:
    import torch

    model.eval()
    with torch.inference_mode():
        logits = np.concatenate([model(pixel_values=torch.from_numpy(x[s:s + batch]).to(device)).logits.float().cpu().numpy()
                                 for s in range(0, len(x), batch)])
    model.train()
    return classification_metrics(logits.argmax(-1), y, n_labels)


def train_images_(model: Any, x: np.ndarray, y: np.ndarray, dev: tuple[np.ndarray, np.ndarray] | None,
                  cfg: ImageFinetuneConfig, n_labels: int, progress: Progress) -> dict[str, Any]:
    """Train in place; at the end the model holds the best weights seen on dev (or the last)."""
    import torch
    import torch.nn.functional as F
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    check_cuda(cfg.device)
    model.to(cfg.device).train()
    per_epoch = -(-len(x) // cfg.batch_size)
    total = per_epoch * cfg.epochs
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]  # biases and norms
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup_ratio * total), total)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    history, best, best_acc, bad, step, started = [], None, -1.0, 0, 0, time.perf_counter()
    best_metrics: dict[str, Any] = {}
    for epoch in range(cfg.epochs):
        order = torch.from_numpy(rng.permutation(len(x)))
        running = 0.0
        for s in range(0, len(x), cfg.batch_size):
            idx = order[s:s + cfg.batch_size]
            logits = model(pixel_values=xt[idx].to(cfg.device)).logits
            loss = F.cross_entropy(logits.float(), yt[idx].to(cfg.device))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            running += loss.item() * len(idx)
            step += 1
        row: dict[str, Any] = {"epoch": epoch + 1, "step": step, "loss": round(running / len(x), 5)}
        if dev is not None:
            metrics = evaluate(model, dev[0], dev[1], n_labels, cfg.device)
            row |= {k: v for k, v in metrics.items() if k != "confusion"}
            if metrics["accuracy"] > best_acc:
                best_acc, bad, best, best_metrics = metrics["accuracy"], 0, copy.deepcopy(model.state_dict()), metrics
            else:
                bad += 1
        history.append(row)
        progress(f"epoch {epoch + 1}/{cfg.epochs}: loss {row['loss']:.4f}"
                 + (f", eval accuracy {row['accuracy']:.4f}" if dev is not None else ""))
        if cfg.patience is not None and bad >= cfg.patience:
            progress(f"early stopping: no improvement in {bad} evaluations")
            break
    if best is not None:
        model.load_state_dict(best)
    model.eval().to("cpu")
    return {"eval": best_metrics, "history": history, "steps": step,
            "train_seconds": round(time.perf_counter() - started, 1)}


def finetune_images(source: str, train: LabelledImages, dev: LabelledImages | None, config: ImageFinetuneConfig,
                    out: str | Path, force: bool = False, progress: Progress = quiet) -> Artifact:
    """Train an image classifier; the `hf` artifact records data sha256, hyper-parameters and eval metrics."""
    if dev is not None and dev.label_names != train.label_names:
        raise DataError(f"eval labels {dev.label_names} differ from training labels {train.label_names}")
    started = time.perf_counter()
    with atomic_output(out, force) as staged:
        model, prep, origin = start_model(source, train.label_names)
        progress(f"decoding {len(train)} training images" + (f" and {len(dev)} eval images" if dev else "")
                 + f" ({prep.channels} channel(s), {prep.size[0]}x{prep.size[1]})")
        x, y = tensors(train, prep)
        dv = tensors(dev, prep) if dev is not None else None
        n_params = sum(p.numel() for p in model.parameters())
        progress(f"training {model.config.model_type} ({origin}, {n_params:,} parameters) for {config.epochs} epochs")
        result = train_images_(model, x, y, dv, config, len(train.label_names), progress)
        model.save_pretrained(str(staged), safe_serialization=True)
        (staged / "preprocessor_config.json").write_text(json.dumps(hf_processor_config(prep), indent=2) + "\n")
        cfg = model.config.to_dict()
        meta = FAMILY.checkpoint_meta(staged, cfg, TASK) | {"weights_file": "model.safetensors"}
        inputs = FAMILY.input_specs(cfg["model_type"], cfg)
        outputs = FAMILY.output_specs(TASK, {"num_labels": len(train.label_names)})
        load = Step("load", {"source": source, "task": TASK}, 0.0, versions=library_versions())
        start = Artifact(staged, "hf", TASK, inputs, outputs, (load,), meta, hash_files(staged))
        metrics = result | {"parameters": n_params, "origin": origin,
                            "data": {"train": {"source": train.source, "sha256": train.sha256, "n": len(train)},
                                     "eval": {"source": dev.source, "sha256": dev.sha256, "n": len(dev)} if dev else None}}
        return finish(staged, out, start, Artifact(Path(source), "hf", TASK, inputs, outputs, (load,), meta),
                      "finetune", asdict(config), started, metrics)


# text-loop options the image loop does not have: given for an image model, they are refused, not ignored
TEXT_ONLY = ("max_steps", "eval_every", "lora", "bf16")


def is_image_finetune(source: str, data: str) -> bool:
    """Image training when SOURCE is a packaged vision config or the data is an image folder / mnist-5k."""
    from calibration.images import is_image_source
    from exporter.vision_configs import VISION_CONFIGS

    return source in VISION_CONFIGS or is_image_source(data)


def finetune_images_from(source: str, data: str, eval_data: str | None, out: str | Path, force: bool = False,
                         options: dict[str, Any] | None = None, progress: Any = None) -> Artifact:
    """`kiln finetune` for images, callable the same way from Python: SOURCE (a packaged vision config, an HF
    config or checkpoint), DATA / EVAL_DATA (image folders or mnist-5k:SPLIT), `options` the loop's settings
    (epochs, lr, batch_size, warmup_ratio, patience, seed, device); text-only options are refused."""
    from calibration.images import load_image_folder
    from exporter.stage import check_output, quiet

    options = options or {}
    refused = [f"--{k.replace('_', '-')}" for k in TEXT_ONLY if options.get(k)]
    if refused:
        verb = "applies" if len(refused) == 1 else "apply"
        raise ConfigError(f"{', '.join(refused)} {verb} to text models only; image fine-tuning takes --epochs, --lr, "
                          "--batch-size, --warmup-ratio, --patience, --seed and --device")
    keys = ("epochs", "lr", "batch_size", "warmup_ratio", "patience", "seed", "device")
    config = ImageFinetuneConfig(**{k: options[k] for k in keys if options.get(k) is not None})
    check_output(Path(out).absolute(), force)
    train = load_image_folder(data)
    dev = load_image_folder(eval_data, train.label_names) if eval_data else None
    return finetune_images(source, train, dev, config, out, force=force, progress=progress or quiet)
