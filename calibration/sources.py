"""Which dataset reader an artifact's family takes: image folders for vision models, text files otherwise.

The CLI's --data / --calib-data / --eval-data go through here, so a command never has to know the family."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from runtime.errors import DataError


def is_vision(task: str) -> bool:
    from runtime.tasks import family_for

    return family_for(task).name == "vision"


def image_kind(source: str | Path) -> str | None:
    """What makes `source` image data (a named image dataset, a folder, an image file), or None."""
    from calibration.images import IMAGE_SUFFIXES, named_image_datasets

    s = str(source)
    if Path(s).is_dir():
        return "a folder (image data)"  # text data is always a file
    if s.partition(":")[0] in named_image_datasets() and not Path(s).exists():
        return "an image dataset"
    return "an image file" if Path(s).suffix.lower() in IMAGE_SUFFIXES else None


def text_kind(source: str | Path) -> str | None:
    """What makes `source` text data (a named text dataset, a .csv/.tsv/.jsonl/.txt file), or None."""
    from calibration.amazon_snippets import NAMED as AMAZON
    from calibration.datasets import SUFFIXES
    from calibration.movie_snippets import NAMED as MOVIES

    s = str(source)
    if s.partition(":")[0] in {**MOVIES, **AMAZON} and not Path(s).exists():
        return "a text dataset"
    suffix = Path(s).suffix.lower()
    return f"a text file ({suffix})" if suffix in (*SUFFIXES, ".txt") and not Path(s).is_dir() else None


def refuse_other_family(task: str, source: str | Path, labelled: bool) -> None:
    """Image data for a text model, or text data for an image model: one line saying which is which (the
    reader would otherwise fail on the file format, as if the data were broken)."""
    article = "an" if task[:1] in "aeiou" else "a"
    if is_vision(task):
        kind = text_kind(source)
        want = ("a folder with one subfolder per label, or mnist-5k:SPLIT" if labelled
                else "an image folder or file, or mnist-5k:SPLIT")
        if kind:
            raise DataError(f"{source} is {kind}, but the artifact is {article} {task} model: give it images ({want})")
        return
    kind = image_kind(source)
    if kind:
        raise DataError(f"{source} is {kind}, but the artifact is {article} {task} model: give it texts "
                        "(CSV/TSV/JSONL, or movie-snippets:SPLIT)")


def labelled_for(task: str, source: str | Path, text_column: str = "text", label_column: str = "label",
                 label_names: Sequence[str] | None = None) -> Any:
    """Labelled data for a model of `task`: LabelledImages (a folder of label subfolders, mnist-5k:SPLIT)
    or LabelledTexts (CSV/TSV/JSONL, movie-snippets:SPLIT)."""
    refuse_other_family(task, source, labelled=True)
    if is_vision(task):
        from calibration.images import load_image_folder

        return load_image_folder(source, label_names)
    from calibration.datasets import load_labelled

    return load_labelled(source, text_column, label_column, label_names)


def raw_for(task: str, source: str | Path, text_column: str = "text") -> list[Any]:
    """Unlabelled inputs for a model of `task` (calibration): image paths, or texts."""
    refuse_other_family(task, source, labelled=False)
    if is_vision(task):
        from calibration.images import load_images

        return load_images(source)
    from calibration.datasets import load_texts

    return load_texts(source, text_column)
