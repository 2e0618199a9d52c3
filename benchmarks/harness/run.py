"""One benchmark run: a latency sweep and/or a real-data pass, with peers, into one validated report."""

from __future__ import annotations

import dataclasses
import math
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
    data: DataConfig | tuple[DataConfig, ...] | None = None  # one real-data pass, or several (a suite's [[data]])
    peers: tuple[Peer, ...] = ()
    title: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "candidates", unique_labels(self.candidates))
        object.__setattr__(self, "peers", tuple(self.peers))
        if not self.candidates:
            raise ConfigError("name at least one artifact to benchmark")
        if self.sweep is None and not self.passes:
            raise ConfigError("nothing to measure: give a latency sweep, --data, or both")
        if self.peers and not self.passes:
            raise ConfigError("peers run end to end on labelled data: give --data (e.g. movie-snippets:test)")
        for peer in self.peers:
            if peer.sweep and self.sweep is None:
                raise ConfigError(f"peer {peer.label} has sweep = true, but the plan has no latency sweep to time its "
                                  "model in; add a [sweep] (or --batch/--seq-len) or drop sweep = true")
            if peer.like and peer.like not in [c.label for c in self.candidates]:
                raise ConfigError(f"peer {peer.label}: like = {peer.like!r} is no candidate's label (the artifact that "
                                  f"lends its model tokenizer and specs); valid: "
                                  f"{', '.join(c.label for c in self.candidates)}")
        labels = [c.label for c in self.candidates] + [p.label for p in self.peers]
        names = [d.name for d in self.passes]
        if len(set(names)) != len(names):
            raise ConfigError(f"two data passes share the name {[n for n in names if names.count(n) > 1][0]!r}; "
                              "give each its own name")
        model_labels = [f"{p.label} (model)" for p in self.peers if p.sweep]  # a sweep may name a peer's model
        for what, chosen in [("sweep", self.sweep.candidates if self.sweep else ())] + \
                [(f"data pass {d.name!r}", d.candidates) for d in self.passes]:
            valid = labels + model_labels if what == "sweep" else labels
            unknown = [c for c in chosen if c not in valid]
            if unknown:
                raise ConfigError(f"{what} names {unknown[0]!r}, which is no candidate or peer; valid: {', '.join(valid)}")
        for d in self.passes:
            kiln = [c.label for c in self.candidates if not d.candidates or c.label in d.candidates]
            if not kiln:
                raise ConfigError(f"data pass {d.name!r} holds no Kiln candidate (its labels and task define the data)")
            if d.reference and d.reference not in kiln:
                raise ConfigError(f"data pass {d.name!r}: reference {d.reference!r} is not one of its Kiln "
                                  f"candidates; valid: {', '.join(kiln)}")

    @property
    def passes(self) -> tuple[DataConfig, ...]:
        """The real-data passes, in order ([] without --data)."""
        if self.data is None:
            return ()
        return (self.data,) if isinstance(self.data, DataConfig) else tuple(self.data)


def unique_labels(cands: Sequence[Candidate]) -> tuple[Candidate, ...]:
    """Rows are matched by label (in reports and gates): a repeated label gets #2, #3, ..."""
    seen: dict[str, int] = {}
    out = []
    for c in cands:
        seen[c.label] = seen.get(c.label, 0) + 1
        out.append(c if seen[c.label] == 1 else dataclasses.replace(c, label=f"{c.label}#{seen[c.label]}"))
    return tuple(out)


def json_safe(v: Any) -> Any:
    """Paths as strings, and inf/nan (call_overhead_tokens = inf) as strings: a report is strict JSON."""
    if hasattr(v, "__fspath__"):
        return str(v)
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    return v


def plan_config(plan: BenchPlan) -> dict[str, Any]:
    def plain(x: Any) -> Any:
        return json_safe(dataclasses.asdict(x))

    passes = [plain(d) for d in plan.passes]
    return {"title": plan.title, "candidates": [plain(c) for c in plan.candidates],
            "sweep": plain(plan.sweep) if plan.sweep else None,
            "data": (passes[0] if len(passes) == 1 else passes) if passes else None,
            "peers": [plain(p) for p in plan.peers], **plan.extra}


def run_bench(plan: BenchPlan, command: str, progress: Progress | None = None) -> dict[str, Any]:
    """Run the plan; return the report (schema_version'd, validated)."""
    env = capture_environment()
    if plan.peers:  # a missing peer environment or library fails before any timing
        from benchmarks.harness.peers import check_peers

        check_peers(plan.peers)
    results = sweep_with_peer_models(plan, progress) if plan.sweep else []
    data_rows: list[dict[str, Any]] = []
    for i, cfg in enumerate(plan.passes):
        if len(plan.passes) > 1 and progress:
            progress(f"data pass {i + 1}/{len(plan.passes)}: {cfg.name}")
        peers = chosen(plan.peers, cfg.candidates)
        client = None
        if peers:
            from benchmarks.harness.peers import PeerClients

            client = lambda peers=peers: PeerClients(peers)  # noqa: E731  (one server per peer Python)
        rows = run_data(chosen(plan.candidates, cfg.candidates), cfg, peers, client, progress)
        if len(plan.passes) > 1:  # rows of different passes are told apart (reports, gates) by their pass
            rows = [r | {"pass": cfg.name} for r in rows]
        data_rows += rows
    if data_rows:
        from benchmarks.harness.peers import peer_versions

        versions = peer_versions(data_rows)
        if versions:
            env["peer_versions"] = versions
    report = {"schema_version": SCHEMA_VERSION, "kind": KIND, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "command": command, "environment": env, "config": plan_config(plan), "results": results,
              "data_results": data_rows, "peak_rss_mb": rss_mb()[1]}
    return validate(report)


def sweep_with_peer_models(plan: BenchPlan, progress: Progress | None) -> list[dict[str, Any]]:
    """The latency sweep, with the model of every peer marked sweep = true timed beside Kiln's candidates (the
    model alone, same feeds and loop); its rows say which library made it (made_by)."""
    assert plan.sweep is not None
    cands = chosen(plan.candidates, plan.sweep.candidates)
    made_by: dict[str, str] = {}
    # a sweep that lists its candidates times a peer's model only when the list names it (LABEL or "LABEL (model)")
    named = plan.sweep.candidates
    sweep_peers = [p for p in plan.peers if p.sweep and (not named or {p.label, f"{p.label} (model)"} & set(named))]
    if sweep_peers:
        from benchmarks.harness.peers import peer_model_candidates

        extra = peer_model_candidates(sweep_peers, plan.candidates, progress)
        cands += tuple(c for c, _ in extra)
        made_by = {c.label: by for c, by in extra}
    rows = run_sweep(cands, plan.sweep, progress)
    return [r | {"made_by": made_by[r["candidate"]]} if r["candidate"] in made_by else r for r in rows]


def chosen(items: Sequence[Any], labels: Sequence[str]) -> tuple[Any, ...]:
    """The candidates (or peers) a sweep or data pass names; all of them when it names none."""
    return tuple(items) if not labels else tuple(x for x in items if x.label in labels)


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
