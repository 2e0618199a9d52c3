import json
import shutil

import numpy as np
import pytest

from exporter.compare import Tolerance, compare
from exporter.load import load_checkpoint
from exporter.onnx_export import OnnxConfig, to_onnx
from runtime import Artifact, ConfigError, SourceError, ValidationError, open_session
from tests.conftest import build_tiny


def test_export_records_validation_in_lineage(tiny_onnx):
    art = Artifact.load(tiny_onnx.path)
    assert art.format == "onnx" and art.inputs[0].shape == ("batch", "sequence")
    step = art.lineage[-1]
    assert step.stage == "to_onnx" and step.config["opset"] == 17
    val = step.metrics["validation"]["outputs"]["logits"]
    assert val["max_abs"] <= 1e-4 and val["top1"] == 1.0 and val["cosine"] > 0.99999
    assert step.versions["torch"].startswith("2.13")
    assert set(art.files) >= {"model.onnx", "tokenizer.json"} and art.verify() == []
    assert art.labels == {0: "negative", 1: "positive"}


@pytest.mark.parametrize("shape", [(1, 3), (5, 17), (16, 150)])
def test_ort_matches_torch_on_new_shapes(tiny_onnx, shape):
    rng = np.random.default_rng(1)
    ids = rng.integers(5, 60, size=shape, dtype=np.int64)
    mask = np.ones_like(ids)
    mask[1:, shape[1] // 2:] = 0
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    with open_session(tiny_onnx, backend="torch") as ref, open_session(tiny_onnx) as ort:
        cmp = compare(ref, ort, [feed], "fp32")
    assert cmp.passed, cmp.failures()


@pytest.mark.parametrize("model_type", ["distilbert", "roberta"])
def test_other_architectures_export(tmp_path, model_type):
    src = build_tiny(tmp_path / model_type, model_type)
    art = to_onnx(load_checkpoint(src, "text-classification"), OnnxConfig(), tmp_path / "out")
    assert [s.name for s in art.inputs] == ["input_ids", "attention_mask"]
    assert art.lineage[-1].metrics["validation"]["outputs"]["logits"]["max_abs"] <= 1e-4


def test_feature_extraction_and_optimized_graph(tmp_path):
    src = build_tiny(tmp_path / "base", task="feature-extraction")
    art = to_onnx(load_checkpoint(src, "feature-extraction"), OnnxConfig(optimize=True), tmp_path / "out")
    assert art.outputs[0].name == "last_hidden_state" and art.outputs[0].shape == ("batch", "sequence", 32)
    metrics = art.lineage[-1].metrics
    assert metrics["fused_ops"].get("Attention") == 2  # one fused attention per layer
    assert metrics["validation"]["outputs"]["last_hidden_state"]["max_abs"] <= 1e-4


def test_failed_validation_leaves_nothing(tmp_path, tiny_bert, monkeypatch):
    import exporter.onnx_export as ox

    impossible = Tolerance(max_abs=0.0, min_cosine=1.1, min_top1=1.0)
    monkeypatch.setattr(ox, "tolerance_for", lambda _: impossible)
    out = tmp_path / "out"
    with pytest.raises(ValidationError, match=r"output 'logits': max abs diff .* > 0; output 'logits': cosine"):
        to_onnx(load_checkpoint(tiny_bert, "text-classification"), OnnxConfig(), out)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_force_replaces_and_refuses_without_it(tmp_path, tiny_bert):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    art = load_checkpoint(tiny_bert, "text-classification")
    with pytest.raises(Exception, match="exists and is not empty; pass --force"):
        to_onnx(art, OnnxConfig(validate=False), out)
    assert (out / "keep.txt").exists()
    to_onnx(art, OnnxConfig(validate=False), out, force=True)
    assert not (out / "keep.txt").exists() and (out / "manifest.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging or trash directories left


def test_bad_opset():
    with pytest.raises(ConfigError, match="opset must be in 14..20, got 9"):
        OnnxConfig(opset=9)


def truncate(p):
    data = (p / "model.safetensors").read_bytes()
    (p / "model.safetensors").write_bytes(data[: len(data) // 2])


def pickled_only(p):
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(str(p / "model.safetensors")), p / "pytorch_model.bin")
    (p / "model.safetensors").unlink()


@pytest.mark.parametrize("damage, match", [
    (lambda p: shutil.rmtree(p), "does not exist"),
    (lambda p: (p / "config.json").unlink(), "not a model directory: no config.json"),
    (lambda p: (p / "config.json").write_text("{not json"), "config.json is not valid JSON"),
    (lambda p: (p / "config.json").write_text('{"model_type": "gpt2"}'), "unsupported model_type 'gpt2'; Kiln exports bert"),
    (truncate, "truncated or corrupt"),
    (lambda p: (p / "model.safetensors").write_bytes(b"\xff" * 20), "not a valid safetensors file"),
    (lambda p: (p / "model.safetensors").unlink(), "no weights"),
    (pickled_only, "pickled weights, which can run arbitrary code.*--trust-pickle"),
])
def test_bad_sources(model_copy, damage, match):
    damage(model_copy)
    with pytest.raises(SourceError, match=match):
        load_checkpoint(model_copy, "text-classification")


def test_unknown_task(model_copy):
    with pytest.raises(ConfigError, match="unknown task 'summarize'; valid: text-classification"):
        load_checkpoint(model_copy, "summarize")


def test_trusted_pickle_and_single_weights_file(model_copy, tmp_path, tiny_onnx):
    pickled_only(model_copy)
    art = to_onnx(load_checkpoint(model_copy, "text-classification", trust_pickle=True), OnnxConfig(), tmp_path / "a")
    # same weights as the safetensors original, so the same logits
    feed = {"input_ids": np.array([[2, 9, 10, 3]]), "attention_mask": np.ones((1, 4), np.int64),
            "token_type_ids": np.zeros((1, 4), np.int64)}
    with open_session(art) as a, open_session(tiny_onnx) as b:
        np.testing.assert_allclose(a.run(feed)["logits"], b.run(feed)["logits"], atol=1e-6)
    with pytest.raises(SourceError, match="pickled"):
        load_checkpoint(model_copy / "pytorch_model.bin", "text-classification")
    assert load_checkpoint(model_copy / "pytorch_model.bin", "text-classification", trust_pickle=True).format == "hf"


def test_manifest_lineage_is_json(tiny_onnx):
    d = json.loads((tiny_onnx.path / "manifest.json").read_text())
    assert [s["stage"] for s in d["lineage"]] == ["load", "to_onnx"]
    assert len(d["lineage"][-1]["inputs_sha256"]) == 64 and len(d["lineage"][-1]["outputs_sha256"]) == 64
    assert d["lineage"][-1]["inputs_sha256"] != d["lineage"][-1]["outputs_sha256"]


def test_a_checkpoint_without_the_tasks_head_is_refused_not_exported_with_a_random_one(tmp_path):
    """An encoder saved without a classification head, exported as a classifier, would answer at random."""
    from tests.conftest import build_tiny

    src = build_tiny(tmp_path / "encoder", task="feature-extraction")  # no classifier.* weights
    with pytest.raises(SourceError, match=r"no trained weights for classifier\.bias, classifier\.weight.*--allow-untrained"):
        to_onnx(load_checkpoint(src, "text-classification"), OnnxConfig(), tmp_path / "cls")
    assert not (tmp_path / "cls").exists()  # nothing half-written
    art = to_onnx(load_checkpoint(src, "text-classification"), OnnxConfig(allow_untrained=True), tmp_path / "cls")
    step = art.lineage[-1]
    assert step.config["allow_untrained"] is True
    assert step.metrics["untrained_parameters"] == ["classifier.bias", "classifier.weight"]
    # the task it was saved for exports as before, and a full classifier checkpoint is not flagged
    assert "untrained_parameters" not in to_onnx(load_checkpoint(src, "feature-extraction"), OnnxConfig(),
                                                 tmp_path / "fe").lineage[-1].metrics


def test_cli_export_names_the_flag_for_a_missing_head(tmp_path):
    from click.testing import CliRunner

    from exporter.cli import main
    from tests.conftest import build_tiny

    src = build_tiny(tmp_path / "encoder", task="feature-extraction")
    r = CliRunner().invoke(main, ["export", str(src), "--task", "text-classification", "-o", str(tmp_path / "o")])
    last = r.output.strip().splitlines()[-1]
    assert r.exit_code != 0 and last.startswith("error: ") and "--allow-untrained" in last
    assert "Traceback" not in r.output
    r = CliRunner().invoke(main, ["export", str(src), "--task", "text-classification", "-o", str(tmp_path / "o"),
                                  "--allow-untrained"])
    assert r.exit_code == 0, r.output


def test_an_untrained_export_says_so_wherever_it_is_described(tmp_path):
    from click.testing import CliRunner

    from exporter.cli import main
    from tests.conftest import build_tiny

    src = build_tiny(tmp_path / "encoder", task="feature-extraction")
    out = tmp_path / "o"
    r = CliRunner().invoke(main, ["export", str(src), "--task", "text-classification", "-o", str(out), "--allow-untrained"])
    assert "WARNING   untrained (random) weights: classifier.bias, classifier.weight" in r.output
    r = CliRunner().invoke(main, ["quantize", str(out), "--method", "dynamic-int8", "-o", str(tmp_path / "q")])
    assert r.exit_code == 0 and "untrained (random) weights" in r.output  # the lineage carries it on
    assert "untrained" in CliRunner().invoke(main, ["inspect", str(tmp_path / "q")]).output
