"""The `amazon-snippets` dataset: out-of-domain text for a movie-review classifier, from the same archive.

3,708 Amazon product-review sentences from the vaderSentiment 3.3.2 sdist (hutto_ICWSM_2014), rated by
>= 20 people each, labelled exactly like movie-snippets: the sign of the mean rating, rating-0 and duplicate
texts dropped, shuffled with random.Random(20261128). 3,600 rows remain: train 1600, dev 400, test 1600 (the
test split is the large one because this set exists to measure accuracy away from the training domain).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from calibration.movie_snippets import LABELS, ensure_snippets

GROUND_TRUTH = "hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt"
SPLITS: tuple[tuple[str, int | None], ...] = (("train", 1600), ("dev", 400), ("test", None))


def ensure_amazon_snippets(root: Path, sdist: Path | None = None) -> Path:
    """Return root/amazon-snippets, building it (atomically) if any split is missing."""
    return ensure_snippets(root, "amazon-snippets", GROUND_TRUTH, SPLITS, sdist)


NAMED: dict[str, tuple[Callable[[Path], Path], tuple[str, ...], list[str]]] = {
    "amazon-snippets": (ensure_amazon_snippets, tuple(n for n, _ in SPLITS), LABELS),
}
