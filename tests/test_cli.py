import json

import pytest
from click.testing import CliRunner

from exporter.cli import main
from tests.conftest import fill


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def one_line_error(result, match):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip() and not line.startswith("[kiln")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert match in lines[0], lines[0]


def test_export_inspect_predict(tiny_bert, tmp_path):
    out = tmp_path / "art"
    r = run("export", tiny_bert, "--task", "text-classification", "-o", out, "--json")
    assert r.exit_code == 0, r.output
    manifest = json.loads(r.stdout)
    assert manifest["format"] == "onnx" and (out / "manifest.json").exists()
    r = run("inspect", out, "--json", "--verify")
    assert r.exit_code == 0 and json.loads(r.stdout)["verified"] is True
    r = run("inspect", out)
    assert "validated on 3 batches" in r.stdout and "input     input_ids: int64[batch, sequence]" in r.stdout
    r = run("predict", out, "the movie was good", "bad", "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert [row["text"] for row in rows] == ["the movie was good", "bad"]
    assert all(row["label"] in ("negative", "positive") for row in rows)


def test_predict_file_and_csv(tiny_onnx, tmp_path):
    (tmp_path / "lines.txt").write_text("good film\n\nbad film\n")
    (tmp_path / "d.csv").write_text("text,label\ngood film,1\nbad film,0\n")
    a = json.loads(run("predict", tiny_onnx.path, "--file", tmp_path / "lines.txt", "--json").stdout)
    b = json.loads(run("predict", tiny_onnx.path, "--csv", tmp_path / "d.csv", "--json").stdout)
    assert [r["text"] for r in a] == ["good film", "bad film"] and a == b


def test_bench_json(tiny_onnx):
    r = run("bench", tiny_onnx.path, "--batch-sizes", "1,2", "--seq-len", "16", "--iters", "3", "--warmup", "1",
            "--backend", "onnxruntime,torch", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    rows = report["results"]
    assert [(row["batch"], row["backend"].split()[0]) for row in rows] == [
        (1, "onnxruntime"), (2, "onnxruntime"), (1, "torch"), (2, "torch")]
    for row in rows:
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] and row["throughput"] > 0
    assert report["environment"]["versions"]["onnxruntime"]


def test_bench_torch_dtype_reaches_only_the_torch_session(tiny_onnx):
    r = run("bench", tiny_onnx.path, "--batch-sizes", "1", "--seq-len", "8", "--iters", "2", "--warmup", "1",
            "--backend", "onnxruntime,torch", "--dtype", "bfloat16", "--json")
    assert r.exit_code == 0, r.output
    backends = [row["backend"] for row in json.loads(r.stdout)["results"]]
    assert backends[0].startswith("onnxruntime") and "bfloat16" in backends[1], backends


def test_doctor(tmp_path):
    r = run("doctor", "--json")
    assert r.exit_code == 0
    checks = {c["name"]: c for c in json.loads(r.stdout)}
    assert checks["onnxruntime"]["ok"] and checks["torch"]["ok"]
    assert all(c["ok"] or c["fix"] for c in checks.values())


@pytest.mark.parametrize("args, match", [
    (["export", "{tmp}/nope", "--task", "text-classification", "-o", "{tmp}/out"], "does not exist"),
    (["export", "{tmp}", "--task", "text-classification", "-o", "{tmp}/out"], "no config.json"),
    (["export", "{model}", "--task", "summarize", "-o", "{tmp}/out"], "unknown task 'summarize'"),
    (["export", "{model}", "--task", "text-classification", "-o", "{tmp}/out", "--opset", "99"], "opset must be in 14..20"),
    (["export", "{model}", "--task", "text-classification", "-o", "{tmp}/out", "--opset", "x"], "'x' is not a valid integer"),
    (["export", "{model}", "-o", "{tmp}/out"], "--task is required for"),
    (["inspect", "{tmp}/nope"], "does not exist"),
    (["inspect", "{model}"], "not a Kiln artifact"),
    (["predict", "{art}"], "give exactly one of"),
    (["predict", "{art}", "--file", "{tmp}/missing.txt"], "missing.txt does not exist"),
    (["predict", "{art}", "--csv", "{tmp}/bad.csv"], "has no column 'text'"),
    (["predict", "{art}", "--file", "{tmp}/latin1.txt"], "is not UTF-8"),
    (["predict", "{art}", "x", "--backend", "tvm"], "'tvm' is not one of 'auto', 'onnxruntime'"),
    (["predict", "{art}", "x", "--device", "cuda"], "cuda requested"),
    (["bench", "{art}", "--batch-sizes", "1,zero"], "--batch-sizes must be comma-separated positive integers"),
    (["bench", "{art}", "--seq-len", "4096"], "exceeds the model's maximum length"),
    (["bench", "{art}", "--dtype", "float16"], "dtype and cuda_graphs are options of the torch backend; add --backend torch"),
    (["bench", "{art}", "--backend", "torch", "--cuda-graphs"], "cuda_graphs needs --device cuda"),
    (["frobnicate"], "No such command 'frobnicate'"),
])
def test_bad_input_is_one_line(args, match, tmp_path, model_copy, tiny_onnx):
    (tmp_path / "bad.csv").write_text("sentence,label\nx,1\n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    subs = {"{tmp}": str(tmp_path), "{model}": str(model_copy), "{art}": str(tiny_onnx.path)}
    one_line_error(run(*fill(args, subs)), match)
    assert not (tmp_path / "out").exists()


def test_pickled_weights_need_flag(model_copy, tmp_path):
    from tests.test_export import pickled_only

    pickled_only(model_copy)
    one_line_error(run("export", model_copy, "--task", "text-classification", "-o", tmp_path / "out"), "--trust-pickle")
    assert not (tmp_path / "out").exists()
    r = run("export", model_copy, "--task", "text-classification", "-o", tmp_path / "out", "--trust-pickle")
    assert r.exit_code == 0, r.output


def test_existing_output_needs_force(tiny_bert, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("precious")
    one_line_error(run("export", tiny_bert, "--task", "text-classification", "-o", tmp_path / "out"), "pass --force")
    assert (tmp_path / "out" / "x").read_text() == "precious"


def test_predict_on_wrong_task(tiny_onnx, tmp_path):
    import shutil

    art = tmp_path / "art"
    shutil.copytree(tiny_onnx.path, art)
    m = json.loads((art / "manifest.json").read_text())
    m["task"] = "token-classification"
    (art / "manifest.json").write_text(json.dumps(m))
    one_line_error(run("predict", art, "hello"), "no text pipeline for task 'token-classification'")
