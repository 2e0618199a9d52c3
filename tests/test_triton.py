"""kiln export-triton: the repository's configs parse as Triton's ModelConfig and match the artifacts, bad
input is one line with nothing left at -o, and the real Triton core (from nvidia-pytriton, with the test
stand-in for its onnxruntime backend) answers raw text as TextClassifier does."""

from __future__ import annotations

import concurrent.futures
import json
import re
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from exporter.cli import main
from runtime.artifact import Artifact, TensorSpec

pytest.importorskip("tritonclient.grpc.model_config_pb2",
                    reason="tritonclient (ModelConfig protobuf) is not installed: pip install 'modelkiln[triton]'")

from exporter.triton import DTYPES, TritonConfig, parse_config, to_triton  # noqa: E402
from tests.triton_fixtures import core  # noqa: E402

TEXTS = ["the movie was very good", "a dull , boring film", "great acting but the plot is too long !",
         "it was not fun", "beautiful", "the story was awful and the acting bad . . ."]


@pytest.fixture(scope="module")
def int8_onnx(tiny_onnx, tmp_path_factory):
    from exporter.quantize import QuantConfig, quantize

    # validate=False: a random tiny model's logits sit near 0.5/0.5; this test compares servers, not quantization
    return quantize(tiny_onnx, QuantConfig(method="dynamic-int8", validate=False),
                    tmp_path_factory.mktemp("q") / "int8")


