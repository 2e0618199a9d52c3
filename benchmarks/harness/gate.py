"""Regression gates: compare a report with a baseline, like-for-like rows only, within stated budgets.

A latency change counts as a regression only when it is beyond the budget *and* beyond the noise seen
between rounds (the larger spread of the two rows); a change beyond the budget but inside the noise is
reported as "within noise", never passed off as either. Rows measured where the numbers cannot be
compared (another CPU, other library versions, other data) are flagged and never compared."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runtime.errors import ConfigError, KilnError

# what must match for two environments' numbers to be comparable (kiln itself may differ: that is the change)
COMPARED_LIBRARIES = ("torch", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu", "tokenizers", "numpy",
                      "tensorrt", "tensorrt-rtx", "openvino")


class GateFailed(KilnError):
    """A budget was broken: the diff table has been printed."""


@dataclass(frozen=True)
class Budget:
    max_latency_regression: float | None = None  # percent slower allowed
    max_accuracy_drop: float | None = None  # accuracy points (0-100 scale) allowed to drop

    def __post_init__(self) -> None:
        for name in ("max_latency_regression", "max_accuracy_drop"):
            v = getattr(self, name)
            if v is not None and not v >= 0:
                raise ConfigError(f"{name} must be >= 0, got {v}")


def parse_percent(value: str | None, what: str) -> float | None:
    """'10%' or '10' -> 10.0."""
    if value is None:
        return None
    text = str(value).strip().removesuffix("%")
    try:
        v = float(text)
    except ValueError:
        raise ConfigError(f"{what} must be a percentage such as 10% or 10, got {value!r}") from None
    if not v >= 0:
        raise ConfigError(f"{what} must be >= 0, got {value!r}")
    return v


def environment_mismatch(base: dict[str, Any], cur: dict[str, Any]) -> list[str]:
    """Why numbers from these two environments cannot be compared ([] when they can)."""
    why = []
    for key in ("cpu", "cpu_count", "gpus"):
        if base.get(key) != cur.get(key):
            why.append(f"{key} {base.get(key)} vs {cur.get(key)}")
    bv, cv = base.get("versions", {}), cur.get("versions", {})
    why += [f"{lib} {bv.get(lib)} vs {cv.get(lib)}" for lib in COMPARED_LIBRARIES if bv.get(lib) != cv.get(lib)]
    return why


def latency_key(row: dict[str, Any]) -> str:
    shape = f"b{row['batch']}" + (f" x s{row['seq_len']}" if row.get("seq_len") is not None else "")
    return f"{row['candidate']} {row['device']} {shape}"


def data_key(row: dict[str, Any]) -> str:
    """A data row's identity; a suite with several passes names the pass (batch size, sample)."""
    return f"{row['candidate']} on {row['data']}" + (f" ({row['pass']})" if row.get("pass") else "")


def latency_verdict(change_pct: float, noise_pct: float, budget: float | None) -> str:
    if budget is None:
        return "not gated"
    if change_pct <= budget:
        return "faster" if change_pct < -noise_pct else "ok"
    return "REGRESSION" if change_pct > noise_pct else "within noise"


def compare(baseline: dict[str, Any], current: dict[str, Any], budget: Budget) -> list[dict[str, Any]]:
    """One diff row per compared metric (and one per incomparable or unmatched row)."""
    env_why = environment_mismatch(baseline["environment"], current["environment"])
    out: list[dict[str, Any]] = []
    sections = [("results", latency_key, "p50_ms", None), ("data_results", data_key, "wall_s", "data_sha256")]
    for section, key_of, metric, data_hash in sections:
        base_rows = {key_of(r): r for r in baseline[section]}
        for row in current[section]:
            key = key_of(row)
            base = base_rows.get(key)
            if base is None:
                out.append({"row": key, "metric": metric, "status": "new (no baseline row)"})
                continue
            why = list(env_why)
            if data_hash and base.get(data_hash) != row.get(data_hash):
                why.append(f"data sha256 {str(base.get(data_hash))[:12]} vs {str(row.get(data_hash))[:12]}")
            if why:
                out.append({"row": key, "metric": metric, "status": "NOT COMPARED: " + "; ".join(why)})
                continue
            change = 100 * (row[metric] - base[metric]) / base[metric] if base[metric] else 0.0
            noise = 100 * max(base["spread"], row["spread"])
            out.append({"row": key, "metric": metric, "baseline": base[metric], "current": row[metric],
                        "change": f"{change:+.1f}%", "noise": f"±{noise:.1f}%",
                        "status": latency_verdict(change, noise, budget.max_latency_regression)})
            if "accuracy" in row:
                drop = 100 * (base["accuracy"] - row["accuracy"])
                limit = budget.max_accuracy_drop
                status = "not gated" if limit is None else ("ACCURACY DROP" if drop > limit + 1e-9 else "ok")
                out.append({"row": key, "metric": "accuracy", "baseline": base["accuracy"],
                            "current": row["accuracy"], "change": f"{-drop:+.2f} pts", "noise": "exact",
                            "status": status})
    return out


def broken(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows that break the budget; a gate that could compare nothing is broken too (a CI gate pointed at the
    wrong baseline, or one from another machine, must not pass forever)."""
    bad = [r for r in rows if r["status"] in ("REGRESSION", "ACCURACY DROP")]
    if not any("baseline" in r for r in rows):
        bad.append({"row": "every row", "metric": "-", "change": "nothing comparable", "status": "NOTHING COMPARED"})
    return bad


def summary(rows: list[dict[str, Any]], budget: Budget) -> str:
    """The one line a CI log shows: within budget, or what broke it."""
    bad = broken(rows)
    skipped = sum(r["status"].startswith("NOT COMPARED") for r in rows)
    compared = sum("baseline" in r for r in rows)
    limits = (f"latency +{budget.max_latency_regression:g}%" if budget.max_latency_regression is not None else "",
              f"accuracy -{budget.max_accuracy_drop:g} pts" if budget.max_accuracy_drop is not None else "")
    stated = ", ".join(x for x in limits if x) or "no budget given"
    tail = f" ({skipped} not compared: other machine, libraries or data)" if skipped else ""
    if compared == 0:
        return (f"the gate compared nothing ({stated}): no row of the baseline matches a row of this run on the "
                f"same machine, libraries and data{tail}; give a baseline made like this run")
    if bad:
        return (f"{len(bad)} of {compared} compared metrics broke the budget ({stated}): "
                + "; ".join(f"{r['row']} {r['metric']} {r['change']}" for r in bad) + tail)
    return f"within budget ({stated}): {compared} metrics compared{tail}"
