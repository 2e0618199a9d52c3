"""One benchmark run: a latency sweep and/or a real-data pass, with peers, into one validated report."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from benchmarks.environment import capture_environment, rss_mb
from benchmarks.harness.candidates import Candidate, Peer
from benchmarks.harness.realdata import DataConfig, run_data
from benchmarks.harness.schema import KIND, SCHEMA_VERSION, validate
from benchmarks.harness.sweep import Progress, SweepConfig, run_sweep
from runtime.errors import ConfigError


@dataclass(frozen=True)
class BenchPlan:
    candidates: tuple[Candidate, ...]
    sweep: SweepConfig | None = SweepConfig()
    data: DataConfig | None = None
    peers: tuple[Peer, ...] = ()
    title: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "candidates", unique_labels(self.candidates))
        object.__setattr__(self, "peers", tuple(self.peers))
        if not self.candidates:
            raise ConfigError("name at least one artifact to benchmark")
        if self.sweep is None and self.data is None:
            raise ConfigError("nothing to measure: give a latency sweep, --data, or both")
        if self.peers and self.data is None:
            raise ConfigError("peers run end to end on labelled data: give --data (e.g. movie-snippets:test)")


def unique_labels(cands: Sequence[Candidate]) -> tuple[Candidate, ...]:
    """Rows are matched by label (in reports and gates): a repeated label gets #2, #3, ..."""
    seen: dict[str, int] = {}
    out = []
    for c in cands:
        seen[c.label] = seen.get(c.label, 0) + 1
        out.append(c if seen[c.label] == 1 else dataclasses.replace(c, label=f"{c.label}#{seen[c.label]}"))
    return tuple(out)


def plan_config(plan: BenchPlan) -> dict[str, Any]:
    def plain(x: Any) -> Any:
        return {k: str(v) if hasattr(v, "__fspath__") else v for k, v in dataclasses.asdict(x).items()}

    return {"title": plan.title, "candidates": [plain(c) for c in plan.candidates],
            "sweep": plain(plan.sweep) if plan.sweep else None, "data": plain(plan.data) if plan.data else None,
            "peers": [plain(p) for p in plan.peers], **plan.extra}


def run_bench(plan: BenchPlan, command: str, progress: Progress | None = None) -> dict[str, Any]:
    """Run the plan; return the report (schema_version'd, validated)."""
    env = capture_environment()
    if plan.peers:
        from benchmarks.harness.peers import peer_python

        for peer in plan.peers:
            peer_python(peer.python)
    results = run_sweep(plan.candidates, plan.sweep, progress) if plan.sweep else []
    data_rows: list[dict[str, Any]] = []
    if plan.data:
        client = None
        if plan.peers:
            from benchmarks.harness.peers import PeerClient, peer_python

            python = peer_python(plan.peers[0].python)  # a missing peer environment fails before any timing
            client = lambda: PeerClient(python)  # noqa: E731
        data_rows = run_data(plan.candidates, plan.data, plan.peers, client, progress)
        peer_versions = next((r.get("versions") for r in data_rows if r.get("versions")), None)
        if peer_versions:
            env["peer_versions"] = peer_versions
    report = {"schema_version": SCHEMA_VERSION, "kind": KIND, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "command": command, "environment": env, "config": plan_config(plan), "results": results,
              "data_results": data_rows, "peak_rss_mb": rss_mb()[1]}
    return validate(report)


def backend_names(value: str) -> list[str]:
    """`kiln bench --backend a,b` -> [a, b], each checked before any session opens (an empty list is not 'no
    artifact': it names no backend)."""
    from runtime.session import BACKENDS

    valid = ("auto", *BACKENDS)
    hint = f"valid (comma-separated): {', '.join(valid)}"
    names = [b.strip() for b in value.split(",") if b.strip()]
    if not names:
        raise ConfigError(f"--backend {value!r} names no backend; {hint}")
    for name in names:
        if name not in valid:
            raise ConfigError(f"--backend: unknown backend {name!r}; {hint}")
    return names


def default_candidates(artifacts: Sequence[str], backends: Sequence[str], device: str,
                       options: dict[str, Any], torch_options: dict[str, Any]) -> tuple[Candidate, ...]:
    """Every artifact on every backend (torch options reach only the torch backend; --dtype also openvino)."""
    from runtime.backends.options import dtype_options

    return tuple(Candidate(a, b, device, options | dtype_options(b, torch_options))
                 for a in artifacts for b in backends)