@pytest.fixture(scope="module")
def repo(tiny_onnx, int8_onnx, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("triton") / "repo"
    to_triton([tiny_onnx.path, int8_onnx.path], TritonConfig(names=("fp32", "int8")), out)
    return out


def configs(repo: Path) -> dict[str, object]:
    return {p.parent.name: parse_config(p.read_text()) for p in sorted(repo.glob("*/config.pbtxt"))}


def test_every_config_parses_and_matches_the_artifact(repo, tiny_onnx, int8_onnx):
    from tritonclient.grpc import model_config_pb2 as pb

    found = configs(repo)
    assert set(found) == {f"{n}{s}" for n in ("fp32", "int8") for s in ("", "_model", "_preprocess", "_postprocess")}
    for name, art in (("fp32", tiny_onnx), ("int8", int8_onnx)):
        mc = found[f"{name}_model"]
        assert mc.name == f"{name}_model" and mc.platform == "onnxruntime_onnx" and mc.backend == "onnxruntime"
        assert mc.max_batch_size == 32
        for configured, spec in ((mc.input, art.inputs), (mc.output, art.outputs)):
            assert [t.name for t in configured] == [s.name for s in spec]
            assert [pb.DataType.Name(t.data_type) for t in configured] == [DTYPES[s.dtype] for s in spec]
            assert [list(t.dims) for t in configured] == [[d if isinstance(d, int) else -1 for d in s.shape[1:]]
                                                          for s in spec]
        queue = mc.dynamic_batching.default_queue_policy
        assert queue.max_queue_size == 256 and queue.timeout_action == pb.ModelQueuePolicy.REJECT
        assert [(g.count, pb.ModelInstanceGroup.Kind.Name(g.kind)) for g in mc.instance_group] == [(1, "KIND_CPU")]
        assert (repo / f"{name}_model" / "1" / "model.onnx").read_bytes() == art.model_file.read_bytes()
        # the ensemble joins the three models, each step's tensors exist in the model it names
        steps = found[name].ensemble_scheduling.step
        assert [s.model_name for s in steps] == [f"{name}_preprocess", f"{name}_model", f"{name}_postprocess"]
        for step in steps:
            target = found[step.model_name]
            assert set(step.input_map) == {t.name for t in target.input}
            assert set(step.output_map) <= {t.name for t in target.output}
        assert [t.name for t in found[name].input] == ["TEXT"]
        assert [t.name for t in found[name].output] == ["LABEL", "SCORES"]
        labels = (repo / f"{name}_postprocess" / "labels.txt").read_text().splitlines()
        assert labels == [art.labels[i] for i in range(len(labels))]
        assert (repo / f"{name}_preprocess" / "1" / "tokenizer.json").is_file()


def test_options_reach_the_config(tiny_onnx, tmp_path):
    cfg = TritonConfig(max_batch_size=16, preferred_batch_sizes=(4, 16), max_queue_delay_microseconds=500,
                       instance_count=2, kind="KIND_GPU", ort_intra_op_threads=2, ort_graph_optimization=False)
    to_triton([tiny_onnx.path], cfg, tmp_path / "r")
    mc = parse_config((tmp_path / "r" / "bert-cls-onnx_model" / "config.pbtxt").read_text())
    assert mc.max_batch_size == 16 and list(mc.dynamic_batching.preferred_batch_size) == [4, 16]
    assert mc.dynamic_batching.max_queue_delay_microseconds == 500
    assert (mc.instance_group[0].count, mc.instance_group[0].kind) == (2, 1)  # KIND_GPU
    assert mc.parameters["intra_op_thread_count"].string_value == "2" and mc.optimization.graph.level == -1


def test_tensorrt_engine_artifact_becomes_a_plan_model(tiny_onnx, tmp_path):
    """A `tensorrt` artifact (engine file model.engine, as exporter/tensorrt.py writes) is served by the manifest."""
    eng = tmp_path / "engine"
    eng.mkdir()
    (eng / "model.engine").write_bytes(b"not a real engine; Triton would load it on a GPU")
    shutil.copy2(tiny_onnx.path / "tokenizer.json", eng / "tokenizer.json")
    Artifact(eng, "tensorrt", tiny_onnx.task, tiny_onnx.inputs, tiny_onnx.outputs,
             meta={**tiny_onnx.meta, "model_file": "model.engine"}).write_manifest()
    to_triton([eng], TritonConfig(names=("trt",)), tmp_path / "r")
    mc = parse_config((tmp_path / "r" / "trt_model" / "config.pbtxt").read_text())
    assert (mc.platform, mc.backend, mc.default_model_filename) == ("tensorrt_plan", "tensorrt", "model.plan")
    assert mc.instance_group[0].kind == 1  # KIND_GPU: an engine runs on the GPU
    assert (tmp_path / "r" / "trt_model" / "1" / "model.plan").read_bytes() == (eng / "model.engine").read_bytes()
    assert not mc.HasField("optimization")  # onnxruntime options stay off a TensorRT model


def test_cli_writes_a_repository(tiny_onnx, tmp_path):
    result = CliRunner().invoke(main, ["export-triton", str(tiny_onnx.path), "-o", str(tmp_path / "r"),
                                       "--name", "sentiment", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["endpoints"] == ["sentiment"] and summary["models"]["sentiment"] == "ensemble"
    again = CliRunner().invoke(main, ["export-triton", str(tiny_onnx.path), "-o", str(tmp_path / "r"), "--force"])
    assert again.exit_code == 0 and "/v2/models/bert-cls-onnx/infer" in again.output


def bad_format_artifact(tmp_path: Path, tiny_onnx: Artifact) -> Path:
    path = tmp_path / "torch-art"
    path.mkdir()
    (path / "model.pt").write_bytes(b"x")
    Artifact(path, "torch", tiny_onnx.task, tiny_onnx.inputs, tiny_onnx.outputs,
             meta={"model_file": "model.pt"}).write_manifest()
    return path


@pytest.mark.parametrize("case,args,message", [
    ("format", ["{bad}"], r"Triton cannot serve a 'torch' artifact; valid formats: onnx, tensorrt"),
    ("name", ["{art}", "--name", "my/model"], r"model name 'my/model' would be rejected"),
    ("preferred", ["{art}", "--max-batch-size", "8", "--preferred-batch-sizes", "4,16"],
     r"preferred batch sizes must be in 1\.\.max_batch_size \(8\), got 16"),
    ("exists", ["{art}"], r"exists and is not empty; pass --force"),
])
def test_bad_input_is_one_line_and_leaves_nothing(tiny_onnx, tmp_path, case, args, message):
    out = tmp_path / "repo"
    if case == "exists":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    bad = bad_format_artifact(tmp_path, tiny_onnx)
    argv = [a.format(bad=bad, art=tiny_onnx.path) for a in args]
    result = CliRunner().invoke(main, ["export-triton", *argv, "-o", str(out)])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(message, lines[0])
    if case == "exists":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()
    assert not list(tmp_path.glob(".repo.kiln-*"))  # no staging directory left behind


def test_unbounded_queue_and_bad_kind_are_refused():
    from runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="queue must be bounded"):
        TritonConfig(max_queue_size=0)
    with pytest.raises(ConfigError, match="kind must be one of KIND_CPU, KIND_GPU, got 'KIND_TPU'"):
        TritonConfig(kind="KIND_TPU")


def test_specs_without_a_batch_dimension_are_refused(tiny_onnx, tmp_path):
    from runtime.errors import ArtifactError

    fixed = tmp_path / "fixed"
    shutil.copytree(tiny_onnx.path, fixed)
    art = Artifact.load(fixed)
    Artifact(fixed, "onnx", art.task, tuple(TensorSpec(s.name, s.dtype, (1, 16)) for s in art.inputs), art.outputs,
             meta=art.meta).write_manifest()
    with pytest.raises(ArtifactError, match="dynamic first .batch. dimension"):
        to_triton([fixed], TritonConfig(), tmp_path / "r")
    assert not (tmp_path / "r").exists()


# ---- the real Triton core ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def running(repo, tmp_path_factory):
    reason = core.why_not()
    if reason:
        pytest.skip(f"the Triton core cannot start here: {reason}")
    empty = tmp_path_factory.mktemp("empty-repo")
    try:  # can the core start at all? (then any failure below is Kiln's, and fails the test)
        with core.triton_core(empty, timeout_s=30):
            pass
    except RuntimeError as e:
        pytest.skip(f"the Triton core cannot start here: {str(e).splitlines()[0]}")
    # summary_latencies as deploy/triton.yaml sets it, so the metrics deploy/ names can be checked live
    with core.triton_core(repo, timeout_s=90, extra_args=("--metrics-config=summary_latencies=true",)) as c:
        yield c


def infer(url: str, model: str, texts: list[str]) -> tuple[list[str], np.ndarray]:
    body = {"inputs": [{"name": "TEXT", "shape": [len(texts), 1], "datatype": "BYTES", "data": texts}]}
    req = urllib.request.Request(f"{url}/v2/models/{model}/infer", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        outputs = {o["name"]: o for o in json.loads(r.read())["outputs"]}
    scores = np.asarray(outputs["SCORES"]["data"], dtype=np.float64).reshape(outputs["SCORES"]["shape"])
    return list(outputs["LABEL"]["data"]), scores


@pytest.mark.parametrize("name,tolerance", [("fp32", 1e-5), ("int8", 0.02)])
def test_real_core_answers_raw_text_like_text_classifier(running, tiny_onnx, int8_onnx, name, tolerance):
    from runtime.pipeline import TextClassifier

    art = tiny_onnx if name == "fp32" else int8_onnx
    with TextClassifier(art, backend="onnxruntime") as clf:
        expected = [clf.predict([t])[0] for t in TEXTS]  # one text per call: the same padding as one per request
    order = list(expected[0].scores)  # label names in label-id order
    want = np.array([[p.scores[k] for k in order] for p in expected])
    got = [infer(running.url, name, [t]) for t in TEXTS]  # one request per text, as kiln serve's clients send
    assert [labels[0] for labels, _ in got] == [p.label for p in expected]
    np.testing.assert_allclose(np.vstack([s for _, s in got]), want, atol=tolerance)
    # concurrent requests: Triton's dynamic batcher joins requests of equal padded length
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        burst = list(pool.map(lambda t: infer(running.url, name, [t]), TEXTS * 4))
    np.testing.assert_allclose(np.vstack([s for _, s in burst]), np.vstack([want] * 4), atol=max(tolerance, 1e-4))
    # several texts in one request come back in order
    labels, scores = infer(running.url, name, TEXTS)
    assert labels == [p.label for p in expected] and scores.shape == (len(TEXTS), len(order))


def test_real_core_over_grpc_and_metrics(running):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(running.grpc)
    text = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[TEXTS[0].encode()]], dtype=np.object_))
    result = client.infer("fp32", [text])
    assert result.as_numpy("SCORES").shape == (1, 2) and result.as_numpy("LABEL")[0][0] in (b"negative", b"positive")
    assert infer(running.url, "fp32", [TEXTS[0]])[0][0] == result.as_numpy("LABEL")[0][0].decode()
    with urllib.request.urlopen(running.metrics, timeout=10) as r:
        metrics = r.read().decode()
    assert 'nv_inference_pending_request_count{model="fp32_model"' in metrics  # what deploy/ autoscales on
    from tests.test_deploy import TRITON_METRICS  # every Triton metric deploy/'s alerts and autoscaler read
    exported = set(re.findall(r"^(nv_\w+?)(?:\{| )", metrics, re.M))
    assert TRITON_METRICS <= exported, TRITON_METRICS - exported


