"""Readers: generators of feeds. Adapters to backend protocols live at the edge, not here."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

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
