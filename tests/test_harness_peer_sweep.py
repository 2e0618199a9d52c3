"""A peer's own model timed in Kiln's latency sweep (a [[peer]]'s sweep = true): the peer's server names the model
file it made, Kiln wraps it as an artifact (atomically, its lineage saying whose model it is) and times it beside
its own candidates. The peer "Pythons" are tests/fake_peer_server.py wrappers; the "made" model is a tiny ONNX."""

import json
from pathlib import Path

import pytest

from tests.test_harness_peer_envs import fake_python, peer_server_module


def sweep_plan(tiny_onnx, tmp_path, peer_python, **peer):
    from benchmarks.harness import BenchPlan, DataConfig, Peer, SweepConfig
    from benchmarks.harness.candidates import Candidate
    from tests.conftest import sentiment_rows, write_csv

    data = write_csv(tmp_path / "d.csv", sentiment_rows(20))
    # the peer's "checkpoint" folder holds model.onnx: the fake server answers load with it as the model it made
    return BenchPlan((Candidate(tiny_onnx.path, "onnxruntime", label="kiln"),),
                     sweep=SweepConfig(batch_sizes=(2,), seq_lens=(8,), warmup=1, rounds=2, per_round=1),
                     data=DataConfig(str(data), batch_size=8, warmup=0, rounds=1),
                     peers=(Peer("optimum-int8", tiny_onnx.path, peer_python, work_dir=tmp_path / "peer-work",
                                 sweep=True, **peer),))


def test_a_sweep_peer_model_is_timed_beside_the_candidates_and_says_who_made_it(tiny_onnx, tmp_path):
    from benchmarks.harness import run_bench
    from benchmarks.harness.render import markdown
    from runtime.artifact import Artifact

    plan = sweep_plan(tiny_onnx, tmp_path, fake_python(tmp_path, "ort-env"))
    report = run_bench(plan, command="test")
    rows = {r["candidate"]: r for r in report["results"]}
    assert list(rows) == ["kiln", "peer:optimum-int8 (model)"]
    peer_row = rows["peer:optimum-int8 (model)"]
    # the same loop and feeds: one row per (batch, seq), timed in the same rounds, opened by Kiln's onnxruntime
    assert (peer_row["batch"], peer_row["seq_len"], peer_row["iters"]) == (rows["kiln"]["batch"], 8, rows["kiln"]["iters"])
    assert peer_row["backend"].startswith("onnxruntime") and peer_row["made_by"] == "optimum-int8: fake optimum-int8"
    assert "made_by" not in rows["kiln"]
    # the data passes run the peer's pipeline only: its model is no data row
    assert [r["candidate"] for r in report["data_results"]] == ["kiln", "peer:optimum-int8"]
    # the wrapped artifact lives in the peer's work_dir, its lineage says it is the peer's model
    art = Artifact.load(peer_row["artifact"])
    assert art.path.parent == tmp_path / "peer-work" / "kiln-models"
    assert art.check_integrity() and art.format == "onnx" and art.inputs == tiny_onnx.inputs
    (step,) = art.lineage
    assert step.stage == "peer-model" and step.source is None and step.versions == {"env": "ort-env"}
    assert step.config["kind"] == "optimum-int8" and step.config["source"] == str(tiny_onnx.path / "model.onnx")
    assert step.config["made_by"] == "fake optimum-int8" and step.config["specs_from"] == str(tiny_onnx.path)
    text = markdown(report)
    assert "made_by" in text and "| peer:optimum-int8 (model) | onnxruntime" in text
    # a second run reuses the wrapped model (same model file, same specs): nothing else appears beside it
    again = run_bench(plan, command="test")
    assert [r["artifact"] for r in again["results"]][1] == peer_row["artifact"]
    assert [p.name for p in (tmp_path / "peer-work" / "kiln-models").iterdir()] == [art.path.name]


def test_sweep_true_is_refused_where_there_is_no_model_or_no_sweep(tiny_onnx, tmp_path):
    import dataclasses

    from benchmarks.harness import BenchPlan, Peer
    from runtime.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^peer kind transformers-eager has no model file to time in the sweep "
                                          r"\(it runs PyTorch eager\); sweep = true needs one of optimum-fp32, "):
        Peer("transformers-eager", tmp_path, "py", sweep=True)
    with pytest.raises(ConfigError, match="like = 'kiln' .* but sweep is not true"):
        Peer("optimum-int8", tmp_path, "py", like="kiln")
    plan = sweep_plan(tiny_onnx, tmp_path, "py")
    with pytest.raises(ConfigError, match=r"^peer peer:optimum-int8 has sweep = true, but the plan has no latency "
                                          r"sweep to time its model in; add a \[sweep\]"):
        BenchPlan(plan.candidates, sweep=None, data=plan.data, peers=plan.peers)
    with pytest.raises(ConfigError, match=r"like = 'fp32' is no candidate's label .*; valid: kiln$"):
        BenchPlan(plan.candidates, plan.sweep, plan.data, (dataclasses.replace(plan.peers[0], like="fp32"),))


