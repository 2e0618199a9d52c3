"""The exporter raises the shared exception tree defined in runtime.errors."""

from runtime.errors import (  # noqa: F401
    ArtifactError, BackendError, ConfigError, DataError, InputError, KilnError, SourceError, TaskError,
    ValidationError,
)
