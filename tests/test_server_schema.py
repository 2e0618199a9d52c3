"""Property-based tests of the HTTP API from its own OpenAPI document: whatever schemathesis generates
(valid, edge-case and schema-violating bodies, with and without the token), the server answers
without a 5xx and every answer is JSON (or Prometheus text) as documented."""

import pytest

pytest.importorskip("uvicorn")
schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from tests.test_server import ThreadServer  # noqa: E402

KEY = "s" * 24
EXAMPLES = 30


@pytest.fixture(scope="module")
def api_server(tiny_onnx):
    with ThreadServer(tiny_onnx.path, max_inputs=8, max_chars=200, api_key=KEY) as s:
        yield s


def operations(server):
    schema = schemathesis.openapi.from_url(f"http://127.0.0.1:{server.port}/openapi.json")
    ops = [result.ok() for result in schema.get_all_operations()]
    return {f"{op.method.upper()} {op.path}": op for op in ops}


def test_the_schema_lists_every_route(api_server):
    assert set(operations(api_server)) == {"POST /v1/predict", "GET /healthz", "GET /livez", "GET /metrics",
                                           "POST /admin/reload"}


@pytest.mark.parametrize("route, mode", [  # negative cases need something to break: only predict has a body
    ("POST /v1/predict", "positive"), ("POST /v1/predict", "negative"),
    ("GET /healthz", "positive"), ("GET /livez", "positive"), ("GET /metrics", "positive")])
def test_no_request_gets_a_5xx(api_server, route, mode):
    from schemathesis.generation import GenerationMode

    op = operations(api_server)[route]
    seen = []

    @given(case=op.as_strategy(generation_mode=GenerationMode(mode)))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case):
        for headers in ({"Authorization": f"Bearer {KEY}"}, {}):
            response = case.call(headers=headers)
            case.validate_response(response, checks=[not_a_server_error])
            seen.append(response.status_code)

    check()
    assert seen and max(seen) < 500
    if route == "POST /v1/predict" and mode == "positive":
        assert 200 in seen and 401 in seen  # valid bodies were answered, and refused without the token
