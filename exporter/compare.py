"""compare(reference, candidate, feeds, tolerance): per-output agreement with stated tolerances."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import numpy as np

from runtime.errors import ConfigError, ValidationError
from runtime.session import Session


@dataclass(frozen=True)
class Tolerance:
    """Limits a candidate must meet per output; None disables a check."""

    max_abs: float | None
    min_cosine: float
    min_top1: float  # fraction of rows whose argmax agrees (classification logits only)


# One table for every stage's validation. fp32 is tight: a correct export differs only by kernel
# rounding (~1e-6 on MiniLM). fp16 and int8 are judged on direction (cosine over all outputs) and
# decisions (top-1). The validation feeds are random tokens, whose logits sit near the
# decision boundary, so the int8 limits catch a broken graph; int8 *task accuracy* is judged on
# labelled data by the accuracy guard (quantize --max-accuracy-drop) and the benchmarks.
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_abs=1e-4, min_cosine=0.99999, min_top1=1.0),
    "fp16": Tolerance(max_abs=5e-2, min_cosine=0.999, min_top1=0.9),
    "int8": Tolerance(max_abs=None, min_cosine=0.95, min_top1=0.75),
}


def tolerance_for(precision: str) -> Tolerance:
    try:
        return TOLERANCES[precision]
    except KeyError:
        raise ConfigError(f"unknown precision {precision!r}; valid: {', '.join(TOLERANCES)}") from None


@dataclass
class OutputComparison:
    name: str
    max_abs: float = 0.0
    max_rel: float = 0.0  # max_abs divided by the reference's largest magnitude
    cosine: float = 1.0  # cosine similarity of all outputs over all feeds, flattened into one vector
    top1: float | None = None
    values: int = 0  # how many output values were compared
    nonfinite_reference: int = 0  # of them NaN/inf in the reference, in the candidate
    nonfinite_candidate: int = 0
    failures: list[str] = field(default_factory=list)


@dataclass
class Comparison:
    outputs: dict[str, OutputComparison]
    tolerance: Tolerance
    batches: int

    @property
    def passed(self) -> bool:
        return not any(o.failures for o in self.outputs.values())

    def failures(self) -> list[str]:
        return [f for o in self.outputs.values() for f in o.failures]

    def metrics(self) -> dict[str, Any]:
        return {"batches": self.batches, "tolerance": asdict(self.tolerance),
                "outputs": {n: {k: v for k, v in asdict(o).items() if k not in ("name", "failures")}
                            for n, o in self.outputs.items()}}

    @property
    def reference_nonfinite(self) -> bool:
        """The reference itself gives NaN/inf: the source is broken, not the conversion."""
        return any(o.nonfinite_reference for o in self.outputs.values())

    def raise_if_failed(self, what: str, broken_reference: str = "the reference model gives NaN/inf") -> None:
        """broken_reference: what to blame when the reference itself is not finite."""
        if self.reference_nonfinite:
            raise ValidationError(f"{broken_reference}, so {what} cannot be validated: " + "; ".join(self.failures()))
        if not self.passed:
            raise ValidationError(f"{what} failed validation: " + "; ".join(self.failures()))


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a2 = a.reshape(a.shape[0], -1).astype(np.float64)
    b2 = b.reshape(b.shape[0], -1).astype(np.float64)
    denom = np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1)
    return np.where(denom > 0, (a2 * b2).sum(axis=1) / np.maximum(denom, 1e-300), 1.0)


def compare(reference: Session, candidate: Session, feeds: Iterable[dict[str, np.ndarray]],
            tolerance: Tolerance | str = "fp32") -> Comparison:
    """Run both sessions on every feed; collect max abs/rel diff, worst cosine and top-1 agreement."""
    tol = tolerance_for(tolerance) if isinstance(tolerance, str) else tolerance
    stats = {o.name: OutputComparison(o.name) for o in reference.outputs}
    agree: dict[str, list[int]] = {n: [0, 0] for n in stats}
    # dot product and squared norms accumulated over every feed: one cosine for the whole output, so
    # a single near-zero row (logits at the decision boundary) cannot dominate it
    dots: dict[str, list[float]] = {n: [0.0, 0.0, 0.0] for n in stats}
    batches = 0
    for feed in feeds:
        batches += 1
        ref, cand = reference.run(feed), candidate.run(feed)
        for name, s in stats.items():
            if name not in cand:
                s.failures.append(f"output {name!r} missing from the candidate")
                continue
            r, c = ref[name].astype(np.float64), cand[name].astype(np.float64)
            if r.shape != c.shape:
                s.failures.append(f"output {name!r}: shape {c.shape} != reference {r.shape}")
                continue
            # NaN compares false with everything, so it would slip through every limit below; count it
            # and judge the numbers on the values both sides give as finite (the metrics go to JSON)
            r_ok, c_ok = np.isfinite(r), np.isfinite(c)
            s.values += r.size
            s.nonfinite_reference += int(r.size - r_ok.sum())
            s.nonfinite_candidate += int(c.size - c_ok.sum())
            if not (r_ok.all() and c_ok.all()):
                both = r_ok & c_ok
                r, c = np.where(both, r, 0.0), np.where(both, c, 0.0)
            diff = float(np.abs(r - c).max())
            s.max_abs = max(s.max_abs, diff)
            s.max_rel = max(s.max_rel, diff / max(float(np.abs(r).max()), 1e-12))
            acc = dots[name]
            acc[0] += float((r * c).sum())
            acc[1] += float((r * r).sum())
            acc[2] += float((c * c).sum())
            if name == "logits":
                agree[name][0] += int((r.argmax(-1) == c.argmax(-1)).sum())
                agree[name][1] += int(np.prod(r.shape[:-1]))
    for name, s in stats.items():
        dot, rr, cc = dots[name]
        s.cosine = dot / (rr * cc) ** 0.5 if rr > 0 and cc > 0 else float(rr == cc)
        if agree[name][1]:
            s.top1 = agree[name][0] / agree[name][1]
        for side in ("reference", "candidate"):
            bad = getattr(s, f"nonfinite_{side}")
            if bad:
                s.failures.append(f"output {name!r}: the {side} gives {bad} of {s.values} values NaN/inf")
        if s.failures:
            continue
        if tol.max_abs is not None and s.max_abs > tol.max_abs:
            s.failures.append(f"output {name!r}: max abs diff {s.max_abs:.3g} > {tol.max_abs:g}")
        if s.cosine < tol.min_cosine:
            s.failures.append(f"output {name!r}: cosine {s.cosine:.6f} < {tol.min_cosine}")
        if s.top1 is not None and s.top1 < tol.min_top1:
            s.failures.append(f"output {name!r}: top-1 agreement {s.top1:.3f} < {tol.min_top1}")
    if batches == 0:
        raise ConfigError("compare got no feeds; give at least one batch")
    return Comparison(stats, tol, batches)
