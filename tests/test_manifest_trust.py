"""Nothing in an artifact is trusted on faith: the manifest's types and paths, its own content, and what
the torch backend loads through the lineage."""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.cli import main
from runtime import Artifact, ArtifactError, BackendError, open_session
from runtime.artifact import MANIFEST, digest_of, hash_files
from tests.conftest import build_tiny


def copy_of(art: Artifact, dst: Path) -> Path:
    shutil.copytree(art.path, dst)
    return dst


def edit(path: Path, change) -> None:
    d = json.loads((path / MANIFEST).read_text())
    change(d)
    (path / MANIFEST).write_text(json.dumps(d))


def setitem(keys, value):
    def change(d):
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return change


# -- the manifest's types and paths ----------------------------------------------------------------------

@pytest.mark.parametrize("keys, value, match", [
    (("meta", "model_file"), "../other/model.onnx", r"meta\.model_file: got '\.\./other/model\.onnx'; valid: a relative"),
    (("meta", "model_file"), "/etc/passwd", r"meta\.model_file: got '/etc/passwd'"),
    (("meta", "tokenizer"), 7, r"meta\.tokenizer: got 7; valid: a relative path"),
    (("meta", "labels"), {"zero": "neg"}, r"meta\.labels: got 'zero'; valid: class ids"),
    (("meta", "labels"), {"0": ["neg"]}, r"meta\.labels\['0'\]: got \['neg'\]; valid: a non-empty string"),
    (("meta", "labels"), ["neg", "pos"], r"meta\.labels: got \['neg', 'pos'\]; valid: a JSON object"),
    (("meta", "max_length"), "128", r"meta\.max_length: got '128'; valid: an integer in 0\.\.2147483647"),
    (("meta",), [], r"meta: got \[\]; valid: a JSON object"),
    (("format",), "pickle", r"format: got 'pickle'; valid: hf, torch, onnx"),
    (("task",), 3, r"task: got 3; valid: a non-empty string"),
    (("inputs",), {"name": "x"}, r"inputs: got \{'name': 'x'\}; valid: a JSON list"),
    (("inputs", 0, "shape"), ["batch", True], r"inputs\[0\]\.shape\[1\]: got True"),
    (("inputs", 0, "name"), None, r"inputs\[0\]\.name: got None"),
    (("outputs", 0, "dtype"), {}, r"outputs\[0\]\.dtype: got \{\}"),
    (("lineage",), {"stage": "x"}, r"lineage: got .*; valid: a JSON list"),
    (("lineage", 0, "seconds"), "fast", r"lineage\[0\]\.seconds: got 'fast'; valid: a number"),
    (("lineage", 0, "inputs_sha256"), "abc", r"lineage\[0\]\.inputs_sha256: got 'abc'; valid: a sha256"),
    (("files",), {"../../etc/passwd": "0" * 64}, r"files\['\.\./\.\./etc/passwd'\]: got"),
    (("files",), {"model.onnx": "not-a-hash"}, r"files\['model\.onnx'\]: got 'not-a-hash'; valid: a sha256"),
])
def test_malformed_manifest_fields_are_one_line_errors(tiny_onnx, tmp_path, keys, value, match):
    art = copy_of(tiny_onnx, tmp_path / "art")
    edit(art, setitem(keys, value))
    with pytest.raises(ArtifactError, match=match) as e:
        Artifact.load(art)
    assert str(art / MANIFEST) in str(e.value) and "\n" not in str(e.value)


def test_a_missing_field_is_named(tiny_onnx, tmp_path):
    art = copy_of(tiny_onnx, tmp_path / "art")
    edit(art, lambda d: d.pop("outputs"))
    with pytest.raises(ArtifactError, match="missing or has a malformed field outputs: it is missing"):
        Artifact.load(art)


def test_a_path_through_a_symlink_out_of_the_artifact_is_refused(tiny_onnx, tmp_path):
    art = copy_of(tiny_onnx, tmp_path / "art")
    (tmp_path / "elsewhere").mkdir()
    (art / "sub").symlink_to(tmp_path / "elsewhere")
    edit(art, setitem(("meta", "model_file"), "sub/model.onnx"))
    with pytest.raises(ArtifactError, match=r"meta\.model_file: got 'sub/model\.onnx'.*through a symlink"):
        Artifact.load(art)


# -- the manifest's own content ----------------------------------------------------------------------------

def inspect(path, *extra):
    return CliRunner().invoke(main, ["inspect", str(path), "--verify", *extra])


def test_verify_names_an_edited_label(tiny_onnx, tmp_path):
    art = copy_of(tiny_onnx, tmp_path / "art")
    assert inspect(art).exit_code == 0
    edit(art, setitem(("meta", "labels", "1"), "swapped"))
    r = inspect(art)
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert r.output.strip() == f"error: {art}: manifest.json edited since it was written: meta.labels changed"


def test_verify_names_edited_and_added_fields(tiny_onnx, tmp_path):
    art = copy_of(tiny_onnx, tmp_path / "art")
    edit(art, lambda d: (d["lineage"][-1]["metrics"].update(validation={}), d["meta"].update(pooling="cls")))
    assert Artifact.load(art).verify_manifest() == ["lineage", "meta.pooling"]


