"""Readers: generators of feeds. Adapters to backend protocols live at the edge, not here."""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np

from runtime.pipeline import pad_rows

# Several batch sizes and lengths: a dynamic-axes bug (a dim frozen at trace time) shows up as a
# failure on at least one of them. The last rows of each batch are padded.
VALIDATION_SHAPES: tuple[tuple[int, int], ...] = ((1, 7), (4, 33), (8, 128))


def synthetic_text(input_names: Sequence[str], vocab_size: int, shapes: Sequence[tuple[int, int]] = VALIDATION_SHAPES,
                   seed: int = 0, special_ids: tuple[int, int, int] = (101, 102, 0)) -> Iterator[dict[str, np.ndarray]]:
    """Seeded token-id feeds that look like tokenized text: [CLS] tokens [SEP] then padding.

    special_ids is (cls, sep, pad); ids outside the vocabulary are replaced by 1..vocab_size-1.
    """
    rng = np.random.default_rng(seed)
    cls_id, sep_id, pad_id = (i if 0 <= i < vocab_size else 1 for i in special_ids)
    low = min(1000, vocab_size // 2)  # skip the reserved/unused ids at the start of BERT vocabularies
    for batch, seq in shapes:
        ids = np.full((batch, seq), pad_id, dtype=np.int64)
        mask = np.zeros((batch, seq), dtype=np.int64)
        for row in range(batch):
            # the first row is full length; the others are shorter, so padding is exercised
            length = seq if row == 0 else int(rng.integers(min(2, seq), seq + 1))
            ids[row, :length] = rng.integers(low, vocab_size, size=length)
            ids[row, 0] = cls_id
            ids[row, length - 1] = sep_id
            mask[row, :length] = 1
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        yield {k: feed[k] for k in input_names}


def validation_feeds(input_names: Sequence[str], vocab_size: int, max_length: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """The seeded feeds every stage validates on: VALIDATION_SHAPES, lengths capped at the model's limit."""
    shapes = [(b, min(s, max_length)) for b, s in VALIDATION_SHAPES]
    return list(synthetic_text(input_names, vocab_size, shapes=shapes, seed=seed))


def synthetic(specs: Sequence[Any], n: int, seed: int = 0, batch: int = 1, seq: int = 32,
              vocab_size: int = 1000) -> Iterator[dict[str, np.ndarray]]:
    """n seeded feeds for any TensorSpecs: int inputs get token ids, float inputs a standard normal."""
    rng = np.random.default_rng(seed)
    sizes = {"batch": batch, "sequence": seq}
    for _ in range(n):
        feed = {}
        for s in specs:
            shape = tuple(d if isinstance(d, int) else sizes.get(d, 1) for d in s.shape)
            if np.dtype(s.dtype).kind in "iu":
                feed[s.name] = rng.integers(1, vocab_size, size=shape).astype(s.dtype)
                if s.name == "attention_mask":
                    feed[s.name] = np.ones(shape, dtype=s.dtype)
                elif s.name == "token_type_ids":
                    feed[s.name] = np.zeros(shape, dtype=s.dtype)
            else:
                feed[s.name] = rng.standard_normal(shape).astype(s.dtype)
        yield feed


def sample_by_length(texts: Sequence[str], lengths: Sequence[int], n: int, seed: int = 0) -> list[str]:
    """n texts stratified by token length: sort by length, cut into n strata, draw one from each."""
    if n >= len(texts):
        return list(texts)
    rng = np.random.default_rng(seed)
    order = np.argsort(np.asarray(lengths), kind="stable")
    strata = np.array_split(order, n)
    return [texts[int(rng.choice(s))] for s in strata]


def from_texts(tokenizer: Any, texts: Sequence[str], max_length: int, input_names: Sequence[str],
               batch_size: int = 1, pad_to: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Feeds from texts with a `tokenizers.Tokenizer`. pad_to fixes every batch to one shape
    (onnxruntime's percentile/entropy calibrators need all batches to share a shape)."""
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    texts = list(texts)
    for start in range(0, len(texts), batch_size):
        encs = tokenizer.encode_batch(texts[start:start + batch_size])
        feed = pad_rows([(e.ids, e.type_ids) for e in encs], pad_to or max(len(e.ids) for e in encs))
        yield {k: feed[k] for k in input_names}


def from_npz(path: str, batch_size: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """Feeds from an .npz whose arrays share a leading sample axis (one array per model input)."""
    from runtime.errors import DataError

    try:
        data = np.load(path)
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is not a readable .npz file ({e})") from None
    names = list(data.files)
    if not names:
        raise DataError(f"{path} holds no arrays")
    n = len(data[names[0]])
    for start in range(0, n, batch_size):
        yield {k: data[k][start:start + batch_size] for k in names}


def unpadded(feeds: Sequence[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
    """One feed per row, cut to the row's attention-mask length, so every position is a real token.

    Outputs at padding positions mean nothing (every task masks or pools them away), yet they count in a
    whole-output comparison: int8 MiniLM agrees with fp32 at cosine 0.996 on real tokens and 0.64 on padding.
    Feeds without an attention mask are yielded unchanged."""
    for feed in feeds:
        mask = feed.get("attention_mask")
        if mask is None or mask.ndim != 2:
            yield feed
            continue
        for row in range(mask.shape[0]):
            n = int(mask[row].sum())
            yield {k: v[row:row + 1, :n] if v.ndim == 2 and v.shape == mask.shape else v[row:row + 1]
                   for k, v in feed.items()}
