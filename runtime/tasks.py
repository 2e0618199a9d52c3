"""What each task means to the runtime: its output names and how to post-process them (data, not code)."""

from __future__ import annotations

from dataclasses import dataclass

from runtime.errors import ConfigError


@dataclass(frozen=True)
class TaskInfo:
    auto_class: str  # transformers class that loads the model for this task (torch backend, exporter)
    output: str  # the output the pipelines read
    output_axes: tuple[str, ...]  # symbolic axes of that output; other axes come from the config


TASKS: dict[str, TaskInfo] = {
    "text-classification": TaskInfo("AutoModelForSequenceClassification", "logits", ("batch", "num_labels")),
    "token-classification": TaskInfo("AutoModelForTokenClassification", "logits", ("batch", "sequence", "num_labels")),
    "feature-extraction": TaskInfo("AutoModel", "last_hidden_state", ("batch", "sequence", "hidden")),
}


def task_info(task: str) -> TaskInfo:
    try:
        return TASKS[task]
    except KeyError:
        raise ConfigError(f"unknown task {task!r}; valid: {', '.join(TASKS)}") from None
