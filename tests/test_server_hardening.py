"""kiln serve against misbehaving clients and models (issue #13): each case was an outage, a 500 or a leak."""

import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from benchmarks.runs.reliability import raw_send
from tests.test_server import ThreadServer, free_port, request, wait_ready

pytest.importorskip("uvicorn")
KEY = "k" * 20 + "-secret-token"


@pytest.fixture(scope="module")
def tiny_onnx_other(tmp_path_factory):
    """A second tiny classifier (another seed): different answers, so a switch is visible."""
    from exporter.load import load_checkpoint
    from exporter.onnx_export import OnnxConfig, to_onnx
    from tests.conftest import build_tiny

    src = build_tiny(tmp_path_factory.mktemp("tiny-other") / "bert-cls", seed=1)
    return to_onnx(load_checkpoint(src, "text-classification"), OnnxConfig(), tmp_path_factory.mktemp("o") / "onnx")


def slow(run_batch, seconds):
    def run(items):
        time.sleep(seconds)
        return run_batch(items)
    return run


def test_timed_out_requests_do_not_take_the_server_down(tiny_onnx):
    # the reproduction from #13.1: requests that time out cancel their queued futures; the worker must live on
    with ThreadServer(tiny_onnx.path, request_timeout_s=0.3, max_batch_size=2) as s:
        batcher = s.service.model.batcher
        batcher.run_batch = slow(batcher.run_batch, 0.25)
        results = []
        clients = [threading.Thread(target=lambda: results.append(request(s.port, "POST", "/v1/predict",
                                                                          {"inputs": ["good film"] * 4})))
                   for _ in range(8)]
        [t.start() for t in clients]
        [t.join(15) for t in clients]
        assert 504 in [r[0] for r in results]
        batcher.run_batch = s.service.model.clf.predict_encoded
        time.sleep(0.5)
        status, _, raw = request(s.port, "POST", "/v1/predict", {"inputs": ["good film"]})
        assert status == 200 and batcher.alive
        assert request(s.port, "GET", "/healthz")[0] == 200 and request(s.port, "GET", "/livez")[0] == 200


def test_healthz_and_livez_report_a_dead_worker(tiny_onnx):
    with ThreadServer(tiny_onnx.path) as s:
        s.service.model.batcher.close()  # what a dead worker looks like from outside
        status, _, raw = request(s.port, "GET", "/healthz")
        assert status == 503 and json.loads(raw)["status"] == "failed"
        status, _, raw = request(s.port, "GET", "/livez")
        assert status == 503 and json.loads(raw)["status"] == "dead"
        status, _, raw = request(s.port, "POST", "/v1/predict", {"inputs": ["good"]})
        assert status == 503 and "batching worker has stopped" in json.loads(raw)["error"]


def test_a_chunked_body_without_content_length_is_cut_at_the_limit(tiny_onnx):
    with ThreadServer(tiny_onnx.path, max_body_bytes=10_000) as s:
        head = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
        block = b"x" * 65536
        chunk = b"%x\r\n%s\r\n" % (len(block), block)
        status, sent = raw_send(s.port, head, (chunk for _ in range(2000)))  # would be 131 MB
        assert status == 413
        assert sent < 16 << 20  # answered long before the whole upload
        assert request(s.port, "POST", "/v1/predict", {"inputs": ["good"]})[0] == 200


def test_a_client_that_stalls_mid_body_gets_408(tiny_onnx):
    with ThreadServer(tiny_onnx.path, body_timeout_s=0.5) as s:
        head = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nContent-Type: application/json\r\n\r\n"
        t0 = time.perf_counter()
        status, _ = raw_send(s.port, head, [b'{"inputs": '])
        assert status == 408 and time.perf_counter() - t0 < 5


@pytest.mark.parametrize("body, status", [
    (b"[" * 100_000 + b"]" * 100_000, 400),  # RecursionError in json
    (b'{"inputs": ["a"], "n": ' + b"9" * 5000 + b"}", 400),  # int too long to convert
    (b"\xff\xfe{}", 400),  # not UTF-8
    ('{"inputs": ["\\ud800 lone surrogate"]}'.encode(), 422),
    (b'{"inputs": [null]}', 422),
    (b'{"inputs": [["nested"]]}', 422),
    (b"null", 422),
    (b'{"inputs": {"a": 1}}', 422),
    (b"", 400),
])
def test_unusual_json_is_a_4xx_never_a_500(tiny_onnx, body, status):
    with ThreadServer(tiny_onnx.path) as s:
        got, headers, raw = request(s.port, "POST", "/v1/predict", body)
        assert got == status, raw
        assert json.loads(raw)["request_id"] == headers["x-request-id"]


