"""Hostile-run findings: each a user mistake that measured for minutes, wrote where it must not, or crashed,
now refused in one line before anything runs."""

import shutil

import pytest
from click.testing import CliRunner

from exporter.cli import main


@pytest.fixture
def data(tmp_path):
    from tests.conftest import sentiment_rows, write_csv

    return write_csv(tmp_path / "d.csv", sentiment_rows(30))


@pytest.fixture
def art_copy(tiny_onnx, tmp_path):
    """A private copy: before the fix these runs wrote into the artifact."""
    return shutil.copytree(tiny_onnx.path, tmp_path / "art")


def suite(tmp_path, art, data, extra="", data_extra="", head=""):
    text = (f'{head}title = "hostile"\n[[candidate]]\nartifact = "{art}"\nlabel = "a"\n'
            f'[[data]]\nsource = "{data}"\nbatch_size = 4\nwarmup = 0\nrounds = 1\n{data_extra}' + extra)
    (tmp_path / "s.toml").write_text(text)
    return str(tmp_path / "s.toml")


def bench(*args):
    return CliRunner().invoke(main, ["-q", "bench", *args])


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_report_never_written_into_an_artifact(art_copy, force):
    manifest = (art_copy / "manifest.json").read_bytes()
    r = bench(str(art_copy), "--batch-sizes", "1", "--iters", "1", "-o", str(art_copy), *force)
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "is a Kiln artifact (manifest.json); give another folder for the report" in r.output
    assert (art_copy / "manifest.json").read_bytes() == manifest
    assert not (art_copy / "bench.json").exists()


def test_suite_out_into_an_artifact_is_refused(art_copy, data, tmp_path):
    r = bench("--suite", suite(tmp_path, art_copy, data, head=f'out = "{art_copy}"\n'))
    assert r.exit_code != 0 and "is a Kiln artifact (manifest.json)" in r.output, r.output
    assert not (art_copy / "s.json").exists()


def test_a_missing_peer_python_is_said_before_any_make_step(tiny_onnx, data, tmp_path):
    made = tmp_path / "made"
    extra = (f'[[make]]\nout = "{made}"\nrun = "kiln quantize {tiny_onnx.path} --method dynamic-int8 -o {{out}}"\n'
             f'[[peer]]\nkind = "transformers-eager"\nmodel = "{tmp_path}"\npython = "/nope/bin/python"\n')
    r = bench("--suite", suite(tmp_path, tiny_onnx.path, data, extra), "-o", str(tmp_path / "o"))
    assert r.exit_code != 0 and "peer Python /nope/bin/python does not exist" in r.output, r.output
    assert not made.exists()  # refused before the make step ran


def test_a_bare_peer_python_is_looked_up_on_path(monkeypatch, tmp_path):
    import os

    from benchmarks.harness.peers import peer_python
    from runtime.errors import ConfigError

    exe = tmp_path / "bin" / "mypython"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{exe.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    assert peer_python("mypython") == str(exe)
    with pytest.raises(ConfigError, match="peer Python no-such-python-here is not on PATH"):
        peer_python("no-such-python-here")


@pytest.mark.parametrize("value", ['"x"', "nan", "-1", "0", "10", "true"])
def test_noisy_spread_must_be_a_fraction(tiny_onnx, data, tmp_path, value):
    r = bench("--suite", suite(tmp_path, tiny_onnx.path, data, data_extra=f"noisy_spread = {value}\n"),
              "-o", str(tmp_path / "o"))
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "data noisy_spread is a fraction of the median (e.g. 0.1), got" in r.output, r.output
    assert not (tmp_path / "o" / "s.json").exists()


def test_sweep_noisy_spread_must_be_a_number():
    from benchmarks.harness.sweep import SweepConfig
    from runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="sweep noisy_spread is a fraction of the median"):
        SweepConfig((1,), noisy_spread="x")


def test_a_sample_larger_than_the_data_is_one_line(tiny_onnx, data, tmp_path):
    r = bench("--suite", suite(tmp_path, tiny_onnx.path, data, data_extra="sample = 100000\n"), "-o", str(tmp_path / "o"))
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert f"sample 100000 is more than the 30 inputs of {data}; give at most 30, or 0 for all" in r.output, r.output


@pytest.mark.parametrize("named, timed", [(["a"], {"a"}), (["a", "p (model)"], {"a", "p (model)"}),
                                          (["p"], {"p (model)"}), ([], {"a", "p (model)"})])
def test_sweep_candidates_also_choose_peer_models(tmp_path, monkeypatch, named, timed):
    import benchmarks.harness.peers as peers
    import benchmarks.harness.run as run
    from benchmarks.harness.candidates import Candidate, Peer
    from benchmarks.harness.realdata import DataConfig
    from benchmarks.harness.sweep import SweepConfig

    def models(sweep_peers, candidates, progress=None):
        return [(Candidate(tmp_path, "onnxruntime", "cpu", {}, f"{p.label} (model)"), p.kind) for p in sweep_peers]

    monkeypatch.setattr(peers, "peer_model_candidates", models)
    monkeypatch.setattr(run, "run_sweep", lambda cands, cfg, progress: [{"candidate": c.label} for c in cands])
    plan = run.BenchPlan((Candidate(tmp_path, "onnxruntime", "cpu", {}, "a"),), SweepConfig((1,), candidates=named),
                         DataConfig("x.csv"), (Peer("optimum-int8", tmp_path, "python3", label="p", sweep=True),))
    assert {r["candidate"] for r in run.sweep_with_peer_models(plan, None)} == timed


def test_a_baseline_named_twice_is_refused(tiny_onnx, data, tmp_path):
    r = bench("--suite", suite(tmp_path, tiny_onnx.path, data, '[report]\nbaseline = ["a", "a"]\n'),
              "-o", str(tmp_path / "o"))
    assert r.exit_code != 0 and "[report] baseline names 'a' twice; give each label once" in r.output, r.output


def test_a_candidate_option_error_names_the_candidate(tiny_onnx, data, tmp_path):
    extra = '[[candidate]]\nartifact = "%s"\nlabel = "zero"\noptions = {batch_size = 0}\n' % tiny_onnx.path
    r = bench("--suite", suite(tmp_path, tiny_onnx.path, data, extra), "-o", str(tmp_path / "o"))
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "candidate zero: batch_size must be an integer >= 1, got 0" in r.output, r.output


def test_a_sweep_session_error_names_the_candidate(tiny_onnx):
    from benchmarks.harness.candidates import Candidate
    from benchmarks.harness.sweep import SweepConfig, run_sweep
    from runtime.errors import KilnError

    cand = Candidate(tiny_onnx.path, "onnxruntime", "cpu", {"no_such_option": 1}, "odd")
    with pytest.raises(KilnError, match=r"^candidate odd: "):
        run_sweep([cand], SweepConfig((1,), (8,), 0, 1, 1))
