"""Reports and gates: schema validation, re-rendering, like-for-like comparison, one-line bad input."""

import copy
import json

import pytest
from click.testing import CliRunner

from exporter.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(r, match):
    assert r.exit_code != 0, r.output
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith("error: ") and match in err, r.stderr
    assert "Traceback" not in r.output


@pytest.fixture(scope="module")
def tiny_report(tiny_onnx, tmp_path_factory):
    """One real report of the tiny model: a latency row and a data row."""
    from tests.conftest import sentiment_rows, write_csv

    tmp = tmp_path_factory.mktemp("report")
    data = write_csv(tmp / "d.csv", sentiment_rows(12))
    r = run("bench", tiny_onnx.path, "--data", data, "--rounds", "2", "--batch-sizes", "2", "--seq-len", "8",
            "--iters", "2", "--warmup", "1", "-o", tmp / "out")  # not tmp: it holds d.csv (-o wants an empty folder)
    assert r.exit_code == 0, r.output
    return json.loads((tmp / "out" / "bench.json").read_text())


def write(path, report):
    path.write_text(json.dumps(report))
    return path


def slower_and_worse(report, factor=2.0, accuracy_drop=0.1):
    cur = copy.deepcopy(report)
    for row in cur["results"]:
        row["p50_ms"] *= factor
        row["spread"] = 0.01
    for row in cur["data_results"]:
        row["wall_s"] *= factor
        row["accuracy"] = max(0.0, row["accuracy"] - accuracy_drop)
        row["spread"] = 0.01
    return cur


def test_gate_breaks_on_a_slower_and_less_accurate_result(tiny_report):
    from benchmarks.harness.gate import Budget, broken, compare, summary

    base = copy.deepcopy(tiny_report)
    for row in base["results"] + base["data_results"]:
        row["spread"] = 0.01
    rows = compare(base, slower_and_worse(base), Budget(10, 0.5))
    statuses = {(r["row"].split(" ")[0], r["metric"]): r["status"] for r in rows}
    assert statuses[("bert-cls-onnx", "p50_ms")] == "REGRESSION"
    assert statuses[("bert-cls-onnx", "accuracy")] == "ACCURACY DROP"
    assert len(broken(rows)) == 3 and "broke the budget" in summary(rows, Budget(10, 0.5))
    same = compare(base, copy.deepcopy(base), Budget(10, 0.5))
    assert not broken(same) and summary(same, Budget(10, 0.5)).startswith("within budget")


def test_a_change_inside_the_noise_is_not_a_regression(tiny_report):
    from benchmarks.harness.gate import Budget, compare

    base = copy.deepcopy(tiny_report)
    base["results"][0]["spread"] = 0.01
    cur = slower_and_worse(base, factor=1.2, accuracy_drop=0)
    cur["results"][0]["spread"] = 0.4  # the rows moved 40% between their own rounds
    rows = compare(base, cur, Budget(10, 0.5))
    assert rows[0]["status"] == "within noise" and rows[0]["noise"] == "±40.0%"


def test_incomparable_baseline_is_flagged_not_compared(tiny_report):
    from benchmarks.harness.gate import Budget, broken, compare, summary

    base = copy.deepcopy(tiny_report)
    base["environment"]["cpu"] = "Some Other CPU"
    base["environment"]["versions"]["onnxruntime"] = "0.0.1"
    rows = compare(base, slower_and_worse(tiny_report), Budget(10, 0.5))
    assert all(r["status"].startswith("NOT COMPARED: cpu Some Other CPU") for r in rows)
    # flagged, never compared, and a gate that could compare nothing does not pass (it would pass forever)
    assert "onnxruntime 0.0.1" in rows[0]["status"]
    assert [r["status"] for r in broken(rows)] == ["NOTHING COMPARED"]
    assert "the gate compared nothing" in summary(rows, Budget(10, 0.5))
    other_data = copy.deepcopy(tiny_report)
    other_data["data_results"][0]["data_sha256"] = "0" * 64
    rows = compare(other_data, tiny_report, Budget(10, 0.5))
    assert [r["status"] for r in rows if r["metric"] == "wall_s"][0].startswith("NOT COMPARED: data sha256")


