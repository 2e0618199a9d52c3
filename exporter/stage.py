"""What every stage shares: atomic output directories and lineage steps."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from exporter.staging import earlier_writer, make_staging_dir, remove_stale, staging_name
from runtime.artifact import Artifact, Step, digest_of, hash_files, library_versions
from runtime.errors import ArtifactError

Progress = Callable[[str], None]


def quiet(_: str) -> None:
    pass


def check_output(out: Path, force: bool) -> None:
    """Fail before any work if `out` would clobber something."""
    if out == Path.cwd() or out in Path.cwd().parents:  # `-o ""` or `-o .`: --force would delete where we stand
        raise ArtifactError(f"output {str(out)!r} is the current directory (or holds it); give a new directory path")
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"output {str(out)!r} is a file; give a directory path")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ArtifactError(f"output {str(out)!r} exists and is not empty; pass --force to replace it")


def identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of what is at `path` now, or None: what --force was allowed to replace."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


def check_not_source(out: Path, source: str | Path | None) -> None:
    """Writing over the artifact a stage reads (or a folder holding it, with --force) would destroy the
    reference the new artifact's lineage points to, and make that lineage loop back on itself."""
    if source is None:
        return
    out_real, src_real = os.path.realpath(out), os.path.realpath(source)
    if src_real == out_real or src_real.startswith(out_real.rstrip(os.sep) + os.sep):
        what = "is" if src_real == out_real else "contains"
        raise ArtifactError(f"output {str(out)!r} {what} the artifact this stage reads ({source}); replacing it "
                            "would destroy the reference the new artifact's lineage points to: give another -o")


@contextlib.contextmanager
def terminate_cleanly() -> Iterator[None]:
    """Turn SIGTERM into SystemExit while a stage runs, so its staging folder is removed on the way out.

    Only in the main thread, and only where nobody else handles SIGTERM (a server installs its own).
    """
    installed = False
    previous: Any = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.getsignal(signal.SIGTERM)
        if previous == signal.SIG_DFL:
            def on_term(signum: int, frame: Any) -> None:
                raise SystemExit(128 + signum)

            signal.signal(signal.SIGTERM, on_term)
            installed = True
    try:
        yield
    finally:
        if installed:
            signal.signal(signal.SIGTERM, previous)


def rename_into_place(tmp: Path, out: Path, expected: tuple[int, int] | None, force: bool) -> None:
    """Move `tmp` to `out`, replacing only what was there when the run was checked (and only with force).

    rename(2) of a directory onto a non-empty directory fails, so without --force (or when `out` was
    absent at the check) a run that finds `out` taken by someone else -- another run to the same -o --
    fails instead of replacing it; of two concurrent runs exactly one wins.
    """
    if force and expected is not None:
        trash = out.parent / staging_name(out, "old")
        try:
            os.rename(out, trash)
        except FileNotFoundError:
            raise ArtifactError(f"output {str(out)!r} was removed or moved by someone else while this stage ran; "
                                "nothing was written (run again)") from None
        except OSError as e:
            raise ArtifactError(f"cannot replace output {str(out)!r}: {e.strerror or e}") from None
        if identity(trash) != expected:  # not what --force was given for: put it back
            with contextlib.suppress(OSError):
                os.rename(trash, out)
            raise ArtifactError(f"output {str(out)!r} was replaced by someone else (another run to the same -o?) "
                                "while this stage ran; nothing was written (run again)")
        try:
            os.rename(tmp, out)
        except OSError:
            with contextlib.suppress(OSError):
                os.rename(trash, out)
            raise ArtifactError(f"output {str(out)!r} was created by someone else while this stage ran; "
                                "nothing was written (run again)") from None
        shutil.rmtree(trash, ignore_errors=True)
        return
    try:
        os.rename(tmp, out)  # onto nothing, or onto an empty directory: both fine
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise ArtifactError(
                f"output {str(out)!r} was created by someone else (another run to the same -o?) while this stage "
                f"ran; nothing was replaced and this run's result was discarded"
                + ("" if force else "; pass --force to replace an existing output")) from None
        raise ArtifactError(f"cannot write output {str(out)!r}: {e.strerror}") from None


@contextlib.contextmanager
def atomic_output(out: str | Path, force: bool = False, source: str | Path | None = None) -> Iterator[Path]:
    """Yield a staging directory beside `out`; rename it into place only if the block succeeds.

    A failure or interrupt (KeyboardInterrupt, SIGTERM) removes the staging directory, so nothing
    half-written is ever left at `out`; staging folders of killed runs are removed by the next run
    writing beside them. `source`: the artifact the stage reads, which `out` must not be.
    """
    out = Path(out).absolute()
    try:  # read-only or full file system, a file where a folder must be, no permission: one line
        check_output(out, force)
        check_not_source(out, source)
        expected = identity(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(out.parent)
        tmp = make_staging_dir(out)
        rival = earlier_writer(out, tmp)
    except OSError as e:
        raise ArtifactError(f"cannot write to -o {str(out)!r}: {e.strerror or e}") from None
    if rival is not None:  # fail now rather than after the work; the rename would refuse anyway
        shutil.rmtree(tmp, ignore_errors=True)
        raise ArtifactError(f"another Kiln run (pid {rival}) is already writing {str(out)!r}; "
                            "wait for it to finish, or give another -o")
    try:
        with terminate_cleanly():
            yield tmp
            rename_into_place(tmp, out, expected, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def temp_files_in(folder: Path) -> Iterator[Path]:
    """Point Python's temp folder (which onnxruntime's quantizer uses) at `folder` inside the staging folder.

    An interrupted stage then leaves its temp files where the next run's stale-folder sweep finds them,
    not in the system temp folder. The temp folder is process-wide, so only the main thread redirects it.
    """
    folder.mkdir()
    redirect = threading.current_thread() is threading.main_thread()
    previous = tempfile.tempdir
    if redirect:
        tempfile.tempdir = str(folder)
    try:
        yield folder
    finally:
        if redirect:
            tempfile.tempdir = previous
        shutil.rmtree(folder, ignore_errors=True)


def copy_sidecars(artifact: Artifact, staged: Path) -> None:
    """Copy everything but the manifest, the model file and the signature (tokenizer, label files, range caches).

    A signature vouches for its own artifact only: a derived one copied with it would fail verification."""
    from runtime.signing import SIGNATURE

    for f in artifact.path.iterdir():
        if f.is_file() and f.name not in ("manifest.json", artifact.model_file.name, SIGNATURE):
            shutil.copy2(f, staged / f.name)


def finish(staged: Path, final: Path, template: Artifact, previous: Artifact, stage: str,
           config: dict[str, Any], started: float, metrics: dict[str, Any]) -> Artifact:
    """Hash the staged files, append a Step, write the manifest; return the artifact at its final path."""
    check_not_source(Path(final).absolute(), previous.path)  # for callers that did not tell atomic_output
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
