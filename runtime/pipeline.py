"""Text pipelines: tokenize with the artifact's tokenizer, batch by sorted length, run, post-process."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from runtime.artifact import Artifact
from runtime.errors import ArtifactError, BackendError, ConfigError, InputError, ModelOutputError, TaskError
from runtime.session import Session, open_session

PAD_MULTIPLE = 8  # pad each batch up to a multiple of 8 tokens: few distinct shapes, little padding
# With CUDA graphs (one graph per input shape) shapes must be few: sequences to a multiple of 32 and
# rows to a power of two, so batches up to 32 x 128 tokens need 6 x 4 = 24 graphs.
GRAPH_PAD_MULTIPLE = 32
# A model call's fixed cost in token-equivalents, for deciding when a mixed-length group is better
# split than padded (benchmarks/results/batch-scaling.md: padding is what costs most on a CPU).
CALL_OVERHEAD_TOKENS = 32.0


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float
    scores: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "score": self.score, "scores": self.scores}


def pad_rows(rows: Sequence[tuple[Sequence[int], Sequence[int]]], length: int, pad_id: int = 0) -> dict[str, np.ndarray]:
    """(token ids, type ids) per row -> input_ids / attention_mask / token_type_ids, padded (or cut) to length."""
    ids = np.full((len(rows), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), length), dtype=np.int64)
    types = np.zeros((len(rows), length), dtype=np.int64)
    for row, (tok, typ) in enumerate(rows):
        k = min(len(tok), length)
        ids[row, :k], mask[row, :k], types[row, :k] = tok[:k], 1, typ[:k]
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def split_by_padding(padded: Sequence[int], max_batch: int, overhead: float) -> list[tuple[int, int]]:
    """Cut rows sorted longest-first into consecutive groups of at most max_batch rows, minimizing the
    tokens computed: each group costs `overhead` (a model call's fixed cost, in token-equivalents) plus
    rows x the group's padded length. Padding a 12-token sentence to 56 costs more than a second call,
    so a group of mixed lengths is split where that pays; overhead=inf gives plain chunks of max_batch."""
    n = len(padded)
    if overhead == float("inf"):
        return [(s, min(s + max_batch, n)) for s in range(0, n, max_batch)]
    best = [0.0] + [float("inf")] * n  # best[j]: cheapest cost of rows [0, j)
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(max(0, j - max_batch), j):  # group [i, j) is padded to padded[i], its longest
            cost = best[i] + overhead + (j - i) * padded[i]
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j > 0:
        groups.append((cut[j], j))
        j = cut[j]
    return groups[::-1]


def load_tokenizer(artifact: Artifact) -> Any:
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise BackendError("the text pipelines need the tokenizers library; pip install modelkiln") from None
    path = artifact.path / artifact.meta.get("tokenizer", "tokenizer.json")
    if not path.is_file():
        raise ArtifactError(f"artifact {artifact.path} has no tokenizer ({path.name}); re-export it with `kiln export`")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception for any parse error
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ArtifactError(f"artifact {artifact.path}: {path.name} is not a valid tokenizers file ({reason}); "
                            "re-export it with `kiln export`") from None
    tok.no_padding()  # padding is done per batch below, to the batch's own length
    tok.enable_truncation(int(artifact.meta.get("max_length", 512)))
    return tok


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
            raise ConfigError(f"call_overhead_tokens must be >= 0 (inf: never split), got {call_overhead_tokens}")
        self.batch_size = batch_size
        self.call_overhead_tokens = call_overhead_tokens
        # few distinct input shapes (GRAPH_PAD_MULTIPLE); by default when CUDA graphs are on
        self.shape_buckets = (bool(options.get("cuda_graphs")) and device == "cuda") if shape_buckets is None \
            else shape_buckets
        self.pad_multiple = GRAPH_PAD_MULTIPLE if self.shape_buckets else PAD_MULTIPLE
        self.tokenizer = load_tokenizer(self.artifact)
        self.session = session or open_session(self.artifact, backend=backend, device=device, **options).open()
        self._input_names = {s.name for s in self.session.inputs}

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def encode(self, texts: Iterable[str]) -> list[Any]:
        """Tokenize any iterable of strings (read once: a generator is materialized, not consumed twice)."""
        if isinstance(texts, (str, bytes)):
            what = "string" if isinstance(texts, str) else "bytes object (decode it first)"
            raise InputError(f"texts must be a list of strings, got a single {what}; wrap it in a list")
        try:
            texts = list(texts)
        except TypeError:
            raise InputError(f"texts must be a list (or any iterable) of strings, got {type(texts).__name__}") from None
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise InputError(f"texts[{i}] is {type(t).__name__}; every input must be a string")
            try:
                t.encode("utf-8")
            except UnicodeEncodeError as e:  # tokenizers only says "TextEncodeInput must be Union[...]"
                raise InputError(f"texts[{i}] holds {t[e.start]!r} at position {e.start}, half of a UTF-16 surrogate "
                                 "pair, which is not a character; every input must be valid Unicode") from None
        return self.tokenizer.encode_batch(texts)

    def padded_length(self, tokens: int) -> int:
        """The length a row of `tokens` tokens is padded to: the next multiple of pad_multiple, within max_length."""
        length = -(-tokens // self.pad_multiple) * self.pad_multiple
        return max(min(length, int(self.artifact.meta.get("max_length", length))), tokens)

    def feed_for(self, encodings: Sequence[Any]) -> dict[str, np.ndarray]:
        """Pad a group of encodings to a common bucketed length and build the model feed."""
        length = self.padded_length(max(len(e.ids) for e in encodings))
        rows = [(e.ids, e.type_ids) for e in encodings]
        if self.shape_buckets:  # repeat the first row up to a power of two; the extra rows' outputs are dropped
            rows += rows[:1] * ((1 << (len(rows) - 1).bit_length()) - len(rows))
        feed = pad_rows(rows, length, int(self.artifact.meta.get("pad_token_id", 0)))
        return {k: v for k, v in feed.items() if k in self._input_names}

    def graph_shapes(self, max_tokens: int = 128) -> list[tuple[int, int]]:
        """With shape buckets: every (rows, tokens) bucket a batch up to batch_size x max_tokens can take."""
        if not self.shape_buckets:
            return []
        rows = [1 << k for k in range((self.batch_size - 1).bit_length() + 1)]
        limit = min(max_tokens, int(self.artifact.meta.get("max_length", max_tokens)))
        return [(r, s) for r in rows for s in range(self.pad_multiple, limit + 1, self.pad_multiple)]

    def warm_up_shapes(self, max_tokens: int = 128) -> int:
        """Run each bucket shape once, so CUDA graphs are captured before traffic (and /healthz) arrives."""
        shapes = self.graph_shapes(max_tokens)
        for rows, tokens in shapes:
            feed = pad_rows([([0] * tokens, [0] * tokens)] * rows, tokens)
            self.session.run({k: v for k, v in feed.items() if k in self._input_names})
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
        for idx, feed in self.batches(encodings):
            out = self.session.run(feed)[output]
            for j, i in enumerate(idx):
                rows[i] = (out[j], feed["attention_mask"][j])
        # NaN/inf is never an answer (softmax of NaN is a NaN "score"); the first bad input, in input order
        bad = [i for i, (row, _) in enumerate(rows) if not np.isfinite(row).all()]
        if bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise ModelOutputError(
                f"the model produced NaN/inf for input {bad[0]}{more}; the artifact {self.artifact.path} is corrupt "
                "or numerically unstable — run `kiln inspect --verify` on it", index=bad[0])
        return rows


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class TextClassifier(Pipeline):
    """texts -> Prediction(label, score, scores) per text."""

    tasks = ("text-classification",)

    def predict(self, texts: Iterable[str]) -> list[Prediction]:
        return self.predict_encoded(self.encode(texts))

    def predict_encoded(self, encodings: Sequence[Any]) -> list[Prediction]:
        labels = self.artifact.labels
        out = []
        for logits, _ in self.run_encoded(encodings):
            probs = softmax(logits.astype(np.float64))
            best = int(probs.argmax())
            names = [labels.get(i, str(i)) for i in range(len(probs))]
            out.append(Prediction(names[best], float(probs[best]), dict(zip(names, map(float, probs)))))
        return out

    def logits(self, texts: Iterable[str]) -> np.ndarray:
        rows = [row for row, _ in self.run_rows(texts)]
        return np.stack(rows) if rows else self.empty_result()


class Embedder(Pipeline):
    """texts -> pooled sentence embeddings (mean over real tokens; L2-normalized if the model says so)."""

    tasks = ("feature-extraction",)

    def embed(self, texts: Iterable[str]) -> np.ndarray:
        pooled = []
        cls_pooling = self.artifact.meta.get("pooling", "mean") == "cls"
        for hidden, mask in self.run_rows(texts):
            if cls_pooling:
                vec = hidden[0]
            else:
                m = mask[:, None].astype(hidden.dtype)
                vec = (hidden * m).sum(axis=0) / max(m.sum(), 1.0)
            pooled.append(vec)
        if not pooled:
            return self.empty_result().astype(np.float32)
        emb = np.stack(pooled).astype(np.float32)
        if self.artifact.meta.get("normalize", False):
            emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        return emb


PIPELINES: dict[str, type[Pipeline]] = {"text-classification": TextClassifier, "feature-extraction": Embedder}


def pipeline_for(artifact: Artifact | str | Path, **kwargs: Any) -> Pipeline:
    """The pipeline that fits the artifact's task."""
    art = artifact if isinstance(artifact, Artifact) else Artifact.load(artifact)
    if art.task not in PIPELINES:
        raise TaskError(f"no text pipeline for task {art.task!r} ({art.path}); "
                        f"pipelines exist for {', '.join(PIPELINES)}")
    return PIPELINES[art.task](art, **kwargs)
