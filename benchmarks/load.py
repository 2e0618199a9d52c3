"""Load generation against `kiln serve` (HTTP) or an in-process Batcher.

closed loop: N clients, each sends its next request when the previous one answers.
open loop: Poisson arrivals at a fixed rate, whatever the server does; latency is measured from the
scheduled send time, so a slow server cannot hide its queueing (no coordinated omission).
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence
from urllib.parse import urlparse

import numpy as np

from runtime.errors import ConfigError

Target = Callable[[str], str]  # send one text; return "ok" or an error kind ("503", "timeout", ...)


@dataclass
class LoadResult:
    mode: str
    duration_s: float
    sent: int = 0
    outcomes: Counter = field(default_factory=Counter)
    ok_latencies_ms: list[float] = field(default_factory=list)
    error_latencies_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        ok = np.asarray(self.ok_latencies_ms) if self.ok_latencies_ms else np.zeros(1)
        err = np.asarray(self.error_latencies_ms) if self.error_latencies_ms else None
        answered = sum(self.outcomes.values())
        return {
            "mode": self.mode, "duration_s": round(self.duration_s, 2), "sent": self.sent, "answered": answered,
            "lost": self.sent - answered, "ok": self.outcomes.get("ok", 0),
            "errors": {k: v for k, v in sorted(self.outcomes.items()) if k != "ok"},
            "throughput_rps": round(self.outcomes.get("ok", 0) / self.duration_s, 2),
            "p50_ms": round(float(np.percentile(ok, 50)), 2), "p90_ms": round(float(np.percentile(ok, 90)), 2),
            "p99_ms": round(float(np.percentile(ok, 99)), 2), "max_ms": round(float(ok.max()), 2),
            "error_p99_ms": round(float(np.percentile(err, 99)), 2) if err is not None else None,
        }


def http_target(url: str, timeout_s: float = 30.0) -> Callable[[], Target]:
    """A factory of per-thread senders (one keep-alive connection each) to POST /v1/predict."""
    parsed = urlparse(url)
    if parsed.scheme != "http" or not parsed.hostname:
        raise ConfigError(f"url must look like http://127.0.0.1:8000, got {url!r}")
    path = (parsed.path.rstrip("/") or "") + "/v1/predict"

    def make() -> Target:
        local = threading.local()

        def send(text: str) -> str:
            conn = getattr(local, "conn", None)
            if conn is None:
                conn = local.conn = http.client.HTTPConnection(parsed.hostname, parsed.port or 80, timeout=timeout_s)
            try:
                conn.request("POST", path, json.dumps({"inputs": [text]}), {"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                return "ok" if resp.status == 200 else str(resp.status)
            except TimeoutError:
                local.conn = None
                return "timeout"
            except (OSError, http.client.HTTPException) as e:
                local.conn = None
                return type(e).__name__
        return send
    return make


def batcher_target(batcher: Any, encode: Callable[[list[str]], list[Any]]) -> Callable[[], Target]:
    """Drive an in-process Batcher (no HTTP): what a service embedding runtime sees."""
    from runtime.batching import RequestTimeout
    from runtime.errors import OverloadError

    def make() -> Target:
        def send(text: str) -> str:
            try:
                batcher.submit(encode([text])[0]).result()
                return "ok"
            except OverloadError:
                return "overload"
            except RequestTimeout:
                return "timeout"
        return send
    return make


def closed_loop(make_target: Callable[[], Target], texts: Sequence[str], concurrency: int, duration_s: float,
                seed: int = 0) -> LoadResult:
    if concurrency < 1 or duration_s <= 0:
        raise ConfigError(f"concurrency must be >= 1 and duration > 0, got {concurrency}, {duration_s}")
    result = LoadResult(f"closed-loop x{concurrency}", duration_s)
    lock = threading.Lock()
    stop_at = time.perf_counter() + duration_s

    def client(i: int) -> None:
        send, rng = make_target(), random.Random(seed + i)
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            with lock:
                result.sent += 1
            outcome = send(rng.choice(texts))
            ms = (time.perf_counter() - t0) * 1000
            with lock:
                result.outcomes[outcome] += 1
                (result.ok_latencies_ms if outcome == "ok" else result.error_latencies_ms).append(ms)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.duration_s = time.perf_counter() - started
    return result


def open_loop(make_target: Callable[[], Target], texts: Sequence[str], rate: float, duration_s: float,
              seed: int = 0, max_in_flight: int = 512) -> LoadResult:
    if rate <= 0 or duration_s <= 0:
        raise ConfigError(f"rate and duration must be > 0, got {rate}, {duration_s}")
    result = LoadResult(f"open-loop {rate:g}/s", duration_s)
    lock = threading.Lock()
    rng = random.Random(seed)
    local = threading.local()

    def one(text: str, scheduled: float) -> None:
        if not hasattr(local, "send"):  # one sender (one connection) per pool thread
            local.send = make_target()
        outcome = local.send(text)
        ms = (time.perf_counter() - scheduled) * 1000  # from when it should have been sent
        with lock:
            result.outcomes[outcome] += 1
            (result.ok_latencies_ms if outcome == "ok" else result.error_latencies_ms).append(ms)

    started = time.perf_counter()
    next_at = started
    with ThreadPoolExecutor(max_workers=max_in_flight) as pool:
        while next_at < started + duration_s:
            delay = next_at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            result.sent += 1
            pool.submit(one, rng.choice(texts), next_at)
            next_at += rng.expovariate(rate)
    result.duration_s = time.perf_counter() - started
    return result
