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
    human = run("doctor", "--measure", cnn_onnx.path).stdout
    assert "32 images of 3x16x16" in human and "token" not in human
