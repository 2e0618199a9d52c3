"""Task families (runtime/tasks/): the Family interface, the text family, ModelMeta and backend options."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from runtime import Artifact, ConfigError, open_session
from runtime.errors import ArtifactError, InputError, SourceError
from runtime.tasks import DEFAULT_MAX_LENGTH, Family, ModelMeta, Prediction, family_for, task_info
from runtime.tasks.text import FAMILY as TEXT


def test_family_for_every_text_task_and_unknown_task():
    for task in ("text-classification", "token-classification", "feature-extraction"):
        assert family_for(task) is TEXT and isinstance(TEXT, Family)
    assert task_info("feature-extraction").output == "last_hidden_state"
    with pytest.raises(ConfigError, match=r"^unknown task 'image-caption'; valid: text-classification, "
                                          "token-classification, feature-extraction"):
        family_for("image-caption")


def test_tasks_table_still_importable():
    from runtime.tasks import TASKS

    assert TASKS["text-classification"].auto_class == "AutoModelForSequenceClassification"


def test_text_input_specs_per_model_type():
    specs = TEXT.input_specs("bert", {})
    assert [(s.name, s.dtype, s.shape) for s in specs] == [
        ("input_ids", "int64", ("batch", "sequence")), ("attention_mask", "int64", ("batch", "sequence")),
        ("token_type_ids", "int64", ("batch", "sequence"))]
    assert [s.name for s in TEXT.input_specs("distilbert", {})] == ["input_ids", "attention_mask"]
    with pytest.raises(SourceError, match="unsupported model_type 'gpt2'; Kiln exports bert, distilbert, roberta"):
        TEXT.input_specs("gpt2", {})


def test_text_feeds_are_seeded_in_vocabulary_and_capped():
    specs = TEXT.input_specs("bert", {})
    meta = ModelMeta(vocab_size=80, max_length=16)
    a, b = TEXT.example_feed(specs, meta, 3, 10, seed=1), TEXT.example_feed(specs, meta, 3, 10, seed=1)
    assert all(np.array_equal(a[k], b[k]) for k in a) and a["input_ids"].shape == (3, 10)
    assert a["input_ids"].max() < 80 and a["attention_mask"].min() == 1
    feeds = TEXT.validation_feeds(specs, meta, seed=0)
    assert [f["input_ids"].shape for f in feeds] == [(1, 7), (4, 16), (8, 16)]  # lengths capped at max_length
    assert feeds[-1]["attention_mask"].min() == 0  # later rows are padded, like real batches
    assert all(f["input_ids"].max() < 80 for f in feeds)


def test_text_collate_pads_with_the_models_pad_id():
    meta = ModelMeta(pad_token_id=1)
    feed = TEXT.collate([([5, 6, 7], [0, 0, 0]), ([5], [0])], ["input_ids", "attention_mask"], meta)
    assert list(feed) == ["input_ids", "attention_mask"]
    assert feed["input_ids"].tolist() == [[5, 6, 7], [5, 1, 1]]
    assert feed["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert TEXT.collate([([5], [0])], ["input_ids"], meta, length=4)["input_ids"].shape == (1, 4)


def test_text_postprocess_classification_and_pooling():
    meta = ModelMeta(labels={0: "neg", 1: "pos"})
    feed = {"attention_mask": np.array([[1, 1, 0]])}
    (pred,) = TEXT.postprocess("text-classification", meta, {"logits": np.array([[0.0, 2.0]])}, feed)
    assert isinstance(pred, Prediction) and pred.label == "pos" and abs(sum(pred.scores.values()) - 1) < 1e-9
    hidden = np.array([[[1.0, 0.0], [3.0, 0.0], [100.0, 100.0]]], dtype=np.float32)
    (mean,) = TEXT.postprocess("feature-extraction", ModelMeta(), {"last_hidden_state": hidden}, feed)
    np.testing.assert_allclose(mean, [2.0, 0.0])  # the padded position does not count
    (cls,) = TEXT.postprocess("feature-extraction", ModelMeta(pooling="cls", normalize=True),
                              {"last_hidden_state": hidden}, feed)
    np.testing.assert_allclose(cls, [1.0, 0.0])


def test_metric_accuracy_f1_confusion():
    m = TEXT.metric(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]), 2)
    assert m["accuracy"] == 0.75 and m["confusion"] == [[2, 1], [0, 1]] and m["n"] == 4
    assert abs(m["macro_f1"] - np.mean([0.8, 2 / 3])) < 1e-9


def test_stages_do_not_import_the_harness():
    import subprocess
    import sys

    code = ("import sys, exporter.training, exporter.quantize; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'benchmarks'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_model_meta_defaults_and_back_compat():
    old = {"labels": {"0": "negative", "1": "positive"}, "model_file": "model.onnx", "precision": "int8",
           "structure": {"heads": [4, 3]}}  # no max_length, pooling, pad id: an older or hand-written manifest
    meta = ModelMeta.from_dict(old)
    assert meta.max_length == DEFAULT_MAX_LENGTH == 512 and meta.pad_token_id == 0 and meta.pooling == "mean"
    assert meta.labels == {0: "negative", 1: "positive"} and meta.label_names == ["negative", "positive"]
    assert meta.extra == {"precision": "int8", "structure": {"heads": [4, 3]}}
    assert ModelMeta.from_dict(meta.to_dict()) == meta
    with pytest.raises(ArtifactError, match="meta.max_length must be a whole number >= 1, got '64'"):
        ModelMeta.from_dict({"max_length": "64"})
    with pytest.raises(ArtifactError, match="meta.pooling must be one of mean, cls, got 'max'"):
        ModelMeta.from_dict({"pooling": "max"})


def test_artifact_exposes_typed_meta_and_family(tiny_onnx, tmp_path):
    assert tiny_onnx.model_meta.max_length == 160 and tiny_onnx.family is TEXT
    # an artifact whose manifest lacks max_length (as hand-written ones may) still loads and runs
    old = tmp_path / "old"
    shutil.copytree(tiny_onnx.path, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["meta"]["max_length"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    from runtime import TextClassifier

    with TextClassifier(old) as clf:
        assert clf.meta.max_length == 512 and len(clf.predict(["a good film"])) == 1


def test_text_calibration_feeds_from_raw_texts(tiny_onnx):
    texts = ["the movie was good", "bad", "a very long and boring story , it was not fun at all", "great fun"]
    feeds = TEXT.calibration_feeds(tiny_onnx, texts, n=3, fixed_shape=True, batch_size=2)
    assert sum(len(f["input_ids"]) for f in feeds) == 3
    assert len({f["input_ids"].shape[1] for f in feeds}) == 1  # one shape for percentile/entropy
    with pytest.raises(InputError, match=r"texts\[1\] is int"):
        TEXT.calibration_feeds(tiny_onnx, ["ok", 3], n=2)


# -- backend options -------------------------------------------------------------------------------

@pytest.mark.parametrize("backend, key", [("onnxruntime", "thread"), ("torch", "cuda_graph")])
def test_unknown_backend_option_is_refused(tiny_onnx, backend, key):
    with pytest.raises(ConfigError, match=rf"^unknown {backend} option\(s\) {key}; valid: "):
        open_session(tiny_onnx, backend=backend, **{key: 1})
    with pytest.raises(ConfigError, match=rf"unknown {backend} option\(s\) {key}"):
        open_session(tiny_onnx, backend=backend, options={key: 1})


def test_option_of_another_backend_is_named(tiny_onnx):
    with pytest.raises(ConfigError, match=r"dtype is an option of the torch backend"):
        open_session(tiny_onnx, backend="onnxruntime", dtype="float16")


def test_options_dataclasses_validate_once():
    from runtime.backends.options import OnnxRuntimeOptions, TorchOptions

    with pytest.raises(ConfigError, match="unknown torch dtype 'half'; valid: float32, float16, bfloat16"):
        TorchOptions(dtype="half")
    with pytest.raises(ConfigError, match="threads must be an integer >= 0, got -1"):
        OnnxRuntimeOptions(threads=-1)
    with pytest.raises(ConfigError, match="must be OnnxRuntimeOptions or a dict, got TorchOptions"):
        from runtime.backends.options import options_for

        options_for("onnxruntime", TorchOptions())


def test_options_dataclass_or_dict_reach_the_session(tiny_onnx):
    from runtime.backends.options import OnnxRuntimeOptions

    with open_session(tiny_onnx, options=OnnxRuntimeOptions(threads=1, spinning=False)) as s:
        assert s.options == OnnxRuntimeOptions(threads=1, spinning=False)
        assert s.run(TEXT.example_feed(s.inputs, tiny_onnx.model_meta, 2, 8))["logits"].shape == (2, 2)
    assert open_session(tiny_onnx, options={"threads": 2}, spinning=False).options == \
        OnnxRuntimeOptions(threads=2, spinning=False)


def test_families_load_without_heavy_imports():
    import subprocess
    import sys

    code = ("import sys, runtime.tasks as t, runtime.backends.options; t.families(); "
            "print(sorted(m for m in ('torch', 'transformers', 'tokenizers', 'onnxruntime', 'PIL') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_onnxruntime_tensorrt_provider_options():
    from runtime.backends.options import OnnxRuntimeOptions

    opts = OnnxRuntimeOptions(provider="tensorrt", trt_cache_dir="/tmp/engines", trt_fp16=True)
    first, *rest = opts.provider_list("cuda")
    assert first[0] == "TensorrtExecutionProvider" and rest == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert first[1]["trt_engine_cache_path"] == "/tmp/engines" and first[1]["trt_fp16_enable"] is True
    assert OnnxRuntimeOptions().provider_list("cpu") == ["CPUExecutionProvider"]
    with pytest.raises(ConfigError, match="options of onnxruntime's TensorRT execution provider"):
        OnnxRuntimeOptions(trt_fp16=True)
    with pytest.raises(ConfigError, match="trt_int8 must be True or False"):
        OnnxRuntimeOptions(provider="tensorrt", trt_int8="yes")


def test_onnxruntime_tensorrt_provider_refuses_cpu_and_a_missing_provider(tiny_onnx):
    from runtime import BackendError, open_session

    with pytest.raises(ConfigError, match="runs on a GPU: use device='cuda'"):
        open_session(tiny_onnx, "onnxruntime", provider="tensorrt").open()
    import onnxruntime

    if "TensorrtExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(BackendError, match="install onnxruntime-gpu"):
            open_session(tiny_onnx, "onnxruntime", device="cuda", provider="tensorrt", trt_fp16=True).open()
