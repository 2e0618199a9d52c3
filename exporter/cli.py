"""The `kiln` command line: each command builds a config, calls one API function, prints a table or JSON."""

from __future__ import annotations

from pathlib import Path

import click

from exporter import cli_bench, cli_build, cli_release, cli_serving, cli_stages, cli_triton
from exporter.cli_common import (
    KilnGroup, backend_option, cuda_graphs_option, describe, device_option, dtype_option, emit, force_option, json_option,
    progress,
)
from runtime.artifact import Artifact
from runtime.errors import ConfigError, KilnError


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


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--verify", is_flag=True,
              help="Recompute every file's sha256, and the manifest's own digests, against what was recorded.")
@json_option
def inspect(artifact: Path, verify: bool, as_json: bool) -> None:
    """Show an artifact's inputs, outputs and lineage."""
    art = Artifact.load(artifact)
    data = art.to_manifest() | {"path": str(art.path.absolute())}
    note = ""
    if verify:
        bad = art.verify()
        changed = art.verify_manifest()
        problems = []
        if bad:
            problems.append(f"{len(bad)} file(s) missing or changed since export: {', '.join(bad)}")
        if changed:
            problems.append(f"manifest.json edited since it was written: {', '.join(changed)} changed")
        data["verified"] = not problems
        data["manifest_verified"] = changed == [] if changed is not None else None
        if problems:
            raise KilnError(f"{artifact}: {'; '.join(problems)}")
        note = ("\nverified  all files and the manifest match what was recorded" if changed is not None else
                "\nverified  all files match the manifest; manifest not covered (made by an older Kiln; "
                "re-run the stage to record its digests)")
    emit(data, as_json, lambda: describe(art) + note)


def read_texts(texts: tuple[str, ...], file: Path | None, csv_path: Path | None, column: str) -> list[str]:
    from calibration.datasets import load_texts

    if sum(bool(x) for x in (texts, file, csv_path)) != 1:
        raise ConfigError("give exactly one of: TEXT arguments, --file lines.txt, or --csv data.csv")
    if texts:
        return list(texts)
    return load_texts(file, lines=True) if file else load_texts(csv_path, column, lines=False)  # type: ignore[arg-type]


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
    """Classify (or embed) texts with an artifact; for an image classifier, image files or folders."""
    from exporter.cli_vision import image_inputs, refuse_images_for_text
    from runtime.pipeline import Embedder, pipeline_for

    art = Artifact.load(artifact)
    if art.family.name == "vision":
        if file or csv_path:
            raise ConfigError("an image classifier takes image files or folders as arguments, not --file/--csv")
        paths = image_inputs(texts)
        with pipeline_for(art, backend=backend, device=device, batch_size=batch_size) as pipe:
            preds = pipe.predict(paths)
        rows = [{"image": str(p)} | r.to_dict() for p, r in zip(paths, preds)]
        emit(rows, as_json, lambda: "\n".join(f"{r.label:<12} {r.score:.4f}  {p}" for p, r in zip(paths, preds)))
        return
    refuse_images_for_text(texts, art.task)
    inputs = read_texts(texts, file, csv_path, column)
    with pipeline_for(art, backend=backend, device=device, batch_size=batch_size) as pipe:
        if isinstance(pipe, Embedder):
            emb = pipe.embed(inputs)
            rows = [{"text": t, "embedding": [round(float(x), 6) for x in e]} for t, e in zip(inputs, emb)]
            emit(rows, as_json, lambda: "\n".join(
                f"[{len(e)} dims: {', '.join(f'{x:.4f}' for x in e[:4])}, ...]  {t}" for t, e in zip(inputs, emb)))
        else:
            preds = pipe.predict(inputs)
            rows = [{"text": t} | p.to_dict() for t, p in zip(inputs, preds)]
            emit(rows, as_json, lambda: "\n".join(f"{p.label:<12} {p.score:.4f}  {t}" for t, p in zip(inputs, preds)))


@main.command()
@json_option
def doctor(as_json: bool) -> None:
    """Check what this machine can run, and say what to install for each missing piece."""
    from exporter.doctor import run_checks

    checks = run_checks()
    emit(checks, as_json, lambda: "\n".join(
        f"{'ok ' if c['ok'] else '-- '} {c['name']:<14} {c['detail']}" + ("" if c["ok"] else f"\n     fix: {c['fix']}")
        for c in checks))


for command in (cli_stages.finetune, cli_stages.prune, cli_stages.quantize, cli_stages.optimize, cli_stages.evaluate,
                cli_serving.serve, cli_serving.loadtest, cli_release.sign, cli_release.verify, cli_release.keygen,
                cli_build.build, cli_triton.export_triton, cli_bench.bench, cli_bench.report):
    main.add_command(command)

__all__ = ["main"]

if __name__ == "__main__":
    main()