def test_a_model_failure_is_a_counted_500_and_the_server_carries_on(tiny_onnx):
    from prometheus_client.parser import text_string_to_metric_families

    with ThreadServer(tiny_onnx.path) as s:
        batcher = s.service.model.batcher
        good = batcher.run_batch

        def broken(items):
            raise RuntimeError("boom")
        batcher.run_batch = broken
        status, headers, raw = request(s.port, "POST", "/v1/predict", {"inputs": ["good"]})
        assert status == 500 and headers["x-request-id"] in json.loads(raw)["error"]
        batcher.run_batch = good
        assert request(s.port, "POST", "/v1/predict", {"inputs": ["good"]})[0] == 200
        _, _, metrics = request(s.port, "GET", "/metrics")
    samples = [x for f in text_string_to_metric_families(metrics.decode()) if f.name == "kiln_requests" for x in f.samples]
    assert any(x.labels == {"path": "/v1/predict", "status": "500"} and x.value == 1 for x in samples)


def test_nan_scores_are_never_an_answer(tiny_onnx):
    from runtime.pipeline import Prediction

    with ThreadServer(tiny_onnx.path) as s:
        s.service.model.batcher.run_batch = lambda items: [Prediction("positive", float("nan"),
                                                                      {"positive": float("nan")})] * len(items)
        status, _, raw = request(s.port, "POST", "/v1/predict", {"inputs": ["good"]})
    assert status == 500 and "non-finite" in json.loads(raw)["error"]


def test_authentication(tiny_onnx):
    with ThreadServer(tiny_onnx.path, api_key=KEY) as s:
        body = {"inputs": ["good"]}
        status, headers, raw = request(s.port, "POST", "/v1/predict", body)
        assert status == 401 and headers["www-authenticate"] == "Bearer" and "API key" in json.loads(raw)["error"]
        assert request(s.port, "POST", "/v1/predict", body, {"Authorization": "Bearer wrong"})[0] == 401
        assert request(s.port, "POST", "/v1/predict", body, {"Authorization": f"Basic {KEY}"})[0] == 401
        assert request(s.port, "POST", "/v1/predict", body, {"Authorization": f"Bearer {KEY}"})[0] == 200
        assert request(s.port, "GET", "/healthz")[0] == 200  # probes stay open
        assert request(s.port, "GET", "/metrics")[0] == 401
        assert request(s.port, "GET", "/metrics", headers={"Authorization": f"Bearer {KEY}"})[0] == 200
    with ThreadServer(tiny_onnx.path, api_key=KEY, public_metrics=True) as s:
        assert request(s.port, "GET", "/metrics")[0] == 200
        assert request(s.port, "POST", "/v1/predict", {"inputs": ["good"]})[0] == 401


@pytest.mark.parametrize("key, match", [("short", "at least 16 printable ASCII characters"), ("a" * 10 + " " + "b" * 10, "no whitespace")])
def test_weak_api_keys_are_refused(key, match):
    from runtime.errors import ConfigError
    from runtime.server import ServeConfig

    with pytest.raises(ConfigError, match=match):
        ServeConfig(api_key=key)


def test_exposed_without_a_key_is_warned(caplog):
    from runtime.server import ServeConfig

    assert ServeConfig(host="0.0.0.0").exposed and not ServeConfig().exposed and not ServeConfig(host="::1").exposed


