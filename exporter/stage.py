"""What every stage shares: atomic output directories and lineage steps."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from runtime.artifact import Artifact, Step, digest_of, hash_files, library_versions
from runtime.errors import ArtifactError

Progress = Callable[[str], None]


def quiet(_: str) -> None:
    pass


def check_output(out: Path, force: bool) -> None:
    """Fail before any work if `out` would clobber something."""
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"output {str(out)!r} is a file; give a directory path")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ArtifactError(f"output {str(out)!r} exists and is not empty; pass --force to replace it")


@contextlib.contextmanager
def atomic_output(out: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a staging directory beside `out`; rename it into place only if the block succeeds.

    A failure or interrupt (even KeyboardInterrupt) removes the staging directory, so nothing
    half-written is ever left at `out`.
    """
    out = Path(out).absolute()
    check_output(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.kiln-tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.kiln-old-", dir=out.parent))
            os.replace(out, trash / "old")
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def copy_sidecars(artifact: Artifact, staged: Path) -> None:
    """Copy everything but the manifest and the model file (tokenizer, label files, range caches)."""
    for f in artifact.path.iterdir():
        if f.is_file() and f.name not in ("manifest.json", artifact.model_file.name):
            shutil.copy2(f, staged / f.name)


def finish(staged: Path, final: Path, template: Artifact, previous: Artifact, stage: str,
           config: dict[str, Any], started: float, metrics: dict[str, Any]) -> Artifact:
    """Hash the staged files, append a Step, write the manifest; return the artifact at its final path."""
    files = hash_files(staged)
    step = Step(
        stage=stage, config=config, seconds=round(time.perf_counter() - started, 3), metrics=metrics,
        inputs_sha256=digest_of(previous.files) if previous.files else None,
        outputs_sha256=digest_of(files), versions=library_versions(), source=str(Path(previous.path).absolute()))
    staged_art = Artifact(
        path=staged, format=template.format, task=template.task, inputs=template.inputs,
        outputs=template.outputs, lineage=(*previous.lineage, step), meta=template.meta, files=files)
    staged_art.write_manifest()
    return dataclasses.replace(staged_art, path=Path(final).absolute())
