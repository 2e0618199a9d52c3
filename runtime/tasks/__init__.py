"""Task families: what differs between a text encoder, an image classifier, ... lives in one module each.

A family is a module in this package (`text.py`, `vision.py`) that defines a `Family` subclass and an
instance of it named `FAMILY`, and is listed in FAMILY_MODULES. Stages, readers, the harness and the
server never name a model's inputs (`input_ids`, `pixel_values`); they ask `family_for(task)`.

Contract a family implements (numpy only at import; torch, tokenizers, Pillow inside functions):

- `name`, `tasks` ({task: TaskInfo}: the transformers auto class, the output the runtime reads and its
  symbolic axes) and `model_types` ({Hugging Face model_type: onnxruntime transformer-optimizer type, or
  None for no graph fusion}).
- `input_specs(model_type, config)`: the model's inputs as TensorSpecs (names, dtypes, symbolic axes),
  from its Hugging Face config dict; an unsupported model_type is a SourceError listing the valid ones.
- `checkpoint_meta(model_dir, config, task)`: the manifest `meta` keys the runtime needs (labels,
  preprocessing), read from a checkpoint directory; family-specific keys go under ModelMeta.extra.
- `example_feed(inputs, meta, batch, size, seed)`: one seeded feed of `batch` rows for tracing and
  `kiln bench`; `size` is the family's variable extent (sequence length; ignored where shapes are fixed).
- `validation_feeds(inputs, meta, seed)`: the seeded feeds every stage validates an export on (several
  batch sizes, so a frozen dynamic axis shows up).
- `preprocess(artifact, raw)`: raw inputs (texts, images) -> model-ready items; a bad input is an InputError.
- `collate(items, input_names, meta)`: items -> one feed {name: array}, padded/stacked as the family needs.
- `calibration_feeds(artifact, raw, n, fixed_shape, batch_size, seed)`: feeds from raw inputs
  (e.g. a labelled dataset's inputs) for static quantization; fixed_shape: every feed the same shape.
- `postprocess(task, meta, outputs, feed)`: one batch's outputs (and the feed that made them) -> one
  result per row (a Prediction, an embedding vector).
- `metric(pred, gold, n_labels)`: the accuracy metric that counts for the family's tasks (a dict with
  at least "accuracy"); classification families use `classification_metrics`.

Optional overrides (defaults given): `output_specs(task, sizes)` (from `tasks`), `fusion_type(model_type)`
(from `model_types`), `serves_inputs(names)` (False; lets readers given only specs find the family),
`graph_safe_inputs(model, inputs)` (identity; torch inputs a CUDA graph can capture), `batch_text(batch, feed)`
(`8 x 128 tokens`; a batch's shape in the family's words).

Shared pieces: `ModelMeta` (artifact.model_meta; a family's own manifest keys live in `meta.extra`),
`Prediction` / `predictions(logits, labels)` for classifiers, `runtime.tasks.metrics.measure_accuracy`
(labelled data exposes `inputs`, `labels`, `label_names`, `source`, `sha256`).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from runtime.errors import ConfigError
from runtime.tasks.meta import DEFAULT_MAX_LENGTH, ModelMeta
from runtime.tasks.metrics import classification_metrics

if TYPE_CHECKING:
    from runtime.artifact import Artifact, TensorSpec

# One module per family, imported on first lookup. Adding a family = a module here + its tests.
FAMILY_MODULES: tuple[str, ...] = ("runtime.tasks.text", "runtime.tasks.vision")

Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class Prediction:
    """One classification result: the best label, its probability, and every label's probability."""

    label: str
    score: float
    scores: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "score": self.score, "scores": self.scores}


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def predictions(logits: np.ndarray, labels: Mapping[int, str]) -> list[Prediction]:
    """Rows of class logits -> a Prediction per row (probabilities in float64, then reported as floats)."""
    out = []
    for row in logits:
        probs = softmax(np.asarray(row, dtype=np.float64))
        best = int(probs.argmax())
        names = [labels.get(i, str(i)) for i in range(len(probs))]
        out.append(Prediction(names[best], float(probs[best]), dict(zip(names, map(float, probs)))))
    return out


