"""The stage commands end to end through the CLI (tiny model, tiny data)."""

import json

import pytest

from tests.conftest import sentiment_rows, write_csv
from tests.test_cli import one_line_error, run


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli-data")
    return write_csv(d / "train.csv", sentiment_rows(96)), write_csv(d / "dev.csv", sentiment_rows(32, seed=2))


@pytest.fixture(scope="module")
def ft(tiny_bert, files, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli-ft") / "ft"
    r = run("finetune", tiny_bert, "--data", files[0], "--eval", files[1], "-o", out, "--epochs", "10", "--lr", "3e-3",
            "--batch-size", "16", "--max-length", "16", "--patience", "20", "--json")
    assert r.exit_code == 0, r.output
    return out


def test_finetune_eval_prune_export_quantize(ft, files, tmp_path):
    manifest = json.loads(run("inspect", ft, "--json").stdout)
    assert manifest["lineage"][-1]["stage"] == "finetune"
    r = run("eval", ft, "--data", files[1], "--json")
    assert r.exit_code == 0, r.output
    ev = json.loads(r.stdout)
    assert ev["n"] == 32 and sum(map(sum, ev["confusion"])) == 32 and ev["accuracy"] >= 0.8
    r = run("prune", ft, "-o", tmp_path / "p", "--heads", "0.25", "--ffn", "0.25", "--data", files[0], "--eval", files[1],
            "--recover-steps", "3", "--samples", "16")
    assert r.exit_code == 0 and "heads per layer [3, 3]" in r.stdout, r.output
    r = run("export", tmp_path / "p", "-o", tmp_path / "p-onnx")  # task comes from the manifest
    assert r.exit_code == 0, r.output
    r = run("quantize", tmp_path / "p-onnx", "-o", tmp_path / "q", "--report", "--json")
    assert r.exit_code == 0, r.output
    q = json.loads(r.stdout)
    assert q["meta"]["precision"] == "int8" and len(q["lineage"][-1]["metrics"]["sensitivity"]) >= 4
    assert [s["stage"] for s in q["lineage"]] == ["load", "finetune", "prune", "to_onnx", "quantize"]
    r = run("quantize", tmp_path / "p-onnx", "-o", tmp_path / "s", "--method", "static-int8", "--calib-data", files[0],
            "--calib-samples", "16", "--calibrator", "percentile")
    assert r.exit_code == 0, r.output
    r = run("eval", tmp_path / "s", "--data", files[1])
    assert r.exit_code == 0 and "accuracy" in r.stdout


def test_optimize_and_unstructured(ft, tmp_path, tiny_onnx):
    r = run("optimize", tiny_onnx.path, "-o", tmp_path / "o", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["lineage"][-1]["metrics"]["fused_ops"]["Attention"] == 2
    r = run("prune", ft, "-o", tmp_path / "u", "--sparsity", "0.5")
    assert r.exit_code == 0 and "sparsity 0.5" in r.stdout, r.output
    r = run("prune", ft, "-o", tmp_path / "24", "--pattern", "2:4", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["lineage"][-1]["metrics"]["sparsity"] == 0.5


def test_loadtest_in_process(tiny_onnx, files):
    r = run("loadtest", tiny_onnx.path, "--concurrency", "4", "--duration", "1", "--data", files[1], "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["ok"] > 0 and s["lost"] == 0 and s["errors"] == {} and s["p50_ms"] <= s["p99_ms"]


@pytest.mark.parametrize("args, match", [
    (["prune", "{ft}", "-o", "{tmp}/x"], "choose one kind"),
    (["prune", "{ft}", "-o", "{tmp}/x", "--heads", "0.5"], "structured pruning scores heads and neurons on data"),
    (["quantize", "{onnx}", "-o", "{tmp}/x", "--method", "int4"], "'int4' is not one of 'dynamic-int8'"),
    (["quantize", "{onnx}", "-o", "{tmp}/x", "--method", "static-int8"], "static-int8 needs calibration data"),
    (["quantize", "{onnx}", "-o", "{tmp}/x", "--max-accuracy-drop", "0.5"], "needs --eval-data"),
    (["quantize", "{ft}", "-o", "{tmp}/x"], "quantize reads an 'onnx' artifact"),
    (["finetune", "minilm", "--data", "{tmp}/none.csv", "-o", "{tmp}/x"], "does not exist"),
    (["eval", "{onnx}", "--data", "movie-snippets:valid"], "has splits train, dev, test"),
    (["loadtest", "ftp://host", "--duration", "1"], "url must look like http://127.0.0.1:8000"),
    (["loadtest", "{tmp}/nothing", "--duration", "1"], "does not exist"),
])
def test_stage_errors_are_one_line(args, match, ft, tiny_onnx, tmp_path):
    subs = {"{ft}": str(ft), "{onnx}": str(tiny_onnx.path), "{tmp}": str(tmp_path)}
    argv = [subs.get(a, a) for a in args]
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    one_line_error(run(*argv), match)
    assert not (tmp_path / "x").exists()
