"""`kiln prune`: a smaller classifier (structured heads/FFN/layers, unstructured magnitude, or 2:4)."""

from __future__ import annotations

from pathlib import Path

import click

from exporter.cli.common import (
    choice, data_option, data_options, emit, eval_data_option, example, force_option, given_options, json_option,
    output_option, progress,
)
from exporter.cli.describe import describe
from runtime.session import DEVICES


@click.command(epilog=example(
    "kiln prune ft -o ft-pruned --heads 0.33 --ffn 0.4 --data movie-snippets:train \\",
    "    --eval-data movie-snippets:dev --recover-steps 400 --distill",
    "kiln prune ft -o ft-sparse --sparsity 0.5"))
@click.argument("artifact")
@output_option()
@click.option("--layers", default=0, show_default=True, type=int, help="Structured: whole encoder layers to remove.")
@click.option("--heads", default=0.0, show_default=True, type=float, help="Structured: fraction of attention heads to remove.")
@click.option("--ffn", default=0.0, show_default=True, type=float, help="Structured: fraction of FFN neurons to remove.")
@click.option("--sparsity", type=float, help="Unstructured magnitude pruning: fraction of encoder weights to zero.")
@click.option("--pattern", type=choice(["2:4"]), help="Semi-structured 2:4 sparsity (2 of every 4 weights zero).")
@click.option("--scope", type=choice(["global", "layer"]), default="global", show_default=True,
              help="Unstructured: one threshold for all matrices (global) or one per matrix (layer).")
@data_option("Training data (structured: importance scores and recovery), e.g. movie-snippets:train.")
@eval_data_option("Labelled data: accuracy before/after, best recovery checkpoint (e.g. movie-snippets:dev).")
@click.option("--samples", default=512, show_default=True, type=int, help="Examples used to score importance.")
@click.option("--recover-steps", default=0, show_default=True, type=int, help="Fine-tuning steps after removal.")
@click.option("--recover-lr", default=5e-5, show_default=True, type=float, help="Learning rate of the recovery.")
@click.option("--eval-every", type=int, help="Recovery: steps between evaluations on --eval-data (default: four "
              "evaluations over the recovery; each reads the whole set).")
@click.option("--distill", is_flag=True, help="Recovery also learns the unpruned model's logits.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for sampling and recovery.")
@click.option("--device", type=choice(list(DEVICES)), default="cpu", show_default=True,
              help="Where the recovery fine-tuning runs (cuda: a GPU; scoring stays on the CPU).")
@data_options
@force_option
@json_option
def prune(artifact: str, out: Path, layers: int, heads: float, ffn: float, sparsity: float | None, pattern: str | None,
          scope: str, data: str | None, eval_data: str | None, samples: int, recover_steps: int, recover_lr: float,
          eval_every: int | None, distill: bool, seed: int, device: str, text_column: str, label_column: str, force: bool,
          as_json: bool) -> None:
    """Make a classifier smaller: structured (--heads/--ffn/--layers), unstructured (--sparsity) or 2:4 (--pattern 2:4)."""
    from calibration.sources import labelled_for
    from exporter.load import load_checkpoint
    from exporter.prune import PruneConfig, check_options_for, kind_of
    from exporter.prune import prune as run_prune
    from exporter.prune_vision import prune_task
    from exporter.stage import check_output
    from runtime.tasks import family_for

    kind = kind_of(layers, heads, ffn, sparsity, pattern)
    task = prune_task(artifact)  # a ViT prunes on images; a CNN is refused here, before loading
    check_options_for(kind, given_options(click.get_current_context()), family_for(task).name)
    config = PruneConfig(kind=kind, layers=layers, heads=heads, ffn=ffn,
                         sparsity=sparsity if sparsity is not None else 0.5, scope=scope, samples=samples,
                         recover_steps=recover_steps, recover_lr=recover_lr, recover_eval_every=eval_every,
                         distill=distill, seed=seed, device=device)
    check_output(out.absolute(), force)
    source = load_checkpoint(artifact, task)
    names = [source.labels[i] for i in sorted(source.labels)]
    train = labelled_for(task, data, text_column, label_column, names) if data else None
    dev = labelled_for(task, eval_data, text_column, label_column, names) if eval_data else None
    art = run_prune(source, config, out, train=train, dev=dev, force=force, progress=progress,
                    show_bar=not progress.quiet)
    m = art.lineage[-1].metrics
    summary = [describe(art), f"parameters {m['parameters_before']:,} -> {m['parameters_after']:,}"]
    if "structure" in m:
        summary.append(f"heads per layer {m['structure']['heads']}, FFN neurons per layer {m['structure']['ffn']}")
    if "sparsity" in m:
        summary.append(f"sparsity {m['sparsity']:.3f} of encoder weights (dense runtimes get no speed from this; see README)")
    for key in ("eval_before", "eval_after_removal", "eval"):
        if key in m:
            summary.append(f"{key.replace('_', ' ')}: accuracy {m[key]['accuracy']:.4f}")
    emit(art.to_manifest() | {"path": str(art.path)}, as_json, lambda: "\n".join(summary))