def test_a_suite_refuses_sweep_on_transformers_eager_in_one_line(tmp_path):
    from benchmarks.harness.suites import load_suite
    from runtime.errors import ConfigError

    suite = tmp_path / "s.toml"
    suite.write_text(f'''[[candidate]]
artifact = "{tmp_path}"
label = "fp32"
[sweep]
batch_sizes = [32]
[data]
source = "movie-snippets:test"
[[peer]]
kind = "optimum-int8"
model = "{tmp_path}"
python = "/envs/ort/bin/python"
sweep = true
like = "fp32"
[[peer]]
kind = "transformers-eager"
model = "{tmp_path}"
python = "/envs/ort/bin/python"
sweep = true
''')
    with pytest.raises(ConfigError, match=r"peer 2: peer kind transformers-eager has no model file"):
        load_suite(str(suite), make=False)
    suite.write_text(suite.read_text().rsplit("[[peer]]", 1)[0])
    plan, _ = load_suite(str(suite), make=False)
    assert (plan.peers[0].sweep, plan.peers[0].like) == (True, "fp32")


def test_wrapping_is_atomic_and_never_replaces_what_is_there(tiny_onnx, tmp_path, monkeypatch):
    import shutil

    from benchmarks.harness.peers import wrap_peer_model
    from runtime.errors import ArtifactError

    made = {"peer": "p", "kind": "optimum-int8", "source": "s"}
    dst = tmp_path / "models" / "p"
    real_copy = shutil.copy2
    calls = []

    def copy_then_die(src, to, *a, **k):  # the model is copied, then the tokenizer copy is killed
        calls.append(src)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_copy(src, to, *a, **k)

    monkeypatch.setattr(shutil, "copy2", copy_then_die)
    with pytest.raises(KeyboardInterrupt):
        wrap_peer_model(tiny_onnx.path / "model.onnx", "onnx", tiny_onnx, dst, made)
    assert list((tmp_path / "models").iterdir()) == []  # no half-written artifact, no staging folder
    monkeypatch.setattr(shutil, "copy2", real_copy)
    art = wrap_peer_model(tiny_onnx.path / "model.onnx", "onnx", tiny_onnx, dst, made)
    assert sorted(art.files) == sorted(["model.onnx", *tiny_onnx.meta.get("tokenizer_files", ["tokenizer.json"])])
    with pytest.raises(ArtifactError, match="exists; the wrapped peer model is written only where nothing is"):
        wrap_peer_model(tiny_onnx.path / "model.onnx", "onnx", tiny_onnx, dst, made)


def test_an_openvino_peer_model_is_its_xml_and_bin(tiny_onnx, tmp_path):
    from benchmarks.harness.peers import wrap_peer_model
    from runtime.errors import ArtifactError

    src = tmp_path / "ov"
    src.mkdir()
    (src / "openvino_model.xml").write_text("<net/>")
    with pytest.raises(ArtifactError, match="has no weights file openvino_model.bin beside it"):
        wrap_peer_model(src / "openvino_model.xml", "openvino", tiny_onnx, tmp_path / "a", {})
    (src / "openvino_model.bin").write_bytes(b"\0")
    art = wrap_peer_model(src / "openvino_model.xml", "openvino", tiny_onnx, tmp_path / "a", {"kind": "k"})
    assert art.format == "openvino" and art.meta["model_file"] == "openvino_model.xml"
    assert {"openvino_model.xml", "openvino_model.bin"} <= set(art.files)
    with pytest.raises(ArtifactError, match="format 'tflite' is not one Kiln opens; valid: onnx, openvino"):
        wrap_peer_model(src / "openvino_model.xml", "tflite", tiny_onnx, tmp_path / "b", {})


def test_the_peer_server_saves_an_fp32_export_once_and_names_it(tmp_path):
    server = peer_server_module()
    saved = []

    class Net:  # optimum's exported model: save_pretrained writes its file
        def save_pretrained(self, d):
            saved.append(d)
            (Path(d) / "model.onnx").write_text("graph")

    model = tmp_path / "ckpt"
    model.mkdir()
    (model / "model.safetensors").write_text("w")
    first = server.saved_export(Net(), "optimum-fp32", model, tmp_path / "work", "model.onnx")
    assert first.read_text() == "graph" and first.parent.parent == tmp_path / "work" / "optimum-fp32"
    assert server.saved_export(Net(), "optimum-fp32", model, tmp_path / "work", "model.onnx") == first
    assert len(saved) == 1
    with pytest.raises(FileNotFoundError, match="wrote no openvino_model.xml"):
        server.saved_export(Net(), "optimum-intel-fp32", model, tmp_path / "work", "openvino_model.xml")
    assert json.dumps(server.versions())  # the load answer stays JSON
