"""A classifier with a micro-batcher in front: the one wiring `kiln serve`, `kiln loadtest` (in-process) and
benchmarks/gpu_check.py share, and what a service embedding the runtime calls."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from runtime.artifact import Artifact
from runtime.batching import Batcher

BUCKET_TOKENS = 32  # texts are batched with others of their 32-token band: padding is what costs most on a CPU


def length_bucket(encoding: Any) -> int:
    """The Batcher bucket of one tokenized input: its 32-token band."""
    return len(encoding.ids) // BUCKET_TOKENS


@dataclass
class BatchedClassifier:
    """`clf` (TextClassifier or ImageClassifier) and the `batcher` calling its predict_encoded."""

    clf: Any
    batcher: Batcher

    def submit(self, item: Any) -> Any:
        """A future of one input's prediction (a text, or an image for an image classifier)."""
        return self.batcher.submit(self.clf.encode([item])[0])

    async def asubmit(self, item: Any) -> Any:
        return await self.batcher.asubmit(self.clf.encode([item])[0])

    def close(self, drain: bool = True) -> None:
        self.batcher.close(drain=drain)  # accepted requests finish before the model goes away
        self.clf.close()

    def __enter__(self) -> BatchedClassifier:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def batched_classifier(artifact: str | Path | Artifact, max_batch_size: int = 32, max_delay_ms: float = 0.0,
                       max_queue: int = 256, timeout_s: float | None = None,
                       on_batch: Callable[[int, int, float], None] | None = None, warmup: int = 0,
                       check: Callable[[Any], None] | None = None, **pipeline_options: Any) -> BatchedClassifier:
    """Open the artifact's pipeline (backend, device, threads, ... in `pipeline_options`; its batch size is
    max_batch_size), warm it up `warmup` times (passing each answer to `check`), capture its shapes (CUDA graphs),
    and put a Batcher in front. Texts are bucketed by length; images all share one shape, so they are not."""
    from runtime.pipeline import pipeline_for

    art = artifact if isinstance(artifact, Artifact) else Artifact.load(artifact)
    vision = art.family.name == "vision"
    clf = pipeline_for(art, batch_size=max_batch_size, **pipeline_options)
    try:
        for _ in range(warmup):  # first runs pay for kernel selection and arena growth
            n = min(8, max_batch_size)
            preds = clf.predict(clf.example_inputs(n) if vision else ["warm up the model"] * n)
            if check is not None:
                check(preds)
        clf.warm_up_shapes()  # with CUDA graphs: capture every bucket shape before reporting ready
        batcher = Batcher(clf.predict_encoded, max_batch_size, max_delay_ms, max_queue,
                          bucket=None if vision else length_bucket, timeout_s=timeout_s, on_batch=on_batch)
    except BaseException:
        clf.close()
        raise
    return BatchedClassifier(clf, batcher)