def test_loadtest_targets_the_real_core(running):
    from benchmarks.load import closed_loop, triton_target

    result = closed_loop(triton_target(running.url, "fp32"), TEXTS, concurrency=4, duration_s=1.0).summary()
    assert result["ok"] > 0 and result["errors"] == {} and result["lost"] == 0
    missing = closed_loop(triton_target(running.url, "no-such-model"), TEXTS, concurrency=1, duration_s=0.3).summary()
    assert missing["ok"] == 0 and set(missing["errors"]) == {"404"}  # Triton: unknown model


def test_loadtest_protocol_options_are_checked():
    result = CliRunner().invoke(main, ["loadtest", "http://127.0.0.1:9", "--protocol", "triton", "--duration", "0.1"])
    assert result.exit_code == 2 and result.output.strip() == \
        "error: --protocol triton needs --model NAME, and --model applies only to --protocol triton"


def test_triton_table_recipe_runs(running, tiny_onnx, tmp_path):
    """The comparison recipe at toy scale (real numbers: benchmarks/results/triton.md, run on a quiet machine)."""
    import subprocess
    import sys

    from tests.conftest import REPO, sentiment_rows, write_csv

    data = write_csv(tmp_path / "texts.csv", sentiment_rows(16))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.runs.triton_table", "--artifact", str(tiny_onnx.path),
                           "--data", str(data), "--duration", "0.5", "--repeats", "1", "--concurrency", "4",
                           "--sequence-lengths", "0", "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = json.loads((tmp_path / "triton.json").read_text())["rows"]
    assert [r["server"] for r in rows] == ["kiln serve", "triton (stand-in onnxruntime backend)"]
    assert all(r["ok"] > 0 and r["lost"] == 0 and r["errors"] == {} for r in rows)
    assert rows[1]["mean_batch"] is not None and "STAND-IN" in (tmp_path / "triton.md").read_text()


