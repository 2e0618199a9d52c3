"""The `kiln` command line: each command builds a config, calls one API function, prints a table or JSON."""

from __future__ import annotations

import contextlib
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import click

from runtime.artifact import Artifact
from runtime.errors import ConfigError, DataError, KilnError


class KilnGroup(click.Group):
    """Turns every KilnError and usage error into one line on stderr and an exit code: the one place."""

    def main(self, args: Any = None, prog_name: str | None = None, **extra: Any) -> Any:  # type: ignore[override]
        extra.pop("standalone_mode", None)
        try:
            rv = super().main(args=args, prog_name=prog_name or "kiln", standalone_mode=False, **extra)
        except KilnError as e:
            fail(str(e), e.exit_code)
        except click.UsageError as e:
            where = f" (see '{e.ctx.command_path} --help')" if e.ctx else ""
            fail(e.format_message() + where, 2)
        except click.ClickException as e:
            fail(e.format_message(), e.exit_code)
        except (click.Abort, KeyboardInterrupt):
            fail("interrupted", 130)
        sys.exit(rv if isinstance(rv, int) else 0)


def fail(message: str, code: int) -> None:
    click.echo("error: " + " ".join(message.split()), err=True)
    sys.exit(code)


def progress(message: str) -> None:
    click.echo(f"[kiln {time.strftime('%H:%M:%S')}] {message}", err=True)


def emit(data: Any, as_json: bool, human: Callable[[], str]) -> None:
    click.echo(json.dumps(data, indent=2, default=str) if as_json else human())


json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
force_option = click.option("--force", is_flag=True, help="Replace a non-empty output directory.")
backend_option = click.option("--backend", default="auto", show_default=True,
                              help="auto, onnxruntime or torch (comma-separated for bench).")
device_option = click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")


@click.group(cls=KilnGroup, name="kiln")
@click.version_option(package_name="modelkiln", prog_name="kiln")
def main() -> None:
    """Kiln: fire a trained model into a fast, verified deployment artifact."""


@main.command()
@click.argument("source")
@click.option("--task", help="text-classification, token-classification or feature-extraction "
              "(default: the task in SOURCE's Kiln manifest).")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="Artifact directory to write.")
@click.option("--opset", default=17, show_default=True, type=int, help="ONNX opset (14..20).")
@click.option("--optimize", is_flag=True, help="Fuse Attention/LayerNorm/Gelu with onnxruntime's optimizer.")
@click.option("--trust-pickle", is_flag=True, help="Allow pickled .bin/.pt weights (they can run code).")
@force_option
@json_option
def export(source: str, task: str | None, out: Path, opset: int, optimize: bool, trust_pickle: bool, force: bool,
           as_json: bool) -> None:
    """Export SOURCE (a model directory, weights file, or `minilm`) to a validated ONNX artifact."""
    from exporter.load import load_checkpoint
    from exporter.onnx_export import OnnxConfig, to_onnx
    from exporter.stage import check_output

    config = OnnxConfig(opset=opset, optimize=optimize)
    check_output(out.absolute(), force)  # fail before loading anything heavy
    art = to_onnx(load_checkpoint(source, task, trust_pickle=trust_pickle), config, out, force=force, progress=progress)
    emit(art.to_manifest() | {"path": str(art.path)}, as_json, lambda: describe(art))


