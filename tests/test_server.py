"""kiln serve with a real uvicorn on a loopback port."""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("uvicorn")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, method, path, body=None, headers=None, timeout=10):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    conn.request(method, path, data, {"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    return resp.status, dict(resp.getheaders()), raw


def wait_ready(port, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            status, _, _ = request(port, "GET", "/healthz", timeout=2)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError("server did not become ready")


class ThreadServer:
    def __init__(self, artifact, **cfg):
        import uvicorn

        from runtime.http_app import create_app
        from runtime.server import ServeConfig, Service

        self.port = free_port()
        self.service = Service(artifact, ServeConfig(port=self.port, **cfg), on_fatal=self.stop)
        self.server = uvicorn.Server(uvicorn.Config(create_app(self.service), host="127.0.0.1", port=self.port,
                                                    log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def stop(self, reason=""):
        self.server.should_exit = True

    def __enter__(self):
        self.thread.start()
        wait_ready(self.port)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def server(tiny_onnx):
    with ThreadServer(tiny_onnx.path, max_inputs=4, max_chars=50, max_body_bytes=2000) as s:
        yield s


def test_predict(server):
    status, _, raw = request(server.port, "POST", "/v1/predict", {"inputs": ["the movie was good", "bad"]})
    body = json.loads(raw)
    assert status == 200 and len(body["predictions"]) == 2
    assert all(p["label"] in ("negative", "positive") and 0.5 <= p["score"] <= 1 for p in body["predictions"])


@pytest.mark.parametrize("body, status, match", [
    (b"{not json", 400, "not valid JSON"),
    ({"texts": ["x"]}, 422, 'expected a JSON object {"inputs"'),
    ({"inputs": "just a string"}, 422, "'inputs' must be a list of strings, got str"),
    ({"inputs": ["ok", 3]}, 422, "inputs[1] must be a string, got int"),
    ({"inputs": []}, 422, "'inputs' is empty"),
    ({"inputs": ["a"] * 5}, 413, "5 inputs in one request; the limit is 4"),
    ({"inputs": ["x" * 51]}, 413, "inputs[0] has 51 characters; the limit is 50"),
    ({"inputs": ["x"], "pad": "y" * 3000}, 413, "the limit is 2000"),
])
def test_bad_requests_get_clear_4xx(server, body, status, match):
    got, headers, raw = request(server.port, "POST", "/v1/predict", body)
    assert got == status and match in json.loads(raw)["error"]
    assert headers["content-type"] == "application/json"


def test_metrics_parse_as_prometheus(server):
    from prometheus_client.parser import text_string_to_metric_families

    request(server.port, "POST", "/v1/predict", {"inputs": ["good"]})
    status, _, raw = request(server.port, "GET", "/metrics")
    families = {f.name: f for f in text_string_to_metric_families(raw.decode())}
    assert status == 200
    assert {"kiln_requests", "kiln_request_latency_seconds", "kiln_batch_size", "kiln_queue_depth"} <= set(families)
    by_status = {s.labels["status"]: s.value for s in families["kiln_requests"].samples
                 if s.name == "kiln_requests_total" and s.labels["path"] == "/v1/predict"}
    assert by_status.get("200", 0) >= 1 and by_status.get("422", 0) >= 1


def test_overload_is_a_fast_503(tiny_onnx):
    with ThreadServer(tiny_onnx.path, max_queue=2, max_delay_ms=1500, max_batch_size=64) as s:
        results = []
        waiting = [threading.Thread(target=lambda: results.append(request(s.port, "POST", "/v1/predict", {"inputs": ["a"]})))
                   for _ in range(2)]
        [t.start() for t in waiting]
        time.sleep(0.3)  # both single-input requests now sit in the batcher's queue
        t0 = time.perf_counter()
        status, headers, raw = request(s.port, "POST", "/v1/predict", {"inputs": ["b"]})
        assert status == 503 and headers.get("retry-after") == "1" and "queue full" in json.loads(raw)["error"]
        assert time.perf_counter() - t0 < 0.5
        [t.join(5) for t in waiting]
        assert [r[0] for r in results] == [200, 200]


def test_sigterm_drains_in_flight_requests(tiny_onnx):
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "exporter.cli", "serve", str(tiny_onnx.path), "--port", str(port),
                             "--max-delay-ms", "1000", "--max-batch-size", "64"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_ready(port)
        results = []
        clients = [threading.Thread(target=lambda: results.append(request(port, "POST", "/v1/predict", {"inputs": ["good"]})))
                   for _ in range(5)]
        [t.start() for t in clients]
        time.sleep(0.3)  # the requests wait for their batch (up to 1 s)
        proc.send_signal(signal.SIGTERM)
        [t.join(10) for t in clients]
        assert sorted(r[0] for r in results) == [200] * 5
        # uvicorn re-raises the captured SIGTERM once shutdown finished, so the exit status says "terminated"
        assert proc.wait(15) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_rejects_bad_artifact(tmp_path):
    from click.testing import CliRunner

    from exporter.cli import main

    r = CliRunner().invoke(main, ["serve", str(tmp_path / "missing")])
    assert r.exit_code != 0 and r.output.startswith("error: artifact") and "does not exist" in r.output


def test_http_loadtest_closed_loop_counts_every_request(server):
    from benchmarks.load import closed_loop, http_target

    r = closed_loop(http_target(f"http://127.0.0.1:{server.port}"), ["good film", "a dull, long film"], 4, 1.0)
    s = r.summary()
    assert s["sent"] == s["answered"] == s["ok"] > 0 and s["lost"] == 0 and s["errors"] == {}
    assert 0 < s["p50_ms"] <= s["p99_ms"] <= s["max_ms"] and s["client_cpu_pct"] > 0


def test_http_loadtest_open_loop_overload_gets_503_not_lost(tiny_onnx):
    from benchmarks.load import http_target, open_loop

    # one batch of 8 per 300 ms and room for 4 waiting: most of 200/s must be refused, quickly, none lost
    with ThreadServer(tiny_onnx.path, max_queue=4, max_delay_ms=300, max_batch_size=8) as s:
        r = open_loop(http_target(f"http://127.0.0.1:{s.port}"), ["good film"], 200, 1.0).summary()
    assert r["lost"] == 0 and r["sent"] == r["answered"] > 100
    assert r["ok"] > 0 and r["errors"].get("503", 0) > r["ok"] and set(r["errors"]) == {"503"}
    assert r["error_p99_ms"] < 250


def test_http_loadtest_reports_connection_errors():
    from benchmarks.load import closed_loop, http_target

    r = closed_loop(http_target(f"http://127.0.0.1:{free_port()}"), ["x"], 2, 0.3).summary()
    assert r["ok"] == 0 and r["lost"] == 0 and r["answered"] == 0 and r["errors"]["refused"] >= 1


class OneShotHTTP:
    """A raw HTTP server on a thread that answers `answer` requests per connection, then closes it silently
    (what a server does to a keep-alive connection it considers idle); answer=0 never answers."""

    def __init__(self, answer):
        self.answer, self.port = answer, free_port()
        self.sock = socket.create_server(("127.0.0.1", self.port))
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                for _ in range(self.answer):
                    conn.recv(65536)
                    body = b'{"predictions": []}'
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                if not self.answer:
                    conn.recv(65536)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.sock.close()


def test_http_loadtest_resends_once_on_a_closed_keepalive_connection():
    from benchmarks.load import closed_loop, http_target

    with OneShotHTTP(answer=1) as srv:
        r = closed_loop(http_target(f"http://127.0.0.1:{srv.port}"), ["x"], 1, 0.3).summary()
    assert r["ok"] == r["sent"] > 2 and r["errors"] == {} and r["stale_reconnects"] == r["sent"] - 1


def test_http_loadtest_counts_a_fresh_connection_closed_without_answer_as_error():
    from benchmarks.load import closed_loop, http_target

    with OneShotHTTP(answer=0) as srv:
        r = closed_loop(http_target(f"http://127.0.0.1:{srv.port}"), ["x"], 1, 0.3).summary()
    assert r["ok"] == 0 and r["errors"] == {"IncompleteReadError": r["sent"]} and r["lost"] == 0


@pytest.mark.parametrize("flags, match", [
    (["--dtype", "float16"], "dtype and cuda_graphs are options of the torch backend; add --backend torch"),
    (["--backend", "torch", "--cuda-graphs"], "cuda_graphs needs --device cuda"),
    (["--dtype", "half"], "Invalid value for '--dtype'"),
])
def test_serve_rejects_bad_precision_options(tiny_onnx, flags, match):
    from click.testing import CliRunner

    from exporter.cli import main

    r = CliRunner().invoke(main, ["serve", str(tiny_onnx.path), "--port", str(free_port()), *flags])
    assert r.exit_code != 0 and match in r.output and "Traceback" not in r.output


def test_serve_torch_backend_bf16_cpu_twin(tiny_onnx):
    """The GPU serving path (torch backend, reduced precision) on the CPU: same labels as onnxruntime fp32."""
    texts = ["the movie was good", "bad", "great acting !"]
    with ThreadServer(tiny_onnx.path, backend="torch", dtype="bfloat16") as s:
        status, _, raw = request(s.port, "POST", "/v1/predict", {"inputs": texts})
    with ThreadServer(tiny_onnx.path) as ref:
        _, _, ref_raw = request(ref.port, "POST", "/v1/predict", {"inputs": texts})
    got, want = json.loads(raw)["predictions"], json.loads(ref_raw)["predictions"]
    assert status == 200 and len(got) == 3
    assert all(abs(g["scores"][k] - w["scores"][k]) < 0.05 for g, w in zip(got, want) for k in w["scores"])
