"""Several data passes in one suite (the recipes' batch-1 and batch-32 tables), each with its own candidates, a
sample and a reference; the report tells the passes apart, and ratios to a baseline candidate."""

import json

import pytest
from click.testing import CliRunner

from exporter.cli import main


def suite_text(art, data, extra=""):
    return (f'title = "passes"\n[report]\nbaseline = "a"\nnotes = "Made for a test."\n'
            f'[[candidate]]\nartifact = "{art}"\nlabel = "a"\n'
            f'[[candidate]]\nartifact = "{art}"\nlabel = "b"\noptions = {{threads = 1}}\n'
            f'[sweep]\nbatch_sizes = [2]\nseq_lens = [8]\nwarmup = 1\nrounds = 2\nper_round = 1\ncandidates = ["b"]\n'
            f'[[data]]\nsource = "{data}"\nbatch_size = 1\nsample = 7\nwarmup = 0\nrounds = 2\n'
            f'[[data]]\nsource = "{data}"\nbatch_size = 16\nwarmup = 0\nrounds = 2\nreference = "a"\n' + extra)


@pytest.fixture
def data(tmp_path):
    from tests.conftest import sentiment_rows, write_csv

    return write_csv(tmp_path / "d.csv", sentiment_rows(30))


def test_two_passes_sample_reference_and_baseline_ratios(tiny_onnx, data, tmp_path):
    from benchmarks.harness.gate import Budget, compare
    from benchmarks.harness.schema import load_report

    (tmp_path / "s.toml").write_text(suite_text(tiny_onnx.path, data))
    r = CliRunner().invoke(main, ["-q", "bench", "--suite", str(tmp_path / "s.toml"), "-o", str(tmp_path / "o"), "--json"])
    assert r.exit_code == 0, r.output
    report = load_report(tmp_path / "o" / "s.json")
    # the sweep times only the candidate it names
    assert {row["candidate"] for row in report["results"]} == {"b"}
    rows = report["data_results"]
    assert [(row["pass"], row["candidate"], row["n"]) for row in rows] == [
        ("batch 1, 7 sampled", "a", 7), ("batch 1, 7 sampled", "b", 7), ("batch 16", "a", 30), ("batch 16", "b", 30)]
    # the same model twice: identical outputs against the reference, in the pass that has one
    assert rows[3]["max_abs_diff"] == 0 and rows[3]["agreement"] == 1 and "max_abs_diff" not in rows[0]
    assert rows[0]["model_mb"] > 0
    md = (tmp_path / "o" / "s.md").read_text()
    assert "Made for a test." in md and md.count("## End to end on") == 2 and ", batch 1, 7 sampled" in md
    headers = [line for line in md.splitlines() if line.startswith("| candidate | ")]
    assert all(h.rstrip().endswith("| x a |") for h in headers) and len(headers) == 3  # latency + two passes
    # the gate matches rows pass by pass: the same report against itself compares all four data rows
    diff = compare(report, report, Budget(10, 0.5))
    assert {d["row"] for d in diff if d["metric"] == "wall_s"} == {
        f"{c} on {data} ({p})" for c in "ab" for p in ("batch 1, 7 sampled", "batch 16")}


def test_the_sample_is_the_same_draw_every_time(tiny_onnx, data):
    from benchmarks.harness.realdata import DataConfig, load_data
    from runtime import Artifact

    art = Artifact.load(tiny_onnx.path)
    first, again = (load_data(art, DataConfig(str(data), sample=7)) for _ in range(2))
    whole = load_data(art, DataConfig(str(data)))
    assert first.inputs == again.inputs and len(first.inputs) == 7
    idx = [whole.inputs.index(t) for t in first.inputs]
    assert idx == sorted(idx) and [whole.labels[i] for i in idx] == first.labels  # file order, labels kept with texts


@pytest.mark.parametrize("extra, message", [
    ('[[data]]\nsource = "x.csv"\nbatch_size = 16\n', "two data passes share the name 'batch 16'"),
    ('[[data]]\nsource = "x.csv"\nname = "c"\ncandidates = ["zz"]\n', "names 'zz', which is no candidate or peer"),
    ('[[data]]\nsource = "x.csv"\nname = "c"\nreference = "zz"\ncandidates = ["a"]\n',
     "reference 'zz' is not one of its Kiln candidates; valid: a"),
    ('[[data]]\nsource = "x.csv"\nname = "c"\nsample = -1\n', "sample must be a count >= 0"),
])
def test_bad_passes_are_one_line(tiny_onnx, data, tmp_path, extra, message):
    (tmp_path / "s.toml").write_text(suite_text(tiny_onnx.path, data, extra))
    r = CliRunner().invoke(main, ["bench", "--suite", str(tmp_path / "s.toml")])
    assert r.exit_code != 0 and message in r.output
    assert r.output.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in r.output


