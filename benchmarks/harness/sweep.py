"""The one latency sweep: candidates x batch sizes x sequence lengths, timed in interleaved rounds."""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from benchmarks.environment import gpu_memory_used_mb, rss_mb
from benchmarks.harness.candidates import Candidate, naming
from benchmarks.harness.timing import (
    NOISY_SPREAD, Timings, bar, check_counts, check_noisy_spread, interleave, latency_stats,
)
from runtime.artifact import Artifact, digest_of
from runtime.errors import ConfigError

DEFAULT_SEQ_LEN = 128  # a typical sentence batch's padded length; capped by the artifact's max_length

Progress = Callable[[str], None]


@dataclass(frozen=True)
class SweepConfig:
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    seq_lens: tuple[int, ...] = ()  # () : min(128, each artifact's max_length)
    warmup: int = 3
    rounds: int = 5
    per_round: int = 6
    noisy_spread: float = NOISY_SPREAD
    candidates: tuple[str, ...] = ()  # the candidates' labels to time; () = every one
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.candidates, str) or not all(isinstance(c, str) for c in self.candidates):
            raise ConfigError(f"sweep candidates is a list of labels, got {self.candidates!r}")
        object.__setattr__(self, "candidates", tuple(self.candidates))
        for name in ("batch_sizes", "seq_lens"):
            values = tuple(getattr(self, name))
            if any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in values):
                raise ConfigError(f"{name} must be positive integers, got {list(values)}")
            object.__setattr__(self, name, values)
        if not self.batch_sizes:
            raise ConfigError("batch_sizes must name at least one batch size")
        check_counts(self.warmup, self.rounds, self.per_round)
        check_noisy_spread(self.noisy_spread, "sweep")


def is_fixed_shape(art: Artifact) -> bool:
    """Image families take one input size (the artifact's preprocessing); only text has a sequence length."""
    return art.family.name != "text"


def seq_lens_for(art: Artifact, asked: Sequence[int]) -> list[int | None]:
    """The sequence lengths to sweep for one artifact; a length beyond its max_length is an error."""
    if is_fixed_shape(art):
        return [None]
    max_len = art.model_meta.max_length
    if not asked:
        return [min(DEFAULT_SEQ_LEN, max_len)]
    too_long = [s for s in asked if s > max_len]
    if too_long:
        raise ConfigError(f"sequence length {too_long[0]} exceeds the model's maximum length {max_len} "
                          f"({art.path}); give --seq-len 1..{max_len}")
    return list(asked)


def artifact_digest(art: Artifact) -> str:
    """The artifact's content sha256 (over its manifest's recorded file hashes; no rehashing)."""
    return digest_of(art.files) if art.files else ""


WEIGHT_SUFFIXES = (".onnx", ".onnx.data", ".onnx_data", ".bin", ".xml", ".safetensors", ".engine", ".plan", ".pt")


def model_mb(art: Artifact) -> float:
    """The size of the artifact's model (graph and weights; not its tokenizer or manifest), in MB."""
    files = [art.path / f for f in art.files] or [art.model_file]
    return round(sum(f.stat().st_size for f in files if f.name.endswith(WEIGHT_SUFFIXES) and f.is_file()) / 1e6, 2)


def load_candidates(candidates: Sequence[Candidate]) -> list[Artifact]:
    """Load every artifact first, so a missing one fails before anything is opened or timed."""
    return [Artifact.load(c.artifact) for c in candidates]


def gpu_sync(candidates: Sequence[Candidate]) -> Callable[[], None] | None:
    """torch.cuda.synchronize when a torch candidate runs on CUDA (its calls return before the GPU is done)."""
    if any(c.device == "cuda" and c.backend == "torch" for c in candidates):
        import torch

        return torch.cuda.synchronize
    return None


def run_sweep(candidates: Sequence[Candidate], config: SweepConfig,
              progress: Progress | None = None) -> list[dict[str, Any]]:
    """Time every (candidate, batch, seq_len) in interleaved rounds; one row per configuration."""
    from benchmarks.latency import example_feed
    from runtime.session import open_session

    say = progress or (lambda m: None)
    arts = load_candidates(candidates)
    plans = [(c, a, seq_lens_for(a, config.seq_lens)) for c, a in zip(candidates, arts)]
    rows: dict[tuple[int, int, int | None], dict[str, Any]] = {}
    fns: dict[tuple[int, int, int | None], Callable[[], Any]] = {}
    with contextlib.ExitStack() as stack:
        for i, (cand, art, lens) in enumerate(plans):
            before, _ = rss_mb()
            digest, size_mb = artifact_digest(art), model_mb(art)  # once per artifact, not per configuration
            with naming(cand.label):
                sess = stack.enter_context(open_session(art, backend=cand.backend, device=cand.device, **cand.options))
            for seq in lens:
                for b in config.batch_sizes:
                    feed = example_feed(sess, b, seq)
                    sess.run(feed)  # the first call allocates: count it in this candidate's memory
                    fns[(i, b, seq)] = (lambda s=sess, f=feed: s.run(f))
                    rows[(i, b, seq)] = {
                        "candidate": cand.label, "artifact": str(art.path.absolute()),
                        "artifact_sha256": digest, "model_mb": size_mb,
                        "backend": sess.describe(), "device": cand.device,
                        "batch": b, "seq_len": seq,
                        # image models: their one input size (CxHxW) instead of a sequence length
                        "image": None if seq is not None else "x".join(str(d) for d in next(iter(feed.values())).shape[1:]),
                    }
                    row = rows[(i, b, seq)]
                    row["input"] = f"{b} x {seq} tokens" if seq is not None else f"{b} x image {row['image']}"
            after, _ = rss_mb()
            for key in [k for k in rows if k[0] == i]:
                rows[key]["rss_added_mb"] = round(after - before, 1)
            say(f"opened {cand.label} ({sess.describe()}); {plural(len(lens) * len(config.batch_sizes), 'configuration')}")
        say(f"{plural(len(fns), 'configuration')} x ({config.warmup} warm-up + {config.rounds} rounds x {config.per_round} "
            "timed runs), interleaved")
        times = interleave(fns, config.warmup, config.rounds, config.per_round, sync=gpu_sync(candidates),
                           on_round=lambda r, n: say(f"latency rounds {bar(r, n)}"))
        gpu = gpu_memory_used_mb() if any(c.device == "cuda" for c in candidates) else []
    torch_peak = torch_gpu_peak_mb()
    out = []
    for key, row in rows.items():
        stats = latency_stats(Timings(tuple(tuple(r) for r in times[key]), row["batch"]), config.noisy_spread)
        extra = {"gpu_used_mb": gpu} if gpu else {}
        if torch_peak is not None and row["device"] == "cuda":
            extra["torch_gpu_peak_mb"] = torch_peak
        out.append(row | stats | extra)
    return out


def torch_gpu_peak_mb() -> float | None:
    """torch's peak CUDA allocation in this process, when torch is loaded and saw a GPU."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def plural(n: int, noun: str) -> str:
    """'1 configuration', '2 configurations'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
