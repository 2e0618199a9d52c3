"""The human summary of an artifact (`kiln inspect` and every stage): what it takes and answers, and how it
was made, step by step, in the words `--json` has in full."""

from __future__ import annotations

from typing import Any

from runtime.artifact import Artifact


def describe(art: Artifact, size: str | None = None) -> str:
    lines = [f"artifact  {art.path}", f"format    {art.format}", f"task      {art.task}"]
    lines += [f"input     {s.describe()}" for s in art.inputs]
    lines += [f"output    {s.describe()}" for s in art.outputs]
    if art.labels:
        lines.append("labels    " + ", ".join(f"{k}={v}" for k, v in sorted(art.labels.items())))
    lines += engine_lines(art)
    lines += [step_line(step) for step in art.lineage]
    if art.untrained_parameters:
        names = art.untrained_parameters
        lines.append(f"WARNING   untrained (random) weights: {', '.join(names[:4])}"
                     f"{f' (+{len(names) - 4} more)' if len(names) > 4 else ''}; exported with --allow-untrained, "
                     "its answers mean nothing: for timing only")
    if size is None:
        total = sum(f.stat().st_size for f in art.path.rglob("*") if f.is_file())
        size = f"{total / 1e6:.1f} MB in {len(art.files)} files"
    lines.append(f"size      {size}")
    return "\n".join(lines)


def engine_lines(art: Artifact) -> list[str]:
    trt = art.meta.get("tensorrt")
    if not isinstance(trt, dict):
        return []
    # what built the engine, and for which GPUs: the runtime checks the same record
    from runtime.backends.trt import FLAVOURS, target_text

    flavour = FLAVOURS.get(trt.get("flavour", ""))
    lines = [f"engine    {flavour.display if flavour else trt.get('flavour')} {trt.get('version')}, "
             f"for {target_text(trt.get('target', {}))}",
             f"precision {trt.get('precision')} (kernels: {', '.join(trt.get('precisions', []))}; "
             f"flags: {', '.join(trt.get('builder_flags', [])) or 'none'})"]
    for i, profile in enumerate(trt.get("profiles", [])):
        lines += [f"profile {i} {n}: min {p['min']}, opt {p['opt']}, max {p['max']}" for n, p in profile.items()]
    return lines


def step_line(step: Any) -> str:
    line = f"step      {step.stage} ({step.seconds:.1f}s)"
    how = made_how(step.stage, step.config, step.metrics)
    if how:
        line += ": " + how
    val = step.metrics.get("validation")
    if val and val.get("outputs"):
        worst = max(o["max_abs"] for o in val["outputs"].values())
        cos = min(o["cosine"] for o in val["outputs"].values())
        line += f"; validated on {val['batches']} batches, max abs diff {worst:.2e}, cosine {cos:.6f}"
    return line


def made_how(stage: str, config: dict[str, Any], metrics: dict[str, Any]) -> str:
    """The settings that decide what a step made (method, fusion, nodes kept in fp32, ...), in a few words."""
    parts: list[str] = []
    if stage == "quantize":
        method = config.get("method", "?")
        if method == "static-int8":
            method += f" ({config.get('calibrator')} calibration)"
        parts.append(method)
        if config.get("per_channel") is not None and method != "fp16":
            parts.append("per-channel weights" if config.get("per_channel") else "per-tensor weights")
        guard = metrics.get("accuracy_guard")
        if guard:
            kept = guard.get("kept_fp32") or []
            parts.append(f"accuracy {guard['accuracy_fp32']:.4f} -> {guard['accuracy']:.4f}")
            parts.append(f"kept in fp32: {', '.join(kept) if kept else 'none'}")
        elif config.get("exclude_nodes"):
            parts.append(f"kept in fp32: {', '.join(config['exclude_nodes'])}")
    elif stage == "to_onnx":
        parts.append(f"opset {config.get('opset')}" + (", fused" if config.get("optimize") else ""))
    elif stage == "finetune":
        ev = metrics.get("eval") or {}
        parts.append(f"{metrics.get('steps', '?')} steps" + (f", eval accuracy {ev['accuracy']:.4f}"
                                                              if "accuracy" in ev else ", not evaluated"))
    elif stage == "prune":
        parts.append(str(config.get("kind", "")))
    fused = metrics.get("fused_ops")
    if fused:
        parts.append("fused " + ", ".join(f"{n} x{c}" for n, c in sorted(fused.items())))
    elif stage in ("quantize", "optimize") and fused == {}:
        parts.append("no fusion")
    return ", ".join(p for p in parts if p)
