"""Serving and benchmarking an image classifier: /openapi.json describes the image request forms, kiln
loadtest sends images (HTTP and in-process), kiln bench reports the image size (not a sequence length)."""

from __future__ import annotations

import json

import pytest

from tests.test_cli import one_line_error, run
from tests.test_vision import cnn_int8, cnn_onnx, png_bytes, shapes, shapes_folder, trained_cnn  # noqa: F401 (fixtures)

pytest.importorskip("PIL")


def test_openapi_describes_image_requests():
    from runtime.openapi import openapi_document
    from runtime.server import ServeConfig

    cfg = ServeConfig(max_inputs=4)
    body = openapi_document(cfg, images=True)["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"]["required"] == ["images"]
    assert body["application/json"]["schema"]["properties"]["images"]["items"] == {"type": "string", "format": "byte"}
    assert body["application/json"]["schema"]["properties"]["images"]["maxItems"] == 4
    assert body["multipart/form-data"]["schema"]["properties"]["image"]["items"]["format"] == "binary"
    text = openapi_document(cfg)["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert list(text) == ["application/json"] and text["application/json"]["schema"]["required"] == ["inputs"]


def test_served_image_model_documents_and_takes_loadtest_images(cnn_int8, shapes_folder):  # noqa: F811
    pytest.importorskip("uvicorn")
    from benchmarks.load import closed_loop, http_target, load_inputs
    from tests.test_server import ThreadServer, request

    images, is_images = load_inputs(str(shapes_folder))
    assert is_images and images[0][:8] == b"\x89PNG\r\n\x1a\n"
    with ThreadServer(cnn_int8.path) as s:
        status, _, raw = request(s.port, "GET", "/openapi.json")
        doc = json.loads(raw)
        assert status == 200 and "multipart/form-data" in doc["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
        assert doc["info"]["description"].startswith("Image classification")
        summary = closed_loop(http_target(f"http://127.0.0.1:{s.port}", images=True), images, 2, 0.5).summary()
    assert summary["sent"] == summary["ok"] > 0 and summary["errors"] == {}


def test_loadtest_in_process_sends_images_and_refuses_the_wrong_kind(cnn_onnx, shapes_folder, tmp_path):  # noqa: F811
    r = run("loadtest", cnn_onnx.path, "--concurrency", "2", "--duration", "0.5", "--data", shapes_folder, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["ok"] > 0
    texts = tmp_path / "t.csv"
    texts.write_text("text,label\ngood film,pos\n")
    one_line_error(run("loadtest", cnn_onnx.path, "--duration", "0.5", "--data", texts),
                   "is an image classifier but --data holds texts")


def test_bench_on_an_image_model_shows_the_image_size(cnn_onnx):  # noqa: F811
    r = run("bench", cnn_onnx.path, "--batch-sizes", "1,2", "--iters", "2", "--warmup", "1", "--rounds", "1", "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["results"]
    assert [(row["image"], row["seq_len"]) for row in rows] == [("3x16x16", None)] * 2
    r = run("bench", cnn_onnx.path, "--batch-sizes", "1", "--iters", "2", "--warmup", "1", "--rounds", "1")
    # the harness report's input column names the image size; no token counts for an image model
    assert "1 x image 3x16x16" in r.stdout and "tokens" not in r.stdout


def test_nncf_int8_on_an_image_model_is_one_line_before_reading_data(cnn_onnx, tmp_path):  # noqa: F811
    """nncf-int8 is the text recipe: an image model got a TypeError traceback from its calibration feeds."""
    for target in ("tensorrt", "openvino"):
        one_line_error(run("quantize", cnn_onnx.path, "--method", "nncf-int8", "--target", target,
                           "--calib-data", tmp_path / "no-such-folder", "-o", tmp_path / "q"),
                       "--method nncf-int8 is for text transformers")
    assert not (tmp_path / "q").exists()
