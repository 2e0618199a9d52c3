"""benchmarks/runs/openvino_table.py: parses its arguments, and counts a BERT encoder's int8 work right."""

import json
import subprocess
import sys

import pytest


def test_recipe_help():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.runs.openvino_table", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--peer-python" in proc.stdout, proc.stderr


def test_int8_work_of_minilm_and_a_pruned_one(tmp_path):
    from benchmarks.runs.openvino_table import int8_ops
    from runtime import Artifact

    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 384, "num_attention_heads": 12,
                                                      "num_hidden_layers": 6, "intermediate_size": 1536}))
    minilm = Artifact(tmp_path, "hf", "text-classification", (), ())
    assert int8_ops(minilm, 32, 128) / 1e9 == pytest.approx(91.8, abs=0.1)  # issue #15: "about 92 GOPs"
    pruned = Artifact(tmp_path, "hf", "text-classification", (), (), meta={"structure": {"heads": [12], "ffn": [1536]}})
    assert int8_ops(pruned, 32, 128) == pytest.approx(int8_ops(minilm, 32, 128) / 6)
