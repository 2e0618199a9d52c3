"""Task accuracy of any artifact: accuracy, macro-F1 and the confusion matrix on labelled data.

The code lives below the stages (runtime/tasks/metrics.py) so that accuracy-guarded stages need not
import the harness; this module keeps the harness's names."""

from runtime.tasks.metrics import classification_metrics, measure_accuracy

__all__ = ["classification_metrics", "measure_accuracy"]
