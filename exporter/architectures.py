"""Architecture knowledge as data: which inputs each model type takes, and how it exports.

Only `bert` (MiniLM) is exercised on a real checkpoint; the others are covered by tiny models in tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.errors import SourceError


@dataclass(frozen=True)
class Architecture:
    inputs: tuple[str, ...]
    ort_model_type: str  # model_type for onnxruntime.transformers.optimizer fusions


ARCHITECTURES: dict[str, Architecture] = {
    "bert": Architecture(("input_ids", "attention_mask", "token_type_ids"), "bert"),
    "distilbert": Architecture(("input_ids", "attention_mask"), "bert"),
    "roberta": Architecture(("input_ids", "attention_mask"), "bert"),
}

DYNAMIC_INPUT_AXES = ("batch", "sequence")  # every text input is int64[batch, sequence]


def architecture(model_type: str) -> Architecture:
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise SourceError(
            f"unsupported model_type {model_type!r}; Kiln exports {', '.join(ARCHITECTURES)}") from None
