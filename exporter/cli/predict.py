"""`kiln predict`: classify (or embed) texts, or classify images, with an artifact."""

from __future__ import annotations

from pathlib import Path

import click

from exporter.cli.common import (
    backend_option, batch_size_option, device_option, dtype_option, emit, example, json_option,
)
from runtime.artifact import Artifact
from runtime.errors import ConfigError


@click.command(epilog=example('kiln predict out "A gripping film." "Dull and long."',
                              "kiln predict ft-int8 --csv reviews.csv --column review --json",
                              "kiln predict rn-int8 digit.png more-digits/"))
@click.argument("artifact", type=click.Path(path_type=Path))
@click.argument("texts", nargs=-1)
@click.option("--file", type=click.Path(path_type=Path), help="A text file, one input per line.")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), help="A CSV/TSV/JSONL file with a text column.")
@click.option("--column", default="text", show_default=True, help="The --csv column to read.")
@batch_size_option(32)
@backend_option
@device_option
@dtype_option
@json_option
def predict(artifact: Path, texts: tuple[str, ...], file: Path | None, csv_path: Path | None, column: str,
            batch_size: int, backend: str, device: str, dtype: str | None, as_json: bool) -> None:
    """Classify (or embed) texts with an artifact; for an image classifier, image files or folders."""
    from calibration.datasets import texts_from
    from calibration.images import image_arguments, refuse_images_for_text
    from runtime.backends.options import session_dtype
    from runtime.pipeline import Embedder, pipeline_for

    art = Artifact.load(artifact)
    options = session_dtype(backend, device, dtype, art.format)
    if art.family.name == "vision":
        if file or csv_path:
            raise ConfigError("an image classifier takes image files or folders as arguments, not --file/--csv")
        paths = image_arguments(texts)
        with pipeline_for(art, backend=backend, device=device, batch_size=batch_size, **options) as pipe:
            preds = pipe.predict(paths)
        rows = [{"image": str(p)} | r.to_dict() for p, r in zip(paths, preds)]
        emit(rows, as_json, lambda: "\n".join(f"{r.label:<12} {r.score:.4f}  {p}" for p, r in zip(paths, preds)))
        return
    refuse_images_for_text(texts, art.task)
    inputs = texts_from(texts, file, csv_path, column)
    with pipeline_for(art, backend=backend, device=device, batch_size=batch_size, **options) as pipe:
        if isinstance(pipe, Embedder):
            emb = pipe.embed(inputs)
            rows = [{"text": t, "embedding": [round(float(x), 6) for x in e]} for t, e in zip(inputs, emb)]
            emit(rows, as_json, lambda: "\n".join(
                f"[{len(e)} dims: {', '.join(f'{x:.4f}' for x in e[:4])}, ...]  {t}" for t, e in zip(inputs, emb)))
        else:
            preds = pipe.predict(inputs)
            rows = [{"text": t} | p.to_dict() for t, p in zip(inputs, preds)]
            emit(rows, as_json, lambda: "\n".join(f"{p.label:<12} {p.score:.4f}  {t}" for t, p in zip(inputs, preds)))
