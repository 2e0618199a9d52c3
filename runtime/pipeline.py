"""Text pipelines: tokenize with the artifact's tokenizer, batch by sorted length, run, post-process.

What a text model's inputs and outputs mean lives in runtime/tasks/text.py; this module batches and runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from runtime.artifact import Artifact
from runtime.errors import ConfigError, ModelOutputError, TaskError
from runtime.session import Session, open_session
from runtime.tasks import Prediction, softmax
from runtime.tasks.text import FAMILY as TEXT
from runtime.tasks.text import check_texts, load_tokenizer, pad_rows, split_by_padding

__all__ = ["Pipeline", "TextClassifier", "Embedder", "Prediction", "pipeline_for", "PIPELINES", "softmax",
           "load_tokenizer", "pad_rows", "split_by_padding"]

PAD_MULTIPLE = 8  # pad each batch up to a multiple of 8 tokens: few distinct shapes, little padding
# With CUDA graphs (one graph per input shape) shapes must be few: sequences to a multiple of 32 and
# rows to a power of two, so batches up to 32 x 128 tokens need 6 x 4 = 24 graphs.
GRAPH_PAD_MULTIPLE = 32
# A model call's fixed cost in token-equivalents, for deciding when a mixed-length group is better
# split than padded (benchmarks/results/batch-scaling.md: padding is what costs most on a CPU).
CALL_OVERHEAD_TOKENS = 32.0


class Pipeline:
    """Tokenizer + Session + post-processing. Opens its session on construction (or takes an open one)."""

    tasks: tuple[str, ...] = ()

    def __init__(self, artifact: Artifact | str | Path, backend: str = "auto", device: str = "cpu",
                 batch_size: int = 32, session: Session | None = None,
                 call_overhead_tokens: float = CALL_OVERHEAD_TOKENS, shape_buckets: bool | None = None,
                 **options: Any) -> None:
        if not isinstance(artifact, (Artifact, str, Path)):
            raise ConfigError(f"artifact must be an Artifact or a path, got {type(artifact).__name__}")
        self.artifact = artifact if isinstance(artifact, Artifact) else Artifact.load(artifact)
        if self.artifact.task not in self.tasks:
            raise TaskError(
                f"{type(self).__name__} needs an artifact of task {' or '.join(self.tasks)}; "
                f"{self.artifact.path} is {self.artifact.task!r}")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if not isinstance(call_overhead_tokens, (int, float)) or not call_overhead_tokens >= 0:  # refuses NaN too
            raise ConfigError(f"call_overhead_tokens must be >= 0 (inf: never split), got {call_overhead_tokens!r}")
        self.batch_size = batch_size
        self.call_overhead_tokens = call_overhead_tokens
        self.meta = self.artifact.model_meta
        self.tokenizer = load_tokenizer(self.artifact)
        self.session = session or open_session(self.artifact, backend=backend, device=device, **options).open()
        # few distinct input shapes (GRAPH_PAD_MULTIPLE); by default when CUDA graphs are on
        # (getattr: a caller's own Session-like object may have no options)
        graphs = bool(getattr(getattr(self.session, "options", None), "cuda_graphs", False)) \
            and getattr(self.session, "device", device) == "cuda"
        self.shape_buckets = graphs if shape_buckets is None else shape_buckets
        self.pad_multiple = GRAPH_PAD_MULTIPLE if self.shape_buckets else PAD_MULTIPLE
        self._input_names = [s.name for s in self.session.inputs]

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def encode(self, texts: Iterable[str]) -> list[Any]:
        """Tokenize any iterable of strings (read once: a generator is materialized, not consumed twice)."""
        return self.tokenizer.encode_batch(check_texts(texts))

    def padded_length(self, tokens: int) -> int:
        """The length a row of `tokens` tokens is padded to: the next multiple of pad_multiple, within max_length."""
        length = -(-tokens // self.pad_multiple) * self.pad_multiple
        return max(min(length, self.meta.max_length), tokens)

    def feed_for(self, encodings: Sequence[Any]) -> dict[str, np.ndarray]:
        """Pad a group of encodings to a common bucketed length and build the model feed."""
        length = self.padded_length(max(len(e.ids) for e in encodings))
        rows = list(encodings)
        if self.shape_buckets:  # repeat the first row up to a power of two; the extra rows' outputs are dropped
            rows += rows[:1] * ((1 << (len(rows) - 1).bit_length()) - len(rows))
        return TEXT.collate(rows, self._input_names, self.meta, length)

    def graph_shapes(self, max_tokens: int = 128) -> list[tuple[int, int]]:
        """With shape buckets: every (rows, tokens) bucket a batch up to batch_size x max_tokens can take."""
        if not self.shape_buckets:
            return []
        rows = [1 << k for k in range((self.batch_size - 1).bit_length() + 1)]
        limit = min(max_tokens, self.meta.max_length)
        return [(r, s) for r in rows for s in range(self.pad_multiple, limit + 1, self.pad_multiple)]

    def warm_up_shapes(self, max_tokens: int = 128) -> int:
        """Run each bucket shape once, so CUDA graphs are captured before traffic (and /healthz) arrives."""
        shapes = self.graph_shapes(max_tokens)
        for rows, tokens in shapes:
            self.session.run(TEXT.collate([([0] * tokens, [0] * tokens)] * rows, self._input_names, self.meta))
        return len(shapes)

    def batches(self, encodings: Sequence[Any]) -> Iterator[tuple[list[int], dict[str, np.ndarray]]]:
        """Yield (original indices, feed): longest-first groups of similar length (see split_by_padding)."""
        order = sorted(range(len(encodings)), key=lambda i: -len(encodings[i].ids))
        padded = [self.padded_length(len(encodings[i].ids)) for i in order]
        for start, stop in split_by_padding(padded, self.batch_size, self.call_overhead_tokens):
            idx = order[start:stop]
            yield idx, self.feed_for([encodings[i] for i in idx])

    def empty_result(self) -> np.ndarray:
        """The (0, width) array a call with no texts returns (np.stack refuses an empty list)."""
        width = self.session.outputs[0].shape[-1]
        return np.zeros((0, width if isinstance(width, int) else 0))

    def run_rows(self, texts: Iterable[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Run every text; return per text (its output row, its attention mask row)."""
        return self.run_encoded(self.encode(texts))

    def run_encoded(self, encodings: Sequence[Any]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Like run_rows for already tokenized inputs (the Batcher tokenizes once, to bucket by length)."""
        rows: list[Any] = [None] * len(encodings)
        output = self.session.outputs[0].name
        bad: list[int] = []
        for idx, feed in self.batches(encodings):
            out = self.session.run(feed)[output]
            mask = TEXT.mask(feed)
            for j, i in enumerate(idx):
                rows[i] = (out[j], mask[j] if mask is not None else np.ones(out.shape[1], dtype=np.int64))
                if not np.isfinite(out[j]).all():
                    bad.append(i)
        self.check_finite(bad)
        return rows

    def results(self, encodings: Sequence[Any]) -> list[Any]:
        """Run tokenized inputs and post-process them as the text family says: one result per input, in order."""
        rows: list[Any] = [None] * len(encodings)
        output = self.session.outputs[0].name
        bad: list[int] = []
        for idx, feed in self.batches(encodings):
            outs = self.session.run(feed)
            bad += [i for j, i in enumerate(idx) if not np.isfinite(outs[output][j]).all()]
            # with shape buckets the feed has extra rows; zip drops their results
            for i, result in zip(idx, TEXT.postprocess(self.artifact.task, self.meta, outs, feed)):
                rows[i] = result
        self.check_finite(bad)
        return rows

    def check_finite(self, bad: list[int]) -> None:
        """NaN/inf is never an answer (softmax of NaN is a NaN "score"); name the first bad input, in input order."""
        if bad:
            bad = sorted(bad)
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise ModelOutputError(
                f"the model produced NaN/inf for input {bad[0]}{more}; the artifact {self.artifact.path} is corrupt "
                "or numerically unstable — run `kiln inspect --verify` on it", index=bad[0])


class TextClassifier(Pipeline):
    """texts -> Prediction(label, score, scores) per text."""

    tasks = ("text-classification",)

    def predict(self, texts: Iterable[str]) -> list[Prediction]:
        return self.predict_encoded(self.encode(texts))

    def predict_encoded(self, encodings: Sequence[Any]) -> list[Prediction]:
        return self.results(encodings)

    def logits(self, texts: Iterable[str]) -> np.ndarray:
        rows = [row for row, _ in self.run_rows(texts)]
        return np.stack(rows) if rows else self.empty_result()


class Embedder(Pipeline):
    """texts -> pooled sentence embeddings (mean over real tokens; L2-normalized if the model says so)."""

    tasks = ("feature-extraction",)

    def embed(self, texts: Iterable[str]) -> np.ndarray:
        pooled = self.results(self.encode(texts))
        return np.stack(pooled) if pooled else self.empty_result().astype(np.float32)


PIPELINES: dict[str, type[Pipeline]] = {"text-classification": TextClassifier, "feature-extraction": Embedder}


def pipeline_for(artifact: Artifact | str | Path, **kwargs: Any) -> Pipeline:
    """The pipeline that fits the artifact's task."""
    art = artifact if isinstance(artifact, Artifact) else Artifact.load(artifact)
    own = art.family.pipeline_class(art.task)  # a family with its own pipeline (vision: ImageClassifier)
    if own is not None:
        return own(art, **kwargs)
    if art.task not in PIPELINES:
        raise TaskError(f"no text pipeline for task {art.task!r} ({art.path}); "
                        f"pipelines exist for {', '.join(PIPELINES)}")
    return PIPELINES[art.task](art, **kwargs)
