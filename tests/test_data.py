
import pytest

from calibration.datasets import load_labelled
from runtime import DataError
from tests.conftest import SHARED_DATA, write_csv


def test_csv_tsv_jsonl_and_label_maps(tmp_path):
    write_csv(tmp_path / "a.csv", [("good", "pos"), ("bad", "neg"), ("fine", "pos")])
    (tmp_path / "a.tsv").write_text("text\tlabel\ngood\t1\nbad\t0\n")
    (tmp_path / "a.jsonl").write_text('{"text": "good", "y": 2}\n\n{"text": "bad", "y": 10}\n')
    a = load_labelled(tmp_path / "a.csv")
    assert a.label_names == ["neg", "pos"] and a.labels == [1, 0, 1] and len(a.sha256) == 64
    b = load_labelled(tmp_path / "a.tsv")
    assert b.label_names == ["0", "1"] and b.labels == [1, 0]
    c = load_labelled(tmp_path / "a.jsonl", label_column="y")
    assert c.label_names == ["2", "10"] and c.labels == [0, 1]  # numeric order, not string order
    # integer labels against a named map (a model's id2label) are indices
    d = load_labelled(tmp_path / "a.tsv", label_names=["negative", "positive"])
    assert d.labels == [1, 0]


@pytest.mark.parametrize("name, content, kwargs, match", [
    ("e.csv", b"", {}, "is empty"),
    ("h.csv", b"text,label\n", {}, "has a header but no rows"),
    ("c.csv", b"sentence,label\nx,1\n", {}, "has no column 'text'; its columns are \\['sentence', 'label'\\]"),
    ("t.csv", b"text,label\nok,1\n,0\n", {}, "line 3: row has no text"),
    ("l.csv", b"text,label\nok,1\nfine,\n", {}, "line 3: row has no label"),
    ("u.csv", b"text,label\nok,1\ncaf\xe9,0\n", {}, "line 3: byte 0xe9 is not UTF-8"),
    ("m.csv", b"text,label\nok,1\nno,maybe\n", {"label_names": ["0", "1"]}, "line 3: label 'maybe' is not in the label map"),
    ("j.jsonl", b'{"text": "a", "label": 1}\n{oops\n', {}, "line 2: not valid JSON"),
    ("k.jsonl", b'{"text": "a"}\n', {}, "line 1: no field 'label'"),
    ("x.parquet", b"PAR1", {}, "unsupported data format '.parquet'"),
])
def test_data_errors_name_the_line(tmp_path, name, content, kwargs, match):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=match):
        load_labelled(tmp_path / name, **kwargs)


def test_missing_file_and_bad_split(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_labelled(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="dataset 'movie-snippets' has splits train, dev, test; got 'validation'"):
        load_labelled("movie-snippets:validation")


@pytest.mark.integration
def test_named_dataset_from_cache():
    try:
        test = load_labelled("movie-snippets:test")  # the session cache is seeded; else built here, as for a user
    except DataError as e:
        pytest.skip(f"movie-snippets is not cached and could not be built: {e}")
    assert len(test) == 1566 and test.label_names == ["negative", "positive"]
    assert 0.3 < sum(test.labels) / len(test) < 0.7


@pytest.mark.integration
def test_built_dataset_is_byte_identical_to_shared(tmp_path):
    from calibration.movie_snippets import ensure_movie_snippets

    if not SHARED_DATA.is_dir():
        pytest.skip("no shared copy to compare with")
    try:
        built = ensure_movie_snippets(tmp_path)  # downloads the vaderSentiment sdist with pip
    except DataError as e:
        if "could not download" in str(e):
            pytest.skip(f"PyPI not reachable: {e}")
        raise
    for split in ("train", "dev", "test"):
        assert (built / f"{split}.csv").read_bytes() == (SHARED_DATA / f"{split}.csv").read_bytes(), split
    assert sorted(p.name for p in tmp_path.iterdir()) == ["movie-snippets"]  # no staging left behind


def test_unlabelled_texts(tmp_path):
    from calibration.datasets import load_texts

    (tmp_path / "a.csv").write_text("text\ngood film\nbad film\n")  # no label column needed
    (tmp_path / "a.txt").write_text("one\n\ntwo\n")
    (tmp_path / "a.jsonl").write_text('{"sentence": "x"}\n')
    assert load_texts(tmp_path / "a.csv") == ["good film", "bad film"]
    assert load_texts(tmp_path / "a.txt") == ["one", "two"]
    assert load_texts(tmp_path / "a.jsonl", "sentence") == ["x"]
    with pytest.raises(DataError, match="has no column 'sentence'; its columns are \\['text'\\]"):
        load_texts(tmp_path / "a.csv", "sentence")
    (tmp_path / "e.txt").write_text("\n\n")
    with pytest.raises(DataError, match="is empty"):
        load_texts(tmp_path / "e.txt")
