"""Peers in the same run: the peer server speaks JSON lines from another Python, interleaved with Kiln's candidates.

The test's "peer environment" is this interpreter (it has transformers and torch): the protocol, the
interleaving, the accuracy scoring and the ratio columns are what is checked, not optimum."""

import sys

import pytest


def test_peer_runs_interleaved_with_kiln_and_gets_ratio_columns(tiny_onnx, tiny_bert, tmp_path):
    from benchmarks.harness import DataConfig, Peer, run_data
    from benchmarks.harness.candidates import Candidate
    from benchmarks.harness.peers import PeerClient
    from benchmarks.harness.render import markdown, peer_ratios
    from tests.conftest import sentiment_rows, write_csv

    data = write_csv(tmp_path / "d.csv", sentiment_rows(40))
    peer = Peer("transformers-eager", tiny_bert, sys.executable, batch_size=16)
    rows = run_data([Candidate(tiny_onnx.path, label="kiln")], DataConfig(str(data), batch_size=16, warmup=0, rounds=2),
                    [peer], lambda: PeerClient(sys.executable))
    kiln, eager = rows
    assert eager["candidate"] == "peer:transformers-eager" and eager["runtime"].startswith("transformers.pipeline")
    # the same weights: the peer and Kiln's fp32 ONNX give the same answers on the same texts
    assert eager["accuracy"] == kiln["accuracy"] and eager["n"] == kiln["n"] == 40
    assert len(eager["round_wall_s"]) == 2 and eager["batch_p50_ms"] > 0
    with_ratio, cols = peer_ratios(rows)
    assert cols == ["x peer:transformers-eager"] and with_ratio[1][cols[0]] == "1.00"
    report = {"config": {}, "command": "x", "created": "now", "environment": {
        "cpu": "c", "cpu_count": 2, "cpu_flags": [], "gpus": [], "kiln": "0", "versions": {}},
        "results": [], "data_results": rows}
    assert "x peer:transformers-eager" in markdown(report)


def test_a_broken_peer_environment_is_one_clear_error(tiny_onnx, tmp_path):
    from benchmarks.harness import Peer
    from benchmarks.harness.peers import PeerClient, peer_python
    from runtime.errors import BackendError, ConfigError

    with pytest.raises(ConfigError, match="peer Python /nope/python does not exist"):
        peer_python("/nope/python")
    with PeerClient(sys.executable) as client, pytest.raises(BackendError, match="peer peer:optimum-fp32 load failed"):
        client.load(Peer("optimum-fp32", tmp_path / "no-model", sys.executable))


def test_pass_by_pass_ratios_show_what_survives_the_noise():
    from benchmarks.harness.render import markdown, paired_ratios

    def row(name, per_s, walls):
        return {"candidate": name, "sentences_per_s": per_s, "round_wall_s": walls}

    rows = [row("kiln", 400.0, [1.0, 2.0, 1.0]), row("peer:slow", 50.0, [8.0, 8.0, 8.0]),
            row("peer:fast", 100.0, [4.0, 3.0, 4.0])]
    paired, cols = paired_ratios(rows)
    assert cols == ["candidate", "x peer:fast per pass", "lowest x peer:slow", "lowest x peer:fast"]
    # the second pass was slow for Kiln alone: 3.0 / 2.0, the ratio that holds in every pass
    assert paired[0] == {"candidate": "kiln", "x peer:fast per pass": "4.00, 1.50, 4.00",
                         "lowest x peer:slow": "4.00", "lowest x peer:fast": "1.50"}
    assert paired_ratios([row("kiln", 1.0, [1.0])]) == ([], [])  # no peer, no section
    report = {"config": {}, "command": "x", "created": "now", "environment": {
        "cpu": "c", "cpu_count": 2, "cpu_flags": [], "gpus": [], "kiln": "0", "versions": {}}, "results": [],
        "data_results": [r | {"data": "d", "n": 3, "data_sha256": "0" * 64, "batch_size": 32, "runtime": "r",
                              "wall_s": 1, "batch_p50_ms": 1, "batch_p99_ms": 1, "accuracy": 1, "macro_f1": 1,
                              "spread": 0.0, "noisy": False} for r in rows]}
    assert "### Pass by pass against the peers" in markdown(report) and "4.00, 1.50, 4.00" in markdown(report)
