"""Suites: `kiln bench --suite ci` runs here (as CI runs it) and writes a well-formed report; suite files are checked."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from exporter.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_ci_suite_runs_and_writes_a_valid_report(tmp_path):
    """As a user runs it on a fresh clone: the installed `kiln` from another folder (where this repository's
    tests are not importable), and the suite's tiny model not committed: the first run builds it."""
    import os
    import subprocess
    import sys

    from benchmarks.harness.schema import load_report

    kiln = Path(sys.executable).parent / "kiln"
    if not kiln.exists():
        pytest.skip("no installed kiln entry point beside this Python")
    out = tmp_path / "out"
    env = {**os.environ, "KILN_CI_MODEL": str(tmp_path / "model"), "PYTHONPATH": ""}
    r = subprocess.run([str(kiln), "bench", "--suite", "ci", "-o", str(out), "--json"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert {p.name for p in (tmp_path / "model").iterdir()} == {"tiny-fp32", "tiny-int8"}
    report = load_report(out / "ci.json")  # raises on a malformed report: that fails the build
    assert json.loads(r.stdout)["created"] == report["created"] and report["command"].startswith("kiln bench --suite ci")
    assert {row["candidate"] for row in report["data_results"]} == {"tiny-fp32", "tiny-int8"}
    assert {p.name for p in out.iterdir()} == {"ci.json", "ci.md", "ci-latency.png", "ci-pareto.png"}


def test_prepare_names_a_known_builder(tmp_path):
    (tmp_path / "s.toml").write_text('prepare = {download = "x"}\n[[candidate]]\nartifact = "x"\n')
    r = run("bench", "--suite", tmp_path / "s.toml")
    assert r.exit_code != 0 and r.output.strip().splitlines()[-1].startswith("error: ")
    assert "prepare is a table NAME = \"folder\" with NAME one of ci-model" in r.output


SHIPPED = sorted(p.stem for p in (Path(__file__).parents[1] / "benchmarks" / "suites").glob("*.toml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_suite_parses(name, monkeypatch):
    """Read and checked without making or measuring anything (make=False: no [[make]] step or prepare runs)."""
    from benchmarks.harness.suites import load_suite

    monkeypatch.setenv("KILN_PEER_PYTHON", "/nonexistent/python")
    monkeypatch.setenv("KILN_SUITE_WORK", "/nonexistent/work")
    plan, settings = load_suite(name, make=False)
    assert plan.candidates and settings["name"] == name
    assert (plan.sweep is not None) or (plan.data is not None)
    if name == "peers":
        assert [p.kind for p in plan.peers] == ["transformers-eager", "optimum-fp32", "optimum-int8"]
        assert plan.data.source == "movie-snippets:test" and plan.data.batch_size == 32


def test_suite_values_come_from_the_environment(tmp_path, monkeypatch):
    from benchmarks.harness.suites import load_suite
    from runtime.errors import ConfigError

    suite = tmp_path / "s.toml"
    suite.write_text('[[candidate]]\nartifact = "${ART:-x}"\n[data]\nsource = "movie-snippets:test"\n'
                     'rounds = "${R:-2}"\n')
    monkeypatch.setenv("ART", str(tmp_path / "a"))
    plan, _ = load_suite(str(suite))
    assert plan.candidates[0].artifact == tmp_path / "a" and plan.data.rounds == 2
    suite.write_text('[[candidate]]\nartifact = "a"\nbackend_name = "x"\n')
    with pytest.raises(ConfigError, match="unknown key.*backend_name; valid: artifact, backend"):
        load_suite(str(suite))
