"""Kiln's latency/accuracy harness. Imports runtime and calibration only (never the exporter)."""

from benchmarks.environment import capture_environment
from benchmarks.latency import LatencyResult, example_feed, measure_latency, token_feed

__all__ = ["capture_environment", "LatencyResult", "measure_latency", "example_feed", "token_feed"]
