"""User mistakes and hostile inputs end in one `error:` line (CLI) or one KilnError (API), never a traceback."""

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from exporter.cli import main
from exporter.load import load_checkpoint, load_torch_model
from runtime import ArtifactError, DataError, InputError, SourceError, open_session
from runtime.pipeline import TextClassifier
from tests.conftest import VOCAB


def one_line_error(args, match, code=None):
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code != 0, r.output
    if code is not None:
        assert r.exit_code == code, r.output
    assert "Traceback" not in r.output, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip() and not ln.startswith("[kiln")]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert match in lines[0], lines[0]
    return lines[0]


# -- -o that cannot be written ------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["sysfs", "under-a-file"])
def test_unwritable_output_is_one_line(tiny_onnx, tmp_path, where):
    if where == "sysfs":
        # root ignores directory modes, but not sysfs: mkdir there is EPERM even for root
        if not Path("/sys").is_dir():
            pytest.skip("no /sys")
        out = Path("/sys/kiln-test-out")
    else:
        (tmp_path / "a-file").write_text("x")
        out = tmp_path / "a-file" / "art"
    one_line_error(["quantize", tiny_onnx.path, "--method", "dynamic-int8", "-o", out], "cannot write to -o")


# -- data files ---------------------------------------------------------------------------------------

def test_csv_field_over_the_csv_limit_is_a_data_error(tiny_onnx, tmp_path):
    path = tmp_path / "big.csv"
    path.write_text("text,label\nfine,1\n" + "a" * 140_000 + ",1\n")
    one_line_error(["predict", tiny_onnx.path, "--csv", path], f"{path}, line 3: cannot read the CSV")
    one_line_error(["eval", tiny_onnx.path, "--data", path], "line 3")


def test_jsonl_lone_surrogate_is_a_data_error(tiny_onnx, tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"text": "ok", "label": "positive"}\n{"text": "a \\ud800 b", "label": "negative"}\n')
    one_line_error(["eval", tiny_onnx.path, "--data", path], f"{path}, line 2: the text holds '\\ud800'")


# -- tokenizer files ----------------------------------------------------------------------------------

@pytest.mark.parametrize("content", ['{"not": "a tokenizer"', '{"version": "1.0", "model": {"type": "Nope"}}'])
def test_bad_tokenizer_json_in_an_artifact(tiny_onnx, tmp_path, content):
    art = tmp_path / "art"
    shutil.copytree(tiny_onnx.path, art)
    (art / "tokenizer.json").write_text(content)
    one_line_error(["predict", art, "good"], "tokenizer.json is not a valid tokenizers file")
    with pytest.raises(ArtifactError, match="tokenizer.json"):
        TextClassifier(art)


@pytest.mark.parametrize("name, content, match", [
    ("tokenizer.json", "{nope", "tokenizer.json is not a valid tokenizers file"),
    ("tokenizer_config.json", "{nope", "tokenizer_config.json is not valid JSON"),
    ("tokenizer_config.json", "[1, 2]", "tokenizer_config.json holds a JSON list; expected a JSON object"),
    ("config.json", '{"model_type": "bert", "max_position_embeddings": "many"}',
     "config.json has a field of the wrong type"),
])
def test_bad_json_in_a_source(model_copy, name, content, match):
    (model_copy / name).write_text(content)
    with pytest.raises(SourceError, match=match):
        load_checkpoint(model_copy, "text-classification")


def test_bad_tokenizer_config_in_a_source_cli(model_copy, tmp_path):
    (model_copy / "tokenizer_config.json").write_text("{nope")
    one_line_error(["export", model_copy, "--task", "text-classification", "-o", tmp_path / "o"],
                   "tokenizer_config.json is not valid JSON")


# -- pickles with --trust-pickle ----------------------------------------------------------------------

class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch kiln-pwned",))


class RaisesOnLoad:
    def __reduce__(self):
        return (int, ("not an int",))


