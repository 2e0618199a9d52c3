"""The kiln commands on image classifiers, in-process: predict, eval, quantize, bench, finetune."""

from __future__ import annotations

import json

import pytest

from tests.test_cli import one_line_error, run
from tests.test_vision import LABELS, cnn_onnx, shapes, shapes_folder, trained_cnn  # noqa: F401 (fixtures)

pytest.importorskip("PIL")


def test_predict_eval_quantize_bench(cnn_onnx, shapes_folder, tmp_path):  # noqa: F811
    files = sorted(shapes_folder.rglob("*.png"))
    r = run("predict", cnn_onnx.path, files[0], shapes_folder / "cross", "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert len(rows) == 1 + len(list((shapes_folder / "cross").iterdir())) and rows[0]["label"] in LABELS
    r = run("eval", cnn_onnx.path, "--data", shapes_folder, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["n"] == 60 and json.loads(r.stdout)["accuracy"] >= 0.9
    r = run("quantize", cnn_onnx.path, "--method", "static-int8", "--calib-data", shapes_folder, "--calib-samples", "32",
            "--eval-data", shapes_folder, "--max-accuracy-drop", "5", "-o", tmp_path / "int8")
    assert r.exit_code == 0, r.output
    assert "accuracy" in r.output and "budget 5.0" in r.output
    r = run("bench", tmp_path / "int8", "--batch-sizes", "1,4", "--iters", "3", "--warmup", "1", "--rounds", "1", "--json")
    assert r.exit_code == 0, r.output
    assert [row["batch"] for row in json.loads(r.stdout)["results"]] == [1, 4]


def test_image_cli_errors_are_one_line(cnn_onnx, tiny_onnx, shapes_folder, tmp_path):  # noqa: F811
    (tmp_path / "empty").mkdir()
    one_line_error(run("eval", cnn_onnx.path, "--data", tmp_path / "empty"), "has no images")
    one_line_error(run("eval", cnn_onnx.path, "--data", "movie-snippets:test"), "is a text dataset, but the artifact is an image-classification model")
    one_line_error(run("predict", cnn_onnx.path, "the movie was good"), "does not exist")
    png = sorted(shapes_folder.rglob("*.png"))[0]
    one_line_error(run("predict", tiny_onnx.path, png), "is an image, but this is a text-classification model")
    one_line_error(run("eval", tiny_onnx.path, "--data", shapes_folder), "is a folder (image data), but the artifact is a text-classification model")
    other = tmp_path / "other" / "triangle"
    other.mkdir(parents=True)
    (other / "t.png").write_bytes(png.read_bytes())
    one_line_error(run("eval", cnn_onnx.path, "--data", tmp_path / "other"), "label folder 'triangle' is not one of")


def test_finetune_from_packaged_config_and_config_json(shapes_folder, tmp_path):  # noqa: F811
    r = run("finetune", "resnet-tiny-mnist", "--data", shapes_folder, "--epochs", "1", "-o", tmp_path / "ft", "--json")
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert m["task"] == "image-classification" and m["meta"]["labels"] == {"0": "circle", "1": "cross", "2": "square"}
    assert m["meta"]["preprocessing"]["channels"] == 1  # the packaged config's: RGB shapes are converted to gray
    r = run("export", tmp_path / "ft", "-o", tmp_path / "onnx")
    assert r.exit_code == 0, r.output
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "config.json").write_text(json.dumps({"model_type": "resnet", "num_channels": 3, "embedding_size": 8,
                                                 "hidden_sizes": [8], "depths": [1], "layer_type": "basic"}))
    (cfg / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 16, "width": 16},
                                                              "image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    r = run("finetune", cfg / "config.json", "--data", shapes_folder, "--epochs", "1", "-o", tmp_path / "ft2")
    assert r.exit_code == 0, r.output
    one_line_error(run("finetune", "vit-tiny-mnist", "--data", shapes_folder, "--lora", "-o", tmp_path / "x"),
                   "--lora applies to text models only")


def test_prune_on_a_cnn_is_one_line(tmp_path):
    from tests.test_vision import build_hf_vision

    src = build_hf_vision(tmp_path / "resnet", "resnet")
    one_line_error(run("prune", src, "--heads", "0.25", "-o", tmp_path / "p"), "CNN channel pruning is not implemented")