def describe(art: Artifact) -> str:
    lines = [f"artifact  {art.path}", f"format    {art.format}", f"task      {art.task}"]
    lines += [f"input     {s.describe()}" for s in art.inputs]
    lines += [f"output    {s.describe()}" for s in art.outputs]
    if art.labels:
        lines.append("labels    " + ", ".join(f"{k}={v}" for k, v in sorted(art.labels.items())))
    for step in art.lineage:
        summary = f"step      {step.stage} ({step.seconds:.1f}s)"
        val = step.metrics.get("validation")
        if val:
            worst = max(o["max_abs"] for o in val["outputs"].values())
            cos = min(o["cosine"] for o in val["outputs"].values())
            summary += f": validated on {val['batches']} batches, max abs diff {worst:.2e}, cosine {cos:.6f}"
        lines.append(summary)
    size = sum(f.stat().st_size for f in art.path.rglob("*") if f.is_file())
    lines.append(f"size      {size / 1e6:.1f} MB in {len(art.files)} files")
    return "\n".join(lines)


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--verify", is_flag=True, help="Recompute every file's sha256 against the manifest.")
@json_option
def inspect(artifact: Path, verify: bool, as_json: bool) -> None:
    """Show an artifact's inputs, outputs and lineage."""
    art = Artifact.load(artifact)
    data = art.to_manifest() | {"path": str(art.path.absolute())}
    if verify:
        bad = art.verify()
        data["verified"] = not bad
        if bad:
            raise KilnError(f"{artifact}: {len(bad)} file(s) missing or changed since export: {', '.join(bad)}")
    emit(data, as_json, lambda: describe(art) + ("\nverified  all files match the manifest" if verify else ""))


def read_texts(texts: tuple[str, ...], file: Path | None, csv_path: Path | None, column: str) -> list[str]:
    given = sum(bool(x) for x in (texts, file, csv_path))
    if given != 1:
        raise ConfigError("give exactly one of: TEXT arguments, --file lines.txt, or --csv data.csv")
    if texts:
        return list(texts)
    path = file or csv_path
    assert path is not None
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start})") from None
    if file:
        lines = [line for line in raw.splitlines() if line.strip()]
    else:
        reader = csv.DictReader(raw.splitlines())
        if not reader.fieldnames or column not in reader.fieldnames:
            raise DataError(f"{path} has no column {column!r}; its columns are {reader.fieldnames}")
        lines = [row[column] for row in reader]
    if not lines:
        raise DataError(f"{path} has no texts")
    return lines


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.argument("texts", nargs=-1)
@click.option("--file", type=click.Path(path_type=Path), help="A text file, one input per line.")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), help="A CSV file with a text column.")
@click.option("--column", default="text", show_default=True, help="The CSV column to read.")
@click.option("--batch-size", default=32, show_default=True, type=int)
@backend_option
@device_option
@json_option
def predict(artifact: Path, texts: tuple[str, ...], file: Path | None, csv_path: Path | None, column: str,
            batch_size: int, backend: str, device: str, as_json: bool) -> None:
    """Classify (or embed) texts with an artifact."""
    from runtime.pipeline import Embedder, pipeline_for

    inputs = read_texts(texts, file, csv_path, column)
    with pipeline_for(artifact, backend=backend, device=device, batch_size=batch_size) as pipe:
        if isinstance(pipe, Embedder):
            emb = pipe.embed(inputs)
            rows = [{"text": t, "embedding": [round(float(x), 6) for x in e]} for t, e in zip(inputs, emb)]
            emit(rows, as_json, lambda: "\n".join(
                f"[{len(e)} dims: {', '.join(f'{x:.4f}' for x in e[:4])}, ...]  {t}" for t, e in zip(inputs, emb)))
        else:
            preds = pipe.predict(inputs)
            rows = [{"text": t} | p.to_dict() for t, p in zip(inputs, preds)]
            emit(rows, as_json, lambda: "\n".join(f"{p.label:<12} {p.score:.4f}  {t}" for t, p in zip(inputs, preds)))


def int_list(value: str, what: str) -> list[int]:
    try:
        items = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated positive integers, got {value!r}") from None
    if not items or any(v < 1 for v in items):
        raise ConfigError(f"{what} must be comma-separated positive integers, got {value!r}")
    return items


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--batch-sizes", default="1,8,32", show_default=True)
@click.option("--seq-len", default=128, show_default=True, type=int)
@click.option("--backend", default="auto", show_default=True,
              help="Comma-separated: auto, onnxruntime, torch (torch runs the checkpoint the artifact came from).")
@device_option
@click.option("--warmup", default=5, show_default=True, type=int)
@click.option("--iters", default=30, show_default=True, type=int)
@click.option("--threads", default=0, show_default=True, type=int, help="Intra-op threads (0: the backend's default).")
@click.option("--rounds", default=5, show_default=True, type=int,
              help="Interleave the timed runs of every configuration in this many rounds (fair under drift).")