@pytest.mark.parametrize("kind", ["code", "raises", "garbage", "empty"])
def test_bad_trusted_pickle_is_one_source_error(tiny_bert, tmp_path, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)
    payload = {"code": pickle.dumps({"w": RunsCode()}), "raises": pickle.dumps({"w": RaisesOnLoad()}),
               "garbage": b"\x80\x04garbage, not a pickle", "empty": b""}[kind]
    weights = tmp_path / "weights.pt"
    weights.write_bytes(payload)
    shutil.copy(tiny_bert / "config.json", tmp_path / "config.json")
    art = load_checkpoint(weights, "text-classification", trust_pickle=True)
    with pytest.raises(SourceError, match=r"weights\.pt: it is not a weights-only torch checkpoint"):
        load_torch_model(art)
    assert not (tmp_path / "kiln-pwned").exists()  # nothing ran
    # EOFError used to reach click, which printed "error: interrupted" with exit 130
    one_line_error(["export", weights, "--task", "text-classification", "--trust-pickle", "-o", tmp_path / "o"],
                   "not a weights-only torch checkpoint", code=1)
    assert not (tmp_path / "kiln-pwned").exists()


# -- Python API inputs --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clf(tiny_onnx):
    with TextClassifier(tiny_onnx) as c:
        yield c


def test_text_the_tokenizer_cannot_encode_names_its_index(clf):
    with pytest.raises(InputError, match=r"texts\[1\] holds '\\ud800' at position 2"):
        clf.predict(["fine", "a \ud800"])


def test_predict_reads_a_generator_once(clf):
    texts = ["good film", "bad film", "the plot"]
    assert clf.predict(t for t in texts) == clf.predict(texts)
    assert len(clf.logits(iter(texts))) == 3


@pytest.mark.parametrize("texts, match", [
    (b"bytes", "got a single bytes object"), (42, "got int"), (["ok", None], r"texts\[1\] is NoneType"),
])
def test_texts_of_the_wrong_type(clf, texts, match):
    with pytest.raises(InputError, match=match):
        clf.predict(texts)


def test_no_texts_give_empty_results(clf):
    assert clf.predict([]) == [] and clf.logits([]).shape == (0, 2)


@pytest.mark.parametrize("bad, match", [
    (-1, r"input 'input_ids': got -1 at \(0, 1\); values must be 0\.\.87 \(the vocabulary has 88 ids\)"),
    (len(VOCAB), r"input 'input_ids': got 88 at \(0, 1\); values must be 0\.\.87"),
])
def test_token_ids_outside_the_vocabulary_are_refused(tiny_onnx, bad, match):
    ids = np.full((1, 4), 7, np.int64)
    ids[0, 1] = bad
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    with open_session(tiny_onnx) as s:
        with pytest.raises(InputError, match=match):
            s.run(feed)


