"""Peers in several Python environments (one server each), the optimum-intel kinds, and the peer model cache.

The peer "Pythons" are wrapper scripts around tests/fake_peer_server.py (the real protocol, no model), so nothing
here needs optimum or optimum-intel installed."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

FAKE = Path(__file__).with_name("fake_peer_server.py")


def fake_python(tmp_path: Path, name: str) -> str:
    """An executable that plays a peer environment's Python: it runs the fake server under `name`."""
    path = tmp_path / f"py-{name}"
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" {name} "$@"\n')
    path.chmod(0o755)
    return str(path)


def peer_server_module():
    """benchmarks/peer/peer_server.py as a module (it is a script for the peer's Python, importing only stdlib)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "peer" / "peer_server.py"
    spec = importlib.util.spec_from_file_location("peer_server_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_peers_in_two_pythons_run_in_a_server_each_and_both_report(tiny_onnx, tmp_path):
    from benchmarks.harness import BenchPlan, DataConfig, Peer, run_bench
    from benchmarks.harness.candidates import Candidate
    from benchmarks.harness.render import markdown
    from tests.conftest import sentiment_rows, write_csv

    data = write_csv(tmp_path / "d.csv", sentiment_rows(40))
    calib = write_csv(tmp_path / "calib.csv", sentiment_rows(30, seed=1))
    py_a, py_b = fake_python(tmp_path, "ort-env"), fake_python(tmp_path, "intel-env")
    peers = (Peer("optimum-int8", tmp_path, py_a), Peer("optimum-intel-fp32", tmp_path, py_b),
             Peer("optimum-intel-int8", tmp_path, py_b, calib_data=str(calib), calib_samples=7))
    plan = BenchPlan((Candidate(tiny_onnx.path, label="kiln"),), sweep=None,
                     data=DataConfig(str(data), batch_size=16, warmup=0, rounds=2), peers=peers)
    report = run_bench(plan, command="test")
    rows = {r["candidate"]: r for r in report["data_results"]}
    assert list(rows) == ["kiln", "peer:optimum-int8", "peer:optimum-intel-fp32", "peer:optimum-intel-int8"]
    # each peer ran in its own Python's server, and classified every row
    assert rows["peer:optimum-int8"]["runtime"] == "fake pipeline in ort-env"
    assert rows["peer:optimum-intel-fp32"]["runtime"] == rows["peer:optimum-intel-int8"]["runtime"] == \
        "fake pipeline in intel-env"
    assert all(r["n"] == 40 and r["accuracy"] == 1.0 for c, r in rows.items() if c != "kiln")
    # the calibrated kind got its texts from Kiln's side: calib_samples of them
    assert rows["peer:optimum-intel-int8"]["calib_texts"] == 7 and rows["peer:optimum-intel-fp32"]["calib_texts"] == 0
    # both environments' versions, each under its Python, and rendered one line each
    assert report["environment"]["peer_versions"] == {py_a: {"env": "ort-env"}, py_b: {"env": "intel-env"}}
    text = markdown(report)
    assert f"- Peers' environment {py_a}: env ort-env" in text and f"- Peers' environment {py_b}: env intel-env" in text


def test_one_peer_python_keeps_the_flat_versions_and_its_line():
    from benchmarks.harness.peers import peer_versions
    from benchmarks.harness.render import environment_lines

    rows = [{"candidate": "kiln"}, {"candidate": "peer:a", "python": "/p", "versions": {"torch": "2"}},
            {"candidate": "peer:b", "python": "/p", "versions": {"torch": "2"}}]
    assert peer_versions(rows) == {"torch": "2"} and peer_versions(rows[:1]) is None
    env = {"cpu": "c", "cpu_count": 2, "cpu_flags": [], "gpus": [], "kiln": "0", "versions": {},
           "peer_versions": {"torch": "2"}}
    assert environment_lines(env)[-1] == "- Peers' environment: torch 2"


def test_the_optimum_intel_kinds_and_their_calibration_settings(tmp_path):
    from benchmarks.harness import Peer
    from benchmarks.harness.candidates import PEER_KINDS
    from benchmarks.harness.peers import calibration_texts
    from runtime.errors import ConfigError
    from tests.conftest import sentiment_rows, write_csv

    assert {"optimum-intel-fp32", "optimum-intel-int8"} <= set(PEER_KINDS)
    # the old openvino_table.py's calibration set by default: 300 movie-snippets dev sentences
    p = Peer("optimum-intel-int8", tmp_path, "py")
    assert (p.calib_data, p.calib_samples) == ("movie-snippets:dev", 300)
    assert Peer("optimum-intel-fp32", tmp_path, "py").label == "peer:optimum-intel-fp32"
    with pytest.raises(ConfigError, match=r"peer kind optimum-int8 does not calibrate, but calib_data/calib_samples "
                                          r"\('x', None\) were given; calibrated kinds: optimum-intel-int8"):
        Peer("optimum-int8", tmp_path, "py", calib_data="x")
    with pytest.raises(ConfigError, match="does not calibrate"):
        Peer("optimum-intel-fp32", tmp_path, "py", calib_samples=10)
    assert Peer("optimum-int8", tmp_path, "py").calib_samples is None
    with pytest.raises(ConfigError, match="calib_samples must be an integer >= 1, got 0"):
        Peer("optimum-intel-int8", tmp_path, "py", calib_samples=0)
    # a seeded sample of the file's texts, the same each time; more asked than there are: all of them
    calib = write_csv(tmp_path / "c.csv", sentiment_rows(20))
    few = calibration_texts(Peer("optimum-intel-int8", tmp_path, "py", calib_data=str(calib), calib_samples=5))
    assert len(few) == 5 and len(set(few)) == 5 and set(few) <= {t for t, _ in sentiment_rows(20)}
    assert few == calibration_texts(Peer("optimum-intel-int8", tmp_path, "py", calib_data=str(calib), calib_samples=5))
    assert len(calibration_texts(Peer("optimum-intel-int8", tmp_path, "py", calib_data=str(calib),
                                      calib_samples=500))) == 20
    assert calibration_texts(Peer("optimum-fp32", tmp_path, "py")) is None


@pytest.mark.skipif(importlib.util.find_spec("optimum") is not None, reason="this Python has optimum")
def test_a_peer_python_without_its_library_is_one_line_naming_what_to_install(tmp_path):
    from benchmarks.harness import Peer
    from benchmarks.harness.peers import check_peers
    from runtime.errors import ConfigError

    check_peers([Peer("transformers-eager", tmp_path, sys.executable)])  # this Python has transformers
    with pytest.raises(ConfigError) as e:
        check_peers([Peer("transformers-eager", tmp_path, sys.executable),
                     Peer("optimum-intel-int8", tmp_path, sys.executable)])
    assert str(e.value) == (
        f"peer peer:optimum-intel-int8 (optimum-intel-int8) needs optimum.intel, which {sys.executable} cannot "
        f"import; install benchmarks/peer/requirements-intel.txt there ({Path(sys.executable).parent}/pip install "
        "-r benchmarks/peer/requirements-intel.txt) or give the peer the python of an environment that has it")
    with pytest.raises(ConfigError, match="needs optimum.onnxruntime, .* install benchmarks/peer/requirements.txt"):
        check_peers([Peer("optimum-int8", tmp_path, sys.executable)])


def test_made_peer_models_are_keyed_by_model_and_calibration_set(tmp_path, monkeypatch):
    server = peer_server_module()
    made = []

    def fake_recipe(script, model, out, *calib):  # what optimum_peer.py / optimum_intel_peer.py would write
        made.append((script, Path(model).name, len(json.loads(Path(calib[0]).read_text())) if calib else None))
        (Path(out) / "model_optimized_quantized.onnx").write_text(f"from {model}")
        (Path(out) / "ov-int8").mkdir()
        (Path(out) / "ov-int8" / "openvino_model.xml").write_text(f"from {model}")

    monkeypatch.setattr(server, "recipe", fake_recipe)
    work = tmp_path / "work"
    a, b = tmp_path / "a", tmp_path / "b"
    for m, weights in ((a, "1"), (b, "2")):
        m.mkdir()
        (m / "model.safetensors").write_text(weights)
    # optimum's int8: one per model in the same work_dir, made once each
    qa, qb = server.optimum_int8_file(a, work), server.optimum_int8_file(b, work)
    assert qa.read_text() == f"from {a}" and qb.read_text() == f"from {b}"
    assert server.optimum_int8_file(a, work) == qa and len(made) == 2
    # optimum-intel's int8: another calibration count (or set) is another model
    texts = [f"text {i}" for i in range(10)]
    d3, d4 = server.optimum_intel_int8_dir(a, work, texts[:3]), server.optimum_intel_int8_dir(a, work, texts[:4])
    assert d3 != d4 and server.optimum_intel_int8_dir(a, work, texts[:3]) == d3
    assert server.optimum_intel_int8_dir(b, work, texts[:3]) not in (d3, d4)
    assert [m[2] for m in made[2:]] == [3, 4, 3]
    # a changed checkpoint (same path) is not the cached one
    (a / "model.safetensors").write_text("retrained")
    assert server.optimum_int8_file(a, work) != qa and len(made) == 6


def test_a_failed_make_leaves_nothing_to_reuse(tmp_path):
    server = peer_server_module()

    def broken(out):
        (out / "half.onnx").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        server.made_once(tmp_path, "optimum-int8", "k", broken)
    assert list((tmp_path / "optimum-int8").iterdir()) == []


def test_a_suite_names_the_optimum_intel_peers_and_their_calibration(tmp_path):
    from benchmarks.harness.suites import load_suite

    suite = tmp_path / "s.toml"
    suite.write_text(f'''[[candidate]]
artifact = "{tmp_path}"
[data]
source = "movie-snippets:test"
[[peer]]
kind = "optimum-intel-int8"
model = "{tmp_path}"
python = "/envs/intel/bin/python"
calib_data = "movie-snippets:train"
calib_samples = 50
[[peer]]
kind = "optimum-int8"
model = "{tmp_path}"
python = "/envs/ort/bin/python"
''')
    plan, _ = load_suite(str(suite))
    intel, ort = plan.peers
    assert (intel.kind, intel.calib_data, intel.calib_samples, intel.python) == \
        ("optimum-intel-int8", "movie-snippets:train", 50, "/envs/intel/bin/python")
    assert (ort.python, ort.calib_samples) == ("/envs/ort/bin/python", None)
