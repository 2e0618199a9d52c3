"""Classification metrics (numpy only): below the stages that guard accuracy and the harness that reports it."""

from __future__ import annotations

from typing import Any

import numpy as np


def classification_metrics(pred: np.ndarray, gold: np.ndarray, n_labels: int) -> dict[str, Any]:
    """Accuracy, macro-F1 and confusion[gold][pred]."""
    pred, gold = np.asarray(pred), np.asarray(gold)
    confusion = np.zeros((n_labels, n_labels), dtype=np.int64)
    np.add.at(confusion, (gold, pred), 1)
    f1s = []
    for k in range(n_labels):
        tp = confusion[k, k]
        prec = tp / max(confusion[:, k].sum(), 1)
        rec = tp / max(confusion[k, :].sum(), 1)
        f1s.append(0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec))
    return {"accuracy": float((pred == gold).mean()), "macro_f1": float(np.mean(f1s)), "n": int(len(gold)),
            "confusion": confusion.tolist()}
