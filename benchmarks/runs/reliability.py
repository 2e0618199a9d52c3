"""Reliability report: `kiln serve` and the stages against hostile clients, overload, bad models and kill -9.

    python -m benchmarks.runs.reliability --artifact benchmarks/work/ft-int8 [--quick]

Every case starts from a fresh `kiln serve` subprocess on a loopback port (or a fresh stage run), does one
hostile thing, and records what happened and whether that is the expected, clean outcome. Writes
benchmarks/results/reliability.md and .json. All traffic goes to 127.0.0.1 and every loop is bounded.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from benchmarks.load import closed_loop, http_target, open_loop
from benchmarks.runs.common import write_results

KEY = "reliability-report-api-key"
LONG_TEXT = " ".join(["a gripping , beautifully acted but far too long film"] * 40)  # ~400 words


def log(msg: str) -> None:
    print(f"[reliability] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(port: int, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
         timeout: float = 30) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    conn.request(method, path, data, {"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    try:
        return resp.status, json.loads(raw)
    except ValueError:
        return resp.status, {"raw": raw[:200].decode(errors="replace")}


class Server:
    """`kiln serve` in a subprocess; its stderr goes to a file the case can read."""

    def __init__(self, artifact: Path, *flags: str, wait: bool = True) -> None:
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile("w+", prefix="kiln-serve-", suffix=".log", delete=False)
        self.cmd = [sys.executable, "-m", "exporter.cli", "serve", str(artifact), "--port", str(self.port), *flags]
        self.wait = wait
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Server":
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT)
        if self.wait:
            self.ready_in = self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 120) -> float:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            try:
                if call(self.port, "GET", "/healthz", timeout=2)[0] == 200:
                    return time.perf_counter() - t0
            except OSError:
                pass
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.output()[-500:]}")
            time.sleep(0.05)
        raise TimeoutError("server did not get ready")

    def rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> int | None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        os.unlink(self.log.name)


@dataclass
class Case:
    category: str
    name: str
    expected: str
    run: Callable[[], tuple[bool, str]]


def healthy(port: int, headers: dict[str, str] | None = None) -> bool:
    return (call(port, "GET", "/healthz")[0] == 200 and call(port, "GET", "/livez")[0] == 200
            and call(port, "POST", "/v1/predict", {"inputs": ["a fine film"]}, headers)[0] == 200)


def raw_send(port: int, head: bytes, body_chunks: Any, give_up_after: int | None = None) -> tuple[int | None, int]:
    """Send a request by hand, stopping when the server answers; return (its status or None, body bytes sent)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    answer, sent = b"", 0
    try:
        sock.sendall(head)
        sock.setblocking(False)
        for i, chunk in enumerate(body_chunks):
            if give_up_after is not None and i >= give_up_after:
                return None, sent  # the client walks away mid-body
            try:
                answer += sock.recv(65536)
            except BlockingIOError:
                pass
            if answer:
                break
            try:
                sock.sendall(chunk)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        sock.setblocking(True)
        while b"\r\n" not in answer:
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    except OSError:
        pass
    finally:
        sock.close()
    return (int(answer.split(b" ")[1]) if answer.startswith(b"HTTP/") else None), sent


