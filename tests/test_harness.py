"""The benchmark harness: interleaved rounds, noise flags, sweeps, real-data mode (tiny models, no timing asserts)."""

import json

import pytest
from click.testing import CliRunner

from exporter.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_interleave_runs_every_candidate_once_per_round_in_turn():
    from benchmarks.harness.timing import interleave

    calls = []
    out = interleave({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, rounds=3,
                     per_round=2, pause_s=0)
    assert calls == ["a", "b"] + ["a", "a", "b", "b"] * 3
    assert [len(r) for r in out["a"]] == [2, 2, 2]


def test_noisy_rows_are_flagged_from_synthetic_timings():
    from benchmarks.harness.timing import Timings, latency_stats

    steady = latency_stats(Timings(((10.0, 10.1), (10.2, 10.0), (9.9, 10.1)), items=4))
    drifting = latency_stats(Timings(((10.0, 10.1), (14.0, 14.2), (10.1, 9.9)), items=4))
    assert not steady["noisy"] and steady["spread"] < 0.05
    assert drifting["noisy"] and drifting["spread"] > 0.3
    assert steady["p50_ms"] == pytest.approx(10.05) and steady["throughput"] == pytest.approx(4 / 0.01005, rel=1e-3)
    assert steady["min_ms"] == 9.9 and steady["p50_ms"] <= steady["p90_ms"] <= steady["p99_ms"]


def test_sweep_two_candidates_batches_and_lengths(tiny_onnx):
    from benchmarks.harness import Candidate, SweepConfig, run_sweep

    rows = run_sweep([Candidate(tiny_onnx.path, label="a"), Candidate(tiny_onnx.path, "torch", label="b")],
                     SweepConfig(batch_sizes=(1, 2), seq_lens=(8, 16), warmup=1, rounds=2, per_round=1))
    assert [(r["candidate"], r["batch"], r["seq_len"]) for r in rows] == [
        (c, b, s) for c in "ab" for s in (8, 16) for b in (1, 2)]
    assert all(r["iters"] == 2 and len(r["artifact_sha256"]) == 64 and "rss_added_mb" in r for r in rows)


def test_seq_len_default_fits_the_artifact_and_longer_is_refused(tiny_onnx):
    from benchmarks.harness.sweep import seq_lens_for
    from runtime.errors import ConfigError

    assert seq_lens_for(tiny_onnx, ()) == [min(128, tiny_onnx.model_meta.max_length)]
    with pytest.raises(ConfigError, match="exceeds the model's maximum length"):
        seq_lens_for(tiny_onnx, (8, 100000))


def test_bench_several_artifacts_with_data(tiny_onnx, tmp_path):
    from tests.conftest import sentiment_rows, write_csv

    data = write_csv(tmp_path / "d.csv", sentiment_rows(20))
    r = run("bench", tiny_onnx.path, tiny_onnx.path, "--backend", "onnxruntime,torch", "--data", data,
            "--rounds", "2", "--batch-sizes", "1", "--seq-len", "8", "--iters", "2", "--warmup", "1", "--json",
            "-o", tmp_path / "out")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["schema_version"] == 1 and len(report["results"]) == 4
    rows = report["data_results"]
    assert len(rows) == 4 and all(row["n"] == 20 and 0 <= row["accuracy"] <= 1 and row["sentences_per_s"] > 0
                                  for row in rows)
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"bench.json", "bench.md", "bench-latency.png",
                                                               "bench-pareto.png"}
