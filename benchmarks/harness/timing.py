"""Interleaved rounds: the one timing loop. Every candidate is warmed up, then each round runs every
candidate in turn, so a drift in the machine's speed (another process, thermal limits) hits all alike.

A candidate is any callable that does one unit of work and returns how many items it handled (rows of a
batch, or sentences of a file); the loop times it, and the spread between rounds says how far the
machine itself moved while it was measured."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Mapping

import numpy as np

from runtime.errors import ConfigError

# A row whose round medians spread by more than this fraction of the overall median is flagged noisy:
# a 10% latency budget cannot be judged on a row that moved 10% between its own rounds.
NOISY_SPREAD = 0.10


@dataclass(frozen=True)
class Timings:
    """Per round, the milliseconds of each timed call (and the items each call handled)."""

    rounds: tuple[tuple[float, ...], ...]
    items: int  # items per call (batch rows, or sentences per pass over a file)

    @property
    def all_ms(self) -> np.ndarray:
        return np.asarray([ms for r in self.rounds for ms in r], dtype=np.float64)


def latency_stats(t: Timings, noisy_spread: float = NOISY_SPREAD) -> dict[str, Any]:
    """p50/p90/p99/mean/min in ms, items/s at the median, and the spread between round medians."""
    ms = t.all_ms
    if ms.size == 0:
        raise ConfigError("no timings to summarise: every round was empty")
    p50 = float(np.percentile(ms, 50))
    medians = [float(np.median(r)) for r in t.rounds if r]
    spread = (max(medians) - min(medians)) / p50 if p50 > 0 and len(medians) > 1 else 0.0
    return {"iters": int(ms.size), "p50_ms": round(p50, 3), "p90_ms": round(float(np.percentile(ms, 90)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3), "mean_ms": round(float(ms.mean()), 3),
            "min_ms": round(float(ms.min()), 3), "throughput": round(t.items / (p50 / 1000), 2) if p50 > 0 else 0.0,
            "round_medians_ms": [round(m, 3) for m in medians], "spread": round(spread, 4),
            "noisy": bool(spread > noisy_spread)}


def bar(done: int, total: int, width: int = 20) -> str:
    """A text progress bar for stderr: [#########-----------] 3/7."""
    filled = width * done // max(total, 1)
    return f"[{'#' * filled}{'-' * (width - filled)}] {done}/{total}"


def check_noisy_spread(value: object, where: str) -> None:
    """noisy_spread is a fraction of the median: a number in (0, 10) -- a string or nan would crash or pass
    silently after minutes of measuring."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 10:
        raise ConfigError(f"{where} noisy_spread is a fraction of the median (e.g. 0.1), got {value!r}")


def check_counts(warmup: int, rounds: int, per_round: int) -> None:
    counts = {"warmup": warmup, "rounds": rounds, "per_round": per_round}
    wrong = {k: v for k, v in counts.items() if not isinstance(v, int) or isinstance(v, bool)}
    if wrong:
        raise ConfigError("warmup, rounds and per_round are whole numbers; got "
                          + ", ".join(f"{k}={v!r}" for k, v in wrong.items()))
    if warmup < 0 or rounds < 1 or per_round < 1:
        raise ConfigError(f"warmup must be >= 0, rounds and iterations per round >= 1; "
                          f"got warmup={warmup}, rounds={rounds}, per_round={per_round}")


def interleave(candidates: Mapping[Hashable, Callable[[], Any]], warmup: int = 3, rounds: int = 5,
               per_round: int = 5, sync: Callable[[], None] | None = None, pause_s: float = 0.2,
               on_round: Callable[[int, int], None] | None = None,
               clock: Callable[[], float] = time.perf_counter) -> dict[Hashable, list[list[float]]]:
    """Warm every candidate up, then time `per_round` calls of each per round, candidates in turn.

    `sync` (e.g. torch.cuda.synchronize) runs before each clock read so GPU work is inside the time.
    Returns per candidate, per round, the milliseconds of each call."""
    check_counts(warmup, rounds, per_round)
    for fn in candidates.values():
        for _ in range(warmup):  # first runs pay for lazy kernel selection and memory arenas
            fn()
        if sync:
            sync()
    out: dict[Hashable, list[list[float]]] = {k: [] for k in candidates}
    for r in range(rounds):
        for key, fn in candidates.items():
            # onnxruntime's idle workers spin for a while after a run; let them park before the next
            # candidate starts, or it pays for the previous one's threads
            if pause_s:
                time.sleep(pause_s)
            times = []
            for _ in range(per_round):
                t0 = clock()
                fn()
                if sync:
                    sync()
                times.append((clock() - t0) * 1000)
            out[key].append(times)
        if on_round:
            on_round(r + 1, rounds)
    return out
