"""measure_latency: warm up, time each call, report percentiles (never a bare mean)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from runtime.errors import ConfigError
from runtime.session import Session


@dataclass(frozen=True)
class LatencyResult:
    backend: str
    batch: int
    seq_len: int | None  # tokens per row (text); None for families whose items are not sequences
    iters: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    throughput: float  # items (sequences, images) per second at the median latency
    image: str | None = None  # 'CxHxW' of one image (vision)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def example_feed(session: Session, batch: int, size: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """The artifact family's seeded example feed for the session's inputs (for text: full-length,
    unpadded rows of `size` in-vocabulary token ids; families with fixed shapes ignore size)."""
    art = session.artifact
    return art.family.example_feed(session.inputs, art.model_meta, batch, size, seed)


def token_feed(session: Session, batch: int, seq_len: int, seed: int = 0) -> dict[str, np.ndarray]:
    """example_feed under its old, text-only name."""
    return example_feed(session, batch, seq_len, seed)


def measure_interleaved(runs: dict[tuple[str, int, int], tuple[Session, dict[str, np.ndarray]]], warmup: int = 5,
                        iters: int = 30, rounds: int = 5) -> dict[tuple[str, int, int], LatencyResult]:
    """Like measure_latency for several (session, feed) pairs, timed in interleaved rounds (the harness's
    one loop, benchmarks/harness/timing.py): drift in the machine's speed hits every pair alike."""
    from benchmarks.harness.timing import interleave

    if warmup < 0 or iters < 1 or rounds < 1:
        raise ConfigError(f"warmup must be >= 0, iters and rounds >= 1; got {warmup}, {iters}, {rounds}")
    fns = {key: (lambda s=sess, f=feed: s.run(f)) for key, (sess, feed) in runs.items()}
    times = interleave(fns, warmup, rounds, max(1, iters // rounds))
    return {key: summarize(runs[key][0].describe(), runs[key][1], np.asarray([t for r in ms for t in r]),
                     family_of(runs[key][0]))
            for key, ms in times.items()}


def family_of(session: Session) -> Any:
    art = getattr(session, "artifact", None)
    return art.family if art is not None else None


def summarize(backend: str, feed: dict[str, np.ndarray], ms: np.ndarray, family: Any = None) -> LatencyResult:
    """Percentiles; the item size is the family's (tokens per row for text, CxHxW for images)."""
    first = next(iter(feed.values()))
    batch = int(first.shape[0])
    size = family.item_size(feed) if family is not None else (int(first.shape[1]) if first.ndim > 1 else 1)
    column = family.size_column if family is not None else "seq_len"
    seq, image = (size, None) if column == "seq_len" else (None, size)
    p50 = float(np.percentile(ms, 50))
    return LatencyResult(
        backend=backend, batch=batch, seq_len=seq, image=image, iters=len(ms), p50_ms=round(p50, 3),
        p90_ms=round(float(np.percentile(ms, 90)), 3), p99_ms=round(float(np.percentile(ms, 99)), 3),
        mean_ms=round(float(ms.mean()), 3), min_ms=round(float(ms.min()), 3),
        throughput=round(batch / (p50 / 1000), 2))


def measure_latency(session: Session, feed: dict[str, np.ndarray], warmup: int = 5, iters: int = 30,
                    sync: Callable[[], None] | None = None) -> LatencyResult:
    """Time `iters` calls after `warmup` calls; `sync` (e.g. torch.cuda.synchronize) runs before each clock read."""
    from benchmarks.harness.timing import interleave

    if warmup < 0 or iters < 1:
        raise ConfigError(f"warmup must be >= 0 and iters >= 1, got warmup={warmup}, iters={iters}")
    times = interleave({0: lambda: session.run(feed)}, warmup, rounds=1, per_round=iters, sync=sync, pause_s=0)
    return summarize(session.describe(), feed, np.asarray(times[0][0]), family_of(session))