@click.option("--markdown", is_flag=True, help="Print a Markdown table.")
@json_option
def bench(artifact: Path, batch_sizes: str, seq_len: int, backend: str, device: str, warmup: int, iters: int,
          threads: int, rounds: int, markdown: bool, as_json: bool) -> None:
    """Measure latency percentiles and throughput per backend and batch size."""
    from benchmarks.environment import capture_environment
    from benchmarks.latency import measure_interleaved, measure_latency, token_feed
    from benchmarks.report import table
    from runtime.session import open_session

    sizes = int_list(batch_sizes, "--batch-sizes")
    if seq_len < 1:
        raise ConfigError(f"--seq-len must be >= 1, got {seq_len}")
    art = Artifact.load(artifact)
    max_len = int(art.meta.get("max_length", seq_len))
    if seq_len > max_len:
        raise ConfigError(f"--seq-len {seq_len} exceeds the model's maximum length {max_len}")
    options = {"threads": threads} if threads else {}
    names = [b.strip() for b in backend.split(",") if b.strip()]
    with contextlib.ExitStack() as stack:
        sessions = [stack.enter_context(open_session(art, backend=n, device=device, **options)) for n in names]
        runs = {(n, b, seq_len): (s, token_feed(s, b, seq_len)) for n, s in zip(names, sessions) for b in sizes}
        progress(f"{len(runs)} configurations x ({warmup} warm-up + {iters} timed runs), interleaved in {rounds} rounds")
        sync = None
        if device == "cuda" and any(n == "torch" for n in names):
            import torch

            sync = torch.cuda.synchronize
        results = measure_interleaved(runs, warmup, iters, rounds) if sync is None else \
            {k: measure_latency(s, f, warmup, iters, sync) for k, (s, f) in runs.items()}
        rows = [r.to_dict() for r in results.values()]
    report = {"artifact": str(art.path.absolute()), "results": rows, "environment": capture_environment()}
    cols = ["backend", "batch", "seq_len", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput"]
    env = report["environment"]
    emit(report, as_json, lambda: table(rows, cols, markdown) +
         f"\n\n{env['cpu']} ({env['cpu_count']} cores, {' '.join(env['cpu_flags'])}); throughput in sequences/s")


data_options = [
    click.option("--text-column", default="text", show_default=True),
    click.option("--label-column", default="label", show_default=True),
]


def with_options(options: list[Callable[[Any], Any]]) -> Callable[[Any], Any]:
    def apply(f: Any) -> Any:
        for option in reversed(options):
            f = option(f)
        return f
    return apply


@main.command()
@click.argument("source")
@click.option("--data", required=True, help="Training data: CSV/TSV/JSONL, or movie-snippets:train.")
@click.option("--eval", "eval_data", help="Evaluation data for model selection and early stopping.")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path))
@click.option("--epochs", default=3, show_default=True, type=int)
@click.option("--max-steps", type=int, help="Stop after this many steps (overrides --epochs).")
@click.option("--lr", default=1e-4, show_default=True, type=float)
@click.option("--batch-size", default=32, show_default=True, type=int)
@click.option("--max-length", default=64, show_default=True, type=int)
@click.option("--warmup-ratio", default=0.06, show_default=True, type=float)
@click.option("--patience", default=2, show_default=True, type=int, help="Evaluations without improvement before stopping.")
@click.option("--eval-every", type=int, help="Steps between evaluations (default: each epoch).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--lora", is_flag=True, help="Train LoRA adapters (merged into the weights on save).")
@click.option("--lora-r", default=8, show_default=True, type=int)
@with_options(data_options)
@force_option
@json_option
def finetune(source: str, data: str, eval_data: str | None, out: Path, epochs: int, max_steps: int | None, lr: float,
             batch_size: int, max_length: int, warmup_ratio: float, patience: int, eval_every: int | None, seed: int,
             lora: bool, lora_r: int, text_column: str, label_column: str, force: bool, as_json: bool) -> None:
    """Fine-tune SOURCE (`minilm` or an HF checkpoint) as a text classifier."""
    from calibration.datasets import load_labelled
    from exporter.finetune import FinetuneConfig
    from exporter.finetune import finetune as run_finetune
    from exporter.load import load_checkpoint
    from exporter.stage import check_output

    config = FinetuneConfig(epochs=epochs, max_steps=max_steps, lr=lr, batch_size=batch_size, max_length=max_length,
                            warmup_ratio=warmup_ratio, patience=patience, eval_every=eval_every, seed=seed,
                            lora=lora, lora_r=lora_r)
    check_output(out.absolute(), force)
    train = load_labelled(data, text_column, label_column)
    dev = load_labelled(eval_data, text_column, label_column, train.label_names) if eval_data else None
    art = run_finetune(load_checkpoint(source, "text-classification"), train, dev, config, out, force=force,
                       progress=progress)
    step = art.lineage[-1]
    emit(art.to_manifest() | {"path": str(art.path)}, as_json, lambda: describe(art) +
         f"\nbest eval accuracy {step.metrics['eval'].get('accuracy', float('nan')):.4f}, "
         f"macro-F1 {step.metrics['eval'].get('macro_f1', float('nan')):.4f} after {step.metrics['steps']} steps")