def cases(artifact: Path, quick: bool, fp32: Path | None = None) -> list[Case]:
    load_s = 4.0 if quick else 10.0
    out: list[Case] = []

    def case(category: str, name: str, expected: str) -> Callable[[Callable[[], tuple[bool, str]]], None]:
        def add(fn: Callable[[], tuple[bool, str]]) -> None:
            out.append(Case(category, name, expected, fn))
        return add

    @case("timeouts", "8 concurrent requests of 32 x 400 words with --timeout 1, then one more request",
          "200s or 504s (never a dead worker), then 200; /healthz and /livez stay 200")
    def _() -> tuple[bool, str]:
        with Server(artifact, "--timeout", "1", "--max-chars", "4000", "--no-access-log") as s:
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                codes = list(pool.map(lambda _: call(s.port, "POST", "/v1/predict", {"inputs": [LONG_TEXT] * 32})[0],
                                      range(8)))
            ok = healthy(s.port)
            return ok and set(codes) <= {200, 504}, f"statuses {sorted(codes)}; healthy after: {ok}"

    @case("timeouts", f"{load_s:g} s of long-input load at the default timeout",
          "nothing lost; healthy after")
    def _() -> tuple[bool, str]:
        with Server(artifact, "--max-chars", "4000", "--no-access-log") as s:
            r = closed_loop(http_target(f"http://127.0.0.1:{s.port}"), [LONG_TEXT], 16, load_s).summary()
            ok = healthy(s.port)
            return r["lost"] == 0 and r["ok"] > 0 and ok, f"sent {r['sent']}, ok {r['ok']}, errors {r['errors']}, healthy after: {ok}"

    @case("hostile bodies", "4 parallel 500 MB chunked uploads without Content-Length (limit 1 MiB)",
          "413 each; server memory grows by < 2 x limit per request")
    def _() -> tuple[bool, str]:
        with Server(artifact, "--no-access-log") as s:
            base, peak, stop = s.rss_mb(), [0.0], threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    peak[0] = max(peak[0], s.rss_mb())
                    time.sleep(0.02)
            sampler = threading.Thread(target=sample)
            sampler.start()
            head = (b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                    b"Content-Type: application/json\r\n\r\n")
            block = b"x" * (1 << 20)
            chunk = b"%x\r\n%s\r\n" % (len(block), block)
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                answers = list(pool.map(lambda _: raw_send(s.port, head, (chunk for _ in range(500))), range(4)))
            codes = [code for code, _ in answers]
            stop.set()
            sampler.join()
            grew = peak[0] - base
            ok = codes == [413] * 4 and grew < 4 * 2 * 1.0 and healthy(s.port)
            return ok, f"statuses {codes}; RSS {base:.0f} MB -> peak {peak[0]:.0f} MB (+{grew:.1f} MB)"

    @case("hostile bodies", "a client that stalls mid-body (declares 100 bytes, sends 11)",
          "408 within --body-timeout")
    def _() -> tuple[bool, str]:
        with Server(artifact, "--body-timeout", "2", "--no-access-log") as s:
            head = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
            t0 = time.perf_counter()
            code, _ = raw_send(s.port, head, [b'{"inputs": '])
            took = time.perf_counter() - t0
            return code == 408 and took < 5 and healthy(s.port), f"status {code} after {took:.1f} s"

    @case("hostile bodies", "50 clients that give up mid-body, 50 that leave before reading the answer",
          "server unaffected")
    def _() -> tuple[bool, str]:
        with Server(artifact, "--no-access-log") as s:
            head = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
            for _ in range(50):
                raw_send(s.port, head, [b'{"inputs": ["a'] * 5, give_up_after=1)
            body = json.dumps({"inputs": [LONG_TEXT] * 8}).encode()
            for _ in range(50):
                with socket.create_connection(("127.0.0.1", s.port)) as sock:
                    sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                                 % (len(body), body))
            ok = healthy(s.port)
            return ok, f"healthy after: {ok}"

    unusual = {"deep nesting": b"[" * 100_000 + b"]" * 100_000, "5,000-digit number": b'{"inputs":["a"],"n":'
               + b"9" * 5000 + b"}", "not UTF-8": b"\xff\xfe{}", "lone surrogate": b'{"inputs": ["\\ud800"]}',
               "null input": b'{"inputs": [null]}', "empty body": b"", "JSON null": b"null",
               "inputs an object": b'{"inputs": {"a": 1}}', "NaN literal": b'{"inputs": [NaN]}',
               "bad Content-Length": None}

    @case("unusual JSON", f"{len(unusual)} bodies that are valid HTTP but unusual JSON", "a 4xx for each, no 5xx")
    def _() -> tuple[bool, str]:
        with Server(artifact, "--no-access-log") as s:
            got = {}
            for name, body in unusual.items():
                if body is None:
                    head = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"
                    got[name], _ = raw_send(s.port, head, [])
                else:
                    got[name] = call(s.port, "POST", "/v1/predict", body)[0]
            ok = all(c is not None and 400 <= c < 500 for c in got.values()) and healthy(s.port)
            return ok, ", ".join(f"{k}: {v}" for k, v in got.items())

    @case("overload", f"open loop at 2x measured capacity for {load_s:g} s",
          "every request answered (200 or a fast 503), none lost; healthy after")
    def _() -> tuple[bool, str]:
        with Server(artifact, "--no-access-log") as s:
            url = f"http://127.0.0.1:{s.port}"
            texts = ["a gripping, beautifully acted film", "dull and far too long", "fine"]
            cap = closed_loop(http_target(url), texts, 32, load_s / 2).summary()["throughput_rps"]
            r = open_loop(http_target(url), texts, 2 * cap, load_s).summary()
            ok = r["lost"] == 0 and r["sent"] == r["answered"] and set(r["errors"]) <= {"503"} and healthy(s.port)
            return ok, (f"capacity {cap:.0f} req/s; at {2 * cap:.0f}/s: sent {r['sent']}, ok {r['ok']}, "
                        f"errors {r['errors']}, lost {r['lost']}, ok p99 {r['p99_ms']} ms, 503 p99 {r['error_p99_ms']} ms")

    @case("reload", "SIGHUP twice under 8 closed-loop clients", "zero failed requests; both reloads logged")
    def _() -> tuple[bool, str]:
        with Server(artifact) as s:
            assert s.proc is not None
            timers = [threading.Timer(load_s * f, s.proc.send_signal, (signal.SIGHUP,)) for f in (0.3, 0.6)]
            [t.start() for t in timers]
            r = closed_loop(http_target(f"http://127.0.0.1:{s.port}"), ["good film", "bad film"], 8, load_s).summary()
            [t.join() for t in timers]
            time.sleep(0.5)
            reloads = s.output().count("reloaded model from")
            ok = r["sent"] == r["ok"] > 0 and r["lost"] == 0 and reloads == 2
            return ok, f"sent {r['sent']}, ok {r['ok']}, errors {r['errors']}, reloads logged {reloads}"

    @case("auth", "no token, a wrong token, the right token (--api-key-file)", "401, 401, 200; /healthz open")
    def _() -> tuple[bool, str]:
        keyfile = Path(tempfile.mkdtemp()) / "key"
        keyfile.write_text(KEY + "\n")
        with Server(artifact, "--api-key-file", str(keyfile), "--no-access-log") as s:
            body = {"inputs": ["fine"]}
            codes = [call(s.port, "POST", "/v1/predict", body)[0],
                     call(s.port, "POST", "/v1/predict", body, {"Authorization": "Bearer nope"})[0],
                     call(s.port, "POST", "/v1/predict", body, {"Authorization": f"Bearer {KEY}"})[0],
                     call(s.port, "GET", "/healthz")[0]]
        shutil.rmtree(keyfile.parent)
        return codes == [401, 401, 200, 200], f"statuses {codes}"

    @case("bad model", "kiln serve on an artifact whose model.onnx is corrupt", "exit 1 with the reason, promptly")
    def _() -> tuple[bool, str]:
        with tempfile.TemporaryDirectory() as tmp:
            bad = Path(tmp) / "bad"
            shutil.copytree(artifact, bad)
            (bad / "model.onnx").write_bytes(b"not a model")
            s = Server(bad, wait=False).start()
            t0 = time.perf_counter()
            assert s.proc is not None
            code = s.proc.wait(120)
            took = time.perf_counter() - t0
            line = [x for x in s.output().splitlines() if x.startswith("error:")]
            os.unlink(s.log.name)
        return code == 1 and bool(line), f"exit {code} after {took:.1f} s: {line[0][:120] if line else 'no error line'}"

    @case("restarts", "kill -9 the server under load, start it again", "ready again; answers")
    def _() -> tuple[bool, str]:
        s = Server(artifact, "--no-access-log").start()
        assert s.proc is not None
        t = threading.Thread(target=lambda: closed_loop(http_target(f"http://127.0.0.1:{s.port}"), ["x"], 4, 2.0))
        t.start()
        time.sleep(1.0)
        s.proc.kill()
        s.proc.wait()
        t.join()
        again = Server(artifact, "--no-access-log")
        again.port = s.port  # the same port, at once: nothing left holding it
        again.cmd[again.cmd.index("--port") + 1] = str(s.port)
        with again:
            ok = healthy(again.port)
            ready = again.ready_in
        os.unlink(s.log.name)
        return ok, f"ready {ready:.1f} s after restart on the same port; healthy: {ok}"

    @case("restarts", "kill -9 `kiln export` mid-stage, then export again to the same -o",
          "the second run succeeds and no staging debris is left")
    def _() -> tuple[bool, str]:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out"
            src = Path(tmp) / "src"
            shutil.copytree(fp32 or artifact, src)  # quantize needs an fp32 artifact
            cmd = [sys.executable, "-m", "exporter.cli", "quantize", str(src), "--method", "dynamic-int8", "-o", str(out)]
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.time() + 60
            while time.time() < deadline and not any(Path(tmp).glob(".out.kiln-tmp-*")):
                time.sleep(0.05)
            proc.kill()
            proc.wait()
            debris_after_kill = len(list(Path(tmp).glob(".out.kiln-*")))
            second = subprocess.run(cmd, capture_output=True, text=True)
            debris = [p.name for p in Path(tmp).iterdir() if p.name.startswith(".")]
        ok = second.returncode == 0 and not debris
        return ok, (f"staging folders after kill -9: {debris_after_kill}; second run exit {second.returncode}; "
                    f"left after it: {debris or 'nothing'}")

    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", type=Path, required=True, help="A text-classification ONNX artifact.")
    ap.add_argument("--fp32", type=Path, help="The fp32 ONNX artifact for the kill -9 stage case (default: --artifact).")
    ap.add_argument("--quick", action="store_true", help="Shorter load phases (for a smoke run).")
    ap.add_argument("--only", default="", help="Run only cases whose category contains this.")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results")
    args = ap.parse_args()
    rows = []
    for c in cases(args.artifact, args.quick, args.fp32):
        if args.only and args.only not in c.category:
            continue
        log(f"{c.category}: {c.name}")
        t0 = time.perf_counter()
        try:
            ok, detail = c.run()
        except Exception as e:  # noqa: BLE001 - a case that crashes is a failed case, reported as such
            ok, detail = False, f"the case itself failed: {type(e).__name__}: {e}"
        rows.append({"category": c.category, "case": c.name, "expected": c.expected,
                     "outcome": "clean" if ok else "FAILED", "observed": detail,
                     "seconds": round(time.perf_counter() - t0, 1)})
        log(f"  -> {rows[-1]['outcome']}: {detail}")
    clean = sum(r["outcome"] == "clean" for r in rows)
    by_cat: dict[str, list[int]] = {}
    for r in rows:
        by_cat.setdefault(r["category"], [0, 0])[0 if r["outcome"] == "clean" else 1] += 1
    notes = [f"**{clean} of {len(rows)} cases clean.** By category: " +
             "; ".join(f"{k} {v[0]}/{sum(v)}" for k, v in by_cat.items()) + ".",
             f"Artifact: `{args.artifact}` (fp32 for the stage case: `{args.fp32 or args.artifact}`). Each case starts its own `kiln serve` on 127.0.0.1 (2 intra-op threads "
             "by default on this machine); the load generator shares the machine's cores with the server."]
    path = write_results(args.out, "reliability", "kiln serve and the stages under hostile conditions", rows,
                         ["category", "case", "expected", "outcome", "observed"], notes)
    log(f"wrote {path}")
    sys.exit(0 if clean == len(rows) else 1)


if __name__ == "__main__":
    main()
