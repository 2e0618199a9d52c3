"""The README's commands run as written, so the docs cannot rot."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from exporter.cli import main
from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def shell_lines(block: str) -> list[str]:
    """Commands of a README code block: comments, `[--optional]` parts and `a | b` alternatives dropped."""
    lines = []
    for line in block.splitlines():
        line = re.sub(r"\[[^\]]*\]", "", line.split("#", 1)[0]).strip()
        if line:
            lines.append(" ".join(line.split()))
    return lines


def quick_start() -> list[str]:
    return shell_lines(README.split("```", 2)[1])


def tour_commands() -> list[list[str]]:
    block = README.split("## A short tour", 1)[1].split("```", 2)[1]
    return [shlex.split(line)[1:] for line in shell_lines(block) if line.startswith("kiln ")]


def test_readme_lists_the_expected_commands():
    assert quick_start() == ["make demo", "make test", "source .venv/bin/activate"]
    assert [c[0] for c in tour_commands()] == ["export", "inspect", "predict", "bench", "doctor"]


@pytest.mark.timeout(120)  # five `kiln` processes on the tiny model: about 30 s on 2 busy cores
def test_quick_start_and_tour_in_a_fresh_shell(tiny_bert, tmp_path):
    """After `make demo` (the venv this test runs in), the quick start's activation line puts `kiln` on the PATH
    and the tour's commands run as pasted; the tiny test model stands in for MiniLM, and bench times 2 runs."""
    (tmp_path / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    script = ["set -e"] + [line for line in quick_start() if not line.startswith("make ")]
    for args in tour_commands():
        args = [str(tiny_bert) if a == "minilm" else a for a in args]
        if args[0] == "bench":
            args += ["--iters", "2", "--warmup", "1", "--rounds", "1"]
        script.append(shlex.join(["kiln", *args]))
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", str(tmp_path)), "PYTHONPATH": str(REPO),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "KILN_DATA_DIR": os.environ["KILN_DATA_DIR"]}
    proc = subprocess.run(["bash", "--noprofile", "--norc", "-c", "\n".join(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, (script, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    assert "input_ids" in proc.stdout and "p50_ms" in proc.stdout and "onnxruntime" in proc.stdout


def test_error_example_is_what_kiln_prints(tiny_bert, tmp_path):
    example = README.split("$ kiln export", 1)[1].split("```", 1)[0].strip().splitlines()
    args = shlex.split(example[0])
    result = CliRunner().invoke(main, ["export", str(tiny_bert), *args[1:-1], str(tmp_path / "out")])
    assert result.exit_code != 0 and result.output.strip() == example[1]