def test_readme_scale_out_command_runs(tiny_onnx, int8_onnx, tmp_path):
    """The README's `kiln export-triton` line, options included, on the tiny artifacts."""
    import shlex

    from tests.conftest import REPO

    block = (REPO / "README.md").read_text().split("## Scale out", 1)[1].split("```", 2)[1]
    lines = block.strip().splitlines()
    command = (lines[0] + " " + lines[1]).replace("[--json]", "").replace("cpu|gpu", "cpu")
    command = command.replace("[", "").replace("]", "")  # optional parts written as [...] are all given
    args = shlex.split(command)[1:]
    assert args[:3] == ["export-triton", "ft-fp32", "ft-int8"] and "-o" in args
    args[1:3] = [str(tiny_onnx.path), str(int8_onnx.path)]
    args[args.index("-o") + 1] = str(tmp_path / "triton-repo")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert set(configs(tmp_path / "triton-repo")) >= {"fp32", "int8", "fp32_model", "int8_model"}


def test_preprocess_model_feeds_what_text_classifier_feeds(tiny_onnx):
    """The Triton tokenizer model is a copy (it runs without Kiln): it must pad and encode like the runtime."""
    import importlib.util

    from runtime.pipeline import TextClassifier

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("kiln_triton_pre", REPO / "exporter" / "triton_preprocess.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pre = module.TritonPythonModel()
    with TextClassifier(tiny_onnx, backend="onnxruntime") as clf:
        pre.tokenizer = clf.tokenizer
        pre.settings = {"max_length": int(tiny_onnx.meta.get("max_length", 512)), "pad_multiple": 8,
                        "pad_token_id": int(tiny_onnx.meta.get("pad_token_id", 0)), "sequence_length": 0}
        for text in TEXTS:
            want = clf.feed_for(clf.encode([text]))
            got = pre.encode([text])
            assert set(want) <= set(got) and all(np.array_equal(got[k], want[k]) for k in want), text
    pre.settings["sequence_length"] = 64
    assert pre.encode(["fine"])["input_ids"].shape == (1, 64)


def test_engine_profile_limits_max_batch_size(tiny_onnx, tmp_path):
    from runtime.errors import ConfigError

    eng = tmp_path / "engine"
    eng.mkdir()
    (eng / "model.engine").write_bytes(b"engine")
    inputs = tuple(TensorSpec(s.name, "int32", s.shape, ((1, 1), (8, 64), (16, 128))) for s in tiny_onnx.inputs)
    Artifact(eng, "tensorrt", tiny_onnx.task, inputs, tiny_onnx.outputs,
             meta={**tiny_onnx.meta, "model_file": "model.engine"}).write_manifest()
    with pytest.raises(ConfigError, match=r"max_batch_size 32 exceeds .*batch up to 16.*--max-batch-size 16"):
        to_triton([eng], TritonConfig(), tmp_path / "r")
    assert not (tmp_path / "r").exists()
    shutil.copy2(tiny_onnx.path / "tokenizer.json", eng / "tokenizer.json")
    to_triton([eng], TritonConfig(max_batch_size=16), tmp_path / "r")
    # the engine takes int32 ids: the tokenizer model is told to emit them
    settings = json.loads((tmp_path / "r" / "engine_preprocess" / "1" / "kiln-preprocess.json").read_text())
    assert set(settings["inputs"].values()) == {"int32"}
    pre = parse_config((tmp_path / "r" / "engine_preprocess" / "config.pbtxt").read_text())
    assert {t.data_type for t in pre.output} == {8}  # TYPE_INT32


@pytest.mark.parametrize("max_length, option, padded_to", [(64, None, 64), (128, None, 128), (512, None, 0),
                                                           (64, 0, 0), (512, 256, 256)])
def test_default_pads_short_models_to_their_max_length(tiny_onnx, tmp_path, max_length, option, padded_to):
    """Triton batches only equal shapes: padding every request of a short model to its max length let
    requests batch (166 against 75 requests/s in benchmarks/results/triton.md); long models pad to x8."""
    art = tmp_path / "art"
    shutil.copytree(tiny_onnx.path, art)
    a = Artifact.load(art)
    Artifact(art, a.format, a.task, a.inputs, a.outputs, a.lineage, {**a.meta, "max_length": max_length},
             a.files).write_manifest()
    to_triton([art], TritonConfig(sequence_length=option), tmp_path / "r")
    settings = json.loads((tmp_path / "r" / "art_preprocess" / "1" / "kiln-preprocess.json").read_text())
    assert settings["sequence_length"] == padded_to


def test_a_sequence_length_above_the_models_maximum_is_refused(tiny_onnx, tmp_path):
    """Every request would fail in the model (position embeddings end at max_length): refuse at export."""
    from runtime.errors import ConfigError

    max_length = int(tiny_onnx.meta["max_length"])
    with pytest.raises(ConfigError, match=rf"--sequence-length {max_length + 1} exceeds .* maximum length {max_length}"):
        to_triton([tiny_onnx.path], TritonConfig(sequence_length=max_length + 1), tmp_path / "r")
    assert not (tmp_path / "r").exists()
