"""The benchmark recipes at least parse their arguments (their full runs take minutes; see benchmarks/results)."""

import json
import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["serve_table", "profile_ops", "reliability",
                                    "triton_answers"])
def test_recipe_help(module):
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.runs.{module}", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr


def test_interleaved_measurement(tiny_onnx):
    from benchmarks.latency import measure_interleaved, token_feed
    from runtime import open_session

    with open_session(tiny_onnx) as s:
        res = measure_interleaved({("a", 1, 8): (s, token_feed(s, 1, 8)), ("b", 4, 8): (s, token_feed(s, 4, 8))},
                                  warmup=1, iters=6, rounds=3)
    assert [r.batch for r in res.values()] == [1, 4] and all(r.iters == 6 and r.p50_ms > 0 for r in res.values())


def recipe(module, *args, cwd):
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.runs.{module}", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def test_serve_recipe_runs(tiny_onnx, tmp_path):
    from pathlib import Path

    from tests.conftest import sentiment_rows, write_csv

    data = write_csv(tmp_path / "texts.csv", sentiment_rows(16))
    root = Path(__file__).resolve().parents[1]
    recipe("serve_table", "--artifact", tiny_onnx.path, "--data", data, "--duration", 0.5, "--repeats", 1,
           "--concurrency", 4, "--out", tmp_path, cwd=root)
    result = json.loads((tmp_path / "serve.json").read_text())
    assert len(result["rows"]) == 8 and all(r["lost"] == 0 and r["ok"] > 0 for r in result["rows"])
    assert [r["mean_batch"] for r in result["rows"] if "--max-batch-size 1" in r["run"]] == [1.0]
    assert set(result["batching_speedup"]) == {"defaults (spinning)", "--no-spinning", "best on / best off"}


def test_reliability_recipe_reports_clean_cases(tiny_onnx, tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = recipe("reliability", "--artifact", tiny_onnx.path, "--quick", "--only", "auth", "--out", tmp_path, cwd=root)
    report = json.loads((tmp_path / "reliability.json").read_text())
    assert [r["outcome"] for r in report["rows"]] == ["clean"] and "401, 401, 200" in report["rows"][0]["observed"]
    assert "1 of 1 cases clean" in (tmp_path / "reliability.md").read_text() and "wrote" in out
