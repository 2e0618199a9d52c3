import numpy as np
import pytest

from runtime import BackendError, ConfigError, InputError, TaskError, open_session
from runtime.pipeline import Embedder, TextClassifier


def feed(batch=2, seq=5, dtype=np.int64):
    ids = np.full((batch, seq), 7, dtype=dtype)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def test_run_returns_named_outputs(tiny_onnx):
    with open_session(tiny_onnx) as s:
        out = s.run(feed())
    assert set(out) == {"logits"} and out["logits"].shape == (2, 2) and out["logits"].dtype == np.float32


@pytest.mark.parametrize("mutate, match", [
    (lambda f: f.pop("attention_mask"), r"missing input\(s\) \['attention_mask'\]"),
    (lambda f: f.update(input_idz=f.pop("input_ids")), r"unknown input\(s\) \['input_idz'\].*missing input\(s\) \['input_ids'\]"),
    (lambda f: f.update(input_ids=f["input_ids"].astype(np.int32)), "input 'input_ids': got dtype int32, expected int64"),
    (lambda f: f.update(input_ids=f["input_ids"][0]), r"input 'input_ids': got shape \(5,\) \(rank 1\), expected rank 2"),
    (lambda f: f.update(attention_mask=np.ones((3, 5), np.int64)), "got batch=3 but input 'input_ids' has batch=2"),
    (lambda f: f.update(input_ids=f["input_ids"].tolist()), "got list, expected a numpy array of int64"),
])
def test_bad_feed_says_received_vs_expected(tiny_onnx, mutate, match):
    f = feed()
    mutate(f)
    with open_session(tiny_onnx) as s:
        with pytest.raises(InputError, match=match):
            s.run(f)


def test_run_before_open_is_an_error(tiny_onnx):
    s = open_session(tiny_onnx)
    with pytest.raises(BackendError, match="not open"):
        s.run(feed())


def test_unknown_backend_and_device(tiny_onnx):
    with pytest.raises(ConfigError, match="unknown backend 'tvm'; valid: auto, onnxruntime, torch"):
        open_session(tiny_onnx, backend="tvm")
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        open_session(tiny_onnx, device="tpu")


def test_cuda_request_never_falls_back_silently(tiny_onnx):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(BackendError, match="cuda requested but this onnxruntime has only"):
        open_session(tiny_onnx, device="cuda").open()


def test_torch_backend_opens_the_source_of_an_onnx_artifact(tiny_onnx):
    f = feed(3, 9)
    with open_session(tiny_onnx, backend="torch") as ref, open_session(tiny_onnx) as ort:
        np.testing.assert_allclose(ref.run(f)["logits"], ort.run(f)["logits"], atol=1e-5)


def test_classifier_matches_unbatched_rows(tiny_onnx):
    texts = ["the movie was good", "bad", "a very very long and boring film , but fun", "great acting !"]
    with TextClassifier(tiny_onnx, batch_size=2) as clf:
        batched = clf.logits(texts)
        single = np.stack([clf.logits([t])[0] for t in texts])
        preds = clf.predict(texts)
    np.testing.assert_allclose(batched, single, atol=1e-5)  # padding and sorting do not change answers
    assert [p.label for p in preds] == [("negative", "positive")[int(np.argmax(r))] for r in single]
    assert all(abs(sum(p.scores.values()) - 1) < 1e-6 for p in preds)


def test_pipeline_rejects_wrong_task_and_bad_texts(tiny_onnx):
    with pytest.raises(TaskError, match="Embedder needs an artifact of task feature-extraction"):
        Embedder(tiny_onnx)
    with TextClassifier(tiny_onnx) as clf:
        with pytest.raises(InputError, match="single string"):
            clf.predict("just one string")
        with pytest.raises(InputError, match=r"texts\[1\] is int"):
            clf.predict(["ok", 3])


def brute_force_split(padded, max_batch, overhead):
    """Cheapest cost over every way to cut the rows into consecutive groups (small inputs only)."""
    n, best = len(padded), None
    for mask in range(1 << (n - 1)):
        starts = [0] + [i + 1 for i in range(n - 1) if mask >> i & 1]
        groups = list(zip(starts, starts[1:] + [n]))
        if any(b - a > max_batch for a, b in groups):
            continue
        cost = sum(overhead + (b - a) * padded[a] for a, b in groups)
        best = cost if best is None else min(best, cost)
    return best