def test_access_log_has_ids_and_never_texts_unless_asked(tiny_onnx, caplog):
    caplog.set_level(logging.INFO, logger="kiln.access")
    secret = "my secret diagnosis text"
    with ThreadServer(tiny_onnx.path) as s:
        request(s.port, "POST", "/v1/predict", {"inputs": [secret, "good"]}, {"X-Request-Id": "abc-123"})
        request(s.port, "POST", "/v1/predict", {"inputs": [secret]}, {"X-Request-Id": "forged id=1 status=200 " + "x" * 80})
    lines = [r.getMessage() for r in caplog.records if r.name == "kiln.access"]
    assert any("request_id=abc-123" in x and "status=200" in x and "inputs=2" in x and "ms=" in x for x in lines)
    assert not any("forged" in x for x in lines)  # a header is never copied into the log as is
    assert secret not in caplog.text
    caplog.clear()
    with ThreadServer(tiny_onnx.path, log_inputs=True) as s:
        request(s.port, "POST", "/v1/predict", {"inputs": [secret]})
    assert secret in caplog.text


def test_openapi_describes_the_server(tiny_onnx):
    with ThreadServer(tiny_onnx.path, max_inputs=4, api_key=KEY) as s:
        status, _, raw = request(s.port, "GET", "/openapi.json")
    doc = json.loads(raw)
    assert status == 200 and doc["openapi"].startswith("3.")
    assert set(doc["paths"]) == {"/v1/predict", "/healthz", "/livez", "/metrics", "/openapi.json", "/admin/reload"} - \
        {"/openapi.json"}
    inputs = doc["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert inputs["properties"]["inputs"]["maxItems"] == 4
    assert doc["paths"]["/v1/predict"]["post"]["security"] == [{"bearer": []}]


def serve_process(artifact, *flags, env=None):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "exporter.cli", "serve", str(artifact), "--port", str(port), *flags],
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, port


@pytest.fixture()
def corrupt_artifact(tiny_onnx, tmp_path):
    import shutil

    art = tmp_path / "corrupt"
    shutil.copytree(tiny_onnx.path, art)
    (art / "model.onnx").write_bytes(b"this is not an onnx model")
    return art


def test_a_model_that_cannot_load_ends_the_server_with_the_reason(corrupt_artifact):
    proc, _ = serve_process(corrupt_artifact)
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert "error: the model failed to load:" in out and "Traceback" not in out
    assert out.count("the model failed to load") == 1  # said once, not logged and then repeated


def test_retry_load_keeps_trying_and_says_so(corrupt_artifact):
    proc, port = serve_process(corrupt_artifact, "--retry-load")
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                status, _, raw = request(port, "GET", "/healthz", timeout=2)
                if json.loads(raw)["status"] == "retrying":
                    break
            except OSError:
                pass
            time.sleep(0.2)
        assert status == 503 and json.loads(raw)["status"] == "retrying"
        assert request(port, "GET", "/livez")[0] == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert "retrying in" in out


def test_sighup_under_load_switches_models_with_no_failed_request(tiny_onnx):
    from benchmarks.load import closed_loop, http_target

    proc, port = serve_process(tiny_onnx.path, "--no-access-log")
    try:
        wait_ready(port)
        hup = threading.Timer(0.7, proc.send_signal, (signal.SIGHUP,))
        hup2 = threading.Timer(1.6, proc.send_signal, (signal.SIGHUP,))
        hup.start(), hup2.start()
        r = closed_loop(http_target(f"http://127.0.0.1:{port}"), ["good film", "a dull, long film"], 4, 2.5).summary()
        hup.join(), hup2.join()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert r["sent"] == r["ok"] > 20 and r["errors"] == {} and r["lost"] == 0
    assert out.count("reloaded model from") == 2


def test_admin_reload_switches_and_a_failed_reload_keeps_the_old_model(tiny_onnx, tiny_onnx_other, tmp_path):
    auth = {"Authorization": f"Bearer {KEY}"}
    texts = {"inputs": ["the movie was good", "bad", "dull , long"]}
    with ThreadServer(tiny_onnx.path, api_key=KEY) as s:
        before = json.loads(request(s.port, "POST", "/v1/predict", texts, auth)[2])
        assert request(s.port, "POST", "/admin/reload", {"artifact": str(tiny_onnx_other.path)})[0] == 401
        status, _, raw = request(s.port, "POST", "/admin/reload", {"artifact": str(tiny_onnx_other.path)}, auth)
        assert status == 200 and json.loads(raw)["artifact"] == str(tiny_onnx_other.path)
        after = json.loads(request(s.port, "POST", "/v1/predict", texts, auth)[2])
        assert after != before
        status, _, raw = request(s.port, "POST", "/admin/reload", {"artifact": str(tmp_path / "missing")}, auth)
        assert status == 409 and "still serving the previous model" in json.loads(raw)["error"]
        assert json.loads(request(s.port, "GET", "/healthz")[2])["artifact"] == str(tiny_onnx_other.path)
        assert json.loads(request(s.port, "POST", "/v1/predict", texts, auth)[2]) == after
    with ThreadServer(tiny_onnx.path) as s:  # without a key the admin endpoint is off
        assert request(s.port, "POST", "/admin/reload", {})[0] == 403