def test_verify_says_when_an_older_manifest_is_not_covered(tiny_onnx, tmp_path):
    art = copy_of(tiny_onnx, tmp_path / "art")
    edit(art, lambda d: d.pop("manifest_sha256"))
    r = inspect(art)
    assert r.exit_code == 0, r.output
    assert "manifest not covered (made by an older Kiln" in r.output
    r = inspect(art, "--json")
    assert json.loads(r.stdout)["manifest_verified"] is None


def test_written_manifests_cover_themselves(tiny_onnx):
    d = json.loads((tiny_onnx.path / MANIFEST).read_text())
    assert "meta.labels" in d["manifest_sha256"] and Artifact.load(tiny_onnx.path).verify_manifest() == []


# -- random manifests: an Artifact or an ArtifactError, nothing else ---------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
path_texts = st.sampled_from(["model.onnx", "tokenizer.json", "../x", "/abs", "", "a/../b", "sub/x", ".", "a\\b",
                              "\0", "link/x"])
specs = st.fixed_dictionaries({"name": st.text(max_size=6) | json_values, "dtype": st.sampled_from(["int64", ""]) | json_values,
                               "shape": st.lists(st.integers(-2, 8) | st.sampled_from(["batch", ""]) | st.booleans(),
                                                 max_size=3) | json_values},
                              optional={"profile": json_values})
steps = st.fixed_dictionaries(
    {"stage": st.text(max_size=6) | json_values, "config": st.dictionaries(st.text(max_size=4), json_values, max_size=2) | json_values,
     "seconds": st.floats(allow_nan=False) | json_values},
    optional={"source": st.text(max_size=6) | json_values, "inputs_sha256": st.sampled_from(["a" * 64, "A" * 64]) | json_values,
              "versions": st.dictionaries(st.text(max_size=4), json_values, max_size=2), "extra": json_values})
metas = st.fixed_dictionaries({}, optional={
    "model_file": path_texts | json_values, "tokenizer": path_texts, "weights_file": path_texts,
    "labels": st.dictionaries(st.sampled_from(["0", "1", "x", "-1"]), st.text(max_size=4) | json_values, max_size=3) | json_values,
    "max_length": st.integers(-3, 600) | json_values, "tokenizer_files": st.lists(path_texts, max_size=2) | json_values,
    "structure": st.fixed_dictionaries({"heads": st.lists(st.integers(-1, 4), max_size=2) | json_values,
                                        "ffn": st.lists(st.integers(0, 8), max_size=2)}) | json_values,
    "normalize": json_values, "other": json_values})
manifests = st.fixed_dictionaries(
    {"schema_version": st.sampled_from([1, 1, 1, 0, 2, True, "1"])},
    optional={"format": st.sampled_from(["onnx", "hf", "pickle"]) | json_values, "task": st.text(max_size=8) | json_values,
              "inputs": st.lists(specs, max_size=2) | json_values, "outputs": st.lists(specs, max_size=2) | json_values,
              "meta": metas | json_values, "lineage": st.lists(steps, max_size=2) | json_values,
              "files": st.dictionaries(path_texts, st.sampled_from(["0" * 64, "x"]) | json_values, max_size=2) | json_values,
              "manifest_sha256": st.dictionaries(st.text(max_size=6), st.sampled_from(["0" * 64]) | json_values, max_size=2)
              | json_values})


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    art = root / "art"
    art.mkdir()
    (art / "model.onnx").write_bytes(b"x")
    (art / "link").symlink_to(root)
    return art


def load_or_refuse(art: Path, text: str) -> None:
    (art / MANIFEST).write_text(text)
    try:
        loaded = Artifact.load(art)
    except ArtifactError as e:
        assert "\n" not in str(e)
        return
    # a loaded artifact must be usable: nothing it reads from the manifest can blow up later
    loaded.labels, loaded.model_file, loaded.source_path(), loaded.verify(), loaded.verify_manifest()
    assert loaded.to_manifest()["format"] == loaded.format


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(manifests)
def test_random_manifests_load_or_raise_artifact_error(fuzz_dir, manifest):
    load_or_refuse(fuzz_dir, json.dumps(manifest))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(json_values | st.text(max_size=40))
def test_random_json_and_text_load_or_raise_artifact_error(fuzz_dir, value):
    load_or_refuse(fuzz_dir, value if isinstance(value, str) else json.dumps(value))


# -- what the torch backend loads -----------------------------------------------------------------------

@pytest.fixture()
def exported(tiny_bert, tmp_path):
    """A private copy of the tiny checkpoint and an ONNX artifact made from it (the test may damage both)."""
    from exporter.load import load_checkpoint
    from exporter.onnx_export import OnnxConfig, to_onnx

    src = tmp_path / "model"
    shutil.copytree(tiny_bert, src)
    return src, to_onnx(load_checkpoint(src, "text-classification"), OnnxConfig(validate=False), tmp_path / "onnx")


