"""deploy/: the Kubernetes manifests validate against the Kubernetes schemas (offline, kubernetes-validate),
every PromQL expression (alerts, adapter rules) parses (promql-parser), and every metric they name is one
kiln serve defines or the real Triton core exports (tests/test_triton.py checks the latter live)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

DEPLOY = REPO / "deploy"
MANIFESTS = ("kiln-serve.yaml", "triton.yaml", "prometheus-adapter.yaml")
# Seen in the metrics of the Triton core nvidia-pytriton bundles (2.51) with summary_latencies on.
TRITON_METRICS = {"nv_inference_request_success", "nv_inference_request_failure", "nv_inference_queue_duration_us",
                  "nv_inference_pending_request_count", "nv_inference_request_summary_us"}
OTHER_METRICS = {"up", "kube_deployment_status_replicas_ready"}  # Prometheus itself; kube-state-metrics
K8S_VERSIONS = ("1.29.0", "1.37.0")  # oldest and newest the manifests are meant for


def documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def adapter_rules() -> list[dict]:
    (config,) = documents("prometheus-adapter.yaml")
    return yaml.safe_load(config["data"]["config.yaml"])["rules"]


def alert_rules() -> list[dict]:
    return [r for g in yaml.safe_load((DEPLOY / "alerts.yaml").read_text())["groups"] for r in g["rules"]]


def adapter_query(rule: dict) -> str:
    """metricsQuery with the adapter's template fields filled in as it would for one HPA."""
    series = re.fullmatch(r"(\w+)\{.*\}", rule["seriesQuery"]).group(1)
    return (rule["metricsQuery"].replace("<<.Series>>", series)
            .replace("<<.LabelMatchers>>", 'namespace="default",pod=~"a|b"').replace("<<.GroupBy>>", "pod"))


def expressions() -> list[str]:
    return [r["expr"] for r in alert_rules()] + [adapter_query(r) for r in adapter_rules()]


def kiln_metrics() -> set[str]:
    """Series names kiln serve exports, read from where runtime/server.py defines them."""
    source = (REPO / "runtime" / "server.py").read_text()
    names = set()
    for kind, name in re.findall(r"prom\.(Counter|Gauge|Histogram)\(\s*\"(\w+)\"", source):
        names |= {"Counter": {f"{name}_total"}, "Gauge": {name},
                  "Histogram": {f"{name}_bucket", f"{name}_sum", f"{name}_count"}}[kind]
    return names


def referenced_metrics(expr: str) -> set[str]:
    import promql_parser

    names: set[str] = set()

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            names.add(node.name)
    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", MANIFESTS)
def test_manifests_validate_against_kubernetes_schemas(name, version):
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    docs = documents(name)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)  # strict: an unknown (misspelt) field fails


def test_deployments_probe_health_and_outlast_the_drain():
    for name, ready, live in (("kiln-serve.yaml", "/healthz", "/livez"),
                              ("triton.yaml", "/v2/health/ready", "/v2/health/live")):
        kinds = {d["kind"]: d for d in documents(name)}
        assert set(kinds) == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
        pod = kinds["Deployment"]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["readinessProbe"]["httpGet"]["path"] == ready
        assert container["livenessProbe"]["httpGet"]["path"] == live
        assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
        assert any(m["mountPath"] == "/models" and m["readOnly"] for m in container["volumeMounts"])
        # both servers drain in-flight requests for up to 30 s, after a 5 s preStop pause
        assert pod["terminationGracePeriodSeconds"] > 30 + 5
        target = kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"]
        assert target == kinds["Deployment"]["metadata"]["name"]
    triton_args = " ".join(kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "--exit-timeout-secs=30" in triton_args and "summary_latencies=true" in triton_args


def test_each_autoscaler_metric_has_an_adapter_rule():
    served = {r["name"]["as"] for r in adapter_rules()}
    for name in ("kiln-serve.yaml", "triton.yaml"):
        (hpa,) = [d for d in documents(name) if d["kind"] == "HorizontalPodAutoscaler"]
        assert {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]} <= served


def test_alert_rules_have_the_structure_prometheus_needs():
    rules = alert_rules()
    assert {r["alert"] for r in rules} == {
        "KilnServeErrorRate", "KilnServeP99Latency", "KilnServeQueueSaturated", "KilnServeModelNotReady",
        "TritonErrorRate", "TritonP99Latency", "TritonQueueSaturated", "TritonModelNotReady"}
    for r in rules:
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, r["alert"]
        assert re.fullmatch(r"\d+[smh]", r["for"]) and r["labels"]["severity"] in ("page", "ticket")
        assert r["annotations"]["summary"]


def test_every_expression_parses_and_names_real_metrics():
    pytest.importorskip("promql_parser", reason="pip install promql-parser")
    known = kiln_metrics() | TRITON_METRICS | OTHER_METRICS
    assert {"kiln_requests_total", "kiln_request_latency_seconds_bucket", "kiln_queue_depth",
            "kiln_worker_alive"} <= kiln_metrics()
    for expr in expressions():
        names = referenced_metrics(expr)  # raises ValueError on a PromQL syntax error
        assert names and names <= known, (expr, names - known)


def test_a_broken_expression_is_caught():
    promql_parser = pytest.importorskip("promql_parser", reason="pip install promql-parser")
    with pytest.raises(ValueError):
        promql_parser.parse('sum(rate(kiln_requests_total{status=~"5.."}[5m])')


def triton_metrics_used() -> set[str]:
    return {n for e in expressions() for n in referenced_metrics(e) if n.startswith("nv_")}


def test_triton_metrics_used_are_the_listed_ones():
    pytest.importorskip("promql_parser", reason="pip install promql-parser")
    assert triton_metrics_used() == TRITON_METRICS


def test_dockerfile_uses_the_image_of_the_tested_core():
    text = (DEPLOY / "triton.Dockerfile").read_text()
    assert "nvcr.io/nvidia/tritonserver:24.10-py3" in text and "tokenizers" in text
    assert Path(DEPLOY / "README.md").read_text().count("kubectl get --raw") == 1
