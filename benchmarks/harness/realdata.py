"""Real-data mode: each candidate classifies the whole labelled file end to end (inputs in, labels out,
tokenization and the pipeline's own batching included), in interleaved rounds with every other candidate."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from benchmarks.harness.candidates import Candidate, Peer, naming
from benchmarks.harness.sweep import Progress, artifact_digest, load_candidates, model_mb
from benchmarks.harness.timing import NOISY_SPREAD, Timings, bar, check_counts, check_noisy_spread, interleave, latency_stats
from runtime.errors import ConfigError, DataError


@dataclass(frozen=True)
class DataConfig:
    source: str
    batch_size: int = 32
    warmup: int = 1  # whole passes over the file before timing
    rounds: int = 5
    text_column: str = "text"
    label_column: str = "label"
    noisy_spread: float = NOISY_SPREAD
    name: str = ""  # this pass's name in reports and gates (default: "batch N", ", M sampled")
    candidates: tuple[str, ...] = ()  # the labels (candidates and peers) in this pass; () = every one
    sample: int = 0  # > 0: this many inputs drawn at random (seed 0, file order kept) instead of the whole file
    reference: str = ""  # a candidate's label: every Kiln row gets its max abs output difference and agreement

    def __post_init__(self) -> None:
        if not self.source:
            raise ConfigError("data source is empty; give a file or NAME:SPLIT such as movie-snippets:test")
        if not isinstance(self.source, str):
            raise ConfigError(f"data source must be a file or NAME:SPLIT, got {self.source!r}")
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise ConfigError(f"data batch_size must be >= 1, got {self.batch_size}")
        check_counts(self.warmup, self.rounds, 1)
        check_noisy_spread(self.noisy_spread, "data")
        if not isinstance(self.sample, int) or isinstance(self.sample, bool) or self.sample < 0:
            raise ConfigError(f"data sample must be a count >= 0 (0: the whole file), got {self.sample!r}")
        if isinstance(self.candidates, str) or not all(isinstance(c, str) for c in self.candidates):
            raise ConfigError(f"data candidates is a list of labels, got {self.candidates!r}")
        object.__setattr__(self, "candidates", tuple(self.candidates))
        if not self.name:
            object.__setattr__(self, "name", f"batch {self.batch_size}" + (f", {self.sample} sampled" if self.sample else ""))


class TimedSession:
    """Forwards to a Session and records how long each model call took (the pipeline's batch latency)."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self.calls_ms: list[float] = []

    def run(self, feed: Any) -> Any:
        t0 = time.perf_counter()
        out = self._session.run(feed)
        self.calls_ms.append((time.perf_counter() - t0) * 1000)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


class Runner:
    """One candidate's pass over the file: `__call__` classifies every input and keeps the predictions."""

    label: str
    batch_ms: list[float]
    predicted: np.ndarray | None = None
    info: dict[str, Any]


class KilnRunner(Runner):
    def __init__(self, cand: Candidate, art: Any, inputs: list[Any], batch_size: int) -> None:
        from runtime.pipeline import pipeline_for

        self.label, self.inputs = cand.label, inputs
        # a candidate's own batch_size option (e.g. 1: "one input at a time") overrides the pass's
        self.pipe = pipeline_for(art, backend=cand.backend, device=cand.device, **({"batch_size": batch_size} | cand.options))
        self.batch_size = self.pipe.batch_size
        self.timed = TimedSession(self.pipe.session)
        self.pipe.session = self.timed
        self.batch_ms = self.timed.calls_ms
        self.info = {"artifact": str(art.path.absolute()), "artifact_sha256": artifact_digest(art),
                     "model_mb": model_mb(art), "backend": self.timed.describe(), "runtime": "kiln " + type(self.pipe).__name__}

    def __call__(self) -> None:
        self.outputs = self.pipe.logits(self.inputs)
        self.predicted = self.outputs.argmax(-1)

    def close(self) -> None:
        self.pipe.close()


class PeerRunner(Runner):
    def __init__(self, peer: Peer, client: Any, names: list[str]) -> None:
        self.label, self.client, self.names = peer.label, client, names
        self.batch_ms = []
        self.info = client.load(peer)

    def __call__(self) -> None:
        out = self.client.run(self.label)
        self.batch_ms.extend(out["batch_ms"])
        index = {n: i for i, n in enumerate(self.names)}
        unknown = sorted({lab for lab in out["labels"] if lab not in index})
        if unknown:
            raise DataError(f"peer {self.label} answered labels {unknown}; the data's labels are {self.names}")
        self.predicted = np.asarray([index[lab] for lab in out["labels"]])

    def close(self) -> None:
        pass


def load_data(art: Any, config: DataConfig) -> Any:
    from calibration.sources import labelled_for

    names = [art.labels[i] for i in sorted(art.labels)]
    data = labelled_for(art.task, config.source, config.text_column, config.label_column, names)
    if not len(data.inputs):
        raise DataError(f"{config.source} holds no labelled rows; the data mode needs at least one")
    n = len(data.inputs)
    if config.sample > n:  # a sample can only be drawn from what the file holds
        raise DataError(f"sample {config.sample} is more than the {n} inputs of {config.source}; "
                        f"give at most {n}, or 0 for all")
    if 0 < config.sample < n:  # the same draw on every run and machine: seed 0, file order kept
        import dataclasses

        keep = np.sort(np.random.default_rng(0).choice(len(data.inputs), config.sample, replace=False))
        data = dataclasses.replace(data, inputs=[data.inputs[i] for i in keep], labels=[data.labels[i] for i in keep])
    return data


def reference_numerics(runners: Sequence[Runner], reference: str) -> dict[str, dict[str, float]]:
    """Each Kiln runner's outputs against the reference candidate's on the same inputs: the largest absolute
    difference (logits) and the fraction of inputs given the same label. Peers answer labels only."""
    ref = next((r for r in runners if r.label == reference), None)
    if not isinstance(ref, KilnRunner):
        kiln = [r.label for r in runners if isinstance(r, KilnRunner)]
        raise ConfigError(f"data reference {reference!r} is not a Kiln candidate of this pass; valid: {', '.join(kiln)}")
    out = {}
    for r in runners:
        if isinstance(r, KilnRunner) and r.outputs.shape == ref.outputs.shape:
            out[r.label] = {"max_abs_diff": round(float(np.abs(r.outputs.astype(np.float64) - ref.outputs).max()), 5),
                            "agreement": round(float((r.predicted == ref.predicted).mean()), 4)}
    return out


def run_data(candidates: Sequence[Candidate], config: DataConfig, peers: Sequence[Peer] = (),
             peer_client: Callable[[], Any] | None = None, progress: Progress | None = None) -> list[dict[str, Any]]:
    """Classify the whole file with every candidate (and peer), interleaved; one row per candidate."""
    from runtime.tasks.metrics import classification_metrics

    say = progress or (lambda m: None)
    if not candidates:
        raise ConfigError("the data mode needs at least one Kiln artifact (its labels and task define the data)")
    arts = load_candidates(candidates)
    unlabelled = [a for a in arts if not a.labels]
    if unlabelled:  # an embedder (feature-extraction) has no labels to score
        raise ConfigError(f"--data classifies and scores labelled inputs, but {unlabelled[0].path} is a "
                          f"{unlabelled[0].task} model with no labels; benchmark it without --data (latency sweep)")
    data = load_data(arts[0], config)  # before any model is opened: a bad file fails fast
    for art in arts[1:]:
        names = [art.labels[i] for i in sorted(art.labels)]
        if art.task != arts[0].task or names != data.label_names:
            raise ConfigError(f"{art.path} ({art.task}, labels {names}) cannot be scored on the same data as "
                              f"{arts[0].path} ({arts[0].task}, labels {data.label_names})")
    runners: list[Runner] = []
    with contextlib.ExitStack() as stack:
        for cand, art in zip(candidates, arts):
            with naming(cand.label):
                runner = KilnRunner(cand, art, list(data.inputs), config.batch_size)
            stack.callback(runner.close)
            runners.append(runner)
            say(f"opened {cand.label} ({runner.info['backend']})")
        if peers:
            if peer_client is None:
                raise ConfigError("peers were asked for but no peer environment is configured")
            client = stack.enter_context(peer_client())
            client.texts(list(data.inputs), config.batch_size)
            for peer in peers:
                say(f"loading peer {peer.label} (in {peer.python})")
                runners.append(PeerRunner(peer, client, list(data.label_names)))
        n = len(data.inputs)
        say(f"{len(runners)} candidates x ({config.warmup} warm-up + {config.rounds} timed passes over {n} inputs)")
        fns = {r.label: r for r in runners}
        if len(fns) != len(runners):
            raise ConfigError(f"two candidates share a label: {[r.label for r in runners]}; give each its own label")
        for i, r in enumerate(runners):  # warm-up batches are not batch latencies
            if config.warmup:
                say(f"warm-up {bar(i + 1, len(runners))} {r.label}")
            for _ in range(config.warmup):
                r()
            r.batch_ms.clear()
        times = interleave(fns, 0, config.rounds, 1, on_round=lambda i, k: say(f"data rounds {bar(i, k)}"))
        numerics = reference_numerics(runners, config.reference) if config.reference else {}
        rows = []
        for r in runners:
            stats = latency_stats(Timings(tuple(tuple(x) for x in times[r.label]), n), config.noisy_spread)
            metrics = classification_metrics(r.predicted, np.asarray(data.labels), len(data.label_names))
            batch = np.asarray(r.batch_ms) if r.batch_ms else np.zeros(1)
            rows.append({"candidate": r.label, **r.info, "data": str(config.source), "data_sha256": data.sha256,
                         "n": n, "batch_size": getattr(r, "batch_size", config.batch_size), "sentences_per_s": stats["throughput"],
                         "wall_s": round(stats["p50_ms"] / 1000, 3), "wall_min_s": round(stats["min_ms"] / 1000, 3),
                         "batch_p50_ms": round(float(np.percentile(batch, 50)), 3),
                         "batch_p99_ms": round(float(np.percentile(batch, 99)), 3),
                         "accuracy": round(metrics["accuracy"], 4), "macro_f1": round(metrics["macro_f1"], 4),
                         "rounds": config.rounds, "round_wall_s": [round(m / 1000, 3) for m in stats["round_medians_ms"]],
                         "spread": stats["spread"], "noisy": stats["noisy"], **numerics.get(r.label, {})})
    return rows
