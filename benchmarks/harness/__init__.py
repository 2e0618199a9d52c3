"""Kiln's benchmark harness: one sweep and one real-data mode, interleaved rounds, versioned reports, gates.

    plan = BenchPlan((Candidate("ft-onnx"), Candidate("ft-int8")), SweepConfig(batch_sizes=(1, 32)),
                     DataConfig("movie-snippets:test"))
    report = run_bench(plan, command="...")      # validated JSON-ready dict
    render(report, Path("out"))                  # Markdown + PNG plots
    rows = compare(baseline, report, Budget(10, 0.5))

The CLI (`kiln bench`, `kiln report`) and suites (benchmarks/suites/*.toml) are thin users of it."""

from benchmarks.harness.candidates import Candidate, Peer
from benchmarks.harness.gate import Budget, compare, summary
from benchmarks.harness.realdata import DataConfig, run_data
from benchmarks.harness.run import BenchPlan, run_bench
from benchmarks.harness.schema import SCHEMA_VERSION, load_report, validate
from benchmarks.harness.sweep import SweepConfig, run_sweep
from benchmarks.harness.timing import interleave, latency_stats

__all__ = ["Candidate", "Peer", "Budget", "compare", "summary", "DataConfig", "run_data", "BenchPlan", "run_bench",
           "SCHEMA_VERSION", "load_report", "validate", "SweepConfig", "run_sweep", "interleave", "latency_stats"]
