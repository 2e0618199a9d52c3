"""The benchmark report's JSON schema (versioned) and its validator.

A report is {"schema_version", "kind": "kiln-bench", "created", "command", "environment", "config",
"results": [latency rows], "data_results": [data rows], "peak_rss_mb"}; rows are described by the
required-key tables below. A reader refuses another schema_version instead of guessing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runtime.errors import ValidationError

SCHEMA_VERSION = 1
KIND = "kiln-bench"

NUM = (int, float)
TOP = {"schema_version": int, "kind": str, "created": str, "command": str, "environment": dict, "config": dict,
       "results": list, "data_results": list}
ENVIRONMENT = {"cpu": str, "cpu_count": int, "cpu_flags": list, "gpus": list, "kiln": str, "versions": dict}
STATS = {"iters": int, "p50_ms": NUM, "p90_ms": NUM, "p99_ms": NUM, "mean_ms": NUM, "min_ms": NUM,
         "throughput": NUM, "spread": NUM, "noisy": bool}
LATENCY_ROW = {"candidate": str, "artifact": str, "artifact_sha256": str, "backend": str, "device": str,
               "batch": int, "seq_len": (int, type(None)), **STATS}
DATA_ROW = {"candidate": str, "backend": str, "data": str, "data_sha256": str, "n": int, "batch_size": int,
            "sentences_per_s": NUM, "wall_s": NUM, "batch_p50_ms": NUM, "batch_p99_ms": NUM, "accuracy": NUM,
            "macro_f1": NUM, "spread": NUM, "noisy": bool}
MAKE_STEP = {"out": str, "command": str, "status": str, "seconds": NUM}  # config.make: a suite's [[make]] steps
MAKE_STATUSES = ("made", "reused", "failed")


def check_keys(obj: Any, spec: dict[str, Any], where: str) -> None:
    if not isinstance(obj, dict):
        raise ValidationError(f"{where} must be an object, got {type(obj).__name__}")
    for key, typ in spec.items():
        if key not in obj:
            raise ValidationError(f"{where} has no {key!r}")
        v = obj[key]
        if isinstance(v, bool) and typ is not bool and bool not in (typ if isinstance(typ, tuple) else (typ,)):
            raise ValidationError(f"{where}.{key} must be {typ}, got a boolean")
        if not isinstance(v, typ):
            want = " or ".join(t.__name__ for t in (typ if isinstance(typ, tuple) else (typ,)))
            raise ValidationError(f"{where}.{key} must be {want}, got {type(v).__name__} {v!r}")


def positive(row: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    """Counts and timings are above zero: a report with 0 s or -3 s renders as if they were measured."""
    for key in keys:
        if row[key] <= 0:
            raise ValidationError(f"{where}.{key} must be > 0, got {row[key]!r}")


def validate(report: Any, where: str = "report") -> dict[str, Any]:
    """Raise ValidationError (one line: where and what) unless `report` is a well-formed report of this version."""
    if not isinstance(report, dict):
        raise ValidationError(f"{where} is not a benchmark report (a JSON object), got {type(report).__name__}")
    version = report.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ValidationError(f"{where} has schema_version {version!r}; this Kiln reads schema_version "
                              f"{SCHEMA_VERSION} (re-run the benchmark with this Kiln to make a comparable report)")
    check_keys(report, TOP, where)
    if report["kind"] != KIND:
        raise ValidationError(f"{where} is a {report['kind']!r} file, not a {KIND!r} report")
    check_keys(report["environment"], ENVIRONMENT, f"{where}.environment")
    steps = report["config"].get("make", [])
    if not isinstance(steps, list):
        raise ValidationError(f"{where}.config.make must be a list of make steps, got {type(steps).__name__}")
    for i, step in enumerate(steps):
        check_keys(step, MAKE_STEP, f"{where}.config.make[{i}]")
        if step["status"] not in MAKE_STATUSES:
            raise ValidationError(f"{where}.config.make[{i}].status must be one of {', '.join(MAKE_STATUSES)}, "
                                  f"got {step['status']!r}")
    for i, row in enumerate(report["results"]):
        check_keys(row, LATENCY_ROW, f"{where}.results[{i}]")
        positive(row, ("iters", "batch", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "throughput"),
                 f"{where}.results[{i}]")
        if row["seq_len"] is not None and row["seq_len"] <= 0:
            raise ValidationError(f"{where}.results[{i}].seq_len must be > 0 (or null), got {row['seq_len']!r}")
        if row["spread"] < 0:
            raise ValidationError(f"{where}.results[{i}].spread must be >= 0, got {row['spread']!r}")
    passes: dict[Any, int] = {}  # interleaved passes per data pass (rows of one pass share the count)
    for i, row in enumerate(report["data_results"]):
        here = f"{where}.data_results[{i}]"
        check_keys(row, DATA_ROW, here)
        for key in ("accuracy", "macro_f1"):
            if not 0 <= row[key] <= 1:
                raise ValidationError(f"{here}.{key} must be in [0, 1], got {row[key]}")
        positive(row, ("n", "batch_size", "sentences_per_s", "wall_s", "batch_p50_ms", "batch_p99_ms"), here)
        if row["spread"] < 0:
            raise ValidationError(f"{here}.spread must be >= 0, got {row['spread']!r}")
        for key in ("max_abs_diff", "agreement"):  # against the pass's reference candidate, when it has one
            v = row.get(key)
            if v is not None and (not isinstance(v, NUM) or isinstance(v, bool) or v < 0 or (key == "agreement" and v > 1)):
                raise ValidationError(f"{here}.{key} must be a number >= 0{' and <= 1' if key == 'agreement' else ''}, got {v!r}")
        if "pass" in row and not isinstance(row["pass"], str):
            raise ValidationError(f"{here}.pass must be the data pass's name (a string), got {row['pass']!r}")
        walls = row.get("round_wall_s")
        if walls is not None:  # one wall time per interleaved pass: the pass-by-pass ratios divide them
            if not isinstance(walls, list) or not walls or not all(
                    isinstance(w, NUM) and not isinstance(w, bool) and w > 0 for w in walls):
                raise ValidationError(f"{here}.round_wall_s must be a list of wall times > 0, one per pass, "
                                      f"got {walls!r}"[:300])
            group = row.get("pass")
            if group in passes and len(walls) != passes[group]:
                raise ValidationError(f"{here}.round_wall_s has {len(walls)} passes; the rows before it have "
                                      f"{passes[group]} (the passes interleave every candidate)")
            passes[group] = len(walls)
    if not report["results"] and not report["data_results"]:
        raise ValidationError(f"{where} holds no rows (neither results nor data_results)")
    return report


def load_report(path: str | Path) -> dict[str, Any]:
    """Read and validate a report file; every problem is one ValidationError line naming the file."""
    p = Path(path)
    if not p.exists():
        raise ValidationError(f"report {p} does not exist")
    if p.is_dir():
        raise ValidationError(f"report {p} is a directory; give the report's .json file")

    def no_constant(name: str) -> Any:  # NaN / Infinity: Python's json takes them, a report must not hold them
        raise ValueError(f"it holds {name}, which is not a number a report can hold")

    try:
        data = json.loads(p.read_text(encoding="utf-8"), parse_constant=no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError, RecursionError) as e:
        raise ValidationError(f"report {p} is not JSON a report can hold: {str(e)[:200]}") from None
    return validate(data, str(p))