@main.command()
@click.argument("artifact")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path))
@click.option("--layers", default=0, show_default=True, type=int, help="Structured: whole encoder layers to remove.")
@click.option("--heads", default=0.0, show_default=True, type=float, help="Structured: fraction of attention heads to remove.")
@click.option("--ffn", default=0.0, show_default=True, type=float, help="Structured: fraction of FFN neurons to remove.")
@click.option("--sparsity", type=float, help="Unstructured magnitude pruning: fraction of encoder weights to zero.")
@click.option("--pattern", type=click.Choice(["2:4"]), help="Semi-structured 2:4 sparsity (2 of every 4 weights zero).")
@click.option("--scope", default="global", show_default=True, help="Unstructured threshold: global or layer.")
@click.option("--data", help="Training data (structured: importance scores and recovery).")
@click.option("--eval", "eval_data", help="Evaluation data: accuracy before/after, best recovery checkpoint.")
@click.option("--samples", default=512, show_default=True, type=int, help="Examples used to score importance.")
@click.option("--recover-steps", default=0, show_default=True, type=int, help="Fine-tuning steps after removal.")
@click.option("--recover-lr", default=5e-5, show_default=True, type=float)
@click.option("--distill", is_flag=True, help="Recovery also learns the unpruned model's logits.")
@click.option("--seed", default=0, show_default=True, type=int)
@with_options(data_options)
@force_option
@json_option
def prune(artifact: str, out: Path, layers: int, heads: float, ffn: float, sparsity: float | None, pattern: str | None, scope: str,
          data: str | None, eval_data: str | None, samples: int, recover_steps: int, recover_lr: float, distill: bool,
          seed: int, text_column: str, label_column: str, force: bool, as_json: bool) -> None:
    """Make a classifier smaller: structured (--heads/--ffn), unstructured (--sparsity) or 2:4 (--pattern 2:4)."""
    from calibration.datasets import load_labelled
    from exporter.load import load_checkpoint
    from exporter.prune import PruneConfig
    from exporter.prune import prune as run_prune
    from exporter.stage import check_output

    chosen = [k for k, on in (("structured", heads or ffn or layers), ("unstructured", sparsity is not None), ("2:4", pattern)) if on]
    if len(chosen) != 1:
        raise ConfigError("choose one kind: --layers/--heads/--ffn (structured), --sparsity (unstructured) or --pattern 2:4")
    config = PruneConfig(kind=chosen[0], layers=layers, heads=heads, ffn=ffn, sparsity=sparsity if sparsity is not None else 0.5,
                         scope=scope, samples=samples, recover_steps=recover_steps, recover_lr=recover_lr,
                         distill=distill, seed=seed)
    check_output(out.absolute(), force)
    source = load_checkpoint(artifact, "text-classification")
    names = [source.labels[i] for i in sorted(source.labels)]
    train = load_labelled(data, text_column, label_column, names) if data else None
    dev = load_labelled(eval_data, text_column, label_column, names) if eval_data else None
    art = run_prune(source, config, out, train=train, dev=dev, force=force, progress=progress)
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


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--method", default="dynamic-int8", show_default=True, help="dynamic-int8, static-int8 or fp16.")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path))
@click.option("--optimize/--no-optimize", default=True, show_default=True, help="Quantize the fused graph.")
@click.option("--per-channel/--per-tensor", default=True, show_default=True)
@click.option("--reduce-range", is_flag=True, help="7-bit weights (for CPUs without VNNI).")
@click.option("--calib-data", help="Texts for static calibration: CSV/TSV/JSONL or movie-snippets:train.")
@click.option("--calib-samples", default=256, show_default=True, type=int, help="Calibration texts, stratified by length.")
@click.option("--calib-cache", type=click.Path(path_type=Path), help="Reuse a range cache (calibration_cache.json).")
@click.option("--calibrator", default="minmax", show_default=True, help="minmax, percentile or entropy.")
@click.option("--percentile", default=99.999, show_default=True, type=float)
@click.option("--op-types", default="MatMul,Attention,Gather,EmbedLayerNormalization", show_default=True,
              help="Op types to quantize.")
