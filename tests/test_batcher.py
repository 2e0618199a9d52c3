import asyncio
import random
import threading
import time

import numpy as np
import pytest

from runtime import OverloadError
from runtime.batching import Batcher, BatcherClosed, RequestTimeout


class Recorder:
    def __init__(self, gate: threading.Event | None = None, fail_on=None):
        self.sizes, self.gate, self.fail_on = [], gate, fail_on

    def __call__(self, items):
        if self.gate is not None:
            self.gate.wait(5)
        self.sizes.append(len(items))
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"bad item in batch of {len(items)}")
        time.sleep(0.001)
        return [x * 2 for x in items]


def test_full_batches_go_without_waiting_for_the_delay():
    rec = Recorder(gate := threading.Event())
    with Batcher(rec, max_batch_size=4, max_delay_ms=2000) as b:
        first = b.submit(0)  # the worker takes it after max_delay... or when 4 are queued
        futs = [first] + [b.submit(i) for i in range(1, 8)]
        t0 = time.perf_counter()
        gate.set()
        assert [f.result(3) for f in futs] == [2 * i for i in range(8)]
        assert time.perf_counter() - t0 < 1.0
    assert rec.sizes == [4, 4]


def test_partial_batch_goes_after_the_delay():
    rec = Recorder()
    with Batcher(rec, max_batch_size=10, max_delay_ms=80) as b:
        t0 = time.perf_counter()
        futs = [b.submit(i) for i in range(3)]
        [f.result(2) for f in futs]
        waited = time.perf_counter() - t0
    assert rec.sizes == [3] and 0.07 <= waited < 1.0


def test_each_concurrent_caller_gets_its_own_result():
    rec = Recorder()
    results: dict[int, int] = {}
    with Batcher(rec, max_batch_size=8, max_delay_ms=2, bucket=lambda x: x % 3) as b:
        def caller(k):
            rng = random.Random(k)
            for _ in range(25):
                x = rng.randrange(10_000)
                results[(k, x)] = b(x)
        threads = [threading.Thread(target=caller, args=(k,)) for k in range(16)]
        [t.start() for t in threads]
        [t.join() for t in threads]
    assert results and all(v == 2 * x for (_, x), v in results.items())
    assert max(rec.sizes) > 1  # batching actually happened


