"""The CLI on misuse a hostile tester found: each mistake is one line naming what was received and what is
valid, never a silent ignore or a misleading hint."""

from __future__ import annotations

import json

import pytest

from tests.test_cli import one_line_error, run


@pytest.fixture(scope="module")
def cnn_onnx(tmp_path_factory):
    """An untrained tiny CNN exported to ONNX: a vision artifact in well under a second."""
    import torch

    from exporter.module_export import to_onnx_module
    from tests.test_vision import LABELS, PREP, tiny_cnn

    torch.manual_seed(0)
    return to_onnx_module(tiny_cnn().eval(), torch.zeros(2, *PREP.shape), PREP, LABELS,
                          tmp_path_factory.mktemp("cnn") / "onnx")


def test_doctor_measure_speaks_of_images_for_a_vision_artifact(cnn_onnx):
    r = run("doctor", "--measure", cnn_onnx.path, "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["measure"]["results"]
    assert {row["shape"] for row in rows} == {"1 image of 3x16x16", "32 images of 3x16x16"}
    assert not any("token" in k or "token" in str(v) for row in rows for k, v in row.items())
    human = run("doctor", "--measure", cnn_onnx.path).stdout.split("\n\n", 1)[1]  # the measure section
    assert "32 images of 3x16x16" in human and "token" not in human


@pytest.mark.parametrize("method, args, message", [
    ("nncf-int8", ["--calibrator", "percentile"],
     "--calibrator is not used by --method nncf-int8; it is an option of --method static-int8"),
    ("nncf-int8", ["--percentile", "99.9"], "--percentile is not used by --method nncf-int8"),
    ("nncf-int8", ["--calib-cache", "c.json"], "--calib-cache is not used by --method nncf-int8"),
    ("nncf-int8", ["--activation-type", "int8"], "--activation-type is not used by --method nncf-int8"),
    ("nncf-int8", ["--per-tensor"], "--per-tensor is not used by --method nncf-int8; it is an option of "
                                    "--method dynamic-int8 or static-int8"),
    ("dynamic-int8", ["--target", "tensorrt"], "--target is not used by --method dynamic-int8; it is an option of "
                                               "--method nncf-int8"),
    ("static-int8", ["--subset-size", "10"], "--subset-size is not used by --method static-int8"),
    ("fp16", ["--smooth-quant-alpha", "0.5"], "--smooth-quant-alpha is not used by --method fp16"),
    ("dynamic-int8", ["--calibrator", "entropy"], "--calibrator is not used by --method dynamic-int8"),
    ("fp16", ["--weight-type", "int8"], "--weight-type is not used by --method fp16"),
    ("static-int8", ["--percentile", "99.9"], "--percentile is used by --calibrator percentile only, got --calibrator minmax"),
])
def test_quantize_refuses_an_option_its_method_ignores(tiny_onnx, tmp_path, method, args, message):
    one_line_error(run("quantize", tiny_onnx.path, "--method", method, "-o", tmp_path / "q", *args), message)
    assert not (tmp_path / "q").exists()


def test_quantize_defaults_and_shared_options_pass_the_method_check(tiny_onnx):
    """Options left at their defaults are never 'given'; options every method uses pass."""
    from exporter.quantize import check_options_for

    for method in ("dynamic-int8", "static-int8", "fp16", "nncf-int8"):
        check_options_for(method, {"max_accuracy_drop": "--max-accuracy-drop", "eval_data": "--eval-data"}, "minmax")
    check_options_for("static-int8", {"percentile": "--percentile"}, "percentile")


BENCH = ("--batch-sizes", "1", "--seq-len", "8", "--iters", "1", "--warmup", "0", "--rounds", "1")


def test_bench_refuses_a_report_folder_that_is_not_empty_without_force(tiny_onnx, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "bench-pareto.png").write_bytes(b"an older run's plot")  # this run (no --data) draws no pareto plot
    (out / "notes.txt").write_text("mine")
    r = run("bench", tiny_onnx.path, *BENCH, "-o", out)
    one_line_error(r, f"-o {out} already holds files (bench-pareto.png, notes.txt); pass --force")
    assert "latency rounds" not in r.output  # refused before measuring
    r = run("bench", tiny_onnx.path, *BENCH, "-o", out, "--force")
    assert r.exit_code == 0, r.output
    # --force replaces the report: the older run's files of this report name go, other files stay
    assert sorted(p.name for p in out.iterdir()) == ["bench-latency.png", "bench.json", "bench.md", "notes.txt"]


def test_bench_removes_staging_folders_that_a_killed_run_left(tiny_onnx, tmp_path):
    import os
    import subprocess
    import sys
    import time

    from exporter.staging import HOST

    out = tmp_path / "out"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = out / f".bench.kiln-tmp-{HOST}-{gone.pid}-{time.time_ns()}-0a1b2c3d"  # its owner was kill -9'd
    old = out / ".kiln-tmp-x1y2z3"  # an unstamped one (older Kiln), untouched for an hour
    for d in (dead, old):
        (d / "half").mkdir(parents=True)
    os.utime(old, (time.time() - 3600,) * 2)
    r = run("bench", tiny_onnx.path, *BENCH, "-o", out)  # nothing but stale staging: no --force needed
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["bench-latency.png", "bench.json", "bench.md"]
    live = out / f".bench.kiln-tmp-{HOST}-{os.getpid()}-{time.time_ns()}-0a1b2c3d"  # a run writing now: kept
    live.mkdir()
    assert run("bench", tiny_onnx.path, *BENCH, "-o", out, "--force").exit_code == 0
    assert live.is_dir()


def test_quiet_silences_onnxruntime_fusion_messages(tiny_onnx, tmp_path, caplog):
    """The tiny model's vocabulary is smaller than its position table, so onnxruntime's fusion warns about it
    (a logging warning from onnxruntime.transformers): shown normally, silenced by -q. (pytest's log capture
    takes the record in-process; outside pytest logging's last-resort handler prints it on stderr.)"""
    def warned() -> bool:
        found = any("word_embedding_table" in r.getMessage() for r in caplog.records)
        caplog.clear()
        return found

    assert run("optimize", tiny_onnx.path, "-o", tmp_path / "a").exit_code == 0 and warned()
    quiet = run("-q", "optimize", tiny_onnx.path, "-o", tmp_path / "b", "--json")
    assert quiet.exit_code == 0, quiet.output
    assert not warned() and quiet.stderr == "" and json.loads(quiet.stdout)["format"] == "onnx"
    assert run("optimize", tiny_onnx.path, "-o", tmp_path / "c").exit_code == 0 and warned()  # -q ends with its command


def test_fusion_prints_stay_off_stdout_and_quiet_silences_them(tiny_onnx, tmp_path, monkeypatch, caplog):
    """onnxruntime's optimizer also print()s (e.g. 'Removed N initializers'): that went onto stdout, into --json."""
    import onnxruntime.transformers.optimizer as ort_optimizer

    real = ort_optimizer.optimize_model

    def chatty(*args, **kwargs):
        print("Removed 3 initializers with duplicated value")
        return real(*args, **kwargs)

    monkeypatch.setattr(ort_optimizer, "optimize_model", chatty)
    loud = run("optimize", tiny_onnx.path, "-o", tmp_path / "a", "--json")
    assert json.loads(loud.stdout)["format"] == "onnx"
    assert any("Removed 3 initializers" in r.getMessage() for r in caplog.records)
    caplog.clear()
    quiet = run("-q", "optimize", tiny_onnx.path, "-o", tmp_path / "b", "--json")
    assert json.loads(quiet.stdout)["format"] == "onnx" and quiet.stderr == ""
    assert not any("Removed 3 initializers" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("value", ["", " , "])
def test_bench_names_an_empty_backend_not_a_missing_artifact(tiny_onnx, value):
    one_line_error(run("bench", "--backend", value, tiny_onnx.path),
                   f"--backend {value!r} names no backend; valid (comma-separated): auto, onnxruntime, torch")


def test_bench_checks_every_backend_before_opening_any(tiny_onnx):
    r = run("bench", "--backend", "onnxruntime,bogus", tiny_onnx.path, *BENCH)
    one_line_error(r, "--backend: unknown backend 'bogus'; valid (comma-separated): auto, onnxruntime")
    assert "opened" not in r.output


def review_csv(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text("review,label\nA fine film.,positive\nDull.,negative\n")
    return path


def test_a_missing_text_column_names_the_option_this_command_has(tiny_onnx, tmp_path):
    data = review_csv(tmp_path)
    has = f"{data} has no column 'text'; its columns are ['review', 'label']"
    one_line_error(run("eval", tiny_onnx.path, "--data", data), has + " (choose it with --text-column)")
    one_line_error(run("predict", tiny_onnx.path, "--csv", data), has + " (choose it with --column)")
    r = run("bench", tiny_onnx.path, "--data", data)
    one_line_error(r, has + " (kiln bench has no option to choose it: rename the file's column to 'text')")
    assert "--text-column" not in r.output
    (tmp_path / "l.csv").write_text("text,stars\nA fine film.,5\n")
    one_line_error(run("eval", tiny_onnx.path, "--data", tmp_path / "l.csv"),
                   "has no column 'label'; its columns are ['text', 'stars'] (choose it with --label-column)")
    (tmp_path / "r.jsonl").write_text('{"review": "A fine film.", "label": "positive"}\n')
    one_line_error(run("bench", tiny_onnx.path, "--data", tmp_path / "r.jsonl"),
                   "line 1: no field 'text'; it has ['label', 'review'] (kiln bench has no option to choose it")


def test_image_data_for_a_text_model_and_text_data_for_an_image_model(tiny_onnx, cnn_onnx, tmp_path):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "imgs" / "circle"
    folder.mkdir(parents=True)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / "a.png")
    text_model = "but the artifact is a text-classification model: give it texts (CSV/TSV/JSONL, or movie-snippets:SPLIT)"
    for cmd in (["eval", tiny_onnx.path, "--data"], ["bench", tiny_onnx.path, "--data"]):
        one_line_error(run(*cmd, "mnist-5k:test"), f"mnist-5k:test is an image dataset, {text_model}")
        one_line_error(run(*cmd, tmp_path / "imgs"), f"{tmp_path / 'imgs'} is a folder (image data), {text_model}")
        one_line_error(run(*cmd, folder / "a.png"), f"{folder / 'a.png'} is an image file, {text_model}")
    one_line_error(run("quantize", tiny_onnx.path, "--method", "static-int8", "--calib-data", "mnist-5k:train",
                       "-o", tmp_path / "q"), f"mnist-5k:train is an image dataset, {text_model}")
    image_model = ("but the artifact is an image-classification model: give it images (a folder with one subfolder "
                   "per label, or mnist-5k:SPLIT)")
    data = review_csv(tmp_path)
    for cmd in (["eval", cnn_onnx.path, "--data"], ["bench", cnn_onnx.path, "--data"]):
        one_line_error(run(*cmd, data), f"{data} is a text file (.csv), {image_model}")
        one_line_error(run(*cmd, "movie-snippets:test"), f"movie-snippets:test is a text dataset, {image_model}")
    one_line_error(run("quantize", cnn_onnx.path, "--method", "static-int8", "--calib-data", data, "-o", tmp_path / "q"),
                   f"{data} is a text file (.csv), but the artifact is an image-classification model: give it images "
                   "(an image folder or file, or mnist-5k:SPLIT)")


@pytest.mark.parametrize("flag", ["--quiet", "-q"])
def test_a_group_option_after_the_command_says_where_it_goes(tiny_onnx, flag):
    one_line_error(run("bench", tiny_onnx.path, flag),
                   f"{flag} is an option of kiln itself, not of kiln bench: put it before the command "
                   "(kiln -q bench ...)")
    one_line_error(run("bench", tiny_onnx.path, "--qiet"), "No such option")  # others stay click's


def test_predict_and_eval_take_dtype_for_torch_and_openvino(tiny_onnx, tmp_path):
    def scores(*extra):
        r = run("predict", tiny_onnx.path, "a fine film", "dull", "--backend", "torch", *extra, "--json")
        assert r.exit_code == 0, r.output
        return [row["scores"] for row in json.loads(r.stdout)]

    assert scores("--dtype", "bfloat16") != scores()  # bfloat16 weights move the probabilities a little
    one_line_error(run("predict", tiny_onnx.path, "a fine film", "--backend", "onnxruntime", "--dtype", "float16"),
                   "dtype and cuda_graphs are options of the torch backend; add --backend torch")
    from tests.conftest import sentiment_rows, write_csv

    data = write_csv(tmp_path / "d.csv", sentiment_rows(6))
    r = run("eval", tiny_onnx.path, "--data", data, "--backend", "torch", "--dtype", "bfloat16", "--json")
    assert r.exit_code == 0, r.output
    assert "bfloat16" in json.loads(r.stdout)["backend"]
    one_line_error(run("eval", tiny_onnx.path, "--data", data, "--dtype", "float16"), "add --backend torch")


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    from tests.test_vision import build_hf_vision

    return build_hf_vision(tmp_path_factory.mktemp("vit") / "vit", "vit")


def test_prune_refuses_options_its_kind_ignores(tiny_bert, tiny_vit, tmp_path):
    out = ["-o", tmp_path / "p"]
    structured_only = "it is an option of structured pruning (--heads/--ffn/--layers)"
    for source in (tiny_bert, tiny_vit):
        for args in (["--recover-steps", "10"], ["--recover-lr", "1e-4"], ["--distill"], ["--eval-every", "5"]):
            one_line_error(run("prune", source, *out, "--sparsity", "0.5", *args),
                           f"{args[0]} is not used by unstructured pruning (--sparsity); {structured_only}")
    one_line_error(run("prune", tiny_bert, *out, "--pattern", "2:4", "--data", "movie-snippets:train"),
                   f"--data is not used by 2:4 pruning (--pattern 2:4); {structured_only}")
    one_line_error(run("prune", tiny_bert, *out, "--heads", "0.5", "--scope", "layer"),
                   "--scope is not used by structured pruning (--heads/--ffn/--layers); it is an option of "
                   "unstructured pruning (--sparsity)")
    for args in (["--sparsity", "0.5"], ["--pattern", "2:4"]):  # --device moves the recovery, which these lack
        kind = "unstructured pruning (--sparsity)" if args[0] == "--sparsity" else "2:4 pruning (--pattern 2:4)"
        one_line_error(run("prune", tiny_bert, *out, *args, "--device", "cuda"),
                       f"--device is not used by {kind}; {structured_only}")
    one_line_error(run("prune", tiny_vit, *out, "--heads", "0.5", "--device", "cuda"),
                   "--device: recovery after pruning is implemented for text encoders")
    one_line_error(run("prune", tiny_vit, *out, "--heads", "0.5", "--recover-lr", "1e-4"),
                   "--recover-lr: recovery after pruning is implemented for text encoders; recover a pruned ViT "
                   "with kiln finetune on its output")
    assert not (tmp_path / "p").exists()


def test_prune_options_left_at_their_defaults_pass(tiny_bert, tmp_path):
    r = run("prune", tiny_bert, "-o", tmp_path / "p", "--sparsity", "0.5", "--scope", "layer", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["lineage"][-1]["config"]["recover_steps"] == 0


def test_a_suite_artifact_that_is_missing_names_the_variable_to_set(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    monkeypatch.setenv("KILN_FT", str(missing))  # the release suite makes its artifacts from this checkpoint
    monkeypatch.setenv("KILN_SUITE_WORK", str(tmp_path / "work"))
    r = run("bench", "--suite", "release", "-o", tmp_path / "out")
    one_line_error(r, f"make step 1 failed (kiln export {missing} -o {tmp_path / 'work'}/quantize/fp32): "
                      f"source '{missing}' does not exist")
    assert not (tmp_path / "out").exists() and not (tmp_path / "work" / "quantize" / "fp32").exists()
    suite = tmp_path / "s.toml"
    sweep = "[sweep]\nbatch_sizes = [1]\n"
    suite.write_text('[[candidate]]\nartifact = "${KILN_TEST_ART:-benchmarks/work/not-here}"\nlabel = "a"\n' + sweep)
    monkeypatch.delenv("KILN_TEST_ART", raising=False)
    one_line_error(run("bench", "--suite", suite), "suite s, candidate a: artifact ")
    one_line_error(run("bench", "--suite", suite), "benchmarks/work/not-here does not exist; set KILN_TEST_ART to its "
                                                   "path (the suite reads ${KILN_TEST_ART:-benchmarks/work/not-here})")
    suite.write_text(f'[[candidate]]\nartifact = "{missing}"\n' + sweep)
    one_line_error(run("bench", "--suite", suite), f"artifact {missing} does not exist; edit {suite}")


def test_a_suite_rerun_replaces_its_own_report_but_a_named_folder_needs_force(tiny_onnx, tmp_path):
    suite = tmp_path / "mine.toml"
    out = tmp_path / "suite-out"
    suite.write_text(f'title = "t"\nout = "{out}"\n[[candidate]]\nartifact = "{tiny_onnx.path}"\n'
                     "[sweep]\nbatch_sizes = [1]\nseq_lens = [8]\nwarmup = 0\nrounds = 1\nper_round = 1\n")
    for _ in range(2):  # CI reruns a suite into its own folder
        r = run("bench", "--suite", str(suite))
        assert r.exit_code == 0, r.output
    assert (out / "mine.json").exists()
    one_line_error(run("bench", "--suite", str(suite), "-o", out), f"-o {out} already holds files")


def test_two_benches_on_one_folder_the_later_one_is_refused(tiny_onnx, tmp_path):
    """Runs started together on one -o: the earlier goes on, the later says so (it silently replaced the
    other's report). A claim by a living process that started earlier stands in for the other run."""
    import os

    from exporter.staging import HOST

    out = tmp_path / "out"
    out.mkdir()
    # a living process that started earlier, writing any report name (ci, bench, ...): one claim per folder
    other = out / f".report.kiln-tmp-{HOST}-{os.getppid()}-1-abcd1234"
    other.mkdir()
    r = run("bench", tiny_onnx.path, *BENCH, "-o", out)
    one_line_error(r, f"-o {out}: another kiln bench (pid {os.getppid()}) is writing its report there")
    assert sorted(p.name for p in out.iterdir()) == [other.name]  # nothing of this run left
    other.rmdir()
    r = run("bench", tiny_onnx.path, *BENCH, "-o", out)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["bench-latency.png", "bench.json", "bench.md"]


def test_a_failed_bench_leaves_no_empty_report_folder(tiny_onnx, tmp_path):
    out = tmp_path / "new" / "deeper"  # made (and claimed) before measuring; the run then fails in the harness
    r = run("bench", tiny_onnx.path, "--batch-sizes", "1", "--seq-len", "100000", "-o", out)
    one_line_error(r, "sequence length 100000 exceeds the model's maximum length")
    assert not (tmp_path / "new").exists()  # the parent it made too


def test_bench_o_on_a_dangling_link_is_one_line(tiny_onnx, tmp_path):
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    one_line_error(run("bench", tiny_onnx.path, *BENCH, "-o", tmp_path / "dangling"),
                   "is a link to nothing (or to a file); give a folder for the report")


@pytest.mark.parametrize("edit, match", [
    (lambda r: r["data_results"][0].update(wall_s=0), "data_results[0].wall_s must be > 0, got 0"),
    (lambda r: r["data_results"][0].update(sentences_per_s=-1), "data_results[0].sentences_per_s must be > 0"),
    (lambda r: r["data_results"][1].update(round_wall_s=[1.0, "a"]), "data_results[1].round_wall_s must be a list"),
    (lambda r: r["data_results"][1].update(round_wall_s=[1.0]), "data_results[1].round_wall_s has 1 passes; the "
                                                                 "rows before it have 2"),
    (lambda r: r["results"][0].update(p50_ms=0), "results[0].p50_ms must be > 0"),
    (lambda r: r["results"][0].update(seq_len=-8), "results[0].seq_len must be > 0 (or null)"),
    (lambda r: r["data_results"][0].update(macro_f1=7), "data_results[0].macro_f1 must be in [0, 1]"),
    (lambda r: r["data_results"][0].update(batch_p50_ms=-1), "data_results[0].batch_p50_ms must be > 0"),
    (lambda r: r["data_results"][0].update(spread=-5), "data_results[0].spread must be >= 0"),
])
def test_report_refuses_hand_edited_values_naming_the_field(tmp_path, edit, match):
    from benchmarks.harness.schema import SCHEMA_VERSION

    row = {"candidate": "kiln", "backend": "b", "data": "d", "data_sha256": "0" * 64, "n": 4, "batch_size": 2,
           "sentences_per_s": 4.0, "wall_s": 1.0, "batch_p50_ms": 1.0, "batch_p99_ms": 1.0, "accuracy": 1.0,
           "macro_f1": 1.0, "spread": 0.0, "noisy": False, "round_wall_s": [1.0, 1.0]}
    lat = {"candidate": "kiln", "artifact": "a", "artifact_sha256": "0" * 64, "backend": "b", "device": "cpu",
           "batch": 1, "seq_len": 8, "iters": 3, "p50_ms": 1.0, "p90_ms": 1.0, "p99_ms": 1.0, "mean_ms": 1.0,
           "min_ms": 1.0, "throughput": 1.0, "spread": 0.0, "noisy": False}
    report = {"schema_version": SCHEMA_VERSION, "kind": "kiln-bench", "created": "now", "command": "x",
              "environment": {"cpu": "c", "cpu_count": 2, "cpu_flags": [], "gpus": [], "kiln": "0", "versions": {}},
              "config": {}, "results": [lat], "data_results": [row, row | {"candidate": "peer:p"}]}
    (tmp_path / "ok.json").write_text(json.dumps(report))
    assert run("report", tmp_path / "ok.json", "-o", tmp_path / "ok").exit_code == 0
    edit(report)
    (tmp_path / "r.json").write_text(json.dumps(report))
    one_line_error(run("report", tmp_path / "r.json", "-o", tmp_path / "out"), match)
    assert not (tmp_path / "out").exists()
