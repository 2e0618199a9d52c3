"""ModelMeta: the typed view of a manifest's `meta` object, with one default per key."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from runtime.errors import ArtifactError

# A manifest without max_length (hand-written, or from before `kiln export` recorded it) reads as 512:
# the position-embedding limit of the BERT-family encoders Kiln exports, so a missing key never
# truncates text the model could read, and it is what the runtime always used. (The stages used 128;
# `kiln export` records the checkpoint's own limit, so their artifacts never fell back to either.)
DEFAULT_MAX_LENGTH = 512
POOLINGS = ("mean", "cls")


@dataclass(frozen=True)
class ModelMeta:
    """What the runtime needs beyond the graph: files, labels, pre/post-processing.

    `extra` holds every other key as it was in the manifest (lineage facts such as precision or
    structure, and family-specific preprocessing such as a vision model's image size and mean/std).
    """

    model_type: str = ""
    model_file: str = ""  # relative to the artifact; "" for hf artifacts (the directory is the model)
    weights_file: str = "model.safetensors"  # hf artifacts: the weights inside the directory
    tokenizer: str = "tokenizer.json"  # text: the `tokenizers` file the runtime loads
    labels: dict[int, str] = field(default_factory=dict)  # class index -> name
    max_length: int = DEFAULT_MAX_LENGTH  # text: tokens per input, truncated beyond
    pad_token_id: int = 0
    vocab_size: int = 0  # 0: unknown (feeds then draw ids every vocabulary has)
    pooling: str = "mean"  # feature-extraction: "mean" over real tokens or the first ("cls") token
    normalize: bool = False  # feature-extraction: L2-normalize embeddings
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("max_length",):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ArtifactError(f"meta.{name} must be a whole number >= 1, got {v!r}")
        for name in ("pad_token_id", "vocab_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ArtifactError(f"meta.{name} must be a whole number >= 0, got {v!r}")
        for name in ("model_type", "model_file", "weights_file", "tokenizer"):
            if not isinstance(getattr(self, name), str):
                raise ArtifactError(f"meta.{name} must be a string, got {getattr(self, name)!r}")
        if self.pooling not in POOLINGS:
            raise ArtifactError(f"meta.pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if not isinstance(self.normalize, bool):
            raise ArtifactError(f"meta.normalize must be true or false, got {self.normalize!r}")
        if not all(isinstance(k, int) and isinstance(v, str) for k, v in self.labels.items()):
            raise ArtifactError(f"meta.labels must map class indices to names, got {self.labels!r}")

    @classmethod
    def from_dict(cls, meta: Mapping[str, Any] | None) -> ModelMeta:
        """Read a manifest's meta (any Kiln version): known keys typed, the rest kept in extra."""
        if meta is None:
            meta = {}
        if not isinstance(meta, Mapping):
            raise ArtifactError(f"manifest meta must be an object, got {type(meta).__name__}")
        typed = {f.name for f in fields(cls)} - {"extra"}
        kwargs: dict[str, Any] = {k: v for k, v in meta.items() if k in typed and v is not None}
        if "labels" in kwargs:
            raw = kwargs["labels"]
            if not isinstance(raw, Mapping):
                raise ArtifactError(f"meta.labels must map class indices to names, got {raw!r}")
            try:
                kwargs["labels"] = {int(k): v for k, v in raw.items()}
            except (TypeError, ValueError):
                raise ArtifactError(f"meta.labels keys must be class indices, got {list(raw)!r}") from None
        return cls(**kwargs, extra={k: v for k, v in meta.items() if k not in typed})

    def to_dict(self) -> dict[str, Any]:
        """The manifest form (labels keyed by strings, as JSON needs)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        out["labels"] = {str(k): v for k, v in self.labels.items()}
        return out | self.extra

    @property
    def label_names(self) -> list[str]:
        """Names in class-index order (index i without a name reads as str(i))."""
        n = max(self.labels, default=-1) + 1
        return [self.labels.get(i, str(i)) for i in range(n)]