@dataclass(frozen=True)
class TaskInfo:
    auto_class: str  # transformers class that loads the model for this task (torch backend, exporter)
    output: str  # the output the pipelines read
    output_axes: tuple[str, ...]  # symbolic axes of that output; other axes come from the config


class Family(ABC):
    """One task family: its inputs, feeds, pre/post-processing and metric. See the module docstring."""

    name: str = ""
    tasks: Mapping[str, TaskInfo] = {}
    model_types: Mapping[str, str | None] = {}
    # where static int8 puts Q/DQ (exporter/qdq_plan.py): "listed-ops" = the quantized op types, inputs and outputs
    static_int8_plan = "listed-ops"
    # the size column of a latency table (benchmarks/latency.py) and what one item of a batch is called
    size_column, item_name = "seq_len", "sequences"

    @abstractmethod
    def input_specs(self, model_type: str, config: Mapping[str, Any]) -> tuple[TensorSpec, ...]: ...

    @abstractmethod
    def checkpoint_meta(self, model_dir: Path, config: Mapping[str, Any], task: str) -> dict[str, Any]: ...

    @abstractmethod
    def example_feed(self, inputs: Sequence[TensorSpec], meta: ModelMeta, batch: int = 1,
                     size: int | None = None, seed: int = 0) -> Feed: ...

    @abstractmethod
    def validation_feeds(self, inputs: Sequence[TensorSpec], meta: ModelMeta, seed: int = 0) -> list[Feed]: ...

    @abstractmethod
    def preprocess(self, artifact: Artifact, raw: Sequence[Any]) -> list[Any]: ...

    @abstractmethod
    def collate(self, items: Sequence[Any], input_names: Sequence[str], meta: ModelMeta) -> Feed: ...

    @abstractmethod
    def calibration_feeds(self, artifact: Artifact, raw: Sequence[Any], n: int, fixed_shape: bool = False,
                          batch_size: int = 8, seed: int = 0) -> list[Feed]: ...

    @abstractmethod
    def postprocess(self, task: str, meta: ModelMeta, outputs: Mapping[str, np.ndarray], feed: Feed) -> list[Any]: ...

    def metric(self, pred: np.ndarray, gold: np.ndarray, n_labels: int) -> dict[str, Any]:
        """Accuracy, macro-F1 and confusion[gold][pred] (the classification default)."""
        return classification_metrics(pred, gold, n_labels)

    def output_specs(self, task: str, sizes: Mapping[str, int]) -> tuple[TensorSpec, ...]:
        """The output the runtime reads, its axes named by `sizes` where known (num_labels, hidden)."""
        from runtime.artifact import TensorSpec

        info = self.tasks[task]
        return (TensorSpec(info.output, "float32", tuple(sizes.get(a) or a for a in info.output_axes)),)

    def graph_safe_inputs(self, model: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        """torch tensors for `model` in a form whose forward reads no tensor value on the host (so a CUDA
        graph can capture it); the default leaves them as they are."""
        return inputs

    def index_limits(self, inputs: Sequence[TensorSpec], meta: ModelMeta) -> dict[str, int]:
        """input name -> exclusive upper bound of its values, for inputs that index a table inside the
        model (sessions refuse values outside it); the default: none."""
        return {}

    def serves_inputs(self, names: Sequence[str]) -> bool:
        """Whether a graph taking these inputs is one of this family's (for readers given only specs)."""
        return False

    def pad_feed(self, feed: Feed, length: int, meta: ModelMeta) -> Feed | None:
        """`feed` padded along its sequence axis to `length` so that the model's answers for the real
        positions do not change (None: this family's feeds cannot be padded that way); the default: None."""
        return None

    def mask(self, feed: Feed) -> np.ndarray | None:
        """Which positions of a (batch, length) feed are real (1) and which padding (0); None: no padding."""
        return None

    def unpadded(self, feeds: Sequence[Feed]) -> Any:
        """One feed per row, cut to the row's real length, so every position is real (validation compares whole
        outputs, and outputs at padding positions mean nothing: int8 MiniLM agrees with fp32 at cosine 0.996 on
        real tokens and 0.64 on padding). Feeds without padding (no mask) are yielded unchanged."""
        for feed in feeds:
            mask = self.mask(feed)
            if mask is None or mask.ndim != 2:
                yield feed
                continue
            for row in range(mask.shape[0]):
                n = int(mask[row].sum())
                yield {k: v[row:row + 1, :n] if v.ndim == 2 and v.shape == mask.shape else v[row:row + 1]
                       for k, v in feed.items()}

    def item_size(self, feed: Feed) -> Any:
        """The size of one item of a batch for a latency table's size column: tokens per row for text."""
        first = next(iter(feed.values()))
        return int(first.shape[1]) if first.ndim > 1 else 1

    def batch_text(self, batch: int, feed: Feed) -> str:
        """A batch's shape in the family's words, for humans (kiln doctor --measure): text's `8 x 128 tokens`."""
        return f"{batch} x {self.item_size(feed)} tokens"

    def quantize_op_types(self, method: str) -> tuple[str, ...]:
        """The ONNX op types `kiln quantize` quantizes by default with `method` (transformer encoders':
        MatMul and the fused Attention / embedding ops; families with convolutions add Conv)."""
        return ("MatMul", "Attention", "Gather", "EmbedLayerNormalization")

    def pipeline_class(self, task: str) -> type | None:
        """The runtime pipeline for `task` when the family brings its own (runtime.pipeline.pipeline_for asks)."""
        return None

    def fusion_type(self, model_type: str) -> str | None:
        """onnxruntime's transformer-optimizer model type for graph fusion; None: this type is not fused."""
        return self.model_types.get(model_type)


def read_json(path: Path, expect: type = dict) -> Any:
    """A JSON file of a checkpoint, refused as a SourceError naming the file when it is not `expect`."""
    import json

    from runtime.errors import SourceError

    try:
        d = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SourceError(f"{path} is not valid JSON ({e})") from None
    except OSError as e:
        raise SourceError(f"cannot read {path}: {e.strerror or e}") from None
    if not isinstance(d, expect):
        raise SourceError(f"{path} holds a JSON {type(d).__name__}; expected a JSON "
                          f"{'object' if expect is dict else 'array'}")
    return d


_FAMILIES: dict[str, Family] = {}


def families() -> dict[str, Family]:
    """Every registered family by name (imported on first call: `import runtime` stays lean)."""
    if not _FAMILIES:
        for module in FAMILY_MODULES:
            fam = importlib.import_module(module).FAMILY
            _FAMILIES[fam.name] = fam
    return _FAMILIES


def all_tasks() -> dict[str, TaskInfo]:
    return {task: info for fam in families().values() for task, info in fam.tasks.items()}


def family_for(task: str) -> Family:
    """The family that serves `task`; an unknown task is a ConfigError listing the valid ones."""
    for fam in families().values():
        if task in fam.tasks:
            return fam
    raise ConfigError(f"unknown task {task!r}; valid: {', '.join(all_tasks())}")


def family_for_inputs(names: Sequence[str]) -> Family | None:
    """The family whose models take inputs with these names, if one does."""
    for fam in families().values():
        if fam.serves_inputs(names):
            return fam
    return None


def family_for_model_type(model_type: str) -> Family | None:
    for fam in families().values():
        if model_type in fam.model_types:
            return fam
    return None


def task_info(task: str) -> TaskInfo:
    return family_for(task).tasks[task]


def __getattr__(name: str) -> Any:
    # TASKS stays importable for existing callers, built lazily so the families load on first use
    if name == "TASKS":
        return all_tasks()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Family", "TaskInfo", "Prediction", "softmax", "predictions", "ModelMeta", "DEFAULT_MAX_LENGTH", "FAMILY_MODULES", "Feed", "families",
           "family_for", "family_for_model_type", "family_for_inputs", "task_info", "all_tasks", "classification_metrics", "read_json"]
