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
