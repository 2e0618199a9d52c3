"""amazon-snippets: built from the vaderSentiment sdist like movie-snippets; here from a tiny fake archive."""

import csv
import io
import tarfile

import pytest

from calibration.datasets import load_labelled
from runtime import DataError

# tab-separated id, mean rating, text; CRLF line ends as in the real file
AMAZON = ("1_1\t-0.9\tno picture at all.\r\n1_2\t0.0\ta neutral line.\r\n1_3\t1.5\tworks great.\r\n"
          "1_4\t2.0\tworks great.\r\n1_5\t-1.2\tbroke in a week.\r\n1_6\t0.8\tgood value.\r\n")


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def fake_sdist(path, amazon: str = AMAZON):
    from calibration.amazon_snippets import GROUND_TRUTH
    from calibration.movie_snippets import INNER

    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as t:
        add(t, GROUND_TRUTH, amazon.encode())
        add(t, "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt", b"1_1\t1.0\tnot this one\r\n")
    with tarfile.open(path, "w:gz") as t:
        add(t, INNER, inner.getvalue())
    return path


def read(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_built_from_the_archive_like_movie_snippets(tmp_path):
    from calibration import amazon_snippets

    # three splits from six lines: train 1, dev 1, the rest test (the real sizes are 1600/400/rest)
    sizes = (("train", 1), ("dev", 1), ("test", None))
    root = tmp_path / "cache"
    out = amazon_snippets.ensure_snippets(root, "amazon-snippets", amazon_snippets.GROUND_TRUTH, sizes,
                                          fake_sdist(tmp_path / "v.tar.gz"))
    rows = [r for split in ("train", "dev", "test") for r in read(out / f"{split}.csv")]
    # rating 0 dropped, the duplicate text dropped (first kept), the sign is the label
    assert sorted((r["text"], r["label"], r["mean_rating"]) for r in rows) == [
        ("broke in a week.", "0", "-1.200"), ("good value.", "1", "0.800"),
        ("no picture at all.", "0", "-0.900"), ("works great.", "1", "1.500")]
    assert [len(read(out / f"{s}.csv")) for s in ("train", "dev", "test")] == [1, 1, 2]
    assert sorted(p.name for p in root.iterdir()) == ["amazon-snippets"]  # nothing staged left behind


def test_named_and_loaded_with_the_movie_labels(tmp_path, monkeypatch):
    from calibration import amazon_snippets, movie_snippets

    monkeypatch.setenv("KILN_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(movie_snippets, "download_sdist", lambda *a: pytest.fail("must not download"))
    # seeds the cache, as conftest seeds movie-snippets; the 4 rows fit in the 1600-row train split
    amazon_snippets.ensure_amazon_snippets(tmp_path, fake_sdist(tmp_path / "v.tar.gz"))
    train = load_labelled("amazon-snippets:train")
    assert train.label_names == ["negative", "positive"] and len(train) == 4
    with pytest.raises(DataError, match="dataset 'amazon-snippets' has splits train, dev, test; got 'validation'"):
        load_labelled("amazon-snippets:validation")


@pytest.mark.integration
def test_real_archive_sizes(tmp_path):
    from calibration.amazon_snippets import ensure_amazon_snippets

    try:
        built = ensure_amazon_snippets(tmp_path)  # downloads the vaderSentiment sdist with pip
    except DataError as e:
        if "could not download" in str(e):
            pytest.skip(f"PyPI not reachable: {e}")
        raise
    assert [len(read(built / f"{s}.csv")) for s in ("train", "dev", "test")] == [1600, 400, 1600]
    test = load_labelled(built / "test.csv", label_names=["negative", "positive"])
    assert 0.5 < sum(test.labels) / len(test) < 0.7  # 2120 positive of 3600
