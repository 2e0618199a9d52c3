"""Task accuracy of any artifact: accuracy, macro-F1 and the confusion matrix on labelled data."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from calibration.datasets import LabelledTexts
from runtime.errors import DataError
from runtime.pipeline import TextClassifier


def classification_metrics(pred: np.ndarray, gold: np.ndarray, n_labels: int) -> dict[str, Any]:
    """Accuracy, macro-F1 and confusion[gold][pred]."""
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


def measure_accuracy(pipeline: TextClassifier, data: LabelledTexts) -> dict[str, Any]:
    """Run the pipeline over the dataset (whatever backend it has) and score its argmax labels."""
    names = [pipeline.artifact.labels[i] for i in sorted(pipeline.artifact.labels)]
    if data.label_names != names:
        raise DataError(f"the data's labels {data.label_names} do not match the model's {names}")
    started = time.perf_counter()
    logits = pipeline.logits(data.texts)
    metrics = classification_metrics(logits.argmax(-1), np.asarray(data.labels), len(names))
    return metrics | {"labels": names, "seconds": round(time.perf_counter() - started, 2),
                      "data": data.source, "data_sha256": data.sha256}