def test_negative_mask_is_refused(tiny_onnx):
    ids = np.full((1, 4), 7, np.int64)
    feed = {"input_ids": ids, "attention_mask": -np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    with open_session(tiny_onnx) as s:
        with pytest.raises(InputError, match=r"input 'attention_mask': got -1 at \(0, 0\); values must be >= 0"):
            s.run(feed)


# -- property tests of the data readers: any bytes give rows or a DataError, never another exception --

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from calibration.datasets import load_labelled, load_texts  # noqa: E402

READER_SETTINGS = settings(max_examples=120, deadline=None, database=None,
                           suppress_health_check=[HealthCheck.function_scoped_fixture])
# pieces that matter to the parsers: quotes, separators, newlines, NUL, a BOM, JSON escapes of surrogates
PIECES = st.sampled_from(['"', ",", "\t", "\n", "\r", "\x00", "\ufeff", "text", "label", "{", "}", ":", "[", "]",
                          '"text"', '"label"', "\\ud800", "\\u0000", "null", "1", "-", " ", "é", "NaN"])
# now and then one piece repeated past csv's field limit (131072) or json's nesting limit
BIG = st.one_of(st.just(""), st.builds(lambda piece: piece * 140_000, st.sampled_from(["a", "[", '"'])))
TEXTISH = st.tuples(st.lists(PIECES, max_size=30), BIG, st.integers(0, 30)).map(
    lambda t: "".join(t[0][:t[2]]) + t[1] + "".join(t[0][t[2]:]))
# texts a JSON file can hold but no tokenizer takes: lone surrogates
JSON_TEXT = st.text(alphabet=st.sampled_from(["a", " ", "é", "\ud800", "\udfff", "\n", '"', ","]), max_size=12)


def read_or_data_error(path, labelled):
    try:
        result = load_labelled(path) if labelled else load_texts(path)
    except DataError as e:
        assert str(e) and "\n" not in str(e).strip()
        return None
    texts = result.texts if labelled else result
    assert texts and all(isinstance(t, str) and t.strip() for t in texts)
    for t in texts:
        t.encode("utf-8")  # every text can reach a tokenizer
    return texts


@READER_SETTINGS
@given(suffix=st.sampled_from([".csv", ".tsv", ".jsonl", ".txt"]), labelled=st.booleans(),
       raw=st.one_of(st.binary(max_size=300), TEXTISH.map(lambda s: s.encode("utf-8", "surrogatepass"))))
def test_readers_on_arbitrary_bytes(tmp_path, suffix, labelled, raw):
    path = tmp_path / f"data{suffix}"
    path.write_bytes(raw)
    read_or_data_error(path, labelled and suffix != ".txt")  # .txt holds unlabelled lines only


@READER_SETTINGS
@given(rows=st.lists(st.tuples(st.one_of(st.text(max_size=30), JSON_TEXT),
                               st.sampled_from(["positive", "negative", "0", "1", ""])), max_size=8),
       fmt=st.sampled_from([".csv", ".tsv", ".jsonl"]))
def test_written_rows_read_back(tmp_path, rows, fmt):
    import csv as csv_module

    path = tmp_path / f"rows{fmt}"
    with open(path, "w", newline="", encoding="utf-8", errors="surrogatepass") as f:
        if fmt == ".jsonl":
            for text, label in rows:
                f.write(json.dumps({"text": text, "label": label}) + "\n")
        else:
            w = csv_module.writer(f, delimiter="\t" if fmt == ".tsv" else ",")
            w.writerow(["text", "label"])
            w.writerows(rows)
    texts = read_or_data_error(path, labelled=True)
    if texts is not None:
        # what was read is what was written: the reader may not drop or merge rows silently
        # (JSON itself joins an escaped surrogate pair "\ud800\udfff" into one character)
        written = [json.loads(json.dumps(t)) if fmt == ".jsonl" else t for t, _ in rows]
        assert texts == written


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": "8"}, "batch_size must be an integer >= 1, got '8'"),
    ({"batch_size": 2.5}, "batch_size must be an integer >= 1, got 2.5"),
    ({"call_overhead_tokens": "x"}, "call_overhead_tokens must be >= 0"),
    ({"threads": "x"}, "threads must be an integer >= 0"),
    ({"spinning": "no"}, "spinning must be True or False"),
])
def test_pipeline_options_of_the_wrong_type(tiny_onnx, kwargs, match):
    from runtime import ConfigError

    with pytest.raises(ConfigError, match=match):
        TextClassifier(tiny_onnx, **kwargs)


def test_artifact_of_the_wrong_type():
    from runtime import ConfigError

    with pytest.raises(ConfigError, match="artifact must be an Artifact or a path, got int"):
        TextClassifier(5)


@pytest.mark.parametrize("content, match", [("[1]", "is not a range cache"), ('{"a": 1}', "is not a range cache"),
                                            ("not json", "is not a range cache")])
def test_a_calib_cache_of_the_wrong_shape_is_one_line(tiny_onnx, tmp_path, content, match):
    cache = tmp_path / "cache.json"
    cache.write_text(content)
    one_line_error(["quantize", tiny_onnx.path, "--method", "static-int8", "--calib-cache", cache,
                    "-o", tmp_path / "out"], match)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("out", ["", "."])
def test_the_current_directory_is_never_an_output(tiny_onnx, tmp_path, monkeypatch, out):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("mine")
    one_line_error(["quantize", tiny_onnx.path, "--method", "dynamic-int8", "-o", out, "--force"], "current directory")
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_nan_accuracy_budget_is_refused():
    from exporter.quantize import QuantConfig
    from runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="max_accuracy_drop must be >= 0"):
        QuantConfig(max_accuracy_drop=float("nan"))