def test_cli_gate_exit_and_table(tiny_report, tmp_path):
    # a baseline 100x faster and perfectly accurate: the fresh run of the same tiny model breaks both budgets
    base = copy.deepcopy(tiny_report)
    for row in base["results"]:
        row.update(p50_ms=row["p50_ms"] / 100, spread=0.0)
    for row in base["data_results"]:
        row.update(wall_s=row["wall_s"] / 100, spread=0.0, accuracy=1.0)
    cfg = tiny_report["config"]
    r = run("bench", cfg["candidates"][0]["artifact"], "--data", cfg["data"]["source"], "--rounds", "1",
            "--batch-sizes", "2", "--seq-len", "8", "--iters", "1", "--warmup", "0",
            "--baseline", write(tmp_path / "base.json", base), "--max-latency-regression", "10%",
            "--max-accuracy-drop", "0.5")
    assert r.exit_code == 1, r.output
    assert "REGRESSION" in r.stdout and "ACCURACY DROP" in r.stdout and "| status" not in r.stdout
    assert r.stderr.strip().splitlines()[-1].startswith("error: 3 of 3 compared metrics broke the budget")


def test_cli_gate_within_budget_is_one_line(tiny_report, tmp_path):
    cfg = tiny_report["config"]
    base = copy.deepcopy(tiny_report)
    for row in base["results"] + base["data_results"]:
        row["spread"] = 0.0
    for row in base["results"]:
        row["p50_ms"] *= 1000
    for row in base["data_results"]:
        row["wall_s"] *= 1000
    r = run("bench", cfg["candidates"][0]["artifact"], "--data", cfg["data"]["source"], "--rounds", "1",
            "--batch-sizes", "2", "--seq-len", "8", "--iters", "1", "--warmup", "0", "--json",
            "--baseline", write(tmp_path / "base.json", base), "--max-latency-regression", "10")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["gate"]["summary"].startswith("within budget (latency +10%)")
    assert [line for line in r.stderr.splitlines() if line.startswith("within budget")]


def test_validator_and_report_rerender(tiny_report, tmp_path):
    from benchmarks.harness.schema import validate
    from runtime.errors import ValidationError

    validate(tiny_report)
    broken_row = copy.deepcopy(tiny_report)
    del broken_row["results"][0]["p50_ms"]
    with pytest.raises(ValidationError, match=r"results\[0\] has no 'p50_ms'"):
        validate(broken_row)
    r = run("report", write(tmp_path / "r.json", tiny_report), "-o", tmp_path / "out")
    assert r.exit_code == 0, r.output
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert names == {"r.md", "r-latency.png", "r-pareto.png"}
    md = (tmp_path / "out" / "r.md").read_text()
    assert "Command: `kiln bench" in md and "p50_ms" in md and "accuracy" in md


def test_bad_input_is_one_line_each(tiny_onnx, tiny_report, tmp_path):
    (tmp_path / "empty.csv").write_text("text,label\n")
    (tmp_path / "bad.toml").write_text("title = [unclosed\n")
    old = copy.deepcopy(tiny_report)
    old["schema_version"] = 0
    one_line_error(run("bench", tmp_path / "missing-artifact"), "does not exist")
    one_line_error(run("bench", tiny_onnx.path, "--data", tmp_path / "empty.csv"), "has a header but no rows")
    one_line_error(run("bench", tiny_onnx.path, "--seq-len", "100000"), "exceeds the model's maximum length")
    one_line_error(run("bench", tiny_onnx.path, "--batch-sizes", "1", "--seq-len", "8", "--iters", "1",
                       "--baseline", write(tmp_path / "old.json", old)), "has schema_version 0; this Kiln reads")
    one_line_error(run("bench", "--suite", tmp_path / "bad.toml"), "does not parse")
    one_line_error(run("bench", "--suite", "no-such-suite"), "no suite 'no-such-suite'")
    one_line_error(run("report", tmp_path / "empty.csv", "-o", tmp_path / "o"), "is not JSON")
    one_line_error(run("bench", tiny_onnx.path, "--max-latency-regression", "10%"), "add --baseline old.json")
    one_line_error(run("bench", tiny_onnx.path, "--batch-sizes", "1", "--seq-len", "8", "--iters", "1",
                       "--baseline", write(tmp_path / "ok.json", tiny_report), "--max-latency-regression", "ten"),
                   "must be a percentage such as 10% or 10, got 'ten'")


