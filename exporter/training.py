"""The training loop shared by finetune and prune recovery: length-grouped batches, AdamW + linear
warm-up/decay, gradient clipping, optional distillation, evaluation, best-state tracking, early stopping."""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from calibration.datasets import LabelledTexts
from exporter.stage import Progress, quiet
from runtime.errors import ConfigError
from runtime.tasks.meta import ModelMeta
from runtime.tasks.metrics import classification_metrics
from runtime.tasks.text import FAMILY as TEXT
from runtime.tasks.text import tokenize_for_training

LOG_EVERY_S = 10.0  # training's progress line in a log (no terminal, no bar): the README promises one every 10 s
MEGABATCH = 50  # batches per length-sorted group: little padding, still a shuffled order


@dataclass
class Encoded:
    ids: list[list[int]]
    types: list[list[int]]
    labels: list[int]
    pad_id: int = 0  # the tokenizer's padding id (RoBERTa's is 1)


@dataclass
class TrainResult:
    best_metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    stopped_early: bool = False


def encode(tokenizer: Any, data: LabelledTexts, max_length: int) -> Encoded:
    ids, types = tokenize_for_training(tokenizer, data.texts, max_length)
    return Encoded(ids, types, list(data.labels), int(getattr(tokenizer, "pad_token_id", None) or 0))


def length_grouped_batches(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    order = list(range(len(lengths)))
    rng.shuffle(order)
    group = batch_size * MEGABATCH
    batches = []
    for start in range(0, len(order), group):
        chunk = sorted(order[start:start + group], key=lambda i: -lengths[i])
        batches += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(enc: Encoded, idx: Sequence[int], input_names: Sequence[str], device: str = "cpu") -> dict[str, Any]:
    import torch

    feed = TEXT.collate([(enc.ids[i], enc.types[i]) for i in idx], input_names, ModelMeta(pad_token_id=enc.pad_id))
    return {k: torch.from_numpy(v).to(device) for k, v in feed.items()}


def predict_logits(model: Any, enc: Encoded, input_names: Sequence[str], batch_size: int = 64, device: str = "cpu",
                   progress: Progress = quiet) -> np.ndarray:
    import torch

    from exporter.progress import ticker

    order = sorted(range(len(enc.ids)), key=lambda i: len(enc.ids[i]))
    out = np.zeros((len(order), model.config.num_labels), dtype=np.float32)
    was_training = model.training
    model.eval()
    tick = ticker(progress, f"evaluating on {len(order)} examples", len(order))
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            out[idx] = model(**collate(enc, idx, input_names, device)).logits.float().cpu().numpy()
            tick.update(s + len(idx))
    model.train(was_training)
    return out


def evaluate(model: Any, enc: Encoded, input_names: Sequence[str], device: str = "cpu",
             progress: Progress = quiet) -> dict[str, Any]:
    logits = predict_logits(model, enc, input_names, device=device, progress=progress)
    return classification_metrics(logits.argmax(-1), np.asarray(enc.labels), model.config.num_labels)


@dataclass(frozen=True)
class LoopConfig:
    epochs: int
    max_steps: int | None
    lr: float
    batch_size: int
    warmup_ratio: float
    weight_decay: float
    grad_clip: float
    seed: int
    patience: int | None
    eval_every: int | None
    distill_alpha: float = 0.5
    distill_temperature: float = 2.0
    device: str = "cpu"
    bf16: bool = False  # bfloat16 autocast for forward passes (weights and optimizer stay fp32)


def check_cuda(device: str) -> None:
    """--device cuda where torch sees no GPU: one line, before any work (fine-tuning, pruning's recovery)."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch.cuda.is_available() is False; use --device cpu")


def train_(model: Any, train: Encoded, dev: Encoded | None, input_names: Sequence[str], cfg: LoopConfig,
           teacher: Any = None, progress: Progress = quiet, show_bar: bool = True) -> TrainResult:
    """Train `model` in place; at the end it holds the best weights seen on `dev` (or the last)."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    device = cfg.device
    check_cuda(device)
    model.to(device)
    if teacher is not None:
        teacher.to(device)
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=cfg.bf16)
    lengths = [len(x) for x in train.ids]
    per_epoch = math.ceil(len(lengths) / cfg.batch_size)
    total = cfg.max_steps or per_epoch * cfg.epochs  # --max-steps overrides --epochs
    eval_every = cfg.eval_every or per_epoch
    decay = [p for n, p in model.named_parameters() if p.requires_grad and not any(k in n for k in ("bias", "LayerNorm", "layer_norm"))]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and any(k in n for k in ("bias", "LayerNorm", "layer_norm"))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup_ratio * total), total)
    labels_all = torch.tensor(train.labels)
    result = TrainResult(best_metrics={})
    best_state, best_acc, bad_evals = None, -1.0, 0
    started = time.perf_counter()
    model.train()
    if teacher is not None:
        teacher.eval()
    # disable=None: tqdm turns itself off when stderr is not a terminal (CI logs, files)
    bar = tqdm(total=total, desc="training", unit="step", disable=None if show_bar else True, leave=False)
    step, running = 0, None
    logged = time.monotonic()  # a log line at least every LOG_EVERY_S (a log has no bar; evaluations can be rare)
    while step < total:
        for idx in length_grouped_batches(lengths, cfg.batch_size, rng):
            feed = collate(train, idx, input_names, device)
            target = labels_all[idx].to(device)
            with autocast:
                logits = model(**feed).logits.float()
            loss = F.cross_entropy(logits, target)
            if teacher is not None:
                with torch.no_grad(), autocast:
                    t_logits = teacher(**feed).logits.float()
                T = cfg.distill_temperature
                kd = F.kl_div(F.log_softmax(logits / T, -1), F.softmax(t_logits / T, -1), reduction="batchmean") * T * T
                loss = cfg.distill_alpha * kd + (1 - cfg.distill_alpha) * loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{running:.4f}", best_acc=f"{max(best_acc, 0):.4f}")
            if bar.disable and time.monotonic() - logged >= LOG_EVERY_S and step < total:
                progress(f"step {step}/{total}: loss {running:.4f}")
                logged = time.monotonic()
            if dev is not None and (step % eval_every == 0 or step == total):
                metrics = evaluate(model, dev, input_names, device, progress) | {"step": step, "loss": round(running, 5)}
                result.history.append({k: v for k, v in metrics.items() if k != "confusion"})
                progress(f"step {step}/{total}: loss {running:.4f}, eval accuracy {metrics['accuracy']:.4f}, "
                         f"macro-F1 {metrics['macro_f1']:.4f}")
                if metrics["accuracy"] > best_acc:
                    best_acc, bad_evals = metrics["accuracy"], 0
                    best_state = copy.deepcopy(model.state_dict())
                    result.best_metrics = metrics
                else:
                    bad_evals += 1
                    if cfg.patience is not None and bad_evals >= cfg.patience:
                        progress(f"early stopping: no improvement in {bad_evals} evaluations")
                        result.stopped_early = True
                        step = total
                model.train()
            if step >= total:
                break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval().to("cpu")  # saved and exported from the CPU
    result.steps, result.seconds = step, round(time.perf_counter() - started, 1)
    return result