@click.option("--exclude-op-types", default="", help="Comma-separated op types to leave in fp32.")
@click.option("--exclude-nodes", default="", help="Comma-separated node names to leave in fp32.")
@click.option("--activation-type", default="uint8", show_default=True, help="int8 or uint8 (static).")
@click.option("--weight-type", default="int8", show_default=True, help="int8 or uint8.")
@click.option("--max-accuracy-drop", type=float, help="Accuracy budget in points; needs --eval-data.")
@click.option("--eval-data", help="Labelled data for the accuracy guard (e.g. movie-snippets:dev).")
@click.option("--report", is_flag=True, help="Per-node sensitivity analysis (output error when only it is quantized).")
@with_options(data_options)
@force_option
@json_option
def quantize(artifact: Path, method: str, out: Path, optimize: bool, per_channel: bool, reduce_range: bool,
             calib_data: str | None, calib_samples: int, calib_cache: Path | None, calibrator: str, percentile: float,
             op_types: str, exclude_op_types: str, exclude_nodes: str, activation_type: str, weight_type: str,
             max_accuracy_drop: float | None, eval_data: str | None, report: bool, text_column: str, label_column: str,
             force: bool, as_json: bool) -> None:
    """Quantize an ONNX artifact (int8 dynamic/static, fp16), validated and optionally accuracy-guarded."""
    from calibration.datasets import load_labelled
    from calibration.readers import from_texts, sample_by_length
    from exporter.quantize import QuantConfig
    from exporter.quantize import quantize as run_quantize
    from exporter.stage import check_output
    from runtime.pipeline import load_tokenizer

    def names(v: str) -> tuple[str, ...]:
        return tuple(x.strip() for x in v.split(",") if x.strip())

    config = QuantConfig(method=method, optimize=optimize, per_channel=per_channel, reduce_range=reduce_range,
                         calibrator=calibrator, percentile=percentile, calib_samples=calib_samples,
                         op_types=names(op_types), exclude_op_types=names(exclude_op_types),
                         exclude_nodes=names(exclude_nodes), activation_type=activation_type, weight_type=weight_type,
                         max_accuracy_drop=max_accuracy_drop)
    check_output(out.absolute(), force)
    art = Artifact.load(artifact)
    calibration = None
    if calib_data:
        tok = load_tokenizer(art)
        texts = load_labelled(calib_data, text_column, label_column).texts if not calib_data.endswith(".txt") else \
            [t for t in Path(calib_data).read_text().splitlines() if t.strip()]
        max_len = int(art.meta.get("max_length", 128))
        lengths = [len(e.ids) for e in tok.encode_batch(texts)]
        chosen = sample_by_length(texts, lengths, calib_samples)
        # percentile/entropy need one shape for every batch: pad those to the longest chosen text
        pad_to = None if calibrator == "minmax" else min(max(lengths), max_len)
        calibration = list(from_texts(tok, chosen, max_len, [s.name for s in art.inputs], batch_size=8, pad_to=pad_to))
    names_map = [art.labels[i] for i in sorted(art.labels)] if art.labels else None
    evaluation = load_labelled(eval_data, text_column, label_column, names_map) if eval_data else None
    q = run_quantize(art, config, out, calibration=calibration, eval_data=evaluation, calib_cache=calib_cache,
                     report=report, force=force, progress=progress)
    m = q.lineage[-1].metrics
    lines = [describe(q), f"size      {m['size_mb']['fp32']} MB fp32 -> {m['size_mb']['quantized']} MB"]
    if "accuracy_guard" in m:
        g = m["accuracy_guard"]
        lines.append(f"accuracy  {g['accuracy_fp32']:.4f} fp32 -> {g['accuracy']:.4f} (drop {g['drop_points']:.2f} points, "
                     f"budget {g['budget_points']}); kept in fp32: {g['kept_fp32'] or 'none'}")
    if report and "sensitivity" in m:
        lines.append("sensitivity (output error 1 - cosine when only this node is quantized), worst first:")
        lines += [f"  {r['error']:.2e}  {r['node']}" for r in m["sensitivity"][:15]]
    emit(q.to_manifest() | {"path": str(q.path)}, as_json, lambda: "\n".join(lines))


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path))
@force_option
@json_option
def optimize(artifact: Path, out: Path, force: bool, as_json: bool) -> None:
    """Fuse an fp32 ONNX artifact's graph (Attention, SkipLayerNorm, Gelu) and validate it (fp32 tolerances)."""
    from exporter.optimize import optimize as run_optimize
    from exporter.stage import check_output

    check_output(out.absolute(), force)
    art = run_optimize(Artifact.load(artifact), out, force=force, progress=progress)
    emit(art.to_manifest() | {"path": str(art.path)}, as_json,
         lambda: describe(art) + f"\nfused ops {art.lineage[-1].metrics['fused_ops']}")


