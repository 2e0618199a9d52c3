"""Readers: generators of feeds. Adapters to backend protocols live at the edge, not here.

What a family's feeds look like (token ids, pixels) is the family's business (runtime/tasks/); the
text readers are re-exported here, where callers have always found them.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np

from runtime.tasks import family_for_inputs
from runtime.tasks.meta import ModelMeta
from runtime.tasks.text import VALIDATION_SHAPES, from_texts, sample_by_length, synthetic_text

__all__ = ["VALIDATION_SHAPES", "from_texts", "sample_by_length", "synthetic_text", "synthetic", "from_npz"]


def synthetic(specs: Sequence[Any], n: int, seed: int = 0, batch: int = 1, seq: int = 32,
              vocab_size: int = 1000) -> Iterator[dict[str, np.ndarray]]:
    """n seeded feeds for any TensorSpecs: a family's example feeds when the inputs are one family's
    (token ids with masks for text), else integers in [1, vocab_size) and standard-normal floats."""
    family = family_for_inputs([s.name for s in specs])
    if family is not None:
        meta = ModelMeta(vocab_size=vocab_size)
        for i in range(n):
            yield family.example_feed(specs, meta, batch, seq, seed + i)
        return
    rng = np.random.default_rng(seed)
    sizes = {"batch": batch, "sequence": seq}
    for _ in range(n):
        feed = {}
        for s in specs:
            shape = tuple(d if isinstance(d, int) else sizes.get(d, 1) for d in s.shape)
            if np.dtype(s.dtype).kind in "iu":
                feed[s.name] = rng.integers(1, vocab_size, size=shape).astype(s.dtype)
            else:
                feed[s.name] = rng.standard_normal(shape).astype(s.dtype)
        yield feed


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