def test_tls(tiny_onnx, tmp_path):
    import http.client
    import ssl

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    proc, port = serve_process(tiny_onnx.path, "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
                               env={"KILN_API_KEY": KEY})
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        ctx.check_hostname = False
        deadline, status = time.time() + 60, None
        while time.time() < deadline and status != 200:
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
            try:
                conn.request("GET", "/healthz")
                status = conn.getresponse().status
            except OSError:
                time.sleep(0.2)
            finally:
                conn.close()
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
        conn.request("POST", "/v1/predict", json.dumps({"inputs": ["good"]}),
                     {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


@pytest.mark.parametrize("flags, match", [
    (["--ssl-certfile", "/nonexistent.pem"], "TLS needs both --ssl-certfile and --ssl-keyfile"),
    (["--api-key-file", "/nonexistent-key"], "cannot read --api-key-file"),
    (["--max-connections", "0"], "max_connections must be >= 1"),
])
def test_serve_security_flags_fail_in_one_line(tiny_onnx, flags, match):
    from click.testing import CliRunner

    from exporter.cli import main

    r = CliRunner().invoke(main, ["serve", str(tiny_onnx.path), "--port", str(free_port()), *flags])
    assert r.exit_code != 0 and match in r.output and "Traceback" not in r.output


def test_require_signature_serves_a_signed_artifact_and_refuses_an_altered_one(tiny_onnx, tmp_path):
    import shutil

    from runtime.signing import generate_key_pair, sign_artifact

    private, public = generate_key_pair(tmp_path / "keys")
    art = tmp_path / "signed"
    shutil.copytree(tiny_onnx.path, art)
    sign_artifact(art, private)
    with ThreadServer(art, require_signature=str(public)) as s:
        assert request(s.port, "POST", "/v1/predict", {"inputs": ["good"]})[0] == 200
        labels = json.loads((art / "manifest.json").read_text())
        labels["meta"]["labels"] = {"0": "positive", "1": "negative"}  # swapped after signing
        (art / "manifest.json").write_text(json.dumps(labels))
        status, _, raw = request(s.port, "POST", "/admin/reload", {})
        assert status == 403  # no admin endpoint without a key; SIGHUP goes through the same reload:
        with pytest.raises(Exception, match="altered after signing"):
            s.service.reload()
        assert request(s.port, "POST", "/v1/predict", {"inputs": ["good"]})[0] == 200  # the old model serves on
    proc, _ = serve_process(art, "--require-signature", str(public))
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "error: the model failed to load:" in out and "altered after signing" in out
    unsigned = tmp_path / "unsigned"
    shutil.copytree(tiny_onnx.path, unsigned)
    proc, _ = serve_process(unsigned, "--require-signature", str(public))
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "has no signature" in out


def test_a_client_that_leaves_mid_body_is_not_a_server_error(tiny_onnx, caplog):
    from prometheus_client.parser import text_string_to_metric_families

    with ThreadServer(tiny_onnx.path) as s:
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", s.port)) as sock:
                sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 200\r\n\r\n{\"inputs\": [\"a")
        time.sleep(0.5)
        assert request(s.port, "POST", "/v1/predict", {"inputs": ["good"]})[0] == 200
        _, _, metrics = request(s.port, "GET", "/metrics")
    statuses = {x.labels["status"] for f in text_string_to_metric_families(metrics.decode())
                if f.name == "kiln_requests" for x in f.samples if x.labels.get("path") == "/v1/predict"}
    assert not any(code.startswith("5") for code in statuses)
    assert "Traceback" not in caplog.text and "internal error" not in caplog.text


@pytest.mark.parametrize("method, path, status", [("POST", "/v1/predict/", 404), ("GET", "/v1/predict", 405),
                                                  ("GET", "/nowhere", 404)])
def test_unknown_routes_are_json_with_a_request_id(tiny_onnx, method, path, status):
    with ThreadServer(tiny_onnx.path, api_key=KEY) as s:
        got, headers, raw = request(s.port, method, path, {"inputs": ["good"]} if method == "POST" else None)
    assert got == status and json.loads(raw)["request_id"] == headers["x-request-id"]


def test_a_non_ascii_api_key_is_refused_at_start():
    from runtime.errors import ConfigError
    from runtime.server import ServeConfig

    with pytest.raises(ConfigError, match="printable ASCII"):
        ServeConfig(api_key="pässwörd_ÄÖÜ_1234567")


def test_require_signature_serves_a_private_verified_copy(tiny_onnx, tmp_path):
    """What is verified is what is loaded: a swap at the source after verification cannot reach the model."""
    import shutil

    from runtime.signing import generate_key_pair, sign_artifact

    private, public = generate_key_pair(tmp_path / "keys")
    art = tmp_path / "signed"
    shutil.copytree(tiny_onnx.path, art)
    sign_artifact(art, private)
    with ThreadServer(art, require_signature=str(public)) as s:
        model = s.service.model
        assert model.snapshot is not None and model.artifact.path != art and model.source == art
        manifest = json.loads((art / "manifest.json").read_text())
        manifest["meta"]["labels"] = {"0": "PWNED", "1": "positive"}
        (art / "manifest.json").write_text(json.dumps(manifest))  # the source changes; the copy does not
        got = json.loads(request(s.port, "POST", "/v1/predict", {"inputs": ["bad"] * 3})[2])["predictions"]
        assert all(set(p["scores"]) == {"negative", "positive"} for p in got)
        assert json.loads(request(s.port, "GET", "/healthz")[2])["artifact"] == str(art)
        snapshot = model.snapshot
    assert not snapshot.exists()  # removed when the model closed


def test_loadtest_sends_the_api_key_and_fails_when_nothing_succeeds(tiny_onnx, tmp_path):
    from click.testing import CliRunner

    from exporter.cli import main

    keyfile = tmp_path / "key"
    keyfile.write_text(KEY + "\n")
    texts = tmp_path / "t.txt"
    texts.write_text("good film\nbad film\n")
    with ThreadServer(tiny_onnx.path, api_key=KEY) as s:
        url = f"http://127.0.0.1:{s.port}"
        ok = CliRunner().invoke(main, ["loadtest", url, "--data", str(texts), "--concurrency", "2", "--duration", "0.5",
                                       "--api-key-file", str(keyfile), "--json"])
        refused = CliRunner().invoke(main, ["loadtest", url, "--data", str(texts), "--concurrency", "2",
                                            "--duration", "0.5"])
    assert ok.exit_code == 0 and json.loads(ok.stdout)["ok"] > 0, ok.output
    assert refused.exit_code == 1 and "no request succeeded" in refused.output and "401" in refused.output


def test_silent_and_slow_header_clients_are_disconnected(tiny_onnx):
    # idle connections used to hold --max-connections slots for ever, until even /healthz got 503
    proc, port = serve_process(tiny_onnx.path, "--body-timeout", "1", "--max-connections", "4", "--no-access-log")
    try:
        wait_ready(port)
        silent = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(4)]
        slow = socket.create_connection(("127.0.0.1", port), timeout=10)
        t0 = time.perf_counter()
        for byte in b"GET /healthz HTTP/1.1\r\n":
            try:
                slow.send(bytes([byte]))
            except OSError:
                break
            time.sleep(0.2)
        assert all(s.recv(10) == b"" for s in silent)  # closed by the server
        assert time.perf_counter() - t0 < 8
        assert request(port, "GET", "/healthz")[0] == 200  # the slots are free again
        [s.close() for s in [*silent, slow]]
        keepalive = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for _ in range(3):  # an ordinary keep-alive client is unaffected
            keepalive.request("GET", "/livez")
            assert keepalive.getresponse().read() and True
        keepalive.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