def test_classifier_rows_reach_the_right_callers(tiny_onnx):
    from runtime import TextClassifier

    texts = ["the movie was good", "bad", "a very long and boring film , but fun", "great acting !", "dull"] * 4
    with TextClassifier(tiny_onnx) as clf:
        expected = [p.scores for p in clf.predict_encoded(clf.encode(texts))]
        single = [clf.predict([t])[0].scores for t in texts]
        with Batcher(clf.predict_encoded, max_batch_size=4, max_delay_ms=5, bucket=lambda e: len(e.ids) // 16) as b:
            out: list = [None] * len(texts)

            def call(i):
                out[i] = b(clf.encode([texts[i]])[0]).scores
            threads = [threading.Thread(target=call, args=(i,)) for i in range(len(texts))]
            [t.start() for t in threads]
            [t.join() for t in threads]
    for got, want, alone in zip(out, expected, single):
        assert got.keys() == want.keys()
        np.testing.assert_allclose(list(got.values()), list(want.values()), atol=1e-5)
        np.testing.assert_allclose(list(got.values()), list(alone.values()), atol=1e-5)


def test_full_queue_fails_fast():
    gate = threading.Event()
    b = Batcher(Recorder(gate), max_batch_size=1, max_delay_ms=0, max_queue=2)
    running = b.submit(1)
    time.sleep(0.05)  # the worker holds item 1 at the gate
    queued = [b.submit(2), b.submit(3)]
    t0 = time.perf_counter()
    with pytest.raises(OverloadError, match="queue full"):
        b.submit(4)
    assert time.perf_counter() - t0 < 0.05 and b.stats.rejected == 1
    gate.set()
    assert [f.result(2) for f in [running, *queued]] == [2, 4, 6]
    b.close()


def test_request_timeout():
    gate = threading.Event()
    b = Batcher(Recorder(gate), max_batch_size=1, max_delay_ms=0)
    first = b.submit(1)
    time.sleep(0.05)
    late = b.submit(2, timeout_s=0.05)
    time.sleep(0.1)
    gate.set()
    assert first.result(2) == 2
    with pytest.raises(RequestTimeout, match="over its timeout"):
        late.result(2)
    assert b.stats.timed_out == 1
    b.close()


def test_an_error_reaches_only_its_batch():
    rec = Recorder(fail_on=13)
    with Batcher(rec, max_batch_size=8, max_delay_ms=20, bucket=lambda x: x == 13) as b:
        good = [b.submit(i) for i in (1, 2, 3)]
        bad = [b.submit(13), b.submit(13)]
        assert [f.result(2) for f in good] == [2, 4, 6]
        for f in bad:
            with pytest.raises(ValueError, match="bad item in batch of 2"):
                f.result(2)
    assert b.stats.failed == 2 and b.stats.completed == 3


def test_close_drains_accepted_requests_then_refuses():
    gate = threading.Event()
    b = Batcher(Recorder(gate), max_batch_size=2, max_delay_ms=1000)
    futs = [b.submit(i) for i in range(5)]
    closer = threading.Thread(target=b.close)
    closer.start()
    time.sleep(0.05)
    with pytest.raises(BatcherClosed):
        b.submit(99)
    gate.set()
    closer.join(5)
    assert not closer.is_alive()
    assert [f.result(0) for f in futs] == [0, 2, 4, 6, 8]


def test_asyncio_api():
    async def main():
        with Batcher(Recorder(), max_batch_size=4, max_delay_ms=5) as b:
            return await asyncio.gather(*(b.asubmit(i) for i in range(6)))
    assert asyncio.run(main()) == [0, 2, 4, 6, 8, 10]


def test_a_cancelled_request_that_times_out_does_not_kill_the_worker():
    # issue #13.1: the expiry path called set_exception on a cancelled future; InvalidStateError killed the thread
    gate = threading.Event()
    b = Batcher(Recorder(gate), max_batch_size=1, max_delay_ms=0, timeout_s=0.2)
    first = b.submit(1)
    time.sleep(0.05)  # the worker holds item 1 at the gate
    second = b.submit(2)
    assert second.cancel()
    time.sleep(0.3)  # second's deadline passes while it waits, cancelled
    gate.set()
    assert first.result(2) == 2
    assert b.submit(3).result(2) == 6  # the worker still serves
    assert b.alive
    b.close()


def test_the_worker_survives_cancelled_requests_in_every_state():
    gate = threading.Event()
    b = Batcher(Recorder(gate), max_batch_size=4, max_delay_ms=0, timeout_s=5)
    held = b.submit(0)
    time.sleep(0.05)
    queued = [b.submit(i) for i in range(1, 9)]
    for f in queued[::2]:
        f.cancel()
    gate.set()
    assert held.result(2) == 0
    assert [f.result(2) for f in queued[1::2]] == [4, 8, 12, 16]
    assert all(f.cancelled() for f in queued[::2])
    b.close(drain=False)
    assert not b.alive


def test_close_without_drain_skips_cancelled_requests():
    gate = threading.Event()
    b = Batcher(Recorder(gate), max_batch_size=1, max_delay_ms=0)
    held = b.submit(1)
    time.sleep(0.05)
    waiting = [b.submit(2), b.submit(3)]
    waiting[0].cancel()
    closer = threading.Thread(target=b.close, kwargs={"drain": False})
    closer.start()
    time.sleep(0.05)
    gate.set()
    closer.join(5)
    assert held.result(2) == 2 and waiting[0].cancelled()
    with pytest.raises(BatcherClosed):
        waiting[1].result(0)


def test_a_failing_hook_or_a_bad_run_batch_does_not_kill_the_worker():
    calls = []

    def hook(size, depth, seconds):
        calls.append(size)
        raise RuntimeError("metrics backend down")

    with Batcher(lambda items: [x + 1 for x in items], max_batch_size=2, max_delay_ms=0, on_batch=hook) as b:
        assert b.submit(1).result(2) == 2
        assert b.submit(2).result(2) == 3 and b.alive
    with Batcher(lambda items: None, max_batch_size=2, max_delay_ms=0) as b:  # not even a sequence
        with pytest.raises(TypeError):
            b.submit(1).result(2)
        assert b.alive
    assert calls == [1, 1]