@main.command(name="eval")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--data", required=True, help="Labelled data: CSV/TSV/JSONL, or movie-snippets:test.")
@click.option("--batch-size", default=64, show_default=True, type=int)
@with_options(data_options)
@backend_option
@device_option
@json_option
def evaluate(artifact: Path, data: str, batch_size: int, text_column: str, label_column: str, backend: str,
             device: str, as_json: bool) -> None:
    """Accuracy, macro-F1 and confusion matrix of a classifier artifact (hf via torch, onnx via onnxruntime)."""
    from benchmarks.accuracy import measure_accuracy
    from calibration.datasets import load_labelled
    from runtime.pipeline import TextClassifier

    art = Artifact.load(artifact)
    with TextClassifier(art, backend=backend, device=device, batch_size=batch_size) as clf:
        names = [art.labels[i] for i in sorted(art.labels)]
        result = measure_accuracy(clf, load_labelled(data, text_column, label_column, names))
        result["backend"] = clf.session.describe()
    emit(result, as_json, lambda: format_eval(result))


def format_eval(r: dict[str, Any]) -> str:
    names = r["labels"]
    width = max(len(n) for n in names) + 2
    lines = [f"accuracy {r['accuracy']:.4f}   macro-F1 {r['macro_f1']:.4f}   n {r['n']}   ({r['backend']}, {r['seconds']}s)",
             "confusion (rows: true, columns: predicted)", " " * width + "".join(n.rjust(width) for n in names)]
    lines += [n.ljust(width) + "".join(str(v).rjust(width) for v in row) for n, row in zip(names, r["confusion"])]
    return "\n".join(lines)


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address (localhost by default).")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--max-batch-size", default=32, show_default=True, type=int, help="1 turns batching off.")
@click.option("--max-delay-ms", default=5.0, show_default=True, type=float, help="Longest wait for a batch to fill.")
@click.option("--max-queue", default=256, show_default=True, type=int, help="Waiting inputs before 503 overload.")
@click.option("--threads", default=0, show_default=True, type=int, help="Model intra-op threads (0: backend default).")
@click.option("--max-inputs", default=64, show_default=True, type=int, help="Texts per request.")
@click.option("--max-chars", default=2000, show_default=True, type=int, help="Characters per text.")
@click.option("--timeout", "timeout_s", default=10.0, show_default=True, type=float, help="Seconds a request may wait.")
@backend_option
@device_option
def serve(artifact: Path, host: str, port: int, max_batch_size: int, max_delay_ms: float, max_queue: int, threads: int,
          max_inputs: int, max_chars: int, timeout_s: float, backend: str, device: str) -> None:
    """Serve a text classifier over HTTP: POST /v1/predict, GET /healthz, GET /metrics."""
    from runtime.server import ServeConfig, import_serving
    from runtime.server import serve as run_server

    config = ServeConfig(host=host, port=port, max_batch_size=max_batch_size, max_delay_ms=max_delay_ms,
                         max_queue=max_queue, threads=threads, max_inputs=max_inputs, max_chars=max_chars,
                         request_timeout_s=timeout_s, backend=backend, device=device)
    art = Artifact.load(artifact)
    if art.task != "text-classification":
        raise ConfigError(f"kiln serve serves text-classification artifacts; {artifact} is {art.task!r}")
    import_serving()
    progress(f"serving {art.path} on http://{host}:{port} (batch <= {max_batch_size}, delay <= {max_delay_ms} ms)")
    run_server(art.path, config)


