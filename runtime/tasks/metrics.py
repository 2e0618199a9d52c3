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


def measure_accuracy(pipeline: Any, data: Any) -> dict[str, Any]:
    """Run a classification pipeline over labelled data (whatever backend it has) and score its argmax
    labels with the artifact's family metric. `data` has inputs, labels (indices), label_names, source
    and sha256 (calibration.datasets.LabelledTexts); `pipeline` has artifact and logits(inputs)."""
    import time

    from runtime.errors import DataError

    art = pipeline.artifact
    names = [art.labels[i] for i in sorted(art.labels)]
    if data.label_names != names:
        raise DataError(f"the data's labels {data.label_names} do not match the model's {names}")
    started = time.perf_counter()
    logits = pipeline.logits(data.inputs)
    metrics = art.family.metric(logits.argmax(-1), np.asarray(data.labels), len(names))
    return metrics | {"labels": names, "seconds": round(time.perf_counter() - started, 2),
                      "data": data.source, "data_sha256": data.sha256}
