"""kiln build / TensorRT engines. `tensorrt`-marked tests build real TensorRT-RTX engines (ahead of time, no GPU
needed); `gpu`-marked ones run them. Everything that decides before a GPU is touched has a CPU twin here."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from exporter.cli import main
from exporter.tensorrt import BuildConfig, parse_shapes, resolve_profiles
from runtime import open_session
from runtime.artifact import Artifact, TensorSpec, hash_files
from runtime.backends.trt import Gpu, compatibility_problem, detect_gpu, profile_problem
from runtime.errors import ArtifactError, BackendError, ConfigError, InputError
from tests.conftest import REPO


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, match):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip() and not line.startswith("[kiln")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert match in lines[0], lines[0]
    return lines[0]


def rewrite(art: Artifact, path: Path, **changes) -> Artifact:
    """A copy of `art` at `path` with manifest fields replaced (files re-hashed)."""
    if not path.exists():
        shutil.copytree(art.path, path)
    new = dataclasses.replace(art, path=path, **changes)
    new = dataclasses.replace(new, files=hash_files(path))
    new.write_manifest()
    return new


# -- config and profiles (CPU) ------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    ({"precision": "int4"}, "precision must be one of fp32, fp16, int8, best, got 'int4'"),
    ({"trt": "cuda"}, "--trt must be one of auto, tensorrt, rtx"),
    ({"workspace_mb": 0}, "workspace must be a positive number of MB"),
    ({"shapes": "input_ids:1x16,8x128"}, "NAME:MIN,OPT,MAX"),
    ({"shapes": "input_ids:1xa,8x128,32x512"}, "NAME:MIN,OPT,MAX"),
    ({"shapes": "input_ids:8x16,1x128,32x512"}, "need min <= opt <= max on every axis"),
    ({"shapes": "input_ids:0x16,1x128,32x512"}, "dims must be >= 1"),
])
def test_build_config_refuses(kwargs, match):
    with pytest.raises(ConfigError, match=match.replace("(", r"\(")):
        BuildConfig(**kwargs)


def test_default_profiles_follow_dynamic_axes(tiny_onnx):
    profiles = resolve_profiles(tiny_onnx, BuildConfig())
    # tiny model: max_length 160 caps the sequence range
    assert profiles == {n: ((1, 8), (8, 128), (32, 160)) for n in ("input_ids", "attention_mask", "token_type_ids")}


def test_shape_override_applies_to_every_input_sharing_the_axis(tiny_onnx):
    profiles = resolve_profiles(tiny_onnx, BuildConfig(shapes="input_ids:1x16,4x64,16x96"))
    assert set(profiles.values()) == {((1, 16), (4, 64), (16, 96))}
    assert parse_shapes("a:1x2,1x2,1x2;b:1,2,3") == {"a": ((1, 2), (1, 2), (1, 2)), "b": ((1,), (2,), (3,))}


@pytest.mark.parametrize("shapes, match", [
    ("input_ids:1x16,8x128,32x512", "sequence max 512 exceeds the model's maximum length 160"),
    ("pixels:1x16,8x128,32x150", "unknown input(s) ['pixels']"),
    ("input_ids:1,8,32", "got rank 1, the input has rank 2"),
    ("input_ids:1x16,8x64,32x128;attention_mask:1x8,8x64,32x128", "disagrees with input_ids"),
])
def test_bad_shapes_are_refused_before_building(tiny_onnx, tmp_path, shapes, match):
    args = [a for s in shapes.split(";") for a in ("--shapes", s)]
    r = run("build", tiny_onnx.path, "-o", tmp_path / "eng", "--precision", "fp32", *args)
    one_line_error(r, match)
    assert not (tmp_path / "eng").exists()


def test_inverted_shapes_one_line(tiny_onnx, tmp_path):
    r = run("build", tiny_onnx.path, "-o", tmp_path / "eng", "--shapes", "input_ids:32x16,8x128,1x150")
    one_line_error(r, "need min <= opt <= max")
    assert not (tmp_path / "eng").exists()


def test_non_onnx_inputs_are_refused(tiny_onnx, tmp_path):
    hf = rewrite(tiny_onnx, tmp_path / "hf", format="hf")
    one_line_error(run("build", hf.path, "-o", tmp_path / "e1"), "kiln build reads an 'onnx' artifact, got 'hf'")
    (tmp_path / "notes.txt").write_text("not a model")
    one_line_error(run("build", tmp_path / "notes.txt", "-o", tmp_path / "e2"), "is a file")
    garbage = rewrite(tiny_onnx, tmp_path / "garbage")
    (garbage.path / "model.onnx").write_bytes(b"\x00garbage" * 100)
    one_line_error(run("build", garbage.path, "-o", tmp_path / "e3"), "is not a readable ONNX model")
    assert not any((tmp_path / e).exists() for e in ("e1", "e2", "e3"))


def test_int8_without_qdq_says_what_to_run_first(tiny_onnx, tmp_path):
    line = one_line_error(run("build", tiny_onnx.path, "-o", tmp_path / "eng", "--precision", "int8"),
                          "has none; run `kiln quantize")
    assert "--method nncf-int8" in line and "kiln build QDQ_DIR --precision int8" in line
    assert not (tmp_path / "eng").exists()


# -- compatibility and shape checks (CPU twins of what the session checks before deserializing) ----------

RTX_RECORD = {"flavour": "rtx", "version": "1.7.1.116", "precision": "fp16",
              "target": {"compute_capabilities": ["8.0", "8.6", "8.9", "12.0"], "hardware_compatibility_level": None}}
REBUILD = "kiln build /m/onnx -o /m/engine --force"


def test_compatibility_sentences():
    rtx = {"rtx": "1.7.1.116"}
    assert compatibility_problem(RTX_RECORD, rtx, Gpu("RTX 4090", "8.9"), REBUILD) is None
    assert compatibility_problem(RTX_RECORD, rtx, None, REBUILD).startswith(
        "engine built by TensorRT-RTX 1.7.1 for SM 8.0/8.6/8.9/12.0; this machine has TensorRT-RTX 1.7.1 and no CUDA GPU")
    assert compatibility_problem(RTX_RECORD, {"tensorrt": "10.13.0.35"}, Gpu("NVIDIA H200", "9.0"), REBUILD) == (
        "engine built by TensorRT-RTX 1.7.1 for SM 8.0/8.6/8.9/12.0; this machine has TensorRT 10.13.0 and SM 9.0 "
        f"(NVIDIA H200): rebuild with `{REBUILD}` on this machine")
    newer = compatibility_problem(RTX_RECORD, {"rtx": "1.8.0.1"}, Gpu("RTX 4090", "8.9"), REBUILD)
    assert "this machine has TensorRT-RTX 1.8.0 and SM 8.9" in newer
    dc = {"flavour": "tensorrt", "version": "10.13.0.35", "target": {"compute_capabilities": ["8.9"],
                                                                     "hardware_compatibility_level": "NONE"}}
    assert "for SM 8.9; this machine has TensorRT 10.13.0 and SM 9.0" in compatibility_problem(
        dc, {"tensorrt": "10.13.0.35"}, Gpu("NVIDIA H200", "9.0"), REBUILD)
    dc["target"]["hardware_compatibility_level"] = "AMPERE_PLUS"
    assert compatibility_problem(dc, {"tensorrt": "10.13.0.35"}, Gpu("NVIDIA H200", "9.0"), REBUILD) is None
    assert "pip install tensorrt-rtx" in compatibility_problem(RTX_RECORD, {}, Gpu("RTX 4090", "8.9"), REBUILD)


def test_profile_range_check():
    spec = TensorSpec("input_ids", "int64", ("batch", "sequence"), ((1, 8), (8, 128), (32, 160)))
    ok = {"input_ids": np.zeros((4, 16), np.int64)}
    assert profile_problem((spec,), ok) is None
    msg = profile_problem((spec,), {"input_ids": np.zeros((1, 600), np.int64)})
    assert msg.startswith("input 'input_ids': got shape (1, 600); the engine's profile allows batch 1..32, sequence 8..160")


def test_gpu_detection_respects_hidden_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert detect_gpu() is None


def fake_engine(tiny_onnx, path: Path, record=RTX_RECORD) -> Artifact:
    """A tensorrt artifact whose 'engine' is bytes no TensorRT will ever see (the checks stop first)."""
    shutil.copytree(tiny_onnx.path, path)
    (path / "model.onnx").unlink()
    (path / "model.engine").write_bytes(b"not an engine")
    meta = {**tiny_onnx.meta, "model_file": "model.engine", "tensorrt": record}
    return rewrite(tiny_onnx, path, format="tensorrt", meta=meta)


def test_session_checks_before_deserializing(tiny_onnx, tmp_path, monkeypatch):
    art = fake_engine(tiny_onnx, tmp_path / "eng")
    monkeypatch.setattr("runtime.backends.trt.detect_gpu", lambda: None)
    with pytest.raises(BackendError, match="no CUDA GPU"):
        open_session(art).open()
    monkeypatch.setattr("runtime.backends.trt.detect_gpu", lambda: Gpu("NVIDIA H200", "9.0"))
    with pytest.raises(BackendError, match=r"SM 9.0 \(NVIDIA H200\): .*rebuild with `kiln build"):
        open_session(art).open()  # SM 9.0 is not among the engine's targets: refused, never deserialized
    (art.path / "model.engine").write_bytes(b"corrupted")
    with pytest.raises(ArtifactError, match="does not match the sha256 in the manifest"):
        open_session(art).open()
    bare = rewrite(art, art.path, meta={k: v for k, v in art.meta.items() if k != "tensorrt"})
    with pytest.raises(ArtifactError, match="no 'tensorrt' record"):
        open_session(bare).open()


def test_engine_without_manifest_is_one_line(tiny_onnx, tmp_path):
    art = fake_engine(tiny_onnx, tmp_path / "eng")
    (art.path / "manifest.json").unlink()
    one_line_error(run("predict", art.path, "good film"), "is not a Kiln artifact (no manifest.json)")


def predict_in_subprocess(path: Path) -> subprocess.CompletedProcess:
    """A separate process: a segfault there is a negative return code here, not a dead test run."""
    return subprocess.run([sys.executable, "-m", "exporter.cli", "predict", str(path), "good film"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def assert_refused(proc: subprocess.CompletedProcess, match: str) -> None:
    assert proc.returncode == 1, (proc.returncode, proc.stderr)  # < 0 would be a signal (segfault)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: engine built by") and match in lines[0], proc.stderr


def test_mismatched_manifest_refused_in_a_subprocess(tiny_onnx, tmp_path):
    record = {"flavour": "tensorrt", "version": "10.13.0.35", "precision": "fp16",
              "target": {"compute_capabilities": ["8.9"], "hardware_compatibility_level": "NONE"}}
    art = fake_engine(tiny_onnx, tmp_path / "eng", record)
    gpu = detect_gpu()
    assert_refused(predict_in_subprocess(art.path),
                   "engine built by TensorRT 10.13.0 for SM 8.9; this machine has" if gpu is None or gpu.sm != "8.9"
                   else "engine built by TensorRT 10.13.0")


# -- real TensorRT-RTX engines (built ahead of time; no GPU needed) ------------------------------------

def build(art, tmp_path, name, *args):
    r = run("build", art.path, "-o", tmp_path / name, "--trt", "rtx", "--json", *args)
    assert r.exit_code == 0, r.output
    return Artifact.load(tmp_path / name), json.loads(r.stdout)


def assert_complete(engine: Artifact, source: Artifact, precision: str) -> dict:
    rec = engine.meta["tensorrt"]
    assert engine.format == "tensorrt" and (engine.path / "model.engine").stat().st_size > 10_000
    assert (engine.path / "tokenizer.json").is_file() and not (engine.path / "model.onnx").exists()
    assert rec["flavour"] == "rtx" and rec["version"].startswith("1.") and rec["module"] == "tensorrt_rtx"
    assert "8.9" in rec["target"]["compute_capabilities"] and rec["target"]["source"]
    assert rec["precision"] == precision and rec["precisions"] and isinstance(rec["builder_flags"], list)
    assert rec["source_onnx_sha256"] == source.files["model.onnx"]
    assert rec["build_seconds"] > 0 and rec["strongly_typed"] is True
    for spec in engine.inputs:
        p = rec["profiles"][0][spec.name]
        assert spec.profile == (tuple(p["min"]), tuple(p["opt"]), tuple(p["max"]))
    step = engine.lineage[-1]
    assert step.stage == "to_tensorrt" and step.config["precision"] == precision and step.metrics["engine_mb"] > 0
    assert not engine.verify()
    return rec


@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_real_engine(tiny_onnx, tmp_path, precision):
    engine, _ = build(tiny_onnx, tmp_path, "eng", "--precision", precision, "--timing-cache", tmp_path / "tc.bin",
                      "--workspace-mb", "256")
    rec = assert_complete(engine, tiny_onnx, precision)
    assert rec["graph_fp16"] is (precision == "fp16") and rec["workspace_mb"] == 256
    cache = rec["timing_cache"]
    assert cache["sha256_before"] is None and cache["sha256_after"] and cache["effective"] is False
    again, _ = build(tiny_onnx, tmp_path, "again", "--precision", precision, "--timing-cache", tmp_path / "tc.bin")
    assert again.meta["tensorrt"]["timing_cache"]["sha256_before"] == cache["sha256_after"]  # reused
    shown = run("inspect", engine.path).stdout
    assert "engine    TensorRT-RTX 1." in shown and "SM 8.0/8.6/8.9" in shown
    assert f"precision {precision}" in shown and "profile 0 input_ids: min [1, 8], opt [8, 128], max [32, 160]" in shown


def qdq_artifact(art: Artifact, path: Path) -> Artifact:
    """TensorRT-ready QDQ: int8 symmetric activations and weights, MatMul inputs only, no bias quantization."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Feeds(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.items = iter([{"input_ids": rng.integers(5, 80, (2, 16)).astype(np.int64),
                                "attention_mask": np.ones((2, 16), np.int64),
                                "token_type_ids": np.zeros((2, 16), np.int64)} for _ in range(4)])

        def get_next(self):
            return next(self.items, None)

    shutil.copytree(art.path, path)
    quantize_static(str(art.model_file), str(path / "model.onnx"), Feeds(), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["MatMul"], activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    per_channel=False, extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                                      "QuantizeBias": False})
    return rewrite(art, path, meta={**art.meta, "precision": "int8"})