def test_torch_backend_refuses_a_source_changed_since_export(exported):
    src, art = exported
    with open_session(art, backend="torch"):
        pass
    (src / "config.json").write_text((src / "config.json").read_text() + " ")
    with pytest.raises(BackendError, match=f"{src} changed since .* was made from it"):
        open_session(art, backend="torch").open()


def test_torch_backend_refuses_a_lineage_that_loops(tiny_onnx, tmp_path):
    """An artifact written over its own source (as `kiln quantize X -o X --force` once could) loops back."""
    art = copy_of(tiny_onnx, tmp_path / "x")
    step = {"stage": "quantize", "config": {}, "seconds": 0.1, "source": str(art),
            "inputs_sha256": digest_of(hash_files(art))}
    edit(art, lambda d: d["lineage"].append(step))
    outcome = []

    def open_it():
        try:
            open_session(Artifact.load(art), backend="torch").open()
        except BackendError as e:
            outcome.append(str(e))

    t = threading.Thread(target=open_it, daemon=True)  # before the fix this never returned
    t.start()
    t.join(60)
    assert not t.is_alive(), "the torch backend loops on a lineage that points at itself"
    assert outcome and f"lineage of {art} loops back to {art}" in outcome[0]


def test_torch_backend_needs_trust_for_pickled_weights(tmp_path):
    import torch
    from safetensors.torch import load_file

    from exporter.load import load_checkpoint

    src = build_tiny(tmp_path / "m")
    torch.save(load_file(str(src / "model.safetensors")), src / "pytorch_model.bin")
    (src / "model.safetensors").unlink()
    art = load_checkpoint(src, "text-classification", trust_pickle=True)
    with pytest.raises(BackendError, match="pytorch_model.bin holds pickled weights.*trust_pickle=True"):
        open_session(art, backend="torch").open()
    with open_session(art, backend="torch", trust_pickle=True) as s:
        assert s.describe().startswith("torch")


def test_torch_backend_refuses_an_untrained_classification_head(tmp_path):
    from exporter.load import load_checkpoint

    src = build_tiny(tmp_path / "encoder", task="feature-extraction")  # no classifier weights saved
    art = load_checkpoint(src, "text-classification")
    with pytest.raises(BackendError, match=r"no weights for classifier\.bias, classifier\.weight.*refuses to draw"):
        open_session(art, backend="torch").open()


def test_torch_backend_refuses_a_changed_hf_artifact(tiny_bert, tmp_path):
    from exporter.load import load_checkpoint

    src = tmp_path / "m"
    shutil.copytree(tiny_bert, src)
    art = load_checkpoint(src, "text-classification")
    (src / "config.json").write_text((src / "config.json").read_text() + " ")
    with pytest.raises(BackendError, match="config.json.*loads only what the hashes say"):
        open_session(art, backend="torch").open()


def test_an_artifact_written_inside_its_source_keeps_the_source_hash(tiny_bert, tmp_path):
    """`kiln export model -o model/onnx`: the new folder is not part of the checkpoint the hash covers."""
    from exporter.load import load_checkpoint
    from exporter.onnx_export import OnnxConfig, to_onnx

    src = tmp_path / "model"
    shutil.copytree(tiny_bert, src)
    art = to_onnx(load_checkpoint(src, "text-classification"), OnnxConfig(validate=False), src / "onnx")
    with open_session(art, backend="torch") as s:
        assert s.describe().startswith("torch")


@pytest.mark.parametrize("edit, match", [
    (lambda raw: raw.replace('"schema_version": 1', '"schema_version": 1, "n": ' + "9" * 5000), "not valid JSON"),
    (lambda raw: raw.replace('"labels"', '"max_length": 1000000000000000000000000000000, "labels"'), "max_length"),
    (lambda raw: raw.replace('"labels"', '"pad_token_id": 100000000000000000000, "labels"'), "pad_token_id"),
])
def test_huge_numbers_in_the_manifest_are_one_line(tiny_onnx, tmp_path, edit, match):
    import shutil

    art = tmp_path / "a"
    shutil.copytree(tiny_onnx.path, art)
    (art / "manifest.json").write_text(edit((art / "manifest.json").read_text()))
    with pytest.raises(ArtifactError, match=match):
        Artifact.load(art)


def test_an_artifact_without_outputs_is_refused(tiny_onnx, tmp_path):
    import shutil

    art = tmp_path / "a"
    shutil.copytree(tiny_onnx.path, art)
    d = json.loads((art / "manifest.json").read_text())
    d["outputs"] = []
    (art / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(ArtifactError, match="malformed field outputs.*at least one tensor spec"):
        Artifact.load(art)


@pytest.mark.parametrize("labels, match", [({"0": "a"}, "one name for each of the model's 2 classes"),
                                           ({"0": "a", "1": "b", "2": "c"}, "one name for each"),
                                           ({"0": "same", "1": "same"}, "distinct names")])
def test_labels_must_match_the_model_outputs(tiny_onnx, tmp_path, labels, match):
    import shutil

    art = tmp_path / "a"
    shutil.copytree(tiny_onnx.path, art)
    d = json.loads((art / "manifest.json").read_text())
    d["meta"]["labels"] = labels
    (art / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(ArtifactError, match=match):
        Artifact.load(art)
