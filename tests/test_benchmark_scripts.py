"""The benchmark recipes at least parse their arguments (their full runs take minutes; see benchmarks/results)."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["prune_table", "quant_table", "serve_table", "profile_ops"])
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