def test_a_report_folder_without_matplotlib_is_one_line_before_measuring(tiny_onnx, tmp_path, monkeypatch):
    """-o draws plots: without the `bench` extra that is one line naming it, and nothing is measured or written."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    r = run("bench", tiny_onnx.path, "--batch-sizes", "1", "-o", tmp_path / "out")
    one_line_error(r, "matplotlib, which is not installed: pip install 'modelkiln[bench]'")
    assert not (tmp_path / "out").exists() and "latency rounds" not in r.output


def test_hostile_inputs_are_one_line_and_a_gate_that_compared_nothing_fails(tiny_onnx, tiny_report, tmp_path):
    """Found by attacking the harness: each of these was a traceback, or a gate that passed on nothing."""
    other = copy.deepcopy(tiny_report)
    for row in other["results"] + other["data_results"]:
        row["candidate"] = "someone-else"
    r = run("bench", tiny_onnx.path, "--batch-sizes", "1", "--seq-len", "8", "--iters", "1",
            "--baseline", write(tmp_path / "other.json", other), "--max-latency-regression", "10%")
    assert r.exit_code != 0 and "the gate compared nothing" in r.output
    (tmp_path / "nan.json").write_text(json.dumps(tiny_report).replace('"p50_ms": ', '"p50_ms": NaN, "x": ', 1))
    one_line_error(run("report", tmp_path / "nan.json", "-o", tmp_path / "o"), "holds NaN")
    (tmp_path / "afile").write_text("x")
    one_line_error(run("bench", tiny_onnx.path, "--batch-sizes", "1", "-o", tmp_path / "afile"), "is a file")
    one_line_error(run("report", write(tmp_path / "ok.json", tiny_report), "-o", tmp_path / "afile"), "is a file")
    broken = copy.deepcopy(tiny_report)
    broken["environment"]["cpu_flags"] = [1, 2]
    one_line_error(run("report", write(tmp_path / "broken.json", broken), "-o", tmp_path / "r"), "cannot be rendered")
    assert not (tmp_path / "r").exists()
    for body, match in [('candidate = "tiny"', "wrong type or shape"),
                        ('[[candidate]]\nartifact = "x"\n[sweep]\nrounds = 2.0', "whole numbers"),
                        ('gate = "strict"', "[gate] is a table")]:
        (tmp_path / "s.toml").write_text(body + "\n")
        one_line_error(run("bench", "--suite", tmp_path / "s.toml"), match)


def test_data_mode_refuses_an_embedder(tmp_path, tiny_report):
    from exporter.load import load_checkpoint
    from exporter.onnx_export import OnnxConfig, to_onnx
    from tests.conftest import build_tiny

    emb = to_onnx(load_checkpoint(build_tiny(tmp_path / "e", task="feature-extraction"), "feature-extraction"),
                  OnnxConfig(), tmp_path / "emb")
    (tmp_path / "d.csv").write_text("text,label\ngood,positive\n")
    one_line_error(run("bench", emb.path, "--data", tmp_path / "d.csv"), "is a feature-extraction model with no labels")


def test_command_line_keeps_options_given_as_zero(tiny_onnx, tmp_path):
    r = run("bench", tiny_onnx.path, "--batch-sizes", "1", "--seq-len", "8", "--warmup", "0", "--iters", "1", "--json")
    assert r.exit_code == 0, r.output
    assert "--warmup 0" in json.loads(r.stdout)["command"]
