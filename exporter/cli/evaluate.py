"""`kiln eval`: accuracy, macro-F1 and the confusion matrix of a classifier on labelled data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from exporter.cli.common import (
    backend_option, batch_size_option, data_option, data_options, device_option, dtype_option, emit, example,
    json_option,
)
from runtime.artifact import Artifact


def format_eval(r: dict[str, Any]) -> str:
    names = r["labels"]
    width = max(len(n) for n in names) + 2
    lines = [f"accuracy {r['accuracy']:.4f}   macro-F1 {r['macro_f1']:.4f}   n {r['n']}   ({r['backend']}, {r['seconds']}s)",
             "confusion (rows: true, columns: predicted)", " " * width + "".join(n.rjust(width) for n in names)]
    lines += [n.ljust(width) + "".join(str(v).rjust(width) for v in row) for n, row in zip(names, r["confusion"])]
    return "\n".join(lines)


@click.command(name="eval", epilog=example("kiln eval ft-int8 --data movie-snippets:test",
                                           "kiln eval rn-int8 --data mnist-5k:test --json"))
@click.argument("artifact", type=click.Path(path_type=Path))
@data_option("Labelled data: CSV/TSV/JSONL or movie-snippets:test; images: a folder with one subfolder per label, "
             "or mnist-5k:test.", required=True)
@batch_size_option(64)
@data_options
@backend_option
@device_option
@dtype_option
@json_option
def evaluate(artifact: Path, data: str, batch_size: int, text_column: str, label_column: str, backend: str,
             device: str, dtype: str | None, as_json: bool) -> None:
    """Accuracy, macro-F1 and confusion matrix of a classifier artifact (hf via torch, onnx via onnxruntime)."""
    from benchmarks.accuracy import evaluate_artifact
    from runtime.backends.options import session_dtype

    art = Artifact.load(artifact)
    options = session_dtype(backend, device, dtype, art.format)
    result = evaluate_artifact(art, data, backend=backend, device=device, batch_size=batch_size,
                               text_column=text_column, label_column=label_column, options=options)
    emit(result, as_json, lambda: format_eval(result))
