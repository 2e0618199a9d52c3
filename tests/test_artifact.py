import json

import pytest

from runtime import Artifact, ArtifactError, Step, TensorSpec
from runtime.artifact import MANIFEST, digest_of, hash_files


def make(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"not really a model")
    art = Artifact(
        path=tmp_path, format="onnx", task="text-classification",
        inputs=(TensorSpec("input_ids", "int64", ("batch", "sequence"), profile=((1, 1), (8, 64), (32, 128))),),
        outputs=(TensorSpec("logits", "float32", ("batch", 2)),),
        lineage=(Step("to_onnx", {"opset": 17}, 1.5, {"validation": {"max_abs": 1e-6}}, "a" * 64, "b" * 64,
                      {"torch": "2.13.0"}, "/src"),),
        meta={"labels": {"0": "neg", "1": "pos"}, "model_file": "model.onnx"},
        files=hash_files(tmp_path))
    art.write_manifest()
    return art


def test_manifest_round_trip(tmp_path):
    art = make(tmp_path)
    loaded = Artifact.load(tmp_path)
    assert loaded == art
    assert loaded.inputs[0].shape == ("batch", "sequence")
    assert loaded.inputs[0].profile == ((1, 1), (8, 64), (32, 128))
    assert loaded.labels == {0: "neg", 1: "pos"}
    assert loaded.source_path().as_posix() == "/src"
    d = json.loads((tmp_path / MANIFEST).read_text())
    assert d["schema_version"] == 1 and d["files"]["model.onnx"] == art.files["model.onnx"]


def test_verify_detects_changed_file(tmp_path):
    art = make(tmp_path)
    assert art.verify() == []
    (tmp_path / "model.onnx").write_bytes(b"tampered")
    assert art.verify() == ["model.onnx"]


def test_digest_depends_on_content():
    assert digest_of({"a": "1"}) != digest_of({"a": "2"})
    assert digest_of({"a": "1", "b": "2"}) == digest_of({"b": "2", "a": "1"})


@pytest.mark.parametrize("setup, match", [
    (lambda p: None, "does not exist"),
    (lambda p: p.mkdir(), "not a Kiln artifact"),
    (lambda p: p.write_text("x"), "is a file"),
    (lambda p: (p.mkdir(), (p / MANIFEST).write_text("{bad")), "not valid JSON"),
    (lambda p: (p.mkdir(), (p / MANIFEST).write_text('{"schema_version": 99}')), "schema_version 99"),
    (lambda p: (p.mkdir(), (p / MANIFEST).write_text('{"schema_version": 1}')), "malformed field"),
])
def test_load_errors(tmp_path, setup, match):
    p = tmp_path / "art"
    setup(p)
    with pytest.raises(ArtifactError, match=match):
        Artifact.load(p)


def test_unknown_format_rejected(tmp_path):
    with pytest.raises(ArtifactError, match="unknown artifact format 'pickle'"):
        Artifact(tmp_path, "pickle", "text-classification", (), ())
