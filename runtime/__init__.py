"""Kiln runtime: embeddable inference over Kiln artifacts. Imports only numpy (backends load lazily)."""

from runtime.artifact import Artifact, Step, TensorSpec
from runtime.errors import (
    ArtifactError, BackendError, ConfigError, DataError, InputError, KilnError, OverloadError,
    SourceError, TaskError, ValidationError,
)
from runtime.pipeline import Embedder, Pipeline, Prediction, TextClassifier, pipeline_for
from runtime.session import Session, open_session, validate_feed
from runtime.tasks.vision import ImageClassifier, ImagePreprocessing

__all__ = [
    "Artifact", "Step", "TensorSpec", "Session", "open_session", "validate_feed",
    "Pipeline", "TextClassifier", "Embedder", "ImageClassifier", "ImagePreprocessing", "Prediction", "pipeline_for",
    "KilnError", "ConfigError", "SourceError", "ArtifactError", "InputError", "BackendError",
    "TaskError", "ValidationError", "DataError", "OverloadError",
]
