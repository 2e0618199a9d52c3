"""The openvino backend: options validated once, the same feed checks, one-line errors, and the same answers
as onnxruntime on the tiny model (ONNX read directly, and an OpenVINO IR artifact)."""

import dataclasses
import sys
import threading

import numpy as np
import pytest

from runtime import Artifact, TextClassifier
from runtime.backends.options import OpenVinoOptions, options_for
from runtime.errors import ArtifactError, BackendError, ConfigError, InputError
from runtime.session import open_session
from tests.test_cli import one_line_error, run

TEXTS = ["the movie was good", "bad", "a very long and boring film , but fun", "great acting !", "dull"]


def needs_openvino():
    pytest.importorskip("openvino")


def test_options_are_typed_and_validated_once():
    assert OpenVinoOptions().compile_config() == {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    cfg = OpenVinoOptions(threads=2, streams=1, hint="throughput", dtype="bfloat16").compile_config()
    assert cfg == {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_PRECISION_HINT": "bf16",
                   "INFERENCE_NUM_THREADS": "2", "NUM_STREAMS": "1"}
    with pytest.raises(ConfigError, match="unknown openvino hint 'fast'; valid: latency, throughput"):
        OpenVinoOptions(hint="fast")
    with pytest.raises(ConfigError, match="unknown openvino dtype 'int4'; valid: float32, bfloat16, float16"):
        OpenVinoOptions(dtype="int4")
    with pytest.raises(ConfigError, match="streams must be an integer >= 0, got -1"):
        OpenVinoOptions(streams=-1)
    with pytest.raises(ConfigError, match="unknown openvino option.*spinning.*spinning is an option of the onnxruntime"):
        options_for("openvino", {"spinning": False})


def test_missing_openvino_is_one_line_naming_the_extra(tiny_onnx, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if the extra were not installed
    with pytest.raises(BackendError, match=r"openvino is not installed; pip install 'modelkiln\[openvino\]', "
                                           "or use --backend onnxruntime"):
        open_session(tiny_onnx, backend="openvino").open()
    one_line_error(run("bench", tiny_onnx.path, "--backend", "openvino", "--batch-sizes", "1", "--iters", "1"),
                   "openvino is not installed; pip install 'modelkiln[openvino]'")


def test_formats_it_cannot_open_are_one_line(tiny_bert, tiny_onnx, tmp_path):
    from exporter.load import load_checkpoint

    with pytest.raises(ConfigError, match="backend 'openvino' cannot open a 'hf' artifact; it opens onnx, openvino"):
        open_session(load_checkpoint(tiny_bert, "text-classification"), backend="openvino")
    with pytest.raises(ConfigError, match="runs on the CPU here, got device 'cuda'; use --device cpu"):
        open_session(tiny_onnx, backend="openvino", device="cuda").open()


def test_onnx_with_ops_openvino_cannot_read_is_one_line(tiny_onnx, tmp_path):
    needs_openvino()
    import onnx
    from onnx import TensorProto, helper

    # an onnxruntime-only contrib op, as in Kiln's fused dynamic-int8 artifacts (QAttention)
    node = helper.make_node("NotAnOpenVinoOp", ["input_ids"], ["logits"], domain="com.microsoft")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    onnx.save(model, str(tmp_path / "model.onnx"))
    art = dataclasses.replace(tiny_onnx, path=tmp_path)
    with pytest.raises(ArtifactError, match=r"OpenVINO cannot read .*model.onnx: no conversion for "
                                            r"com.microsoft.NotAnOpenVinoOp .*--backend onnxruntime") as e:
        open_session(art, backend="openvino").open()
    assert "\n" not in str(e.value)


def test_a_precision_the_cpu_lacks_is_refused(tiny_onnx, monkeypatch):
    needs_openvino()
    import runtime.backends.ov as ov_backend

    monkeypatch.setattr(ov_backend, "cpu_capabilities", lambda core: ["FP32", "INT8"])  # a CPU without BF16
    with pytest.raises(ConfigError, match=r"this CPU has no bfloat16 support in OpenVINO .*valid here: float32"):
        open_session(tiny_onnx, backend="openvino", dtype="bfloat16").open()
    one_line_error(run("bench", tiny_onnx.path, "--backend", "openvino", "--dtype", "bfloat16", "--batch-sizes", "1",
                       "--iters", "1"), "this CPU has no bfloat16 support")


def test_same_answers_as_onnxruntime_and_same_feed_checks(tiny_onnx):
    needs_openvino()
    with TextClassifier(tiny_onnx, backend="openvino", threads=1) as ov, TextClassifier(tiny_onnx) as ort:
        assert ov.session.describe().startswith("openvino CPU (float32, latency")
        np.testing.assert_allclose(ov.logits(TEXTS), ort.logits(TEXTS), atol=1e-5)
        ids = {s.name: np.ones((1, 4), np.int64) for s in tiny_onnx.inputs}
        with pytest.raises(InputError, match="got dtype int32, expected int64"):
            ov.session.run({k: v.astype(np.int32) for k, v in ids.items()})
        with pytest.raises(InputError, match="values must be 0..*the vocabulary has"):
            ov.session.run({k: v * 10**6 for k, v in ids.items()})


def test_bfloat16_where_the_cpu_has_it(tiny_onnx):
    needs_openvino()
    import openvino

    from runtime.backends.ov import cpu_capabilities

    if "BF16" not in cpu_capabilities(openvino.Core()):
        pytest.skip("this CPU has no bfloat16 in OpenVINO")
    with TextClassifier(tiny_onnx, backend="openvino", dtype="bfloat16") as bf, TextClassifier(tiny_onnx) as ref:
        assert "bfloat16" in bf.session.describe()
        np.testing.assert_allclose(bf.logits(TEXTS), ref.logits(TEXTS), atol=0.1)


def test_batcher_and_concurrent_callers(tiny_onnx):
    """One infer request is not thread-safe: the session serialises callers; the Batcher gives each its row."""
    needs_openvino()
    from runtime.batching import Batcher

    texts = TEXTS * 4
    with TextClassifier(tiny_onnx, backend="openvino") as clf:
        single = [clf.predict([t])[0].scores for t in texts]
        out: list = [None] * len(texts)
        with Batcher(clf.predict_encoded, max_batch_size=4, max_delay_ms=5, bucket=lambda e: len(e.ids) // 16) as b:
            def call(i):
                out[i] = b(clf.encode([texts[i]])[0]).scores
            threads = [threading.Thread(target=call, args=(i,)) for i in range(len(texts))]
            [t.start() for t in threads]
            [t.join() for t in threads]
    for got, alone in zip(out, single):
        np.testing.assert_allclose(list(got.values()), list(alone.values()), atol=1e-5)


def test_embedder(tmp_path):
    needs_openvino()
    from exporter.load import load_checkpoint
    from exporter.onnx_export import OnnxConfig, to_onnx
    from runtime import Embedder
    from tests.conftest import build_tiny

    art = to_onnx(load_checkpoint(build_tiny(tmp_path / "enc", task="feature-extraction"), "feature-extraction"),
                  OnnxConfig(), tmp_path / "onnx")
    with Embedder(art, backend="openvino") as ov, Embedder(art) as ort:
        np.testing.assert_allclose(ov.embed(TEXTS), ort.embed(TEXTS), atol=1e-5)


def test_ir_artifact_opens_with_auto(tiny_onnx, tmp_path):
    needs_openvino()
    from exporter.openvino_convert import to_openvino

    ir = to_openvino(tiny_onnx, tmp_path / "ir")
    loaded = Artifact.load(tmp_path / "ir")
    assert loaded.format == "openvino" and loaded.model_file.name == "model.xml" and "model.bin" in loaded.files
    assert ir.lineage[-1].metrics["validation"]["outputs"]["logits"]["max_abs"] < 1e-4
    with open_session(loaded) as s, TextClassifier(tiny_onnx) as ref:  # auto picks openvino for IR
        assert s.backend == "openvino"
        with TextClassifier(loaded, session=s) as clf:
            np.testing.assert_allclose(clf.logits(TEXTS), ref.logits(TEXTS), atol=1e-5)
    with pytest.raises(ConfigError, match="backend 'onnxruntime' cannot open a 'openvino' artifact"):
        open_session(loaded, backend="onnxruntime")


def test_eval_and_serve_with_backend_openvino(tiny_onnx, tmp_path):
    needs_openvino()
    import json

    from tests.conftest import sentiment_rows, write_csv
    from tests.test_server import ThreadServer, request

    data = write_csv(tmp_path / "d.csv", sentiment_rows(12, seed=3))
    res = run("eval", tiny_onnx.path, "--data", data, "--backend", "openvino", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["backend"].startswith("openvino CPU")
    with ThreadServer(tiny_onnx.path, backend="openvino", dtype="float32") as s:
        status, _, raw = request(s.port, "POST", "/v1/predict", {"inputs": TEXTS[:3]})
    assert status == 200 and len(json.loads(raw)["predictions"]) == 3


def test_serve_refuses_no_spinning_on_openvino(tiny_onnx):
    """--no-spinning is onnxruntime's; on openvino it was accepted and ignored."""
    needs_openvino()
    from runtime.server import ServeConfig, Service

    svc = Service(tiny_onnx.path, ServeConfig(backend="openvino", spinning=False))
    with pytest.raises(ConfigError, match="--no-spinning applies to onnxruntime's thread pool; .* runs on openvino"):
        svc.load_model(tiny_onnx.path)


def test_small_batches_run_on_static_shape_copies_with_the_same_answers(tiny_onnx):
    """Batch 1 is padded (masked) to a multiple of static_multiple and run on a copy compiled for that shape:
    the same logits as onnxruntime and as the dynamic-shape model, a few copies for every length, at most static_cache."""
    needs_openvino()
    texts = ["bad", "the movie was good", "a very long and boring film , but fun " * 3]
    with TextClassifier(tiny_onnx) as ort, \
            TextClassifier(tiny_onnx, backend="openvino", static_multiple=16) as ov, \
            TextClassifier(tiny_onnx, backend="openvino", static_batch=0) as dyn:
        assert "static shapes for batches <= 1" in ov.session.describe()
        assert "static" not in dyn.session.describe()
        lengths = [len(e.ids) for e in ov.encode(texts)]
        assert lengths[0] <= lengths[1] <= 16 < lengths[2]  # two buckets: 16 and 32 or more
        for t in texts:
            np.testing.assert_allclose(ov.logits([t]), ort.logits([t]), atol=1e-5)
            np.testing.assert_allclose(ov.logits([t]), dyn.logits([t]), atol=1e-5)
        assert sorted(dict(k)["input_ids"][1] for k in ov.session._static) == [16, -(-lengths[2] // 16) * 16]
        assert not dyn.session._static
        np.testing.assert_allclose(ov.logits(texts), ort.logits(texts), atol=1e-5)  # 3 rows: the dynamic model
        assert len(ov.session._static) == 2
    with TextClassifier(tiny_onnx, backend="openvino", static_cache=1, static_multiple=16) as one, \
            TextClassifier(tiny_onnx) as ort:
        for t in texts:  # the first shape gets the one copy; the longer one runs on the dynamic model
            np.testing.assert_allclose(one.logits([t]), ort.logits([t]), atol=1e-5)
        assert [dict(k)["input_ids"] for k in one.session._static] == [(1, 16)]


def test_static_copies_cut_sequence_outputs_back_to_the_real_length(tmp_path):
    needs_openvino()
    from exporter.load import load_checkpoint
    from exporter.onnx_export import OnnxConfig, to_onnx
    from tests.conftest import build_tiny

    art = to_onnx(load_checkpoint(build_tiny(tmp_path / "enc", task="feature-extraction"), "feature-extraction"),
                  OnnxConfig(), tmp_path / "onnx")
    feed = {s.name: np.ones((1, 5), np.int64) for s in art.inputs}
    with open_session(art, backend="openvino") as ov, open_session(art) as ort:
        got, want = ov.run(feed), ort.run(feed)
        assert got["last_hidden_state"].shape == want["last_hidden_state"].shape == (1, 5, 32)
        np.testing.assert_allclose(got["last_hidden_state"], want["last_hidden_state"], atol=1e-5)
        assert [dict(k)["input_ids"] for k in ov._static] == [(1, 8)]  # the default multiple: 8


def test_text_padding_needs_a_mask():
    from runtime.tasks.meta import ModelMeta
    from runtime.tasks.text import FAMILY

    meta = ModelMeta.from_dict({"pad_token_id": 3})
    ids = np.array([[101, 7, 102]])
    assert FAMILY.pad_feed({"input_ids": ids}, 8, meta) is None  # unmasked padding would change the answer
    padded = FAMILY.pad_feed({"input_ids": ids, "attention_mask": np.ones_like(ids)}, 5, meta)
    assert padded["input_ids"].tolist() == [[101, 7, 102, 3, 3]] and padded["attention_mask"].tolist() == [[1, 1, 1, 0, 0]]


@pytest.mark.parametrize("key, value", [("static_batch", -1), ("static_multiple", 0), ("static_cache", 0)])
def test_static_shape_options_are_checked(key, value):
    with pytest.raises(ConfigError, match=f"{key} must be an integer >= "):
        OpenVinoOptions(**{key: value})


@pytest.mark.parametrize("items, want", [
    (("static_cache=4",), {"static_cache": 4}),
    (("hint=throughput", "streams=2", "f=0.5", "flag=False"),
     {"hint": "throughput", "streams": 2, "f": 0.5, "flag": False}),
])
def test_backend_option_values(items, want):
    from exporter.cli.common import parse_backend_options

    assert parse_backend_options(items) == want


@pytest.mark.parametrize("item", ["static_cache", "=4", "static_cache="])
def test_backend_option_needs_key_and_value(item):
    from exporter.cli.common import parse_backend_options

    with pytest.raises(ConfigError, match=f"--backend-option wants KEY=VALUE \\(e.g. static_cache=4\\), got '{item}'"):
        parse_backend_options((item,))


@pytest.mark.parametrize("items, match", [
    (("threads=2",), "--backend-option threads=...: threads has its own flag; use --threads"),
    (("dtype=float32",), "dtype has its own flag; use --dtype"),
    (("model=foo",), "model is set from the artifact, not the command line"),
    (("static_cache=2", "static_cache=3"), "--backend-option static_cache is given twice"),
])
def test_backend_option_one_way_to_set_each(items, match):
    """A flag and --backend-option for one setting had opposite winners, silently; torch's model crashed."""
    from exporter.cli.common import parse_backend_options

    with pytest.raises(ConfigError, match=match):
        parse_backend_options(items)


def test_backend_options_reach_bench_and_serve_and_are_checked(tiny_onnx, tmp_path):
    """--backend-option gets to the options the other flags do not cover (the static copies' memory)."""
    needs_openvino()
    import json

    from runtime.server import ServeConfig, Service

    bench = ("bench", tiny_onnx.path, "--backend", "openvino", "--batch-sizes", "1", "--seq-len", "8", "--iters", "1",
             "--warmup", "0", "--rounds", "1", "--json")
    r = run(*bench, "--backend-option", "static_batch=0")
    assert r.exit_code == 0, r.output
    assert "static" not in json.loads(r.stdout)["results"][0]["backend"]
    assert "--backend-option static_batch=0" in json.loads(r.stdout)["command"]  # the rerun line, as typed
    one_line_error(run(*bench, "--backend-option", "static_cach=2"), "unknown openvino option(s) static_cach; valid: threads")
    one_line_error(run(*bench, "--backend-option", "static_cache=x"), "static_cache must be an integer >= 1, got 'x'")
    one_line_error(run("bench", "--suite", "ci", "--backend-option", "threads=1"),
                   "--backend-option applies to ARTIFACTS; a suite sets each candidate's options")
    r = run("serve", tiny_onnx.path, "--retry-load", "--backend-option", "static_cache=4", "--port", "1")
    one_line_error(r, "unknown onnxruntime option(s) static_cache")  # before serving (not retried for ever)
    svc = Service(tiny_onnx.path, ServeConfig(backend="openvino", backend_options=(("static_batch", 0),)))
    model = svc.load_model(tiny_onnx.path)
    assert "static" not in model.clf.session.describe()


def test_a_bad_or_overlong_feed_does_not_turn_the_static_copies_off(tiny_onnx, monkeypatch):
    """One feed beyond the artifact's max_length runs on the dynamic model (and is refused there if the
    model cannot take it); a shape whose compile fails is served dynamically; other shapes keep their copies."""
    needs_openvino()
    from runtime.backends import ov as ov_backend

    with open_session(tiny_onnx, backend="openvino") as s, open_session(tiny_onnx) as ort:
        limit = s.artifact.model_meta.max_length
        long_feed = {x.name: np.ones((1, limit + 1), np.int64) for x in tiny_onnx.inputs}
        try:
            s.run(long_feed)
        except InputError as e:  # if the graph has fewer positions: one line that names the shape and the limit
            assert f"input_ids 1x{limit + 1}" in str(e) and f"max_length is {limit}" in str(e)
        assert not s._static  # beyond max_length: no copy
        real = ov_backend.read_model
        monkeypatch.setattr(ov_backend, "read_model", lambda *a: (_ for _ in ()).throw(RuntimeError("broken")))
        three = {x.name: np.ones((1, 3), np.int64) for x in tiny_onnx.inputs}
        np.testing.assert_allclose(s.run(three)["logits"], ort.run(three)["logits"], atol=1e-5)  # served dynamically
        assert not s._static and len(s._failed) == 1
        monkeypatch.setattr(ov_backend, "read_model", real)
        nine = {x.name: np.ones((1, 9), np.int64) for x in tiny_onnx.inputs}
        np.testing.assert_allclose(s.run(nine)["logits"], ort.run(nine)["logits"], atol=1e-5)
        assert [dict(k)["input_ids"] for k in s._static] == [(1, 16)]  # copies still made for other shapes


def test_images_run_on_the_dynamic_model_alone_and_batched(tmp_path):
    """No static copies without a sequence axis: a single image and the same image in a batch get the same
    answer (OpenVINO's static and dynamic compiles of an int8 ViT differed by up to 1.2 logits)."""
    needs_openvino()
    import torch

    from exporter.module_export import to_onnx_module
    from runtime.tasks.images import ImagePreprocessing

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 3))
    art = to_onnx_module(net.eval(), torch.zeros(2, 1, 8, 8), ImagePreprocessing(size=(8, 8), channels=1),
                         ["a", "b", "c"], tmp_path / "cnn")
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    with open_session(art, backend="openvino") as s:
        alone = s.run({"pixel_values": x[:1]})["logits"]
        batched = s.run({"pixel_values": x})["logits"]
        assert not s._static and "static" not in s.describe()
    np.testing.assert_array_equal(alone[0], batched[0])


def test_dtype_with_the_default_backend_on_an_openvino_artifact(tiny_onnx, tmp_path):
    """auto opens an OpenVINO IR on openvino, which takes --dtype: no --backend needed (it was refused)."""
    needs_openvino()
    import json

    from exporter.openvino_convert import to_openvino
    from tests.conftest import sentiment_rows, write_csv

    to_openvino(tiny_onnx, tmp_path / "ir")
    r = run("predict", tmp_path / "ir", "a fine film", "--dtype", "float32", "--json")
    assert r.exit_code == 0, r.output
    data = write_csv(tmp_path / "d.csv", sentiment_rows(8, seed=1))
    r = run("eval", tmp_path / "ir", "--data", data, "--dtype", "float32", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["backend"].startswith("openvino CPU (float32")
