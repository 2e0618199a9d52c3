"""Architecture knowledge as data, kept by the task families (runtime/tasks/): which model types Kiln
exports, which family each belongs to, and how onnxruntime fuses it.

Only `bert` (MiniLM) is exercised on a real checkpoint; the others are covered by tiny models in tests.
"""

from __future__ import annotations

from runtime.errors import SourceError
from runtime.tasks import Family, families, family_for_model_type


def supported_model_types() -> list[str]:
    return [t for fam in families().values() for t in fam.model_types]


def family_of(model_type: str) -> Family:
    """The family that exports this Hugging Face model_type; unsupported types list the valid ones."""
    fam = family_for_model_type(model_type)
    if fam is None:
        raise SourceError(f"unsupported model_type {model_type!r}; Kiln exports {', '.join(supported_model_types())}")
    return fam


def fusion_type(model_type: str) -> str | None:
    """onnxruntime.transformers.optimizer's model_type for this architecture (None: no fusion)."""
    return family_of(model_type).fusion_type(model_type)
