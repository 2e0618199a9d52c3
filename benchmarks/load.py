"""Load generation against `kiln serve` (HTTP), a Triton server (HTTP, KServe v2) or an in-process Batcher.

closed loop: N clients, each sends its next request when the previous one answers.
open loop: Poisson arrivals at a fixed rate, whatever the server does; latency is measured from the
scheduled send time, so a slow server cannot hide its queueing (no coordinated omission).

The generator is one asyncio loop (uvloop when installed) with pre-encoded requests and one keep-alive
connection per in-flight request: on a small machine it shares the cores with the server, so it must
cost little. Its own CPU time is reported (`client_cpu_pct`) so a reader can see what it took.
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Sequence
from urllib.parse import urlparse

import numpy as np

from runtime.errors import ConfigError, KilnError

# a connection the server refused was never answered: an error, and not counted in `answered`
NOT_ANSWERED = ("refused",)
GIVE_UP_S = 3.0  # every connection refused for this long: the server went away, stop rather than spin
BACKOFF_S = (0.05, 1.0)  # a refused sender waits 50 ms, doubling to 1 s, before its next try


class ServerGone(KilnError):
    """The server refused every connection for GIVE_UP_S seconds."""

Target = Callable[[Any], Awaitable[str]]  # send one input (a text, or an image file's bytes); return "ok" or an error kind ("503", "timeout", ...)


@dataclass
class LoadResult:
    mode: str
    duration_s: float
    sent: int = 0
    outcomes: Counter = field(default_factory=Counter)
    ok_latencies_ms: list[float] = field(default_factory=list)
    error_latencies_ms: list[float] = field(default_factory=list)
    client_cpu_s: float = 0.0
    client_stats: dict[str, int] = field(default_factory=dict)
    in_process: bool = False  # the "client" shares the process with the model: its CPU time is the model's

    def record(self, outcome: str, ms: float) -> None:
        self.outcomes[outcome] += 1
        (self.ok_latencies_ms if outcome == "ok" else self.error_latencies_ms).append(ms)

    def summary(self) -> dict[str, Any]:
        ok = np.asarray(self.ok_latencies_ms) if self.ok_latencies_ms else np.zeros(1)
        err = np.asarray(self.error_latencies_ms) if self.error_latencies_ms else None
        finished = sum(self.outcomes.values())
        answered = finished - sum(self.outcomes.get(k, 0) for k in NOT_ANSWERED)
        out = {
            "mode": self.mode, "duration_s": round(self.duration_s, 2), "sent": self.sent, "answered": answered,
            "lost": self.sent - finished, "ok": self.outcomes.get("ok", 0),
            "errors": {k: v for k, v in sorted(self.outcomes.items()) if k != "ok"},
            "throughput_rps": round(self.outcomes.get("ok", 0) / self.duration_s, 2),
            "p50_ms": round(float(np.percentile(ok, 50)), 2), "p90_ms": round(float(np.percentile(ok, 90)), 2),
            "p99_ms": round(float(np.percentile(ok, 99)), 2), "max_ms": round(float(ok.max()), 2),
            "error_p99_ms": round(float(np.percentile(err, 99)), 2) if err is not None else None,
            "client_cpu_pct": round(100 * self.client_cpu_s / self.duration_s, 1),
            **self.client_stats,
        }
        if self.in_process:
            del out["client_cpu_pct"]
        return out


class _Connection:
    """One keep-alive HTTP/1.1 connection that POSTs pre-encoded requests (responses carry Content-Length).

    A server closes keep-alive connections that sat idle (uvicorn: after 5 s); a request written into one
    that closed meanwhile is answered by EOF before any byte of a response. Like any HTTP client, send it
    again once on a fresh connection; `stats["stale_reconnects"]` counts how often that happened."""

    def __init__(self, host: str, port: int, stats: Counter) -> None:
        self.host, self.port, self.stats = host, port, stats
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.answered = False

    async def post(self, request: bytes) -> int:
        if self.writer is not None:
            try:
                return await self._post(request)
            except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as e:
                if self.answered or getattr(e, "partial", b""):  # a response had begun: a real failure
                    raise
                self.close()
                self.stats["stale_reconnects"] += 1
        return await self._post(request)

    async def _post(self, request: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None and self.writer is not None
        self.answered = False
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        self.answered = True
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, close = None, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        if length is None:
            raise ConnectionError("response without Content-Length")
        await self.reader.readexactly(length)
        if close:
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def http_target(url: str, timeout_s: float = 30.0, api_key: str = "", images: bool = False) -> Callable[[], Target]:
    """A factory of senders, each with its own keep-alive connection, that POST one text to /v1/predict
    (with `Authorization: Bearer api_key` when given); images=True: one image file's bytes, as
    {"images": ["<base64>"]}."""
    if images:
        import base64

        return _post_target(url, "/v1/predict", lambda data: {"images": [base64.b64encode(data).decode()]}, timeout_s,
                            api_key)
    return _post_target(url, "/v1/predict", lambda text: {"inputs": [text]}, timeout_s, api_key)


def load_inputs(data: str, text_column: str = "text") -> tuple[list[Any], bool]:
    """What loadtest sends, one per request, and whether it is images: the bytes of every image file for an
    image folder, image file or mnist-5k:SPLIT (read once, before the clock starts), else the texts."""
    from calibration.images import is_image_source, load_images

    if is_image_source(data):
        return [p.read_bytes() for p in load_images(data)], True
    from calibration.datasets import load_texts

    return list(load_texts(data, text_column)), False


def triton_target(url: str, model: str, timeout_s: float = 30.0) -> Callable[[], Target]:
    """Like http_target for a Triton server (KServe v2 protocol): one text per request to MODEL's TEXT input,
    as a client of the ensemble `kiln export-triton` writes sends it."""
    if not model or "/" in model:
        raise ConfigError(f"give the Triton model to load (the ensemble's name, e.g. --model fp32), got {model!r}")
    def body(text: str) -> dict[str, Any]:
        return {"inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": [text]}]}
    return _post_target(url, f"/v2/models/{model}/infer", body, timeout_s)


def _post_target(url: str, route: str, body_for: Callable[[str], Any], timeout_s: float,
                 api_key: str = "") -> Callable[[], Target]:
    parsed = urlparse(url)
    if parsed.scheme != "http" or not parsed.hostname:
        raise ConfigError(f"url must look like http://127.0.0.1:8000, got {url!r}")
    path = (parsed.path.rstrip("/") or "") + route
    host, port = parsed.hostname, parsed.port or 80
    encoded: dict[str, bytes] = {}
    auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""

    def request_for(text: str) -> bytes:
        if text not in encoded:
            body = json.dumps(body_for(text)).encode()
            encoded[text] = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                             f"{auth}Content-Length: {len(body)}\r\n\r\n").encode() + body
        return encoded[text]

    stats: Counter = Counter()
    state: dict[str, Any] = {"refused_since": None, "gone": None, "answered": 0}

    def make() -> Target:
        conn = _Connection(host, port, stats)
        backoff = [BACKOFF_S[0]]

        async def send(text: str) -> str:
            try:
                status = await asyncio.wait_for(conn.post(request_for(text)), timeout_s)
                state["refused_since"], backoff[0] = None, BACKOFF_S[0]
                state["answered"] += 1
                return "ok" if status == 200 else str(status)
            except ConnectionRefusedError:
                conn.close()
                now = time.perf_counter()
                state["refused_since"] = state["refused_since"] or now
                if now - state["refused_since"] >= GIVE_UP_S:
                    state["gone"] = state["gone"] or ServerGone(
                        f"{url} refused every connection for {GIVE_UP_S:g} s (the server went away?); "
                        f"{state['answered']} request(s) were answered before that")
                    raise state["gone"]
                await asyncio.sleep(backoff[0])  # never a tight loop against a closed port
                backoff[0] = min(backoff[0] * 2, BACKOFF_S[1])
                return "refused"
            except asyncio.TimeoutError:
                conn.close()
                return "timeout"
            except (OSError, ValueError, IndexError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
                conn.close()
                return type(e).__name__
        return send
    make.stats = stats  # type: ignore[attr-defined]  # read by closed_loop/open_loop into their result
    make.state = state  # type: ignore[attr-defined]  # open_loop stops scheduling once the server is gone
    return make


def batcher_target(batcher: Any, encode: Callable[[list[str]], list[Any]]) -> Callable[[], Target]:
    """Drive an in-process Batcher (no HTTP): what a service embedding runtime sees."""
    from runtime.batching import RequestTimeout
    from runtime.errors import OverloadError

    def make() -> Target:
        async def send(text: str) -> str:
            try:
                await batcher.asubmit(encode([text])[0])
                return "ok"
            except OverloadError:
                return "overload"
            except RequestTimeout:
                return "timeout"
        return send
    make.in_process = True  # type: ignore[attr-defined]
    return make


def _run(coro: Awaitable[LoadResult], make_target: Callable[[], Target]) -> LoadResult:
    try:
        import uvloop  # the load generator should cost the shared cores as little as it can
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    stats = getattr(make_target, "stats", None)
    before = dict(stats) if stats is not None else {}
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    result = runner(coro)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    result.client_cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    if stats is not None:
        result.client_stats = {k: v - before.get(k, 0) for k, v in stats.items()}
    result.in_process = bool(getattr(make_target, "in_process", False))
    return result


def closed_loop(make_target: Callable[[], Target], texts: Sequence[str], concurrency: int, duration_s: float,
                seed: int = 0) -> LoadResult:
    if concurrency < 1 or duration_s <= 0:
        raise ConfigError(f"concurrency must be >= 1 and duration > 0, got {concurrency}, {duration_s}")
    result = LoadResult(f"closed-loop x{concurrency}", duration_s)

    async def client(i: int, stop_at: float) -> None:
        send, rng = make_target(), random.Random(seed + i)
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            result.sent += 1
            outcome = await send(rng.choice(texts))
            result.record(outcome, (time.perf_counter() - t0) * 1000)

    async def main() -> LoadResult:
        started = time.perf_counter()
        await asyncio.gather(*(client(i, started + duration_s) for i in range(concurrency)))
        result.duration_s = time.perf_counter() - started
        return result

    return _run(main(), make_target)


def open_loop(make_target: Callable[[], Target], texts: Sequence[str], rate: float, duration_s: float,
              seed: int = 0, max_in_flight: int = 512) -> LoadResult:
    """Poisson arrivals; each request takes an idle sender (connection) or opens one, up to max_in_flight."""
    if rate <= 0 or duration_s <= 0:
        raise ConfigError(f"rate and duration must be > 0, got {rate}, {duration_s}")
    result = LoadResult(f"open-loop {rate:g}/s", duration_s)
    rng = random.Random(seed)

    async def main() -> LoadResult:
        idle: list[Target] = []
        slots = asyncio.Semaphore(max_in_flight)
        tasks = set()

        async def one(text: str, scheduled: float) -> None:
            async with slots:  # beyond max_in_flight the wait counts as latency: it is measured from `scheduled`
                send = idle.pop() if idle else make_target()
                try:
                    outcome = await send(text)
                except ServerGone:
                    return  # the scheduling loop below raises it
                idle.append(send)
            result.record(outcome, (time.perf_counter() - scheduled) * 1000)

        started = time.perf_counter()
        next_at = started
        state = getattr(make_target, "state", {})
        while next_at < started + duration_s:
            if state.get("gone"):
                raise state["gone"]
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            result.sent += 1
            task = asyncio.create_task(one(rng.choice(texts), next_at))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_at += rng.expovariate(rate)
        if tasks:
            await asyncio.wait(tasks)
        result.duration_s = time.perf_counter() - started
        return result

    return _run(main(), make_target)


def load_target(target: str, protocol: str = "kiln", model: str = "", api_key: str = "", max_batch_size: int = 32,
                max_delay_ms: float = 0.0, max_queue: int = 256, images: bool = False) -> Any:
    """A context manager giving the sender factory for TARGET: a running `kiln serve` or Triton (http://host:port),
    or an artifact path, opened in-process as a classifier with a Batcher in front (closed on exit).
    images=True: the inputs are image files' bytes (load_inputs), which only an image model takes."""
    import contextlib

    if protocol not in ("kiln", "triton"):
        raise ConfigError(f"unknown protocol {protocol!r}; valid: kiln, triton")
    if (protocol == "triton") != bool(model):
        raise ConfigError("--protocol triton needs --model NAME, and --model applies only to --protocol triton")
    if protocol == "triton" and "://" not in target:
        raise ConfigError(f"--protocol triton loads a running Triton server: TARGET must be http://host:port, "
                          f"got {target!r}")
    if images and protocol == "triton":
        raise ConfigError("--protocol triton sends texts to the tokenizer ensemble; --data is images")
    if "://" not in target:  # in-process: the inputs must be the kind the model takes, said before loading it
        from runtime.artifact import Artifact

        vision = Artifact.load(target).family.name == "vision"
        if vision != images:
            raise ConfigError(f"{target} is {'an image' if vision else 'a text'} classifier but --data holds "
                              f"{'images' if images else 'texts'}; give " + (
                                  "an image folder or mnist-5k:test" if vision
                                  else "texts (CSV/TSV/JSONL, movie-snippets:test)"))

    @contextlib.contextmanager
    def opened() -> Any:
        if protocol == "triton":
            yield triton_target(target, model)
        elif "://" in target:
            yield http_target(target, api_key=api_key, images=images)
        else:
            from runtime.batched import batched_classifier

            with batched_classifier(target, max_batch_size, max_delay_ms, max_queue) as b:
                yield batcher_target(b.batcher, b.clf.encode)
    return opened()


def run_load(make_target: Callable[[], Target], texts: Sequence[str], concurrency: int = 32,
             rate: float | None = None, duration_s: float = 20.0) -> LoadResult:
    """Open loop at `rate` requests/s when given, else `concurrency` closed-loop clients."""
    if rate:
        return open_loop(make_target, texts, rate, duration_s)
    return closed_loop(make_target, texts, concurrency, duration_s)
