"""A stage's output: replaced only when expected, never twice by racing runs, no debris, umask honoured."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from exporter.stage import atomic_output
from runtime import Artifact, ArtifactError

REPO = Path(__file__).resolve().parents[1]


def hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def race(out: Path, force: bool) -> tuple[list[str], list[str]]:
    """Two threads stage into one `out`; both pass the up-front check before either renames."""
    both_inside = threading.Barrier(2, timeout=10)
    won, lost = [], []

    def run(name: str) -> None:
        try:
            with atomic_output(out, force=force) as staged:
                (staged / "who").write_text(name)
                both_inside.wait()
            won.append(name)
        except ArtifactError as e:
            lost.append(str(e))

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won, lost


def test_two_concurrent_runs_to_one_output_one_wins(tmp_path):
    out = tmp_path / "out"
    won, lost = race(out, force=False)
    assert len(won) == 1 and len(lost) == 1, (won, lost)
    assert "created by someone else" in lost[0] and "nothing was replaced" in lost[0]
    assert (out / "who").read_text() == won[0]
    assert hidden(tmp_path) == []


def test_two_concurrent_forced_runs_replace_the_old_output_once(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "who").write_text("old")
    won, lost = race(out, force=True)
    assert len(won) == 1 and len(lost) == 1, (won, lost)
    assert "someone else" in lost[0]
    assert (out / "who").read_text() == won[0]
    assert hidden(tmp_path) == []


def test_a_directory_created_at_the_output_during_a_stage_is_kept(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ArtifactError, match="created by someone else.*pass --force"):
        with atomic_output(out) as staged:
            (staged / "model.onnx").write_text("new")
            out.mkdir()
            (out / "precious.txt").write_text("mine")
    assert [p.name for p in out.iterdir()] == ["precious.txt"]
    assert hidden(tmp_path) == []


def test_force_replaces_what_was_checked(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with atomic_output(out, force=True) as staged:
        (staged / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert hidden(tmp_path) == []


def test_output_that_is_the_source_is_refused(tiny_onnx, tmp_path):
    from exporter.quantize import QuantConfig, quantize

    src = tmp_path / "src"
    shutil.copytree(tiny_onnx.path, src)
    art = Artifact.load(src)
    before = sorted(p.name for p in src.iterdir())
    with pytest.raises(ArtifactError, match="is the artifact this stage reads"):
        quantize(art, QuantConfig(validate=False), src, force=True)
    assert sorted(p.name for p in src.iterdir()) == before and Artifact.load(src).lineage == art.lineage


@pytest.mark.parametrize("umask, mode", [(0o022, 0o755), (0o077, 0o700), (0o002, 0o775)])
def test_output_directory_honours_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        with atomic_output(tmp_path / "out") as staged:
            (staged / "f").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == mode


STAGE_THAT_HANGS = """
import sys, time
from exporter.stage import atomic_output
with atomic_output(sys.argv[1]) as staged:
    (staged / "model.onnx").write_bytes(b"0" * 100_000)
    print(staged, flush=True)
    time.sleep(60)
"""


def start_hanging_stage(out: Path) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([sys.executable, "-c", STAGE_THAT_HANGS, str(out)], cwd=REPO, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    staged = Path(proc.stdout.readline().strip())
    assert staged.is_dir() and staged.parent == out.parent
    return proc, staged


def test_staging_folder_of_a_killed_run_is_removed_by_the_next_run(tmp_path):
    proc, staged = start_hanging_stage(tmp_path / "a")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert staged.is_dir()  # SIGKILL cannot be caught: the folder stays until the next run
    with atomic_output(tmp_path / "b") as new:
        (new / "f").write_text("x")
    assert hidden(tmp_path) == [] and not (tmp_path / "a").exists()


def test_sigterm_removes_the_staging_folder(tmp_path):
    proc, staged = start_hanging_stage(tmp_path / "a")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 128 + signal.SIGTERM
    assert hidden(tmp_path) == [] and not (tmp_path / "a").exists()


def test_a_second_process_writing_the_same_output_stops_before_the_work(tmp_path):
    proc, staged = start_hanging_stage(tmp_path / "a")
    try:
        with pytest.raises(ArtifactError, match=rf"another Kiln run \(pid {proc.pid}\) is already writing"):
            with atomic_output(tmp_path / "a"):
                pytest.fail("the block ran although another process is writing the same output")
        assert hidden(tmp_path) == [staged.name]  # its folder is left alone, ours is gone
    finally:
        proc.kill()
        proc.wait(10)


def test_a_live_runs_staging_folder_is_left_alone(tmp_path):
    with atomic_output(tmp_path / "a") as first:
        with atomic_output(tmp_path / "b") as second:
            (second / "f").write_text("x")
        assert first.is_dir()  # same (living) process: not stale
        (first / "f").write_text("x")
    assert hidden(tmp_path) == []


def test_quantize_keeps_its_temporary_files_inside_the_staging_folder(tiny_onnx, tmp_path, monkeypatch):
    from exporter.quantize import QuantConfig, quantize

    made = []
    real = tempfile.mkdtemp

    def spy(*args, **kwargs):
        made.append(Path(real(*args, **kwargs)))
        return str(made[-1])

    monkeypatch.setattr(tempfile, "mkdtemp", spy)
    quantize(tiny_onnx, QuantConfig(op_types=("Gather",), optimize=False, validate=False), tmp_path / "q", report=True)
    assert made and all(tmp_path in p.parents for p in made), made
    assert hidden(tmp_path) == []


def test_an_output_holding_the_source_is_refused(tmp_path):
    src = tmp_path / "parent" / "src"
    src.mkdir(parents=True)
    (src / "model.onnx").write_text("x")
    with pytest.raises(ArtifactError, match="contains the artifact this stage reads"):
        with atomic_output(tmp_path / "parent", force=True, source=src):
            pass
    assert (src / "model.onnx").is_file() and hidden(tmp_path) == []