@main.command()
@click.argument("target")
@click.option("--concurrency", default=32, show_default=True, type=int, help="Closed-loop clients.")
@click.option("--rate", type=float, help="Open loop: Poisson arrivals per second (instead of --concurrency).")
@click.option("--duration", default=20.0, show_default=True, type=float, help="Seconds of load.")
@click.option("--data", default="movie-snippets:test", show_default=True, help="Texts to send (one per request).")
@click.option("--text-column", default="text", show_default=True)
@click.option("--max-batch-size", default=32, show_default=True, type=int, help="In-process mode only.")
@click.option("--max-delay-ms", default=5.0, show_default=True, type=float, help="In-process mode only.")
@click.option("--max-queue", default=256, show_default=True, type=int, help="In-process mode only.")
@json_option
def loadtest(target: str, concurrency: int, rate: float | None, duration: float, data: str, text_column: str,
             max_batch_size: int, max_delay_ms: float, max_queue: int, as_json: bool) -> None:
    """Load a running server (TARGET = http://host:port) or an in-process Batcher (TARGET = an artifact)."""
    from benchmarks.load import batcher_target, closed_loop, http_target, open_loop
    from calibration.datasets import load_labelled
    from runtime.batching import Batcher
    from runtime.pipeline import TextClassifier

    texts = load_labelled(data, text_column).texts
    clf = batcher = None
    if "://" in target:
        make = http_target(target)
    else:
        clf = TextClassifier(target, batch_size=max_batch_size)
        batcher = Batcher(clf.predict_encoded, max_batch_size, max_delay_ms, max_queue, bucket=lambda e: len(e.ids) // 16)
        make = batcher_target(batcher, clf.encode)
    try:
        progress(f"{'open loop at ' + str(rate) + '/s' if rate else f'{concurrency} closed-loop clients'} "
                 f"for {duration:g}s against {target}")
        result = open_loop(make, texts, rate, duration) if rate else closed_loop(make, texts, concurrency, duration)
    finally:
        if batcher:
            batcher.close()
        if clf:
            clf.close()
    summary = result.summary()
    emit(summary, as_json, lambda: "\n".join(f"{k:<14} {v}" for k, v in summary.items()))


@main.command()
@json_option
def doctor(as_json: bool) -> None:
    """Check what this machine can run, and say what to install for each missing piece."""
    from exporter.doctor import run_checks

    checks = run_checks()
    emit(checks, as_json, lambda: "\n".join(
        f"{'ok ' if c['ok'] else '-- '} {c['name']:<14} {c['detail']}" + ("" if c["ok"] else f"\n     fix: {c['fix']}")
        for c in checks))


if __name__ == "__main__":
    main()