def test_report_baseline_must_be_a_candidate(tiny_onnx, data, tmp_path):
    text = suite_text(tiny_onnx.path, data).replace('baseline = "a"', 'baseline = "fp32"')
    (tmp_path / "s.toml").write_text(text)
    r = CliRunner().invoke(main, ["bench", "--suite", str(tmp_path / "s.toml")])
    assert r.exit_code != 0 and "[report] baseline 'fp32' is no candidate's label; valid: a, b" in r.output


def test_rows_of_different_passes_may_have_different_round_counts():
    from benchmarks.harness.schema import validate
    from runtime.errors import ValidationError

    env = {"cpu": "c", "cpu_count": 2, "cpu_flags": [], "gpus": [], "kiln": "0", "versions": {}}
    row = {"candidate": "a", "backend": "x", "data": "d", "data_sha256": "0" * 64, "n": 3, "batch_size": 1,
           "sentences_per_s": 1.0, "wall_s": 1.0, "batch_p50_ms": 1.0, "batch_p99_ms": 1.0, "accuracy": 0.5,
           "macro_f1": 0.5, "spread": 0.0, "noisy": False}
    report = {"schema_version": 1, "kind": "kiln-bench", "created": "now", "command": "x", "environment": env,
              "config": {}, "results": [], "data_results": [row | {"pass": "p1", "round_wall_s": [1.0, 1.0]},
                                                           row | {"pass": "p2", "round_wall_s": [1.0, 1.0, 1.0]}]}
    validate(json.loads(json.dumps(report)))
    report["data_results"][1]["pass"] = "p1"  # one pass, two round counts: malformed
    with pytest.raises(ValidationError, match="round_wall_s has 3 passes"):
        validate(report)
    report["data_results"][1] |= {"pass": "p2", "agreement": 1.5}
    with pytest.raises(ValidationError, match="agreement must be a number >= 0 and <= 1"):
        validate(report)


def test_ratios_to_several_baselines():
    """Two families in one suite (ResNet, ViT): each row gets its speed against each fp32 baseline."""
    from benchmarks.harness.render import latency_ratios

    rows = [{"candidate": c, "input": "1 x image", "p50_ms": ms} for c, ms in
            (("r32", 2.0), ("r8", 1.0), ("v32", 8.0), ("v8", 4.0))]
    out = latency_ratios(rows, ["r32", "v32"])
    assert [(r["x r32"], r["x v32"]) for r in out] == [("1.00", "4.00"), ("2.00", "8.00"), ("0.25", "1.00"),
                                                       ("0.50", "2.00")]


def test_a_candidate_may_keep_its_own_batch_size(tiny_onnx, data):
    """'One input at a time' beside batches of 16 in one pass: the reference for what batching changes."""
    from benchmarks.harness.candidates import Candidate
    from benchmarks.harness.realdata import DataConfig, run_data

    rows = run_data([Candidate(tiny_onnx.path, label="alone", options={"batch_size": 1}),
                     Candidate(tiny_onnx.path, label="batched")],
                    DataConfig(str(data), batch_size=16, warmup=0, rounds=1, reference="alone"))
    assert [(r["candidate"], r["batch_size"]) for r in rows] == [("alone", 1), ("batched", 16)]
    assert rows[1]["agreement"] == 1 and rows[1]["max_abs_diff"] < 1e-4  # fp32: padding is masked


def test_an_infinite_option_is_written_as_strict_json(tiny_onnx):
    """call_overhead_tokens = inf (never split) is a float TOML and Python take, and strict JSON does not."""
    from benchmarks.harness.candidates import Candidate
    from benchmarks.harness.run import BenchPlan, plan_config

    cfg = plan_config(BenchPlan((Candidate(tiny_onnx.path, options={"call_overhead_tokens": float("inf")}),)))
    assert json.loads(json.dumps(cfg, allow_nan=False))["candidates"][0]["options"] == {"call_overhead_tokens": "inf"}
