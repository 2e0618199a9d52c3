"""finetune: sequence classification on labelled text, full or LoRA (merged before saving)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from calibration.datasets import LabelledTexts
from exporter.load import load_torch_model
from exporter.stage import Progress, atomic_output, finish, quiet
from exporter.training import LoopConfig, encode, train_
from runtime.artifact import Artifact, TensorSpec
from runtime.errors import ConfigError, DataError


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 3
    max_steps: int | None = None
    lr: float = 1e-4
    batch_size: int = 32
    max_length: int = 64
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    patience: int | None = 2  # evaluations without improvement before stopping; None: never
    eval_every: int | None = None  # steps between evaluations; None: once per epoch
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    device: str = "cpu"
    bf16: bool = False  # bfloat16 autocast (CUDA or CPU); weights and optimizer state stay fp32

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"device must be cpu or cuda, got {self.device!r}")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "max_length": self.max_length,
                    "lora_r": self.lora_r}
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("max_steps", "patience", "eval_every"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a positive integer or unset, got {value!r}")
        if not 0 < self.lr < 1:
            raise ConfigError(f"lr must be in (0, 1), got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")

    def loop(self) -> LoopConfig:
        return LoopConfig(self.epochs, self.max_steps, self.lr, self.batch_size, self.warmup_ratio,
                          self.weight_decay, self.grad_clip, self.seed, self.patience, self.eval_every,
                          device=self.device, bf16=self.bf16)


def with_lora(model: Any, cfg: FinetuneConfig) -> Any:
    try:
        from peft import LoraConfig, TaskType, get_peft_model
    except ImportError:
        raise ConfigError("--lora needs the peft library; pip install 'modelkiln[export]'") from None
    lcfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                      lora_dropout=cfg.lora_dropout, target_modules=["query", "key", "value", "dense"])
    return get_peft_model(model, lcfg)


def label_model_(model: Any, names: list[str]) -> None:
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {n: i for i, n in enumerate(names)}


def save_hf(model: Any, tokenizer: Any, staged: Path) -> None:
    model.save_pretrained(str(staged), safe_serialization=True)
    tokenizer.save_pretrained(str(staged))


def finetune(artifact: Artifact, train: LabelledTexts, dev: LabelledTexts | None, config: FinetuneConfig,
             out: str | Path, force: bool = False, progress: Progress = quiet, show_bar: bool = True) -> Artifact:
    """Fine-tune a text classifier; the output `hf` artifact records data sha256, hyper-parameters, eval metrics."""
    import torch
    import transformers

    if artifact.format != "hf" or artifact.task != "text-classification":
        raise ConfigError(f"finetune needs an 'hf' text-classification source, got {artifact.format!r} "
                          f"{artifact.task!r} (pass --task text-classification)")
    if dev is not None and dev.label_names != train.label_names:
        raise DataError(f"eval labels {dev.label_names} differ from training labels {train.label_names}")
    started = time.perf_counter()
    with atomic_output(out, force, source=artifact.path) as staged:
        torch.manual_seed(config.seed)
        progress(f"loading {artifact.path} with a {len(train.label_names)}-label head")
        model = load_torch_model(artifact, num_labels=len(train.label_names))
        label_model_(model, train.label_names)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(artifact.path))
        input_names = [s.name for s in artifact.inputs]
        tr = encode(tokenizer, train, config.max_length)
        dv = encode(tokenizer, dev, config.max_length) if dev is not None else None
        if config.lora:
            model = with_lora(model, config)
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        progress(f"training {n_train:,} parameters on {len(train)} examples"
                 + (f", evaluating on {len(dev)}" if dev is not None else ""))
        result = train_(model, tr, dv, input_names, config.loop(), progress=progress, show_bar=show_bar)
        if config.lora:
            model = model.merge_and_unload()  # export sees a plain model
        save_hf(model, tokenizer, staged)
        meta = {**artifact.meta, "max_length": config.max_length, "labels": {str(i): n for i, n in enumerate(train.label_names)},
                "tokenizer": "tokenizer.json", "weights_file": "model.safetensors"}
        outputs = (TensorSpec("logits", "float32", ("batch", len(train.label_names))),)
        tmpl = Artifact(staged, "hf", artifact.task, artifact.inputs, outputs, artifact.lineage, meta)
        metrics = {"eval": result.best_metrics, "history": result.history, "steps": result.steps,
                   "train_seconds": result.seconds, "stopped_early": result.stopped_early,
                   "trainable_parameters": n_train,
                   "data": {"train": {"source": train.source, "sha256": train.sha256, "n": len(train)},
                            "eval": {"source": dev.source, "sha256": dev.sha256, "n": len(dev)} if dev else None}}
        return finish(staged, out, tmpl, artifact, "finetune", asdict(config), started, metrics)