@pytest.mark.parametrize("seed", range(20))
def test_split_by_padding_is_the_cheapest_cut(seed):
    from runtime.pipeline import split_by_padding

    rng = np.random.default_rng(seed)
    padded = sorted((8 * rng.integers(1, 9, size=int(rng.integers(1, 11)))).tolist(), reverse=True)
    max_batch, overhead = int(rng.integers(1, 6)), float(rng.choice([0, 8, 32, 200]))
    groups = split_by_padding(padded, max_batch, overhead)
    assert [a for a, _ in groups] == [0] + [b for _, b in groups[:-1]] and groups[-1][1] == len(padded)
    assert all(0 < b - a <= max_batch for a, b in groups)
    cost = sum(overhead + (b - a) * padded[a] for a, b in groups)
    assert cost == brute_force_split(padded, max_batch, overhead)


def test_call_overhead_must_be_a_non_negative_number(tiny_onnx):
    for bad in (-1.0, float("nan")):
        with pytest.raises(ConfigError, match="call_overhead_tokens must be >= 0"):
            TextClassifier(tiny_onnx, call_overhead_tokens=bad)


def test_split_by_padding_extremes():
    from runtime.pipeline import split_by_padding

    padded = [56, 48, 32, 32, 16, 16, 16, 8]
    assert split_by_padding(padded, 3, float("inf")) == [(0, 3), (3, 6), (6, 8)]  # plain chunks
    assert split_by_padding(padded, 8, 0.0) == [(0, 1), (1, 2), (2, 4), (4, 7), (7, 8)]  # one padded length each
    assert split_by_padding(padded, 8, 1e6) == [(0, 8)]  # calls so dear that padding is cheaper


def test_mixed_lengths_are_split_and_answers_unchanged(tiny_onnx):
    texts = ["good"] * 6 + ["a very very long and boring film , but fun , with far too many words in it"] * 2
    with TextClassifier(tiny_onnx, batch_size=8) as clf, TextClassifier(tiny_onnx, batch_size=8,
                                                                        call_overhead_tokens=float("inf")) as one:
        shapes = [feed["input_ids"].shape for _, feed in clf.batches(clf.encode(texts))]
        assert len(list(one.batches(one.encode(texts)))) == 1
        np.testing.assert_allclose(clf.logits(texts), one.logits(texts), atol=1e-5)
    assert len(shapes) == 2 and sorted(s[0] for s in shapes) == [2, 6] and min(s[1] for s in shapes) == 8


def test_shape_buckets_for_cuda_graphs_keep_answers(tiny_onnx):
    texts = ["good", "bad", "a very long and boring film , but fun", "great acting !", "dull", "fun"]
    with TextClassifier(tiny_onnx, batch_size=8, shape_buckets=True, call_overhead_tokens=float("inf")) as g, \
            TextClassifier(tiny_onnx, batch_size=8) as plain:
        assert not plain.shape_buckets
        shapes = [feed["input_ids"].shape for _, feed in g.batches(g.encode(texts))]
        np.testing.assert_allclose(g.logits(texts), plain.logits(texts), atol=1e-5)
        assert [p.label for p in g.predict(texts)] == [p.label for p in plain.predict(texts)]
    assert shapes == [(8, 32)]  # 6 rows -> 8, 11 tokens -> 32


def test_shape_buckets_default_follows_cuda_graphs(tiny_onnx):
    with TextClassifier(tiny_onnx, backend="torch", cuda_graphs=True) as cpu:
        assert not cpu.shape_buckets and cpu.pad_multiple == 8  # graphs are a CUDA thing; on CPU nothing changes


def test_warm_up_runs_every_bucket_shape(tiny_onnx, monkeypatch):
    with TextClassifier(tiny_onnx, batch_size=32, shape_buckets=True) as g, TextClassifier(tiny_onnx) as plain:
        seen = []
        run = g.session.run
        monkeypatch.setattr(g.session, "run", lambda feed: seen.append(feed["input_ids"].shape) or run(feed))
        assert g.warm_up_shapes(128) == 24 and plain.warm_up_shapes() == 0
    assert sorted(set(seen)) == [(r, s) for r in (1, 2, 4, 8, 16, 32) for s in (32, 64, 96, 128)]
