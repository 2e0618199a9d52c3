"""The README's commands run as written, so the docs cannot rot."""

import re
import shlex

import pytest
from click.testing import CliRunner

from exporter.cli import main
from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def tour_commands() -> list[list[str]]:
    block = README.split("## A short tour", 1)[1].split("```", 2)[1]
    cmds = []
    for line in block.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("kiln "):
            # "[--json]" style optional parts and "a | b" alternatives are documentation, not arguments
            line = re.sub(r"\[[^\]]*\]", "", line)
            cmds.append(shlex.split(line)[1:])
    return cmds


@pytest.mark.integration
def test_tour_commands_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cmds = tour_commands()
    assert [c[0] for c in cmds] == ["export", "inspect", "predict", "bench", "doctor"]
    for args in cmds:
        if args[0] == "bench":
            args += ["--iters", "2", "--warmup", "1"]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, (args, result.output)


def test_error_example_is_what_kiln_prints(tiny_bert, tmp_path):
    example = README.split("$ kiln export", 1)[1].split("```", 1)[0].strip().splitlines()
    args = shlex.split(example[0])
    result = CliRunner().invoke(main, ["export", str(tiny_bert), *args[1:-1], str(tmp_path / "out")])
    assert result.exit_code != 0 and result.output.strip() == example[1]