@pytest.mark.tensorrt
def test_build_int8_from_qdq(tiny_onnx, tmp_path):
    qdq = qdq_artifact(tiny_onnx, tmp_path / "qdq")
    engine, _ = build(qdq, tmp_path, "eng", "--precision", "int8")
    rec = assert_complete(engine, qdq, "int8")
    assert rec["qdq"] is True and rec["precisions"][0] == "int8"
    one_line_error(run("build", qdq.path, "-o", tmp_path / "e16", "--precision", "fp16"), "build it with --precision int8")


def unsupported_op_artifact(path: Path) -> Artifact:
    """Two custom-domain ops and one standard op TensorRT has no importer for."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Frobnicate", ["x"], ["h"], name="frob_0", domain="com.example"),
             helper.make_node("Relu", ["h"], ["h2"], name="relu_0"),
             helper.make_node("Frobnicate", ["h2"], ["h3"], name="frob_1", domain="com.example"),
             helper.make_node("Unique", ["h3"], ["y"], name="unique_0")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    path.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]),
              str(path / "model.onnx"))
    art = Artifact(path, "onnx", "feature-extraction", (TensorSpec("x", "float32", ("batch", 4)),),
                   (TensorSpec("y", "float32", ("batch", 4)),), meta={"model_file": "model.onnx", "max_length": 8})
    return rewrite(art, path)


@pytest.mark.tensorrt
def test_unsupported_ops_listed_at_once(tmp_path):
    art = unsupported_op_artifact(tmp_path / "custom")
    line = one_line_error(run("build", art.path, "-o", tmp_path / "eng", "--precision", "fp32", "--trt", "rtx"),
                          "cannot parse")
    assert "frob_0 (Frobnicate)" in line and "frob_1 (Frobnicate)" in line and "unique_0 (Unique)" in line
    assert "unsupported op types: Unique, com.example::Frobnicate" in line
    assert not (tmp_path / "eng").exists()


@pytest.mark.tensorrt
def test_real_engine_refused_without_gpu_in_a_subprocess(tiny_onnx, tmp_path):
    engine, _ = build(tiny_onnx, tmp_path, "eng", "--precision", "fp16")
    gpu = detect_gpu()
    if gpu is not None and gpu.sm in engine.meta["tensorrt"]["target"]["compute_capabilities"]:
        pytest.skip(f"this machine's GPU ({gpu.name}) can run the engine")
    proc = predict_in_subprocess(engine.path)
    assert_refused(proc, "engine built by TensorRT-RTX 1.")
    (engine.path / "model.engine").write_bytes(b"\x00" * 100)  # corrupt: refused by hash, never deserialized
    proc = predict_in_subprocess(engine.path)
    assert proc.returncode == 1 and "does not match the sha256 in the manifest" in proc.stderr


@pytest.mark.tensorrt
@pytest.mark.integration
def test_minilm_fp16_engine(minilm_onnx, tmp_path):
    engine, _ = build(minilm_onnx, tmp_path, "eng", "--precision", "fp16", "--shapes", "input_ids:1x8,8x128,32x256")
    rec = assert_complete(engine, minilm_onnx, "fp16")
    assert rec["profiles"][0]["attention_mask"]["max"] == [32, 256]


@pytest.mark.tensorrt
@pytest.mark.integration
def test_minilm_nncf_int8_engine(minilm_onnx, tmp_path):
    """The TensorRT-ready int8 recipe on the real MiniLM: nncf-int8 QDQ (real sentences as calibration), then
    an int8 engine whose manifest is complete."""
    pytest.importorskip("nncf")
    from tests.conftest import dev_sentences

    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(dev_sentences(64)) + "\n")
    res = run("quantize", minilm_onnx.path, "--method", "nncf-int8", "--calib-data", calib, "--calib-samples", "64",
              "--subset-size", "64", "-o", tmp_path / "qdq")
    assert res.exit_code == 0, res.output
    engine, _ = build(Artifact.load(tmp_path / "qdq"), tmp_path, "eng", "--precision", "int8",
                      "--shapes", "input_ids:1x8,8x64,32x128")
    assert_complete(engine, Artifact.load(tmp_path / "qdq"), "int8")


# -- on a GPU with TensorRT -----------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.tensorrt
def test_engine_runs_and_matches_onnxruntime(tiny_onnx, tmp_path):
    from tests.test_session import feed

    engine, _ = build(tiny_onnx, tmp_path, "eng", "--precision", "fp32")
    with open_session(engine, device="cuda") as trt, open_session(tiny_onnx) as ort:
        np.testing.assert_allclose(trt.run(feed(4, 16))["logits"], ort.run(feed(4, 16))["logits"], atol=1e-3)
        with pytest.raises(InputError, match=r"got shape \(1, 4\); the engine's profile allows batch 1..32, sequence 8..160"):
            trt.run(feed(1, 4))


def test_gpu_check_engine_section_says_why_it_skipped(tiny_onnx, monkeypatch):
    from benchmarks.gpu_check import engine_table

    monkeypatch.setattr("runtime.backends.trt.installed_flavours", lambda: {})
    assert engine_table(tiny_onnx.path, [1], 16, 2) == "skipped: no TensorRT"
    monkeypatch.setattr("runtime.backends.trt.installed_flavours", lambda: {"rtx": "1.7.1"})
    monkeypatch.setattr("runtime.backends.trt.detect_gpu", lambda: None)
    assert engine_table(tiny_onnx.path, [1], 16, 2) == "skipped: no GPU"


def test_heartbeat_reports_while_a_builder_without_progress_monitor_runs():
    import time

    from exporter.tensorrt import Heartbeat

    lines: list[str] = []
    with Heartbeat(lines.append, every=0.01):
        time.sleep(0.1)
    assert lines and lines[0].startswith("builder running (")


@pytest.mark.tensorrt
def test_readme_build_commands_run(tiny_onnx, tmp_path, monkeypatch):
    import re
    import shlex

    block = (REPO / "README.md").read_text().split("## TensorRT engines", 1)[1].split("```", 2)[1]
    cmds = [shlex.split(re.sub(r"\[[^\]]*\]", "", line.split("#", 1)[0]))[1:] for line in block.splitlines()
            if line.startswith(("kiln build", "kiln inspect"))]
    assert [c[0] for c in cmds] == ["build", "build", "inspect"]
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_onnx.path, tmp_path / "minilm-onnx")
    qdq_artifact(tiny_onnx, tmp_path / "minilm-qdq")
    for args in cmds:
        result = run(*args)
        assert result.exit_code == 0, (args, result.output)
    assert "precision fp16" in result.output
