"""Which dataset reader an artifact's family takes: image folders for vision models, text files otherwise.

The CLI's --data / --calib-data / --eval-data go through here, so a command never has to know the family."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from runtime.errors import DataError


def is_vision(task: str) -> bool:
    from runtime.tasks import family_for

    return family_for(task).name == "vision"


def labelled_for(task: str, source: str | Path, text_column: str = "text", label_column: str = "label",
                 label_names: Sequence[str] | None = None) -> Any:
    """Labelled data for a model of `task`: LabelledImages (a folder of label subfolders, mnist-5k:SPLIT)
    or LabelledTexts (CSV/TSV/JSONL, movie-snippets:SPLIT)."""
    if is_vision(task):
        from calibration.images import load_image_folder

        return load_image_folder(source, label_names)
    from calibration.datasets import load_labelled
    from calibration.images import is_image_source

    if is_image_source(source) and Path(str(source)).is_dir():
        raise DataError(f"{source} is a folder of images, but this is a {task} model; give it labelled texts "
                        "(CSV/TSV/JSONL)")
    return load_labelled(source, text_column, label_column, label_names)


def raw_for(task: str, source: str | Path, text_column: str = "text") -> list[Any]:
    """Unlabelled inputs for a model of `task` (calibration): image paths, or texts."""
    if is_vision(task):
        from calibration.images import load_images

        return load_images(source)
    from calibration.datasets import load_texts

    return load_texts(source, text_column)
