"""Task accuracy of any artifact: accuracy, macro-F1 and the confusion matrix on labelled data.

The code lives below the stages (runtime/tasks/metrics.py) so that accuracy-guarded stages need not
import the harness; this module keeps the harness's names and adds `evaluate_artifact` (what `kiln eval` does)."""

from __future__ import annotations

from typing import Any

from runtime.tasks.metrics import classification_metrics, measure_accuracy

__all__ = ["classification_metrics", "evaluate_artifact", "measure_accuracy"]


def evaluate_artifact(artifact: Any, data: Any, backend: str = "auto", device: str = "cpu", batch_size: int = 64,
                      text_column: str = "text", label_column: str = "label",
                      options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Accuracy, macro-F1 and confusion of `artifact` (a path or Artifact) on labelled `data` (a dataset name,
    file or image folder, read the way the artifact's family reads it), plus the backend that ran it.
    `options`: the backend's session options (e.g. {"dtype": "bfloat16"})."""
    from calibration.sources import labelled_for
    from runtime.artifact import Artifact
    from runtime.pipeline import pipeline_for

    art = artifact if isinstance(artifact, Artifact) else Artifact.load(artifact)
    names = [art.labels[i] for i in sorted(art.labels)]
    labelled = labelled_for(art.task, data, text_column, label_column, names)  # before loading the model
    with pipeline_for(art, backend=backend, device=device, batch_size=batch_size, **(options or {})) as clf:
        result = measure_accuracy(clf, labelled)
        result["backend"] = clf.session.describe()
    return result
