"""`kiln finetune`: a checkpoint + labelled data -> a fine-tuned classifier (text or images)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from exporter.cli.common import (
    batch_size_option, data_option, data_options, emit, eval_data_option, example, force_option, json_option,
    output_option, progress,
)
from exporter.cli.describe import describe
from runtime.session import DEVICES


def eval_summary(metrics: dict[str, Any]) -> str:
    ev = metrics.get("eval") or {}
    if "accuracy" not in ev:  # no dev data: say so rather than print nan
        return "\neval      not evaluated (give --eval-data to measure accuracy and keep the best checkpoint)"
    f1 = f", macro-F1 {ev['macro_f1']:.4f}" if "macro_f1" in ev else ""
    steps = f" after {metrics['steps']} steps" if "steps" in metrics else ""
    return f"\nbest eval accuracy {ev['accuracy']:.4f}{f1}{steps}"


@click.command(epilog=example(
    "kiln finetune minilm --data movie-snippets:train --eval-data movie-snippets:dev -o ft",
    "kiln finetune resnet-tiny-mnist --data mnist-5k:train --eval-data mnist-5k:dev -o rn"))
@click.argument("source")
@data_option("Training data: CSV/TSV/JSONL or movie-snippets:train; images: a folder with one subfolder per "
             "label, or mnist-5k:train.", required=True)
@eval_data_option("Labelled data for model selection and early stopping (e.g. movie-snippets:dev).")
@output_option()
@click.option("--epochs", type=int, help="Passes over the data (default: text 3, images 10).")
@click.option("--max-steps", type=int, help="Stop after this many steps (overrides --epochs; text models only).")
@click.option("--lr", type=float, help="Peak learning rate (default: text 1e-4, images 2e-3).")
@batch_size_option(None, "Examples per step (default: text 32, images 64).")
@click.option("--max-length", default=64, show_default=True, type=int, help="Tokens per text (longer texts are cut).")
@click.option("--warmup-ratio", default=0.06, show_default=True, type=float, help="Share of steps spent warming up.")
@click.option("--patience", type=int, help="Evaluations without improvement before stopping (default: text 2, images 3).")
@click.option("--eval-every", type=int, help="Steps between evaluations (default: each epoch).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for initialisation and shuffling.")
@click.option("--lora", is_flag=True, help="Train LoRA adapters (merged into the weights on save).")
@click.option("--lora-r", default=8, show_default=True, type=int, help="LoRA rank.")
@click.option("--device", type=click.Choice(list(DEVICES)), default="cpu", show_default=True, help="Where to train.")
@click.option("--bf16", is_flag=True, help="bfloat16 autocast for the forward passes.")
@data_options
@force_option
@json_option
def finetune(source: str, data: str, eval_data: str | None, out: Path, epochs: int | None, max_steps: int | None,
             lr: float | None, batch_size: int | None, max_length: int, warmup_ratio: float, patience: int | None,
             eval_every: int | None, seed: int, lora: bool, lora_r: int, device: str, bf16: bool, text_column: str,
             label_column: str, force: bool, as_json: bool) -> None:
    """Fine-tune SOURCE as a classifier: text (`minilm`, an HF checkpoint; CSV/TSV/JSONL data) or images
    (`vit-tiny-mnist`, `resnet-tiny-mnist`, an HF config.json or checkpoint; an image folder or mnist-5k)."""
    from calibration.datasets import load_labelled
    from exporter.vision_finetune import finetune_images_from, is_image_finetune

    if is_image_finetune(source, data):
        given = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "warmup_ratio": warmup_ratio,
                 "patience": patience, "seed": seed, "device": device, "max_steps": max_steps,
                 "eval_every": eval_every, "lora": lora, "bf16": bf16}
        art = finetune_images_from(source, data, eval_data, out, force, given, progress)
        emit(art.to_manifest() | {"path": str(art.path)}, as_json,
             lambda: describe(art) + eval_summary(art.lineage[-1].metrics))
        return
    from exporter.finetune import FinetuneConfig
    from exporter.finetune import finetune as run_finetune
    from exporter.load import load_checkpoint
    from exporter.stage import check_output

    config = FinetuneConfig(epochs=epochs or 3, max_steps=max_steps, lr=lr or 1e-4, batch_size=batch_size or 32,
                            max_length=max_length, warmup_ratio=warmup_ratio, patience=patience or 2,
                            eval_every=eval_every, seed=seed, lora=lora, lora_r=lora_r, device=device, bf16=bf16)
    check_output(out.absolute(), force)
    train = load_labelled(data, text_column, label_column)
    dev = load_labelled(eval_data, text_column, label_column, train.label_names) if eval_data else None
    art = run_finetune(load_checkpoint(source, "text-classification"), train, dev, config, out, force=force,
                       progress=progress, show_bar=not progress.quiet)
    emit(art.to_manifest() | {"path": str(art.path)}, as_json,
         lambda: describe(art) + eval_summary(art.lineage[-1].metrics))
